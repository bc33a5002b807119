"""Throughput: the benchmark's smoke run, its arithmetic, and that every speed-up leaves the numbers alone.

Each speed-up mtsmart uses is checked against the slow way on a fixed batch: dynamic padding and
group_by_length (an example's loss does not depend on its padding or its neighbours), sdpa against
eager attention, the clean forward shared by the task loss and Rs, the teacher's no_grad forward,
inference_mode evaluation, and build_optimizer's fused AdamW against torch's per-tensor AdamW.
"""
from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mtsmart.tasks.batch import Batch
from mtsmart.regularisers.bregman import BregmanProximal
from mtsmart.options.bregman import BregmanConfig
from mtsmart.options.config import load_config
from mtsmart.data.encoding import collate, tokenize
from mtsmart.data.examples import Example
from mtsmart.arithmetic.divergence import symmetric_kl
from mtsmart.model.multitask import MultiTaskModel, load_encoder, output_fn, task_output
from mtsmart.arithmetic.perturbation import token_mask
from mtsmart.arithmetic.smart import smart_regularizer
from mtsmart.options.smart import SmartConfig
from mtsmart.tasks.spec import TaskSpec
from mtsmart.components.build import build_optimizer

VOCAB_SIZE = 30522  # the borrowed MiniLM WordPiece vocabulary
REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
SCRIPT = SCRIPTS / "bench_throughput.py"
SPEC = TaskSpec(name="rte", type="classification", metrics=("accuracy",), labels=("entailment", "not_entailment"))
PAIRS = [
    ("A man is playing a guitar on the stage.", "A man plays music."),
    ("The cat sat.", "A cat is sitting."),
    ("Cairo is now home to some 15 million people, a burgeoning population.", "Cairo has many people."),
    ("It rained.", "The ground is dry and the sky has been clear for the whole of the last week."),
]


