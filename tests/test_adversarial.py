"""The adversarial-training family (docs/adversarial.md) against formulas recomputed naively here.

Every model is a tiny random BERT in eval mode with dropout-free heads, so two computations of
the same formula give the same gradients.
"""
from __future__ import annotations

import dataclasses

import math
from typing import Callable, Optional

import pytest
import torch
import torch.nn.functional as F

from mtsmart.regularisers.base import AdversarialContext
from mtsmart.regularisers.base import Terms
from mtsmart.options.regularisers import AdversarialConfig, PGDConfig, method_options_classes
from mtsmart.regularisers.registry import build_adversary
from mtsmart.regularisers.base import AdversarialMethod
from mtsmart.regularisers.freelb import FreeLB
from mtsmart.regularisers.r3f import R3F
from mtsmart.tasks.batch import Batch
from mtsmart.arithmetic.divergence import squared_error, symmetric_kl
from mtsmart.model.multitask import MultiTaskModel, load_encoder, task_output
from mtsmart.arithmetic.perturbation import token_mask
from mtsmart.regularisers.smart_method import SmartRegularizer
from mtsmart.options.smart import SmartConfig
from mtsmart.tasks.spec import TaskSpec
from mtsmart.tasks.types import TASK_TYPES

VOCAB = 40
SPECS = {
    "cls": TaskSpec(name="cls", type="classification", metrics=("accuracy",), labels=("a", "b", "c"), dropout=0.0),
    "reg": TaskSpec(name="reg", type="regression", metrics=("pearson",), dropout=0.0),
    "rank": TaskSpec(
        name="rank", type="ranking", metrics=("acc_at_1",), labels=("no", "yes"), positive_label="yes", dropout=0.0
    ),
}
TASKS = ("cls", "reg", "rank")


# ----------------------------------------------------------------------------- fixtures


def make_model(seed: int = 0) -> MultiTaskModel:
    torch.manual_seed(seed)
    encoder = load_encoder("tiny", VOCAB, tiny_hidden_size=16, tiny_layers=1, tiny_heads=2)
    return MultiTaskModel(encoder, SPECS).eval()  # eval: no dropout, so gradients are comparable


def make_batch(task: str, labelled: bool = True) -> Batch:
    """Four sequences (five ranking candidates in groups of 3 and 2) with padding."""
    gen = torch.Generator().manual_seed(1)
    lengths = torch.tensor([7, 5, 6, 3, 4] if task == "rank" else [7, 5, 6, 3])
    n, t = len(lengths), 7
    attention = (torch.arange(t)[None, :] < lengths[:, None]).long()
    input_ids = torch.randint(1, VOCAB, (n, t), generator=gen) * attention  # pad id 0
    extra = {}
    if task == "cls":
        labels = torch.tensor([0, 2, 1, 2])
    elif task == "reg":
        labels = torch.tensor([0.5, 3.0, 1.5, 4.0])
    else:
        labels = torch.tensor([1, 0])  # each group's positive candidate
        extra = dict(
            candidate_slots=torch.tensor([0, 1, 2, 3, 4]),  # g·C + c with C = 3
            candidate_mask=torch.tensor([[True, True, True], [True, True, False]]),
        )
    return Batch(task=task, input_ids=input_ids, attention_mask=attention,
                 labels=labels if labelled else None, **extra)


def task_type(batch: Batch):
    return TASK_TYPES[SPECS[batch.task].type]


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def run(
    method: AdversarialMethod, model: torch.nn.Module, batch: Batch,
    backward: Optional[Callable[[torch.Tensor], None]] = None,
):
    """What the training loop does around the method: clean forward, call, final backward."""
    core = model.module if hasattr(model, "module") else model
    core.zero_grad(set_to_none=True)
    tt = task_type(batch)
    embeds = core.word_embeddings(batch.input_ids)
    mask = token_mask(batch.attention_mask, embeds.dtype)
    clean = task_loss = None
    if method.needs_clean_forward:
        clean = task_output(model, batch, inputs_embeds=embeds)
        if batch.labels is not None:
            task_loss = tt.loss(clean, batch.labels)
    loss_backward = backward or (lambda loss: loss.backward())

    def terms_backward(terms: Terms) -> None:  # the objective's backward, with task weight 1
        present = [t for t in (terms.task_loss, terms.bregman, terms.regulariser) if t is not None]
        if present:
            loss_backward(sum(present[1:], present[0]))

    ctx = AdversarialContext(
        model=model, batch=batch, task_type=tt, embeds=embeds, mask=mask, clean_output=clean,
        clean=Terms(task_loss=task_loss), backward=terms_backward,
    )
    result = method(ctx)
    terms_backward(result.terms)
    return result, grads(core)


