"""Every method under bf16 autocast against fp32 on the tiny model (issue 16), and
`train.precision: auto` against the hardware's flags.

Tolerances, stated: bf16 keeps 8 bits of mantissa (relative rounding 2^-9 ≈ 0.002 per op), so
after a 2-layer encoder the loss agrees to 3% and every parameter gradient points the same way
(cosine ≥ 0.98) with a norm within 10%. A float32 step in the wrong place (an ascent normalised
in bf16, a divergence of bf16 logits) fails these by far.
"""
from __future__ import annotations

import copy

import pytest
import torch

from mtsmart.regularisers.registry import build_adversary
from mtsmart.tasks.types import task_types_of
from mtsmart.options.regularisers import (
    FGMConfig, FGSMConfig, FreeLBConfig, GradientPenaltyConfig, PGDConfig, R3FConfig, RDropConfig,
)
from mtsmart.tasks.batch import Batch
from mtsmart.regularisers.bregman import BregmanProximal
from mtsmart.options.bregman import BregmanConfig
from mtsmart.model.multitask import MultiTaskModel, load_encoder
from mtsmart.support.precision import cpu_bf16_flags, resolve_precision
from mtsmart.options.smart import SmartConfig
from mtsmart.tasks.spec import TaskSpec
from mtsmart.components.build import autocast_factory
from mtsmart.step.objective import Objective

SPECS = {
    "cls": TaskSpec(name="cls", type="classification", metrics=("accuracy",), labels=("a", "b", "c"), dropout=0.0),
    "reg": TaskSpec(name="reg", type="regression", metrics=("pearson",), dropout=0.0),
}
METHODS = {
    "none": (None, 0.0),
    # Perturbations above bf16's resolution of x: below it bf16 rounds them away (the next test).
    "smart_paper": (SmartConfig(epsilon=1e-2, step_size=1e-2, init_scale=1e-2), 0.0),
    "smart_release": (SmartConfig(input="embedding_output", update="release", guard=1e-6,
                                  step_size=0.3, init_scale=0.1, dropout="independent"), 0.0),
    "fgsm": (FGSMConfig(epsilon=1e-2), 0.0),
    "fgm": (FGMConfig(epsilon=0.5), 0.0),
    "pgd": (PGDConfig(epsilon=0.5, step_size=0.2, steps=2), 0.0),
    "freelb": (FreeLBConfig(epsilon=0.5, step_size=0.2, steps=2), 0.0),
    "gradient_penalty": (GradientPenaltyConfig(epsilon=1.0), 0.0),
    "r3f": (R3FConfig(init_scale=1e-2), 0.0),
    "rdrop": (RDropConfig(), 0.0),
    "bregman": (None, 1.0),
}


def make_model() -> MultiTaskModel:
    torch.manual_seed(0)
    encoder = load_encoder("tiny", 80, "eager", tiny_hidden_size=32, tiny_layers=2, tiny_heads=2)
    model = MultiTaskModel(encoder, SPECS)
    for module in model.modules():  # dropout off: the two precisions see the same function
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model.train()


def make_batch(task: str) -> Batch:
    gen = torch.Generator().manual_seed(1)
    attention = (torch.arange(12)[None, :] < torch.tensor([12, 9, 11, 6, 12, 8])[:, None]).long()
    ids = torch.randint(1, 80, (6, 12), generator=gen) * attention
    labels = torch.tensor([0, 2, 1, 2, 0, 1]) if task == "cls" else torch.tensor([0.5, 3.0, 1.5, 4.0, 2.0, 2.5])
    return Batch(task=task, input_ids=ids, attention_mask=attention, labels=labels)


