"""SMART as its authors ran it (docs/method.md "Two readings"): the embedding-output input, the release update rule,
R-Drop and the teacher's two-phase schedule, each against a hand-written reference."""
from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel, DebertaV2Config, DebertaV2Model, ElectraConfig, ElectraModel
from transformers import RobertaConfig, RobertaModel

from mtsmart.arithmetic import rng
from mtsmart.regularisers.base import AdversarialContext, Terms
from mtsmart.regularisers.registry import build_adversary
from mtsmart.regularisers.smart_method import SmartRegularizer
from mtsmart.options.regularisers import RDropConfig
from mtsmart.tasks.batch import Batch
from mtsmart.regularisers.bregman import scheduled_beta
from mtsmart.options.bregman import BregmanConfig
from mtsmart.options.data import DataConfig
from mtsmart.data.loader import subsample
import torch.nn.functional as F

from mtsmart.arithmetic.divergence import squared_error, symmetric_kl, symmetric_kl_released
from mtsmart.model.multitask import MultiTaskModel, captured_embedding_output, embedding_output_fn, load_encoder, task_output
from mtsmart.arithmetic.perturbation import token_mask
from mtsmart.regularisers.smart_method import divergences_for
from mtsmart.arithmetic.smart import smart_regularizer
from mtsmart.options.smart import SmartConfig
from mtsmart.tasks.spec import TaskSpec
from mtsmart.tasks.types import TASK_TYPES

VOCAB = 60
SPECS = {
    "cls": TaskSpec(name="cls", type="classification", metrics=("accuracy",), labels=("a", "b", "c")),
    "reg": TaskSpec(name="reg", type="regression", metrics=("pearson",)),
}


def make_model(encoder=None, seed: int = 0) -> MultiTaskModel:
    torch.manual_seed(seed)
    encoder = encoder or load_encoder("tiny", VOCAB, "eager", tiny_hidden_size=16, tiny_layers=2, tiny_heads=2)
    return MultiTaskModel(encoder, SPECS)


def make_batch(task: str = "cls") -> Batch:
    gen = torch.Generator().manual_seed(1)
    attention = (torch.arange(7)[None, :] < torch.tensor([7, 5, 6, 3])[:, None]).long()
    ids = torch.randint(1, VOCAB, (4, 7), generator=gen) * attention
    labels = torch.tensor([0, 2, 1, 2]) if task == "cls" else torch.tensor([0.5, 3.0, 1.5, 4.0])
    return Batch(task=task, input_ids=ids, attention_mask=attention, labels=labels)


# --------------------------------------------------------------------------- smart.input=embedding_output