def left(result) -> list[torch.Tensor]:
    """The terms a method left for the objective to back-propagate."""
    terms = result.terms
    return [t for t in (terms.task_loss, terms.bregman, terms.regulariser) if t is not None]


def method_options(method: str, **options):
    """The options of `method` (its own section's dataclass). Keys its section does not have are
    left out, so that a parametrized test can give every method the same ones."""
    if method == "none":
        return None
    cls = method_options_classes()[method]
    if "weight" in options and method == "rdrop":
        options["alpha"] = options.pop("weight")
    return cls(**{k: v for k, v in options.items() if k in {f.name for f in dataclasses.fields(cls)}})


def adversary(method: str, **options) -> AdversarialMethod:
    return build_adversary(method_options(method, **options), TASK_TYPES.values())


# ----------------------------------------------------------------------------- naive references


def loss_at(model, batch, x):
    return task_type(batch).loss(task_output(model, batch, inputs_embeds=x), batch.labels)


def loss_from_ids(model, batch):
    return task_type(batch).loss(task_output(model, batch), batch.labels)


def param_grads(model, loss) -> dict[str, torch.Tensor]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    values = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    return {n: g for (n, _), g in zip(named, values) if g is not None}


def input_grad(model, batch, r):
    """∇ of L(x + r) w.r.t. x + r, with x detached."""
    x = (model.word_embeddings(batch.input_ids).detach() + r).requires_grad_(True)
    return torch.autograd.grad(loss_at(model, batch, x), x)[0]


def per_example_l2(v):
    return v.flatten(1).norm(dim=1).view(-1, 1, 1)


def naive_step(r, g, mask, alpha, eps, norm):
    """r ← Π_{‖r‖≤ε}(r + α g/‖g‖) per example, written out for l2 and inf."""
    g = g * mask
    if norm == "l2":
        r = r + alpha * g / per_example_l2(g)
        return r * torch.clamp(eps / per_example_l2(r), max=1.0)
    return torch.clamp(r + alpha * torch.sign(g), -eps, eps)


def naive_project(r, eps, norm):
    if norm == "l2":
        return r * torch.clamp(eps / per_example_l2(r), max=1.0)
    return torch.clamp(r, -eps, eps)


def assert_grads_close(actual, expected, rtol=1e-4, atol=1e-6):
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=rtol, atol=atol, msg=name)


# ----------------------------------------------------------------------------- formulas


@pytest.mark.parametrize("method", ["fgm", "fgsm"])
@pytest.mark.parametrize("task", TASKS)
def test_fgm_and_fgsm_gradient_is_the_formula(method, task):
    model, batch, eps = make_model(), make_batch(task), 0.7
    result, actual = run(adversary(method=method, epsilon=eps), model, batch)

    mask = token_mask(batch.attention_mask, torch.float32)
    g = input_grad(model, batch, 0.0) * mask
    r = eps * (torch.sign(g) if method == "fgsm" else g / per_example_l2(g))
    x = model.word_embeddings(batch.input_ids)
    expected = param_grads(model, loss_at(model, batch, x) + loss_at(model, batch, x + r))
    assert_grads_close(actual, expected)
    assert result.scalars["loss"] == pytest.approx(float(loss_at(model, batch, x + r).detach()), rel=1e-5)
    if method == "fgm":
        assert result.scalars["delta_norm"] == pytest.approx(eps, rel=1e-5)