def load_bench(name: str = "bench_throughput"):
    """scripts/<name>.py as a module (registered first: its dataclasses look it up)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture
def batch_items(tiny_tokenizer):
    examples = [Example(text_a=a, text_b=b, label=i % 2, origin=f"pair {i}") for i, (a, b) in enumerate(PAIRS)]
    return tokenize(examples, tiny_tokenizer, max_seq_len=32)


def eval_model(attn: str = "sdpa", seed: int = 0) -> MultiTaskModel:
    """A tiny random BERT with the rte head; the same weights for the same seed."""
    torch.manual_seed(seed)
    encoder = load_encoder("tiny", VOCAB_SIZE, attn, tiny_hidden_size=32, tiny_layers=2, tiny_heads=2)
    return MultiTaskModel(encoder, {"rte": SPEC}).eval()  # eval: dropout off, so outputs are deterministic


def pad_to(batch: Batch, length: int, pad_id: int) -> Batch:
    """The same batch padded to `length` (what padding every batch to max_seq_len would give)."""
    extra = length - batch.input_ids.shape[1]
    return Batch(
        task=batch.task,
        input_ids=F.pad(batch.input_ids, (0, extra), value=pad_id),
        attention_mask=F.pad(batch.attention_mask, (0, extra), value=0),
        token_type_ids=F.pad(batch.token_type_ids, (0, extra), value=0),
        labels=batch.labels,
    )


def per_example_loss(model, batch: Batch) -> torch.Tensor:
    with torch.no_grad():
        return F.cross_entropy(task_output(model, batch), batch.labels, reduction="none")


# --------------------------------------------------------------------------- existing speed-ups


def test_dynamic_padding_gives_the_loss_of_max_length_padding(batch_items, tiny_tokenizer):
    model = eval_model()
    dynamic = collate("rte", batch_items, tiny_tokenizer.pad_token_id)  # padded to its longest row only
    assert dynamic.input_ids.shape[1] < 128
    full = pad_to(dynamic, 128, tiny_tokenizer.pad_token_id)
    torch.testing.assert_close(per_example_loss(model, dynamic), per_example_loss(model, full), atol=1e-5, rtol=0)


def test_an_examples_loss_does_not_depend_on_its_batch_neighbours(batch_items, tiny_tokenizer):
    """group_by_length only changes which examples share a batch (so how much they are padded)."""
    model = eval_model()
    together = per_example_loss(model, collate("rte", batch_items, tiny_tokenizer.pad_token_id))
    alone = torch.cat([per_example_loss(model, collate("rte", [item], tiny_tokenizer.pad_token_id)) for item in batch_items])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_sdpa_and_eager_attention_give_the_same_loss_and_gradient(batch_items, tiny_tokenizer):
    sdpa, eager = eval_model("sdpa"), eval_model("eager")
    eager.load_state_dict(sdpa.state_dict())
    batch = collate("rte", batch_items, tiny_tokenizer.pad_token_id)  # with padding: the mask path is exercised
    losses = []
    for model in (sdpa, eager):
        loss = F.cross_entropy(task_output(model, batch), batch.labels)
        loss.backward()
        losses.append(loss.detach())
    assert abs(losses[0] - losses[1]) < 1e-5
    for p, q in zip(sdpa.parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4)


def test_the_shared_clean_forward_gives_the_gradient_of_two_separate_ones(batch_items, tiny_tokenizer):
    """The loop runs f(x) once for the task loss and Rs; a second clean forward for Rs changes nothing."""
    batch = collate("rte", batch_items, tiny_tokenizer.pad_token_id)
    cfg = SmartConfig(steps=1, epsilon=1e-3)
    mask = token_mask(batch.attention_mask, torch.float32)
    grads = []
    for shared in (True, False):
        model = eval_model()
        forward = output_fn(model, batch)
        embeds = model.word_embeddings(batch.input_ids)
        clean = forward(embeds)
        smart_embeds = embeds if shared else model.word_embeddings(batch.input_ids)
        smart_clean = clean if shared else forward(smart_embeds)
        rs = smart_regularizer(forward, smart_embeds, smart_clean, mask, cfg=cfg, inner_div=symmetric_kl,
                               outer_div=symmetric_kl, generator=torch.Generator().manual_seed(3))
        (F.cross_entropy(clean, batch.labels) + rs.loss).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_the_teachers_no_grad_forward_gives_the_gradient_of_a_detached_one(batch_items, tiny_tokenizer):
    batch = collate("rte", batch_items, tiny_tokenizer.pad_token_id)
    model = eval_model()
    bregman = BregmanProximal(torch.optim.SGD(model.parameters(), lr=0.1), model, BregmanConfig(mu=1.0), 10)
    with torch.no_grad():  # move θ̃ away from θ so the term is not zero
        for p in bregman.teacher.parameters():
            p.add_(0.01 * torch.randn_like(p))
    bregman.term(model, batch, task_output(model, batch)).loss.backward()
    fast = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    target = task_output(bregman.teacher, batch).detach()  # with the autograd machinery on
    symmetric_kl(task_output(model, batch), target).backward()
    for a, p in zip(fast, model.parameters()):
        torch.testing.assert_close(a, p.grad, atol=1e-7, rtol=1e-6)


def test_inference_mode_evaluation_gives_the_no_grad_outputs(batch_items, tiny_tokenizer):
    model = eval_model()
    batch = collate("rte", batch_items, tiny_tokenizer.pad_token_id)
    with torch.inference_mode():
        fast = task_output(model, batch)
    with torch.no_grad():
        slow = task_output(model, batch)
    assert torch.equal(fast, slow)


# --------------------------------------------------------------------------- fused AdamW


def per_tensor_adamw(model, cfg) -> torch.optim.AdamW:
    """The reference: AdamW written out from the config, decay on matrices only, in torch's per-tensor
    Python loop (its CPU default, and build_optimizer before fused=True)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.train.lr, eps=cfg.train.adam_eps, foreach=False, fused=False)


def assert_same_groups(a: torch.optim.AdamW, b: torch.optim.AdamW) -> None:
    assert len(a.param_groups) == len(b.param_groups)
    for group_a, group_b in zip(a.param_groups, b.param_groups):
        assert [id(p) for p in group_a["params"]] == [id(p) for p in group_b["params"]]
        for key in ("lr", "eps", "weight_decay", "betas", "amsgrad", "maximize"):
            assert group_a[key] == group_b[key], key


def test_build_optimizer_is_fused_adamw_with_the_reference_groups():
    cfg = load_config(None, ["train.lr=1e-3", "train.weight_decay=0.1"])
    model = eval_model()
    built = build_optimizer(model, cfg)
    assert isinstance(built, torch.optim.AdamW) and all(group["fused"] for group in built.param_groups)
    assert_same_groups(built, per_tensor_adamw(model, cfg))
    assert [g["weight_decay"] for g in built.param_groups] == [0.1, 0.0]