def by_hand_from_embedding_output(model: MultiTaskModel, batch: Batch, hidden: torch.Tensor) -> torch.Tensor:
    """BERT's layers and the head written out, starting from a given embedding output (eager attention)."""
    additive = (1.0 - batch.attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    for layer in model.encoder.encoder.layer:
        hidden = layer(hidden, attention_mask=additive)
    return model.heads[batch.task](hidden[:, 0])


@pytest.mark.parametrize("task", ["cls", "reg"])
def test_perturbed_embedding_output_forward_equals_the_layers_by_hand(task):
    model, batch = make_model().eval(), make_batch(task)
    h = model.encoder.embeddings(input_ids=batch.input_ids)  # word + position + type, LayerNorm
    delta = torch.randn(h.shape, generator=torch.Generator().manual_seed(2)) * 0.3
    delta = delta * token_mask(batch.attention_mask, h.dtype)
    actual = embedding_output_fn(model, batch)(h + delta)
    raw = by_hand_from_embedding_output(model, batch, h + delta)
    expected = TASK_TYPES[SPECS[task].type].task_output(raw, batch)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(actual, embedding_output_fn(model, batch)(h))  # δ does reach the output


def test_the_captured_embedding_output_is_the_modules_output_inside_the_graph():
    model, batch = make_model().eval(), make_batch()
    with captured_embedding_output(model) as captured:
        task_output(model, batch)
    assert len(captured) == 1 and captured[0].requires_grad
    torch.testing.assert_close(captured[0], model.encoder.embeddings(input_ids=batch.input_ids))
    with captured_embedding_output(model) as after:  # the hook is gone after the block
        pass
    task_output(model, batch)
    assert after == []


def _tiny(config_cls, model_cls, **extra):
    config = config_cls(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, **extra)
    return model_cls(config)


ENCODERS = {
    "bert": lambda: _tiny(BertConfig, BertModel),
    "roberta": lambda: _tiny(RobertaConfig, RobertaModel, pad_token_id=0),
    "deberta_v2": lambda: _tiny(DebertaV2Config, DebertaV2Model, relative_attention=True, position_biased_input=False),
    "electra": lambda: _tiny(ElectraConfig, ElectraModel, embedding_size=8),  # with embeddings_project
}


@pytest.mark.parametrize("name", ENCODERS)
def test_every_encoder_family_runs_from_its_embedding_output(name):
    torch.manual_seed(0)
    model, batch = make_model(ENCODERS[name]()).eval(), make_batch()
    with captured_embedding_output(model) as captured:
        clean = task_output(model, batch)
    forward = embedding_output_fn(model, batch)
    torch.testing.assert_close(forward(captured[0]), clean)  # δ = 0 gives the clean output
    delta = torch.full_like(captured[0], 0.5) * token_mask(batch.attention_mask, captured[0].dtype)
    assert not torch.allclose(forward(captured[0] + delta), clean)


def test_smart_on_the_embedding_output_never_perturbs_padding():
    model, batch = make_model().eval(), make_batch()
    seen = []
    with captured_embedding_output(model) as captured:
        clean = task_output(model, batch)
    h = captured[0]
    forward = embedding_output_fn(model, batch)

    def spy(x):
        seen.append((x - h).detach())
        return forward(x)

    cfg = SmartConfig(input="embedding_output", update="release", guard=1e-6, step_size=1e-1, steps=2)
    inner, outer = divergences_for(cfg, TASK_TYPES["classification"])
    smart_regularizer(spy, h, clean, token_mask(batch.attention_mask, h.dtype), cfg=cfg, inner_div=inner, outer_div=outer)
    padding = batch.attention_mask == 0
    for delta in seen:
        assert torch.count_nonzero(delta[padding]) == 0
        assert torch.count_nonzero(delta[~padding]) > 0


# --------------------------------------------------------------------------- smart.update=release


@pytest.mark.parametrize("norm", ["inf", "l2"])
def test_release_update_is_eta_g_over_norm_of_g_without_noise_or_projection(norm):
    model, batch = make_model().eval(), make_batch()
    x = model.word_embeddings(batch.input_ids)
    clean = task_output(model, batch, inputs_embeds=x)
    mask = token_mask(batch.attention_mask, x.dtype)
    # ε only guards the division; tiny here, as the tiny model's gradients are themselves small.
    cfg = SmartConfig(update="release", norm=norm, step_size=1e-2, init_scale=1e-3, guard=1e-12, steps=1)
    inputs = []

    def spy(e):
        inputs.append(e.detach().clone())
        return task_output(model, batch, inputs_embeds=e)

    result = smart_regularizer(spy, x, clean, mask, cfg=cfg, inner_div=symmetric_kl, outer_div=symmetric_kl,
                               generator=torch.Generator().manual_seed(5))
    # By hand: ν ~ N(0, σ²), g = ∇_ν ℓ(f(x + ν), f(x)), δ = η g / (‖g‖ + ε) per token.
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5)) * 1e-3 * mask
    nu = noise.clone().requires_grad_()
    (g,) = torch.autograd.grad(symmetric_kl(task_output(model, batch, inputs_embeds=x.detach() + nu), clean.detach()), nu)
    g = g * mask
    g_norm = g.abs().amax(-1, keepdim=True) if norm == "inf" else g.pow(2).sum(-1, keepdim=True).sqrt()
    delta = 1e-2 * g / (g_norm + 1e-12)
    torch.testing.assert_close(inputs[-1] - x.detach(), delta, rtol=1e-4, atol=1e-9)
    real = mask.squeeze(-1).bool()
    unit = delta.abs().amax(-1) if norm == "inf" else delta.norm(dim=-1)
    assert torch.allclose(unit[real], torch.full_like(unit[real], 1e-2), rtol=1e-3)  # ‖δ‖ = η, not ε
    assert result.rs > 0


# --------------------------------------------------------------------------- the release's gradients, exactly