@pytest.mark.parametrize("norm", ["l2", "inf"])
def test_pgd_gradient_is_last_step_loss_with_naive_projected_steps(norm):
    model, batch = make_model(), make_batch("cls")
    eps, alpha, steps = 0.5, 0.3, 3
    result, actual = run(adversary(method="pgd", epsilon=eps, step_size=alpha, steps=steps, norm=norm), model, batch)

    mask = token_mask(batch.attention_mask, torch.float32)
    r = torch.zeros_like(model.word_embeddings(batch.input_ids))
    for _ in range(steps):
        r = naive_step(r, input_grad(model, batch, r), mask, alpha, eps, norm)
    x = model.word_embeddings(batch.input_ids)
    expected = param_grads(model, loss_at(model, batch, x) + loss_at(model, batch, x + r))
    assert_grads_close(actual, expected)
    norms = per_example_l2(r) if norm == "l2" else r.flatten(1).abs().amax(1)
    assert result.scalars["delta_norm"] == pytest.approx(float(norms.mean()), rel=1e-5)
    assert float(norms.max()) == pytest.approx(eps, rel=1e-5)  # the projection was active


@pytest.mark.parametrize("init,norm", [("normal", "l2"), ("uniform", "inf"), ("zero", "l2")])
def test_freelb_gradient_is_mean_of_step_gradients(init, norm):
    model, batch = make_model(), make_batch("cls")
    eps, alpha, steps, scale = 0.5, 0.2, 3, 0.2
    method = FreeLB(eps, alpha, steps, norm, init, scale, generator=torch.Generator().manual_seed(0))
    _, actual = run(method, model, batch)

    mask = token_mask(batch.attention_mask, torch.float32)
    shape = model.word_embeddings(batch.input_ids).shape
    gen = torch.Generator().manual_seed(0)
    if init == "normal":
        noise = torch.randn(shape, generator=gen) * scale
    elif init == "uniform":
        noise = (torch.rand(shape, generator=gen) * 2 - 1) * scale
    else:
        noise = torch.zeros(shape)
    r = naive_project(noise * mask, eps, norm)
    expected: dict[str, torch.Tensor] = {}
    for _ in range(steps):
        r_leaf = r.clone().requires_grad_(True)
        x = model.word_embeddings(batch.input_ids)
        loss = loss_at(model, batch, x + r_leaf)
        step_grads = param_grads(model, loss)
        for name, g in step_grads.items():
            expected[name] = expected.get(name, 0) + g / steps
        r = naive_step(r, torch.autograd.grad(loss_at(model, batch, x.detach() + r_leaf), r_leaf)[0],
                       mask, alpha, eps, norm)
    assert_grads_close(actual, expected)


def penalty_from_per_example_gradients(model, batch, eps) -> torch.Tensor:
    """½ ε ‖∇_x L‖² rebuilt from each example's own loss: ∇_{x_i} L = ∇_{x_i} ℓ_i / n."""
    x = model.word_embeddings(batch.input_ids).detach().requires_grad_(True)
    output = task_output(model, batch, inputs_embeds=x)
    # In the model's own precision: a float64 model gives a float64 penalty for finite differences.
    if task_type(batch).name == "regression":
        losses = (output - batch.labels.to(output.dtype)) ** 2
    else:
        losses = F.cross_entropy(output, batch.labels, reduction="none")
    n = len(losses)  # examples (groups for ranking)
    squared = [torch.autograd.grad(loss, x, retain_graph=True)[0].pow(2).sum() for loss in losses]
    return 0.5 * eps * torch.stack(squared).sum() / n**2


@pytest.mark.parametrize("task", TASKS)
def test_gradient_penalty_value_matches_per_example_gradients(task):
    model, batch, eps = make_model(), make_batch(task), 0.8
    result, _ = run(adversary(method="gradient_penalty", epsilon=eps), model, batch)
    assert result.scalars["loss"] == pytest.approx(float(penalty_from_per_example_gradients(model, batch, eps)), rel=1e-4)


