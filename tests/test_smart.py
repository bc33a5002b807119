"""SMART's Rs (mtsmart/arithmetic/smart.py) against hand-computed formulas and a naive Algorithm 1."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mtsmart.tasks.batch import Batch
from mtsmart.arithmetic.divergence import MASKED_SCORE, squared_error, symmetric_kl
from mtsmart.model.multitask import MultiTaskModel, load_encoder, output_fn, task_output
from mtsmart.arithmetic.perturbation import token_mask, unit_norm
from mtsmart.regularisers.smart_method import SmartRegularizer
from mtsmart.regularisers.smart_method import divergences_for
from mtsmart.arithmetic.smart import smart_regularizer
from mtsmart.options.smart import SmartConfig
from mtsmart.tasks.types import TASK_TYPES
from mtsmart.tasks.spec import TaskSpec

REPO = Path(__file__).resolve().parents[1]
SPECS = {
    "cls": TaskSpec(name="cls", type="classification", metrics=("accuracy",), labels=("a", "b", "c")),
    "reg": TaskSpec(name="reg", type="regression", metrics=("pearson",)),
    "rank": TaskSpec(name="rank", type="ranking", metrics=("acc_at_1",), labels=("yes", "no"), positive_label="yes"),
}
TYPE_OF = {name: TASK_TYPES[spec.type] for name, spec in SPECS.items()}
VOCAB = 50


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine the thread
    # pool's spinning makes each tiny forward 30× slower; restored after this module.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(seed: int = 0) -> MultiTaskModel:
    torch.manual_seed(seed)
    encoder = load_encoder("tiny", VOCAB, tiny_hidden_size=32, tiny_layers=2, tiny_heads=2)
    return MultiTaskModel(encoder, SPECS).eval()  # eval: no dropout, so every forward is deterministic


def _batch(task: str, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    if task == "rank":  # 2 groups × 3 slots, the last slot of group 2 absent: 5 sequences
        slots, cand_mask = torch.tensor([0, 1, 2, 3, 4]), torch.tensor([[True, True, True], [True, True, False]])
        n, labels = 5, torch.tensor([0, 1])
    else:
        slots = cand_mask = None
        n = 4
        labels = torch.tensor([0, 2, 1, 0]) if task == "cls" else torch.tensor([0.5, 1.0, 2.0, 4.0])
    ids = torch.randint(1, VOCAB, (n, 7), generator=gen)
    attention = torch.ones(n, 7, dtype=torch.long)
    attention[1, 4:] = 0  # padding in two sequences
    attention[2, 6:] = 0
    ids = ids * attention
    return Batch(task=task, input_ids=ids, attention_mask=attention, labels=labels,
                 candidate_slots=slots, candidate_mask=cand_mask)


class Spy:
    """forward wrapper that records every input it is given and counts calls."""

    def __init__(self, forward):
        self.forward, self.inputs = forward, []

    def __call__(self, embeds):
        self.inputs.append(embeds.detach().clone())
        return self.forward(embeds)


def _setup(task: str, seed: int = 0):
    model, batch = _model(seed), _batch(task, seed)
    embeds = model.word_embeddings(batch.input_ids)
    clean = task_output(model, batch, inputs_embeds=embeds)
    return model, batch, embeds, clean, token_mask(batch.attention_mask, embeds.dtype)


def _run(task: str, cfg: SmartConfig, seed: int = 0, gen_seed: int = 0):
    model, batch, embeds, clean, mask = _setup(task, seed)
    spy = Spy(output_fn(model, batch))
    inner, outer = divergences_for(cfg, TYPE_OF[task])
    result = smart_regularizer(spy, embeds, clean, mask, cfg=cfg, inner_div=inner, outer_div=outer,
                               generator=torch.Generator().manual_seed(gen_seed))
    return result, spy, embeds.detach(), mask, (model, batch, clean)


def _sym_kl_by_hand(a: torch.Tensor, b: torch.Tensor) -> float:
    """KL(P‖Q) + KL(Q‖P) in float64 numpy, averaged over rows."""
    a, b = a.detach().double().numpy(), b.detach().double().numpy()
    p = np.exp(a - a.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
    q = np.exp(b - b.max(-1, keepdims=True)); q /= q.sum(-1, keepdims=True)
    kl_pq = (p * np.log(p / q)).sum(-1)
    kl_qp = (q * np.log(q / p)).sum(-1)
    return float((kl_pq + kl_qp).mean())


# --------------------------------------------------------------------------- ℓs


def test_symmetric_kl_equals_both_kls_by_hand():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 4, generator=gen) * 3, torch.randn(6, 4, generator=gen) * 3
    assert math.isclose(float(symmetric_kl(a, b)), _sym_kl_by_hand(a, b), rel_tol=1e-5)


def test_symmetric_kl_is_finite_for_extreme_logits():
    a = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]])
    b = torch.tensor([[-1e4, 1e4, 0.0], [1e4, -1e4, 1e4]])
    value = symmetric_kl(a, b)
    assert torch.isfinite(value)
    # Row 1: P ≈ e1, Q ≈ e2, so Σ (p − q)(log p − log q) ≈ 2 · 2e4; row 2: P ≈ (0, ½, ½), Q ≈ (½, 0, ½).
    assert float(value) == pytest.approx((4e4 + 2e4) / 2, rel=1e-3)


# --------------------------------------------------------------------------- config and divergence choice


@pytest.mark.parametrize("key,value", [("weight", -1.0), ("steps", -1), ("epsilon", float("nan")), ("norm", "l3"),
                                       ("level", "word"), ("update", "mtdnn"), ("inner_div", "js")])
def test_config_rejects_bad_values_naming_the_key(key, value):
    with pytest.raises(ValueError, match=f"smart.{key}"):
        SmartConfig(**{key: value})


def test_config_rejects_relative_epsilon_with_the_reference_rule():
    with pytest.raises(ValueError, match="smart.epsilon_relative"):
        SmartConfig(update="reference", epsilon_relative=True)


def test_auto_divergence_follows_the_task_type():
    cfg = SmartConfig()
    assert divergences_for(cfg, TASK_TYPES["classification"]) == (symmetric_kl, symmetric_kl)
    assert divergences_for(cfg, TASK_TYPES["ranking"]) == (symmetric_kl, symmetric_kl)
    assert divergences_for(cfg, TASK_TYPES["regression"]) == (squared_error, squared_error)


def test_divergences_that_do_not_fit_the_outputs_are_refused():
    with pytest.raises(ValueError, match="smart.inner_div=kl.*regression"):
        divergences_for(SmartConfig(inner_div="kl"), TASK_TYPES["regression"])
    with pytest.raises(ValueError, match="smart.outer_div=mse.*classification"):
        divergences_for(SmartConfig(outer_div="mse"), TASK_TYPES["classification"])
    with pytest.raises(ValueError, match="smart.inner_div"):
        SmartRegularizer(SmartConfig(inner_div="stable_kl")).check_task_types([TASK_TYPES["classification"], TASK_TYPES["regression"]])


# --------------------------------------------------------------------------- Algorithm 1


def test_one_ascent_step_increases_the_divergence_over_the_initial_noise():
    # Same noise ν (same generator seed); K = 0 measures ℓs at x + ν, K = 1 after one step.
    cfg = dict(init_scale=1e-3, epsilon=0.5, step_size=0.1)
    at_noise, *_ = _run("cls", SmartConfig(steps=0, **cfg))
    after_step, *_ = _run("cls", SmartConfig(steps=1, **cfg))
    assert at_noise.rs > 0
    assert after_step.rs > 10 * at_noise.rs


@pytest.mark.parametrize("norm", ["inf", "l2", "l1"])
@pytest.mark.parametrize("level", ["token", "example"])
@pytest.mark.parametrize("relative", [False, True])
@pytest.mark.parametrize("steps", [0, 1, 2])
def test_perturbation_stays_in_the_ball_and_off_padding(norm, level, relative, steps):
    epsilon = 0.05 if relative else 1e-3
    cfg = SmartConfig(norm=norm, level=level, epsilon_relative=relative, steps=steps, epsilon=epsilon,
                      init_scale=1e-2, step_size=0.1)  # σ and η large enough that the projection binds
    result, spy, x, mask, _ = _run("cls", cfg)
    assert len(spy.inputs) == steps + 1  # K ascent forwards + 1 outer forward, no extra clean forward
    delta = spy.inputs[-1] - x
    assert torch.all(delta[(mask == 0).expand_as(delta)] == 0)
    radius = epsilon * unit_norm(x * mask, norm, level) if relative else torch.tensor(epsilon)
    norms = unit_norm(delta, norm, level)
    slack = 1e-3 if norm == "l1" else 1e-5  # float32 rounding of x + δ − x (and of the l1 threshold)
    assert torch.all(norms <= radius * (1 + slack) + 1e-7)
    assert result.delta_norm <= float(radius.max()) * (1 + slack)
    assert result.delta_norm > 0.5 * float(radius.min()) if not relative else result.delta_norm > 0


def test_reference_rule_gives_unit_norm_whatever_epsilon_and_paper_rule_respects_it():
    # ‖ν + η g‖∞ ≈ 3e-5 per token here, so the guard ε barely matters once it is well below that
    # (the public code's default ε is 1e-6; its test_reference_rule_matches_its_formula covers ε = 1e-5).
    for epsilon in (1e-12, 1e-9, 1e-7):
        reference, spy, x, mask, _ = _run("cls", SmartConfig(update="reference", guard=epsilon))
        norms = unit_norm(spy.inputs[-1] - x, "inf", "token")[mask.bool()]
        assert torch.allclose(norms, torch.ones_like(norms), atol=0.01)  # ε is only a denominator guard
        assert reference.delta_norm == pytest.approx(1.0, abs=0.01)
        paper, *_ = _run("cls", SmartConfig(update="paper", epsilon=epsilon))
        assert paper.delta_norm <= epsilon * (1 + 1e-5)


def test_reference_rule_matches_its_formula():
    # δ₁ = (ν + η g) / (‖ν + η g‖∞ + ε) per token, g the ascent gradient at ν.
    cfg = SmartConfig(update="reference", guard=1e-5, init_scale=1e-5, step_size=1e-3)
    _, spy, x, mask, (model, batch, clean) = _run("cls", cfg)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)) * 1e-5 * mask
    noise.requires_grad_()
    (g,) = torch.autograd.grad(symmetric_kl(output_fn(model, batch)(x + noise), clean.detach()), noise)
    v = (noise.detach() + 1e-3 * g) * mask
    expected = v / (v.abs().amax(-1, keepdim=True) + 1e-5)
    assert torch.allclose(spy.inputs[-1] - x, expected, atol=1e-6)


def _naive_smart_delta(f, x, clean, mask, gen, sigma, eta, eps, steps):
    """Algorithm 1 written out (inf norm, token level): the independent reference."""
    delta = torch.randn(x.shape, generator=gen, dtype=x.dtype) * sigma * mask
    for _ in range(steps):
        delta = delta.detach().requires_grad_()
        perturbed = f(x + delta).double()
        p, q = torch.softmax(perturbed, -1), torch.softmax(clean.detach().double(), -1)
        loss = ((p - q) * (p.log() - q.log())).sum(-1).mean()
        (g,) = torch.autograd.grad(loss, delta)
        g_tilde = g / g.abs().amax(-1, keepdim=True).clamp(min=1e-30)
        delta = torch.clamp(delta.detach() + eta * g_tilde, -eps, eps) * mask
    return delta.detach()


@pytest.mark.parametrize("steps", [1, 2])
def test_parameter_gradient_equals_the_gradient_of_ls_at_fixed_adversarial_input(steps):
    sigma, eta, eps, weight = 1e-3, 4e-2, 3e-2, 3.0
    model, batch, embeds, clean, mask = _setup("cls")
    cfg = SmartConfig(weight=weight, steps=steps, init_scale=sigma, step_size=eta, epsilon=eps)
    result = smart_regularizer(output_fn(model, batch), embeds, clean, mask, cfg=cfg, inner_div=symmetric_kl,
                               outer_div=symmetric_kl, generator=torch.Generator().manual_seed(5))
    params = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad(result.loss, params, allow_unused=True, retain_graph=True)

    f = output_fn(model, batch)
    delta = _naive_smart_delta(f, embeds.detach(), clean, mask, torch.Generator().manual_seed(5), sigma, eta, eps, steps)
    perturbed = f(embeds + delta)  # x̃ = x + δ with δ fixed; both sides in the graph of θ
    p, q = torch.softmax(perturbed.double(), -1), torch.softmax(clean.double(), -1)
    expected_rs = ((p - q) * (p.log() - q.log())).sum(-1).mean()
    expected = torch.autograd.grad(weight * expected_rs, params, allow_unused=True)

    assert result.rs == pytest.approx(float(expected_rs.detach()), rel=1e-4)
    assert result.delta_norm == pytest.approx(eps, rel=1e-5)  # the inf-ball binds at this η
    checked = 0
    for a, b in zip(got, expected):
        if b is None or a is None:
            assert a is None and (b is None or torch.all(b == 0))
            continue
        assert torch.allclose(a.double(), b.double(), rtol=1e-3, atol=1e-9 + 1e-3 * float(b.abs().max()))
        checked += 1
    assert checked > 10


def test_gradient_flows_through_both_sides_of_the_outer_term():
    model, batch, embeds, clean, mask = _setup("cls")
    result = smart_regularizer(output_fn(model, batch), embeds, clean, mask, cfg=SmartConfig(epsilon=1e-2),
                               inner_div=symmetric_kl, outer_div=symmetric_kl)
    (g_clean, g_embeds) = torch.autograd.grad(result.loss, [clean, embeds])
    assert g_clean.abs().sum() > 0 and g_embeds.abs().sum() > 0


# --------------------------------------------------------------------------- output shapes by task type


def test_regression_compares_scores_of_shape_b():
    result, spy, x, _, (model, batch, clean) = _run("reg", SmartConfig(epsilon=1e-2, step_size=1e-2))
    perturbed = output_fn(model, batch)(spy.inputs[-1])
    assert clean.shape == perturbed.shape == (4,)
    by_hand = float(((perturbed.double() - clean.double()) ** 2).sum().detach() / 4)  # not a 4×4 broadcast
    assert result.rs == pytest.approx(by_hand, rel=1e-4)
    assert result.rs > 0


def test_ranking_compares_grouped_outputs_on_both_sides():
    result, spy, x, _, (model, batch, clean) = _run("rank", SmartConfig(epsilon=1e-2, step_size=1e-2))
    perturbed = output_fn(model, batch)(spy.inputs[-1])
    assert clean.shape == perturbed.shape == (2, 3)
    assert float(clean[1, 2].detach()) == MASKED_SCORE == float(perturbed[1, 2].detach())
    # Group 1 over its 3 candidates, group 2 over its 2 real ones; absent slots contribute 0.
    by_hand = (_sym_kl_by_hand(perturbed[:1], clean[:1]) + _sym_kl_by_hand(perturbed[1:, :2], clean[1:, :2])) / 2
    assert math.isfinite(result.rs) and result.rs > 0
    assert result.rs == pytest.approx(by_hand, rel=1e-3)


# --------------------------------------------------------------------------- the object the loop calls


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_weight_zero_gives_plain_fine_tuning_gradients_and_runs_nothing():
    model, batch, embeds, clean, _ = _setup("cls")
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    loss = torch.nn.functional.cross_entropy(clean, batch.labels)
    loss.backward(retain_graph=True)
    plain = _grads(model)
    model.zero_grad(set_to_none=True)

    result = SmartRegularizer(SmartConfig(weight=0.0)).regularize(model, batch, embeds, clean, TASK_TYPES["classification"])
    assert calls == [] and not result.loss.requires_grad and result.rs == 0.0
    (loss + result.loss).backward()
    with_zero = _grads(model)
    assert plain.keys() == with_zero.keys()
    assert all(torch.equal(plain[n], with_zero[n]) for n in plain)


def test_ascent_populates_no_parameter_grad():
    model, batch, embeds, clean, _ = _setup("cls")
    result = SmartRegularizer(SmartConfig(steps=2)).regularize(model, batch, embeds, clean, TASK_TYPES["classification"])
    assert all(p.grad is None for p in model.parameters())
    result.loss.backward()
    assert model.encoder.get_input_embeddings().weight.grad is not None


def test_the_object_gives_the_pure_functions_values_and_gradients():
    """SmartRegularizer only picks divergences and builds f and the mask: with the same noise its
    term, norms and parameter gradients are those of smart_regularizer, bit for bit."""
    model, batch, embeds, clean, mask = _setup("cls")
    cfg = SmartConfig(steps=2, init_scale=1e-3, step_size=4e-2, epsilon=3e-2)
    torch.manual_seed(7)
    got = SmartRegularizer(cfg).regularize(model, batch, embeds, clean, TASK_TYPES["classification"])
    params = [p for p in model.parameters() if p.requires_grad]
    got_grads = torch.autograd.grad(got.loss, params, allow_unused=True, retain_graph=True)

    torch.manual_seed(7)
    expected = smart_regularizer(output_fn(model, batch), embeds, clean, mask, cfg=cfg,
                                 inner_div=symmetric_kl, outer_div=symmetric_kl)
    expected_grads = torch.autograd.grad(expected.loss, params, allow_unused=True)
    assert got.rs == expected.rs and got.delta_norm == expected.delta_norm
    for a, b in zip(got_grads, expected_grads):
        assert (a is None and b is None) or torch.equal(a, b)


def test_non_finite_embeddings_are_skipped_and_counted_and_strict_raises():
    model, batch, embeds, clean, _ = _setup("cls")
    embeds = embeds.clone()
    embeds.data[0, 1, 3] = float("nan")
    smart = SmartRegularizer(SmartConfig())
    result = smart.regularize(model, batch, embeds, clean, TASK_TYPES["classification"])
    assert result.skipped and result.rs == 0.0 and float(result.loss) == 0.0 and not result.loss.requires_grad
    assert isinstance(result.loss, torch.Tensor)
    assert smart.state_dict() == {"calls_total": 1, "skipped_total": 1}
    with pytest.raises(FloatingPointError, match="smart.strict"):
        SmartRegularizer(SmartConfig(strict=True)).regularize(model, batch, embeds, clean, TASK_TYPES["classification"])


def test_counters_round_trip_through_state_dict():
    model, batch, embeds, clean, _ = _setup("cls")
    smart = SmartRegularizer(SmartConfig())
    smart.regularize(model, batch, embeds, clean, TASK_TYPES["classification"])
    restored = SmartRegularizer(SmartConfig())
    restored.load_state_dict(smart.state_dict())
    assert restored.state_dict() == {"calls_total": 1, "skipped_total": 0}


def test_works_under_autocast():
    model, batch = _model(), _batch("cls")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        embeds = model.word_embeddings(batch.input_ids)
        clean = task_output(model, batch, inputs_embeds=embeds)
        result = SmartRegularizer(SmartConfig(epsilon=1e-2)).regularize(model, batch, embeds, clean, TASK_TYPES["classification"])
    assert result.loss.dtype == torch.float32 and math.isfinite(result.rs) and not result.skipped
    result.loss.backward()


def test_reports_embedding_and_perturbation_scales():
    result, _, x, mask, _ = _run("cls", SmartConfig(norm="l2"))
    real = unit_norm(x, "l2", "token")[mask.bool()]
    assert result.embed_norm == pytest.approx(float(real.mean()), rel=1e-5)
    assert 0 < result.delta_norm <= 1e-5 * (1 + 1e-5)


# --------------------------------------------------------------------------- the benchmark script


def test_bench_step_quick_runs():
    # About 10-15 s alone on 2 cores (mostly importing torch and transformers); the timeout is
    # generous because the suite may share the machine with other jobs.
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_step.py"), "--quick"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 0, run.stderr
    for line in ("plain fine-tuning", "SMART K=1", "floor K=1", "SMART K=1 / floor K=1", "methods through the Objective"):
        assert line in run.stdout



def test_bench_step_quick_times_both_precisions_side_by_side():
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_step.py"), "--quick", "--only", "smart",
                          "--precision", "both"], capture_output=True, text=True, timeout=180, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert "bf16 speed-up over fp32" in run.stdout
    speedups = [line for line in run.stdout.split("bf16 speed-up over fp32")[1].splitlines()[1:] if line.strip().endswith("x)")]
    assert any(line.split()[0] == "plain" for line in speedups) and all(float(line.split()[-2].rstrip("x")) > 0 for line in speedups)