def test_released_symmetric_kl_has_the_value_of_the_symmetric_kl_and_cross_entropy_gradients():
    gen = torch.Generator().manual_seed(4)
    perturbed = (torch.randn(5, 3, generator=gen) * 2).requires_grad_()
    clean = (torch.randn(5, 3, generator=gen) * 2).requires_grad_()
    value = symmetric_kl_released(perturbed, clean)
    torch.testing.assert_close(value, symmetric_kl(perturbed, clean))
    value.backward()
    # By hand: KL(sg P̃ ‖ P) trains the clean logits with softmax(clean) − softmax(perturbed), per row / B,
    # and KL(sg P ‖ P̃) the perturbed ones with softmax(perturbed) − softmax(clean).
    p, q = clean.detach().softmax(-1), perturbed.detach().softmax(-1)
    torch.testing.assert_close(clean.grad, (p - q) / 5)
    torch.testing.assert_close(perturbed.grad, (q - p) / 5)
    full_p, full_q = clean.detach().clone().requires_grad_(), perturbed.detach().clone().requires_grad_()
    symmetric_kl(full_q, full_p).backward()
    assert not torch.allclose(full_p.grad, clean.grad, atol=1e-4)  # the paper's reading: another gradient


def released_rs_by_hand(model: MultiTaskModel, batch: Batch, steps: int, eta: float, sigma: float, guard: float,
                        noise_seed: int) -> torch.Tensor:
    """The released SMART arithmetic written out for a tiny BERT without dropout: the embedding module's output
    x, ν ~ N(0, σ²) (off padding, as mtsmart never perturbs padding), K steps accumulated at x + ν + Σ pushes,
    each push η·g/(‖g‖∞ + guard) per token, x̃ = x + Σ pushes detached, and the criterion
    KL(sg P̃ ‖ P) + KL(sg P ‖ P̃) (squared error for regression), each written with F.kl_div / F.mse_loss."""
    regression = SPECS[batch.task].type == "regression"
    mask = batch.attention_mask[:, :, None].float()
    x = model.encoder.embeddings(input_ids=batch.input_ids)

    def f(hidden: torch.Tensor) -> torch.Tensor:
        out = by_hand_from_embedding_output(model, batch, hidden)
        return out.squeeze(-1) if regression else out

    clean = f(x)
    torch.manual_seed(noise_seed)
    noise = torch.randn(x.shape) * sigma * mask
    pushed = torch.zeros_like(x)
    for _ in range(steps):
        point = (noise + pushed).requires_grad_()
        adv = f(x.detach() + point)
        if regression:
            inner = F.mse_loss(adv, clean.detach())
        else:
            inner = F.kl_div(F.log_softmax(adv, -1), F.softmax(clean.detach(), -1), reduction="batchmean") + \
                F.kl_div(F.log_softmax(clean.detach(), -1), F.softmax(adv, -1), reduction="batchmean")
        (g,) = torch.autograd.grad(inner, point)
        g = g * mask
        pushed = pushed + eta * g / (g.abs().amax(-1, keepdim=True) + guard)
    adv = f((x + pushed).detach())
    if regression:
        return F.mse_loss(adv, clean)
    return F.kl_div(F.log_softmax(clean, -1), F.softmax(adv.detach(), -1), reduction="batchmean") + \
        F.kl_div(F.log_softmax(adv, -1), F.softmax(clean.detach(), -1), reduction="batchmean")


def _grads(model: MultiTaskModel) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def _mtsmart_release_grads(task: str, steps: int, outer_gradient: str = "release") -> tuple[dict, float]:
    model, batch = make_model().eval(), make_batch(task)
    cfg = SmartConfig(input="embedding_output", update="release", outer_gradient=outer_gradient, steps=steps,
                      step_size=1e-1, init_scale=1e-2, guard=1e-6, weight=1.0)
    with captured_embedding_output(model) as captured:
        clean = task_output(model, batch)
    torch.manual_seed(9)
    result = SmartRegularizer(cfg).regularize(model, batch, captured[0], clean, TASK_TYPES[SPECS[task].type])
    result.loss.backward()
    return _grads(model), result.rs


@pytest.mark.parametrize("task", ["cls", "reg"])
@pytest.mark.parametrize("steps", [1, 2, 3])
def test_release_reading_gives_the_released_codes_gradient_of_every_parameter(task, steps):
    actual, rs = _mtsmart_release_grads(task, steps)
    model, batch = make_model().eval(), make_batch(task)
    expected_rs = released_rs_by_hand(model, batch, steps, eta=1e-1, sigma=1e-2, guard=1e-6, noise_seed=9)
    expected_rs.backward()
    expected = _grads(model)
    assert rs == pytest.approx(float(expected_rs.detach()), rel=1e-4) and rs > 0
    assert actual.keys() == expected.keys()
    for name in expected:  # float32 noise of two routes through the layers: 1e-4 of each tensor's scale
        scale = float(expected[name].abs().max())
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-3, atol=1e-4 * scale + 1e-7, msg=name)  # + 1e-7: tensors whose gradient is 0 in exact arithmetic