def test_gradient_penalty_second_order_term_matches_finite_difference():
    model, batch, eps, weight = make_model().double(), make_batch("reg"), 0.8, 2.0
    _, actual = run(adversary(method="gradient_penalty", epsilon=eps, weight=weight), model, batch)
    # The penalty's own gradient: the method's minus the task loss's.
    x = model.word_embeddings(batch.input_ids)
    plain = param_grads(model, loss_at(model, batch, x))
    name = "encoder.encoder.layer.0.attention.self.query.weight"
    penalty_grad = (actual[name] - plain[name]) / weight
    assert penalty_grad.abs().max() > 0

    param = dict(model.named_parameters())[name]
    direction = torch.randn(param.shape, generator=torch.Generator().manual_seed(3), dtype=param.dtype)
    direction /= direction.norm()
    h = 1e-4
    with torch.no_grad():
        param.add_(h * direction)
    up = float(penalty_from_per_example_gradients(model, batch, eps))
    with torch.no_grad():
        param.sub_(2 * h * direction)
    down = float(penalty_from_per_example_gradients(model, batch, eps))
    with torch.no_grad():
        param.add_(h * direction)
    assert float((penalty_grad * direction).sum()) == pytest.approx((up - down) / (2 * h), rel=1e-3)


@pytest.mark.parametrize("task", TASKS)
def test_r3f_gradient_is_direct_autograd(task):
    model, batch, sigma, weight = make_model(), make_batch(task), 0.3, 1.5
    method = R3F("normal", sigma, weight, generator=torch.Generator().manual_seed(0))
    result, actual = run(method, model, batch)

    mask = token_mask(batch.attention_mask, torch.float32)
    x = model.word_embeddings(batch.input_ids)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)) * sigma * mask
    clean = task_output(model, batch, inputs_embeds=x)
    noisy = task_output(model, batch, inputs_embeds=x + noise)
    divergence = (squared_error if task == "reg" else symmetric_kl)(noisy, clean)
    expected = param_grads(model, task_type(batch).loss(clean, batch.labels) + weight * divergence)
    assert_grads_close(actual, expected)
    assert result.scalars["loss"] == pytest.approx(float(divergence.detach()), rel=1e-4)
    assert result.scalars["loss"] > 0


# ----------------------------------------------------------------------------- scope: matrix


def word_matrix(model) -> torch.nn.Parameter:
    return model.encoder.get_input_embeddings().weight


def articles_fgm(model, batch, eps, sign):
    """The seed articles' FGM / FGSM: attack W by its gradient, backward, restore."""
    model.zero_grad(set_to_none=True)
    loss_from_ids(model, batch).backward()
    w = word_matrix(model)
    backup = w.data.clone()
    norm = torch.norm(w.grad)
    if norm != 0 and not torch.isnan(norm):
        w.data.add_(eps * torch.sign(w.grad) if sign else eps * w.grad / norm)
    loss_from_ids(model, batch).backward()
    w.data = backup
    return grads(model)


def articles_pgd(model, batch, eps, alpha, steps):
    """The seed articles' PGD: backup_grad, K attacks with zero_grad / restore_grad, restore."""
    model.zero_grad(set_to_none=True)
    loss_from_ids(model, batch).backward()
    grad_backup = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    w = word_matrix(model)
    emb_backup = None
    for t in range(steps):
        if t == 0:
            emb_backup = w.data.clone()
        norm = torch.norm(w.grad)
        if norm != 0 and not torch.isnan(norm):
            w.data.add_(alpha * w.grad / norm)
            r = w.data - emb_backup
            if torch.norm(r) > eps:
                r = eps * r / torch.norm(r)
            w.data = emb_backup + r
        if t != steps - 1:
            model.zero_grad()
        else:
            for n, p in model.named_parameters():
                if n in grad_backup:
                    p.grad = grad_backup[n]
        loss_from_ids(model, batch).backward()
    w.data = emb_backup
    return grads(model)