def test_build_optimizer_takes_the_steps_of_per_tensor_adamw(batch_items, tiny_tokenizer):
    """After 3 steps the weights agree to float rounding."""
    cfg = load_config(None, ["train.lr=1e-3", "train.weight_decay=0.1"])
    batch = collate("rte", batch_items, tiny_tokenizer.pad_token_id)
    models = [eval_model(), eval_model()]
    initial = [p.clone() for p in models[0].parameters()]
    optimizers = [per_tensor_adamw(models[0], cfg), build_optimizer(models[1], cfg)]
    for _ in range(3):
        for model, optimizer in zip(models, optimizers):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(task_output(model, batch), batch.labels).backward()
            optimizer.step()
    for p, q in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
    assert all(not torch.equal(p, q) for p, q in zip(initial, models[0].parameters()) if p.dim() >= 2)  # it trained


def test_a_checkpoint_of_the_unfused_optimizer_resumes_into_build_optimizer(batch_items, tiny_tokenizer):
    """Runs saved before build_optimizer was fused still resume: same state_dict layout, same next step.

    (torch restores each group's flags from the checkpoint, so such a resumed run steps unfused.)"""
    cfg = load_config(None, ["train.lr=1e-3"])
    batch = collate("rte", batch_items, tiny_tokenizer.pad_token_id)
    models = [eval_model(), eval_model()]
    before = per_tensor_adamw(models[0], cfg)
    F.cross_entropy(task_output(models[0], batch), batch.labels).backward()
    before.step()
    models[1].load_state_dict(models[0].state_dict())
    after = build_optimizer(models[1], cfg)
    # A copy, as from disk: a live state_dict shares its moment tensors with `before`.
    after.load_state_dict(copy.deepcopy(before.state_dict()))
    for model, optimizer in zip(models, (before, after)):  # one more step on each side
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(task_output(model, batch), batch.labels).backward()
        optimizer.step()
    for p, q in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def test_the_benchmarks_unfused_adamw_is_build_optimizer_unfused():
    """scripts/bench_adamw.py times the reference: build_optimizer's groups, per-tensor loop."""
    cfg = load_config(None, ["train.lr=1e-3", "train.weight_decay=0.1", "train.adam_eps=1e-7"])
    model = eval_model()
    swapped = load_bench("bench_adamw").unfused(build_optimizer(model, cfg))
    assert all(not group["fused"] and group["foreach"] is False for group in swapped.param_groups)
    assert_same_groups(swapped, per_tensor_adamw(model, cfg))


# --------------------------------------------------------------------------- the benchmark itself


def test_step_clock_times_only_the_steps_after_the_warm_up():
    bench = load_bench("bench_common")
    clock = bench.StepClock(warmup=2)
    for n, (length, end) in enumerate([(10, 1.0), (20, 3.0), (30, 4.0), (40, 6.5), (50, 7.5)]):
        clock.batch(torch.zeros(n + 1, length, dtype=torch.long))
        clock.ends.append(end)
        clock.cpu_ends.append(end / 2)  # a process that had half the core
    m = clock.measurement()
    # steps 3..5: 3 + 4 + 5 examples, 3·30 + 4·40 + 5·50 tokens, from t = 3.0 to 7.5 (CPU 1.5 to 3.75)
    assert (m.steps, m.examples, m.tokens, m.wall_seconds, m.cpu_seconds) == (3, 12, 500, 4.5, 2.25)
    assert m.cpu_clock and m.seconds == 2.25  # CPU time unless --wall
    rows = [{"examples": n + 1, "tokens": (n + 1) * length, "wall_s": end, "cpu_s": end / 2}
            for n, (length, end) in enumerate([(10, 1.0), (20, 3.0), (30, 4.0), (40, 6.5), (50, 7.5)])]
    assert bench.StepClock.from_rows(rows, warmup=2, cpu_clock=True).measurement() == m  # step_times.tsv rows
    assert m.examples_per_s == pytest.approx(12 / 2.25) and m.wall_examples_per_s == pytest.approx(12 / 4.5)
    assert m.seconds_per_step == pytest.approx(0.75) and m.tokens_per_example == pytest.approx(500 / 12)