def test_the_papers_outer_gradient_differs_from_the_releases():
    """Through x̃ the paper's reading also trains the embedding module, and its KL gradient differs:
    both differences are thousands of times the float tolerance the test above allows."""
    release, _ = _mtsmart_release_grads("cls", 2)
    paper, _ = _mtsmart_release_grads("cls", 2, outer_gradient="paper")
    for name in ("encoder.embeddings.word_embeddings.weight", "heads.cls.proj.weight"):
        assert (release[name] - paper[name]).abs().max() > 0.1 * release[name].abs().max()


def test_release_accumulates_its_steps_and_drops_the_noise():
    """K = 2: the second gradient is taken at x + ν + push₁ and x̃ = x + push₁ + push₂ (not push₂ alone)."""
    model, batch = make_model().eval(), make_batch()
    x = model.word_embeddings(batch.input_ids)
    clean = task_output(model, batch, inputs_embeds=x)
    mask = token_mask(batch.attention_mask, x.dtype)
    cfg = SmartConfig(update="release", step_size=1e-1, init_scale=1e-2, guard=1e-9, steps=2)
    seen = []

    def spy(e):
        seen.append(e.detach() - x.detach())
        return task_output(model, batch, inputs_embeds=e)

    smart_regularizer(spy, x, clean, mask, cfg=cfg, inner_div=symmetric_kl, outer_div=symmetric_kl_released,
                      generator=torch.Generator().manual_seed(2))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2)) * 1e-2 * mask
    pushes = []
    for point in (noise, None):
        point = (noise + pushes[0]) if point is None else point
        p = point.clone().requires_grad_()
        (g,) = torch.autograd.grad(symmetric_kl(task_output(model, batch, inputs_embeds=x.detach() + p), clean.detach()), p)
        g = g * mask
        pushes.append(1e-1 * g / (g.abs().amax(-1, keepdim=True) + 1e-9))
    torch.testing.assert_close(seen[0], noise)
    torch.testing.assert_close(seen[1], noise + pushes[0], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(seen[2], pushes[0] + pushes[1], rtol=1e-4, atol=1e-7)
    assert not torch.allclose(seen[2], pushes[1], atol=1e-3)  # replacing δ at each step would give push₂ alone


def test_released_outer_gradient_is_refused_for_a_divergence_the_release_never_used():
    with pytest.raises(ValueError, match="smart.outer_gradient=release"):
        SmartConfig(outer_gradient="release", outer_div="kl")
    with pytest.raises(ValueError, match="smart.outer_gradient"):
        SmartConfig(outer_gradient="danskin")


def test_release_and_reference_refuse_a_relative_radius():
    for update in ("reference", "release"):
        with pytest.raises(ValueError, match="smart.epsilon_relative"):
            SmartConfig(update=update, epsilon_relative=True)


def test_unknown_input_is_refused_naming_the_key():
    with pytest.raises(ValueError, match="smart.input"):
        SmartConfig(input="hidden_states")


def test_smart_method_perturbs_what_smart_input_names():
    assert build_adversary(SmartConfig(), TASK_TYPES.values()).perturbs == "word_embeddings"
    method = build_adversary(SmartConfig(input="embedding_output"), TASK_TYPES.values())
    assert method.perturbs == "embedding_output"


def test_independent_dropout_on_the_embedding_output_shares_only_the_embedding_dropout_mask():
    """The released code's Rs with ε → 0 is the divergence of two dropout samples of the layers."""
    model, batch = make_model().train(), make_batch()
    cfg = dict(input="embedding_output", update="release", init_scale=0.0, step_size=0.0, guard=1e-6)
    values = {}
    for dropout in ("shared", "independent"):
        torch.manual_seed(3)
        state = rng.snapshot(torch.device("cpu"))
        with captured_embedding_output(model) as captured:
            clean = task_output(model, batch)
        regularizer = SmartRegularizer(SmartConfig(dropout=dropout, **cfg))
        values[dropout] = regularizer.regularize(model, batch, captured[0], clean, TASK_TYPES["classification"], clean_rng=state).rs
    assert values["shared"] == 0.0  # same masks, δ = 0: f(x̃) = f(x) exactly
    assert values["independent"] > 1e-4


# --------------------------------------------------------------------------- R-Drop


@pytest.mark.parametrize("task", ["cls", "reg"])
def test_rdrop_gradient_is_its_formula_with_two_dropout_samples(task):
    alpha = 0.7
    model, batch = make_model().train(), make_batch(task)
    task_type = TASK_TYPES[SPECS[task].type]

    torch.manual_seed(11)
    x = model.word_embeddings(batch.input_ids)
    first = task_output(model, batch, inputs_embeds=x)
    first_loss = task_type.loss(first, batch.labels)
    ctx = AdversarialContext(model=model, batch=batch, task_type=task_type, embeds=x,
                             mask=token_mask(batch.attention_mask, x.dtype), clean_output=first,
                             clean=Terms(task_loss=first_loss), backward=lambda terms: None)
    result = build_adversary(RDropConfig(alpha=alpha), TASK_TYPES.values())(ctx)
    assert result.terms.bregman is None
    (result.terms.task_loss + result.terms.regulariser).backward()
    actual = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    torch.manual_seed(11)  # the same two dropout samples, written out
    x = model.word_embeddings(batch.input_ids)
    f1 = task_output(model, batch, inputs_embeds=x)
    f2 = task_output(model, batch, inputs_embeds=x)
    if task == "cls":
        disagreement = 0.5 * symmetric_kl(f1, f2)  # (KL(P1‖P2) + KL(P2‖P1)) / 2
    else:
        disagreement = squared_error(f1, f2)
    loss = 0.5 * (task_type.loss(f1, batch.labels) + task_type.loss(f2, batch.labels)) + alpha * disagreement
    loss.backward()
    expected = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-7)
    assert result.scalars["loss"] == pytest.approx(float(disagreement.detach()), rel=1e-5)
    assert result.scalars["loss"] > 0  # dropout on: the two samples differ