@pytest.mark.parametrize("method", ["fgm", "fgsm", "pgd"])
def test_matrix_scope_matches_the_articles_and_restores_bitwise(method):
    eps, alpha, steps = 0.5, 0.3, 3
    model, batch = make_model(), make_batch("cls")
    before = word_matrix(model).detach().clone()
    options = dict(method=method, scope="matrix", epsilon=eps) | (dict(step_size=alpha, steps=steps) if method == "pgd" else {})
    result, actual = run(adversary(**options), model, batch)
    assert left(result) == []  # everything was back-propagated through ctx.backward
    assert torch.equal(word_matrix(model), before)

    reference = make_model()
    if method == "pgd":
        expected = articles_pgd(reference, batch, eps, alpha, steps)
        assert result.scalars["delta_norm"] == pytest.approx(eps, rel=1e-5)  # the projection was active
    else:
        expected = articles_fgm(reference, batch, eps, sign=method == "fgsm")
    assert torch.equal(word_matrix(reference), before)
    assert_grads_close(actual, expected)


@pytest.mark.parametrize("method,fail_at", [("fgm", 1), ("pgd", 1), ("pgd", 3)])
def test_matrix_scope_restores_the_matrix_when_the_adversarial_forward_raises(method, fail_at):
    model, batch = make_model(), make_batch("cls")
    before = word_matrix(model).detach().clone()
    calls = []

    def explode(module, args, output):
        calls.append(1)
        if len(calls) == fail_at + 1:  # call 1 is the loop's clean forward
            raise RuntimeError("injected failure")

    handle = model.encoder.register_forward_hook(explode)
    with pytest.raises(RuntimeError, match="injected failure"):
        run(adversary(method=method, scope="matrix", epsilon=0.5), model, batch)
    handle.remove()
    assert torch.equal(word_matrix(model), before)


def test_matrix_scope_exists_only_for_the_methods_that_have_it():
    for method in ("freelb", "gradient_penalty", "r3f", "rdrop", "smart"):
        assert "scope" not in {f.name for f in dataclasses.fields(method_options_classes()[method])}
    with pytest.raises(ValueError, match=r"pgd\.scope"):
        PGDConfig(scope="vocabulary")


# ----------------------------------------------------------------------------- cost, padding, tasks


def count_passes(model):
    """Encoder forwards, and backward traversals of an encoder output (a tensor hook on each)."""
    counts = {"forward": 0, "backward": 0}

    def on_forward(module, args, output):
        counts["forward"] += 1
        output.last_hidden_state.register_hook(lambda grad: counts.__setitem__("backward", counts["backward"] + 1))

    return counts, model.encoder.register_forward_hook(on_forward)


@pytest.mark.parametrize("steps", [1, 3])
def test_freelb_costs_k_forward_and_k_backward_passes(steps):
    model, batch = make_model(), make_batch("cls")
    counts, handle = count_passes(model)
    backward_calls = []

    def backward(loss):
        backward_calls.append(1)
        loss.backward()

    method = adversary(method="freelb", steps=steps, epsilon=0.5, step_size=0.1)
    assert not method.needs_clean_forward  # so the objective made no clean forward
    run(method, model, batch, backward=backward)
    handle.remove()
    assert counts == {"forward": steps, "backward": steps}
    assert len(backward_calls) == steps


# Per batch, including the loop's clean forward and final backward: encoder forwards, and
# backward traversals (input-only or full) of an encoder output. Documented in docs/adversarial.md.
COSTS = {
    "none": (dict(method="none"), 1, 1),
    "fgm": (dict(method="fgm"), 2, 3),  # ∇_x of the clean graph, then one backward of both graphs
    "pgd": (dict(method="pgd", steps=3), 4, 3 + 2),  # K input-only backwards, then both graphs
    "gradient_penalty": (dict(method="gradient_penalty"), 1, 2),  # its own forward; create_graph, double backward
    "r3f": (dict(method="r3f"), 2, 2),  # one backward of both graphs
    "matrix_fgm": (dict(method="fgm", scope="matrix"), 2, 2),
    "matrix_pgd": (dict(method="pgd", scope="matrix", steps=3), 4, 2 + 2),  # 2 ∇_W-only, 2 full
}


