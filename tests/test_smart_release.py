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
from mtsmart.arithmetic.divergence import squared_error, symmetric_kl
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