def test_rdrop_needs_labels():
    model, batch = make_model().train(), make_batch()
    batch = Batch(task="cls", input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=None)
    x = model.word_embeddings(batch.input_ids)
    ctx = AdversarialContext(model=model, batch=batch, task_type=TASK_TYPES["classification"], embeds=x,
                             mask=token_mask(batch.attention_mask, x.dtype), clean_output=task_output(model, batch),
                             clean=Terms(), backward=lambda terms: None)
    with pytest.raises(ValueError, match="rdrop"):
        build_adversary(RDropConfig(), TASK_TYPES.values())(ctx)


# --------------------------------------------------------------------------- the teacher's schedule


def test_two_phase_schedule_with_the_authors_values():
    """β = 0.9 until the end of a 6% warm-up, then 0.99 (docs/method.md "Two readings"): ⌊0.06 · 200⌋ = 12 early updates."""
    cfg = BregmanConfig(beta=0.99, early_beta=0.9, early_fraction=0.06)
    assert [scheduled_beta(u, 200, cfg) for u in (1, 12, 13, 200)] == [0.9, 0.9, 0.99, 0.99]


def test_two_phase_defaults_are_the_papers():
    cfg = BregmanConfig()
    assert [scheduled_beta(u, 70, cfg) for u in (7, 8)] == [0.99, 0.999]  # ⌊0.1 · 70⌋ = 7, not 6


@pytest.mark.parametrize("options,key", [({"early_beta": 1.0}, "bregman.early_beta"),
                                         ({"early_fraction": 1.5}, "bregman.early_fraction"),
                                         ({"beta_schedule": "paper"}, "two_phase")])
def test_schedule_options_are_checked(options, key):
    with pytest.raises(ValueError, match=key):
        BregmanConfig(**options)


# --------------------------------------------------------------------------- data.train_examples


def test_train_examples_keeps_a_seeded_count():
    items = list(range(500))
    chosen = subsample(items, 1.0, seed=3, count=100)
    assert len(chosen) == 100 and chosen == sorted(chosen)
    assert subsample(items, 1.0, seed=3, count=100) == chosen
    assert subsample(items, 1.0, seed=4, count=100) != chosen
    assert subsample(items, 1.0, seed=3, count=900) == items


def test_train_examples_and_fraction_exclude_each_other():
    with pytest.raises(ValueError, match="data.train_examples"):
        DataConfig(train_examples=10, train_fraction=0.5)
    with pytest.raises(ValueError, match="data.train_examples"):
        DataConfig(train_examples=-1)