@pytest.mark.parametrize("name", COSTS)
def test_passes_per_batch(name):
    options, forwards, backwards = COSTS[name]
    model, batch = make_model(), make_batch("cls")
    counts, handle = count_passes(model)
    run(adversary(**options), model, batch)
    handle.remove()
    assert counts == {"forward": forwards, "backward": backwards}


@pytest.mark.parametrize("method", ["fgsm", "fgm", "pgd", "freelb", "r3f"])
def test_padding_is_never_perturbed(method):
    model, batch = make_model(), make_batch("cls")
    clean = model.word_embeddings(batch.input_ids).detach()
    pad = token_mask(batch.attention_mask, torch.float32) == 0
    seen = []

    def record(module, args, kwargs):
        if kwargs.get("inputs_embeds") is not None:
            seen.append(kwargs["inputs_embeds"].detach())

    handle = model.encoder.register_forward_pre_hook(record, with_kwargs=True)
    run(adversary(method=method, epsilon=0.5, init_scale=0.1), model, batch)
    handle.remove()
    perturbed = [x for x in seen if not torch.equal(x, clean)]
    assert perturbed, "the method perturbed nothing"
    for x in perturbed:
        assert torch.equal(x.masked_select(pad.expand_as(x)), clean.masked_select(pad.expand_as(clean)))


ALL_METHODS = {
    "none": dict(method="none"),
    "smart": dict(method="smart"),
    "fgsm": dict(method="fgsm"),
    "fgm": dict(method="fgm"),
    "pgd": dict(method="pgd"),
    "freelb": dict(method="freelb"),
    "gradient_penalty": dict(method="gradient_penalty"),
    "r3f": dict(method="r3f"),
    "rdrop": dict(method="rdrop"),
    "matrix_fgsm": dict(method="fgsm", scope="matrix"),
    "matrix_fgm": dict(method="fgm", scope="matrix"),
    "matrix_pgd": dict(method="pgd", scope="matrix"),
}


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", ALL_METHODS)
def test_every_method_runs_on_every_task_type(name, task):
    model, batch = make_model(), make_batch(task)
    method = adversary(**ALL_METHODS[name])
    result, actual = run(method, model, batch)
    assert all(torch.isfinite(t) for t in left(result))
    assert set(result.scalars) == set(method.scalars)  # what it logs is what it declares
    assert all(math.isfinite(v) for v in result.scalars.values())
    assert actual and all(torch.isfinite(g).all() for g in actual.values())


@pytest.mark.parametrize("method", ["fgsm", "fgm", "pgd", "freelb", "gradient_penalty"])
def test_methods_needing_labels_refuse_an_unlabelled_batch(method):
    with pytest.raises(ValueError, match="needs labels"):
        run(adversary(method=method), make_model(), make_batch("cls", labelled=False))


def test_r3f_is_label_free():
    result, _ = run(adversary(method="r3f", init_scale=0.1), make_model(), make_batch("cls", labelled=False))
    assert left(result) and result.scalars["loss"] > 0


def test_none_returns_the_loop_loss_unchanged():
    model, batch = make_model(), make_batch("cls")
    embeds = model.word_embeddings(batch.input_ids)
    loss = loss_at(model, batch, embeds)
    clean = Terms(task_loss=loss)
    ctx = AdversarialContext(model, batch, task_type(batch), embeds, token_mask(batch.attention_mask, embeds.dtype),
                             None, clean, lambda terms: None)
    result = adversary(method="none")(ctx)
    assert result.terms is clean and result.scalars == {}