def one_step(model, batch, name: str, precision: str):
    options, mu = METHODS[name]
    model = copy.deepcopy(model)
    bregman = BregmanProximal(torch.optim.SGD(model.parameters(), lr=0.0), model,
                              BregmanConfig(mu=mu, teacher_dropout=False), total_updates=10)
    if mu:  # a teacher that differs from the student, so D_Breg and its gradient are not zero
        torch.manual_seed(3)
        with torch.no_grad():
            for param in bregman.teacher.parameters():
                param.add_(0.05 * torch.randn_like(param))
    adversary = build_adversary(options, task_types_of(model.specs))
    torch.manual_seed(7)
    objective = Objective(adversary, bregman, lambda loss: loss.backward(), autocast_factory(precision, torch.device("cpu")))
    stats = objective.train_microbatch(model, batch)
    grads = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
    return stats, grads


@pytest.mark.parametrize("task", ["cls", "reg"])
@pytest.mark.parametrize("name", METHODS)
def test_every_method_under_bf16_matches_fp32(name, task):
    model, batch = make_model(), make_batch(task)
    fp32_stats, fp32_grads = one_step(model, batch, name, "fp32")
    bf16_stats, bf16_grads = one_step(model, batch, name, "bf16")
    assert torch.isfinite(bf16_grads).all()
    for key in ("loss", "adv/loss", "bregman/reg"):
        if key in fp32_stats and abs(fp32_stats[key]) > 1e-6:
            assert bf16_stats[key] == pytest.approx(fp32_stats[key], rel=3e-2, abs=1e-5), key
    cosine = torch.nn.functional.cosine_similarity(bf16_grads, fp32_grads, dim=0)
    assert cosine >= 0.98, f"gradient direction differs: cosine {float(cosine):.4f}"
    assert float(bf16_grads.norm() / fp32_grads.norm()) == pytest.approx(1.0, abs=0.1)


def test_bf16_rounds_a_perturbation_below_its_resolution_away_and_smart_says_so(caplog):
    """σ = 1e-5 on an embedding output of |x| ≈ 1: bf16's first matrix product sees x + ν = x, so
    the ascent gradient is exactly zero and Rs vanishes; fp32 sees ν. SMART warns once per run."""
    model, batch = make_model(), make_batch("reg")
    METHODS["tiny_release"] = (SmartConfig(input="embedding_output", update="release", guard=1e-6, init_scale=1e-5), 0.0)
    try:
        with caplog.at_level("WARNING", logger="mtsmart.arithmetic.smart"):
            bf16_stats, _ = one_step(model, batch, "tiny_release", "bf16")
        fp32_stats, _ = one_step(model, batch, "tiny_release", "fp32")
    finally:
        del METHODS["tiny_release"]
    assert fp32_stats["adv/loss"] > 0 and bf16_stats["adv/loss"] == 0.0
    assert "below the torch.bfloat16 spacing" in caplog.text and "train.precision=fp32" in caplog.text


def cpuinfo(tmp_path, flags: str):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 avx2 {flags}\n\nprocessor\t: 1\nflags\t\t: fpu {flags}\n")
    return path


def test_auto_picks_bf16_only_on_cpus_with_native_bf16(tmp_path):
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu, cpuinfo(tmp_path, "avx512f avx512_bf16"))[0] == "bf16"
    assert resolve_precision("auto", cpu, cpuinfo(tmp_path, "amx_tile amx_bf16"))[0] == "bf16"
    assert resolve_precision("auto", cpu, cpuinfo(tmp_path, "avx512f avx512bw"))[0] == "fp32"
    assert resolve_precision("auto", cpu, tmp_path / "missing")[0] == "fp32"  # not Linux: no guess
    assert resolve_precision("fp32", cpu, cpuinfo(tmp_path, "avx512_bf16")) == ("fp32", "as configured")


def test_the_resolved_precision_is_what_the_run_records(tmp_path, train_tiny):
    import json

    import yaml

    out = train_tiny(tmp_path / "run", "tasks=[rte]", "train.max_steps=1", "eval.max_examples=16")
    expected = resolve_precision("auto", torch.device("cpu"))[0]
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["precision"] == expected
    assert json.loads((out / "run_info.json").read_text())["precision"] == expected
    assert expected == ("bf16" if cpu_bf16_flags() else "fp32")