@pytest.fixture
def small_rte(data_root, tmp_path) -> Path:
    """The first rows of RTE (copied to tmp_path, never into the repo)."""
    rte = tmp_path / "glue" / "RTE"
    rte.mkdir(parents=True)
    for split, rows in (("train", 25), ("dev", 5)):
        lines = (data_root / "glue" / "RTE" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()[: rows + 1]
        (rte / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path


def run_script(name: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, str(SCRIPTS / name), "--quick", *args], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_bench_quick_runs_and_prints_every_figure(small_rte):
    stdout = run_script("bench_throughput.py", "--data", str(small_rte))
    bench = load_bench()
    has_trainer, has_smart = bench.peers_available()
    expected = ["mtsmart plain", "mtsmart plain, random batches", "mtsmart SMART", "mtsmart full SMART",
                "mtsmart plain / mtsmart full SMART", "target <= 3.2"]
    if has_trainer:
        expected += ["Trainer, group_by_length", "mtsmart plain / Trainer"]
    if has_trainer and has_smart:
        expected += ["mtsmart SMART / Trainer + SMARTLoss"]
    for text in expected:
        assert text in stdout, f"{text!r} missing from:\n{stdout}"
    medians = stdout.split("medians over rounds")[1].split("ratios")[0]
    rates = [float(line.split()[-6]) for line in medians.strip().splitlines()[2:]]  # after the two header lines
    assert len(rates) >= 6 and all(r > 0 for r in rates)
    assert "proposed" not in stdout


def test_bench_scaling_and_adamw_quick_print_their_figures(small_rte):
    scaling = run_script("bench_scaling.py", "--data", str(small_rte))
    assert "against shape" in scaling and "2 x 16" in scaling and "2 x 32" in scaling
    row = [line for line in scaling.splitlines() if "2 x 32" in line][0].split()
    assert float(row[3]) > 0 and float(row[4]) > 0  # plain s, SMART s
    adamw = run_script("bench_adamw.py", "--repeats", "3")
    assert "fused AdamW" in adamw and "per-tensor / fused" in adamw


def test_the_loop_records_its_own_step_times(tmp_path, train_tiny):
    """train.record_step_times: one row per optimizer step, its examples and padded tokens, clocks that only move on."""
    from mtsmart.components.step_times import read_step_times

    train_tiny(tmp_path / "run", "tasks=[rte]", "train.max_steps=5", "train.batch_size=4", "train.record_step_times=true")
    rows = read_step_times(tmp_path / "run" / "step_times.tsv")
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5]
    assert all(row["examples"] == 4 and row["tokens"] % 4 == 0 and row["tokens"] >= 4 for row in rows)
    for clock in ("wall_s", "cpu_s"):
        assert all(a[clock] <= b[clock] for a, b in zip(rows, rows[1:]))


def test_profile_precision_quick_prints_both_precisions():
    out = run_script("profile_precision.py", "--warmup", "1", "--repeats", "1", "--top", "5")
    rows = out.split("fp32/bf16")[1].strip().splitlines()
    assert len(rows) == 6 and rows[-1].split()[:2] == ["all", "operators"]
    assert float(rows[-1].split()[2]) > 0 and float(rows[-1].split()[3]) > 0  # total ms in fp32 and bf16


def test_bench_mfu_quick_prints_the_fraction_of_the_gemm_rate_for_both_masks():
    out = run_script("bench_mfu.py", "--repeats", "1", "--threads", "1")
    rows = [line.split() for line in out.split("MFU")[1].strip().splitlines() if line.split()[:1] == ["1"]]
    # threads, precision, masks, step (two words for SMART K=1), seconds, GFLOP/s, GEMM GFLOP/s, MFU
    assert {(row[1], row[2]) for row in rows} == {(p, m) for p in ("fp32", "bf16") for m in ("torch", "packed")}
    assert len(rows) == 8 and all(float(row[-4]) > 0 and row[-1].endswith("%") for row in rows)
    assert "packed / torch masks step time, 1 thread(s), bf16" in out and "bf16 speed-up over fp32" in out


def test_check_mask_distribution_quick_prints_means_spreads_and_the_ratio():
    out = run_script("check_mask_distribution.py", "--forwards", "20")
    rows = [line.split() for line in out.splitlines() if line.split()[:1] and line.split()[0].isdigit()]
    assert len(rows) == 8 and all(len(row) == 6 for row in rows)
    assert float(out.split("variance ratio packed / torch (mean over examples):")[1]) > 0