# gradient_penalty's double backward hands the (1, 16) rank head weight a gradient with strides
# (1, 1), not (16, 1): the same memory layout (a size-1 dimension's stride is never used), but DDP
# compares strides literally and warns once.
@pytest.mark.filterwarnings("ignore:Grad strides do not match bucket view strides")
def test_distributed_data_parallel_wrapper_gives_the_same_gradients(tmp_path):
    """One-process gloo DDP: averaging over one rank is the identity, so gradients must match."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    if dist.is_initialized():
        pytest.skip("a process group already exists")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        for name in ("pgd", "freelb", "gradient_penalty", "r3f", "matrix_pgd"):
            options, batch = ALL_METHODS[name], make_batch("rank")
            model = make_model()
            torch.manual_seed(0)  # freelb / r3f draw from the global RNG
            _, plain = run(adversary(**options), model, batch)
            # The other tasks' heads get no gradient from this batch.
            wrapped = DistributedDataParallel(make_model(), find_unused_parameters=True)
            torch.manual_seed(0)
            _, distributed = run(adversary(**options), wrapped, batch)
            assert_grads_close(distributed, plain)
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- smart adapter, state, config


def test_smart_method_adds_the_regularizer_term():
    cfg = SmartConfig(weight=3.0, epsilon=1e-2, step_size=1e-2, init_scale=1e-3)
    model, batch = make_model(), make_batch("cls")
    method = build_adversary(cfg, TASK_TYPES.values())
    torch.manual_seed(5)
    result, actual = run(method, model, batch)

    torch.manual_seed(5)
    x = model.word_embeddings(batch.input_ids)
    clean = task_output(model, batch, inputs_embeds=x)
    direct = SmartRegularizer(cfg).regularize(model, batch, x, clean, TASK_TYPES["classification"])
    expected = param_grads(model, task_type(batch).loss(clean, batch.labels) + direct.loss)
    assert_grads_close(actual, expected)
    assert result.scalars["loss"] == pytest.approx(direct.rs) and result.scalars["delta_norm"] == pytest.approx(direct.delta_norm)
    assert method.state_dict() == {"calls_total": 1, "skipped_total": 0}
    method.load_state_dict({"calls_total": 7, "skipped_total": 2})
    assert method.state_dict() == {"calls_total": 7, "skipped_total": 2}


def test_random_start_state_round_trips_through_state_dict():
    model, batch = make_model(), make_batch("cls")
    method = adversary(method="r3f", init_scale=0.1)
    method.generator = torch.Generator().manual_seed(11)
    state = method.state_dict()
    _, first = run(method, model, batch)
    _, second = run(method, model, batch)
    method.load_state_dict(state)
    _, replay = run(method, model, batch)
    assert_grads_close(replay, first, rtol=0, atol=0)
    assert any(not torch.equal(first[n], second[n]) for n in first)  # fresh noise each step
    assert adversary(method="fgm").state_dict() == {}
    with pytest.raises(ValueError, match="keeps no state"):
        adversary(method="fgm").load_state_dict({"x": 1})


@pytest.mark.parametrize(
    "method,options,key",
    [
        ("fgm", dict(epsilon=0.0), "fgm.epsilon"),
        ("fgsm", dict(epsilon=math.nan), "fgsm.epsilon"),
        ("pgd", dict(steps=0), "pgd.steps"),
        ("freelb", dict(step_size=-1.0), "freelb.step_size"),
        ("pgd", dict(weight=-1.0), "pgd.weight"),
        ("gradient_penalty", dict(epsilon=math.inf), "gradient_penalty.epsilon"),
        ("r3f", dict(init_scale=0.0), "r3f.init_scale"),
        ("r3f", dict(init="zero"), "r3f.init"),
        ("rdrop", dict(alpha=-0.5), "rdrop.alpha"),
    ],
)
def test_each_section_refuses_its_bad_values_by_name(method, options, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        method_options_classes()[method](**options)
    with pytest.raises(ValueError, match=r"adversarial\.method"):
        AdversarialConfig(method="adversarial")


def test_fgsm_is_the_sign_step_and_fgm_defaults_to_l2():
    assert adversary(method="fgsm").norm == "inf"
    assert adversary(method="fgm").norm == "l2" and adversary(method="fgm", norm="inf").norm == "inf"
    assert "norm" not in {f.name for f in dataclasses.fields(method_options_classes()["fgsm"])}
