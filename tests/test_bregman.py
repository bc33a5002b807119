"""BregmanProximal (mtsmart/regularisers/bregman.py) against hand-computed formulas and plain fine-tuning."""
from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from mtsmart.tasks.batch import Batch
from mtsmart.regularisers.bregman import BregmanProximal, ema_update_, scheduled_beta
from mtsmart.options.bregman import BregmanConfig
from mtsmart.model.multitask import MultiTaskModel, load_encoder, load_tokenizer, task_output
from mtsmart.tasks.spec import TaskSpec
from mtsmart.tasks.types import task_type_of

SPECS = {
    "cls": TaskSpec(name="cls", type="classification", metrics=("accuracy",), labels=("a", "b", "c")),
    "reg": TaskSpec(name="reg", type="regression", metrics=("pearson",)),
    "rank": TaskSpec(
        name="rank", type="ranking", metrics=("acc_at_1",), labels=("neg", "pos"), positive_label="pos"
    ),
}



@pytest.fixture(scope="module")
def vocab_size() -> int:
    return load_tokenizer("tiny", None).vocab_size


def make_model(vocab_size: int, seed: int = 0, tasks: tuple[str, ...] = tuple(SPECS)) -> MultiTaskModel:
    torch.manual_seed(seed)
    encoder = load_encoder("tiny", vocab_size, tiny_hidden_size=32, tiny_layers=2, tiny_heads=2)
    return MultiTaskModel(encoder, {name: SPECS[name] for name in tasks})


def make_batch(task: str, seed: int) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    n, length = 5, 9
    input_ids = torch.randint(1000, 2000, (n, length), generator=gen)
    attention_mask = torch.ones(n, length, dtype=torch.long)
    attention_mask[1, 6:] = 0  # some padding
    attention_mask[3, 4:] = 0
    if task == "cls":
        return Batch(task, input_ids, attention_mask, labels=torch.randint(0, 3, (n,), generator=gen))
    if task == "reg":
        return Batch(task, input_ids, attention_mask, labels=torch.rand(n, generator=gen) * 5)
    # Two query groups of up to three candidates; group 1 has an absent slot (MASKED_SCORE).
    mask = torch.tensor([[True, True, True], [True, True, False]])
    return Batch(
        task, input_ids, attention_mask, labels=torch.tensor([2, 0]),
        candidate_slots=torch.tensor([0, 1, 2, 3, 4]), candidate_mask=mask,
    )


def task_loss(model: MultiTaskModel, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    out = task_output(model, batch)
    return task_type_of(SPECS[batch.task]).loss(out, batch.labels), out


def train(model, bregman: BregmanProximal, steps: range) -> None:
    """The loop of the training script: task loss + μ D_Breg, one optimizer step per batch."""
    model.train()
    for step in steps:
        torch.manual_seed(1000 + step)  # dropout masks depend on the step only, so resumes match
        batch = make_batch(("cls", "reg", "rank")[step % 3], seed=step)
        loss, out = task_loss(model, batch)
        (loss + bregman.term(model, batch, out).loss).backward()
        bregman.step()
        bregman.zero_grad()


def clone_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


# ---- config and schedule ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, key",
    [({"mu": -1.0}, "bregman.mu"), ({"beta": 1.0}, "bregman.beta"), ({"beta": -0.1}, "bregman.beta"),
     ({"inner_steps": 0}, "bregman.inner_steps"), ({"beta_schedule": "cosine"}, "bregman.beta_schedule"),
     ({"divergence": "js"}, "bregman.divergence")],
)
def test_config_rejects_bad_values_naming_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        BregmanConfig(**kwargs)


def test_divergence_that_does_not_fit_a_task_type_is_refused(vocab_size):
    model = make_model(vocab_size)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"bregman.divergence=mse does not fit classification tasks.*task 'cls'"):
        BregmanProximal(opt, model, BregmanConfig(divergence="mse"), total_updates=10)


def test_paper_schedule_switches_after_the_first_tenth_of_updates():
    paper, constant = BregmanConfig(beta=0.999), BregmanConfig(beta=0.999, beta_schedule="constant")
    assert [scheduled_beta(u, 50, paper) for u in (1, 5, 6, 50, 60)] == [0.99, 0.99, 0.999, 0.999, 0.999]
    assert [scheduled_beta(u, 50, constant) for u in (1, 5, 6)] == [0.999] * 3
    assert scheduled_beta(1, 9, paper) == 0.999  # fewer than 10 updates: the first 10% is empty


def test_ema_update_is_the_convex_combination():
    teacher = [torch.tensor([1.0, -2.0]), torch.tensor([[3.0]])]
    student = [torch.tensor([5.0, 2.0]), torch.tensor([[0.0]])]
    ema_update_(teacher, student, 0.75)
    assert torch.allclose(teacher[0], torch.tensor([0.25 * 5 + 0.75 * 1, 0.25 * 2 + 0.75 * -2]))
    assert torch.allclose(teacher[1], torch.tensor([[0.75 * 3.0]]))


# ---- the teacher ---------------------------------------------------------------------------------


def test_teacher_follows_the_hand_computed_ema_with_schedule_switch_and_inner_steps(vocab_size):
    model = make_model(vocab_size)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    cfg = BregmanConfig(mu=1.0, beta=0.6, beta_schedule="two_phase", inner_steps=2)
    bregman = BregmanProximal(opt, model, cfg, total_updates=40)  # first 10% = updates 1..4
    expected = clone_params(model)  # θ̃_1 = θ_0
    betas = []
    for step in range(10):
        train(model, bregman, range(step, step + 1))
        update = step + 1
        if update % 2 == 0:  # every S = 2 updates
            beta = 0.99 if update <= 4 else 0.6
            betas.append(beta)
            for name, p in model.named_parameters():
                expected[name] = (1 - beta) * p.detach() + beta * expected[name]
        teacher = dict(bregman.teacher.named_parameters())
        for name, value in expected.items():
            torch.testing.assert_close(teacher[name], value, rtol=1e-5, atol=1e-6)
    assert betas == [0.99, 0.99, 0.6, 0.6, 0.6]
    assert bregman.updates == 10 and bregman.beta == 0.6


def test_teacher_buffers_are_copied_at_each_teacher_update(vocab_size):
    model = make_model(vocab_size)
    model.register_buffer("running", torch.zeros(3))  # a buffer that changes, like BatchNorm's
    cfg = BregmanConfig(beta=0.9, inner_steps=2)
    bregman = BregmanProximal(torch.optim.SGD(model.parameters(), lr=0.1), model, cfg, total_updates=10)
    for step in range(4):
        model.running += 1.0
        train(model, bregman, range(step, step + 1))
        teacher_value = 2.0 * ((step + 1) // 2)  # the student's value at the last teacher update
        assert torch.equal(bregman.teacher.running, torch.full((3,), teacher_value))
    student_buffers = dict(model.named_buffers())
    for name, buffer in bregman.teacher.named_buffers():
        assert torch.equal(buffer, student_buffers[name]), name


def test_beta_zero_makes_the_teacher_the_previous_iterate(vocab_size):
    model = make_model(vocab_size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    bregman = BregmanProximal(opt, model, BregmanConfig(beta=0.0, beta_schedule="constant"), total_updates=10)
    for step in range(3):
        train(model, bregman, range(step, step + 1))
        student = dict(model.named_parameters())
        for name, p in bregman.teacher.named_parameters():
            assert torch.equal(p, student[name]), name  # bitwise: θ̃_t = θ_t (vanilla BPP)
    model.eval()  # same weights, no dropout: D_Breg(θ_t, θ_t) is exactly zero
    batch = make_batch("cls", seed=7)
    assert bregman.term(model, batch, task_output(model, batch)).divergence == 0.0


def test_teacher_never_shares_storage_with_the_student(vocab_size):
    model = make_model(vocab_size)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bregman = BregmanProximal(opt, model, BregmanConfig(), total_updates=10)

    def pointers(module):
        tensors = list(module.parameters()) + list(module.buffers())
        return {t.untyped_storage().data_ptr() for t in tensors}

    assert pointers(bregman.teacher).isdisjoint(pointers(model))
    train(model, bregman, range(2))
    bregman.load_state_dict(bregman.state_dict())
    assert pointers(bregman.teacher).isdisjoint(pointers(model))


def _leaf_tensors(grad_fn) -> list[torch.Tensor]:
    """Every leaf tensor an autograd graph accumulates into."""
    seen, stack, leaves = set(), [grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):
            leaves.append(node.variable)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return leaves


def test_no_autograd_graph_reaches_the_teacher(vocab_size):
    model = make_model(vocab_size)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bregman = BregmanProximal(opt, model, BregmanConfig(), total_updates=10)
    for step in range(3):
        train(model, bregman, range(step, step + 1))
        for p in bregman.teacher.parameters():
            assert not p.requires_grad and p.grad_fn is None and p.grad is None
    batch = make_batch("cls", seed=3)
    result = bregman.term(model, batch, task_output(model, batch))
    leaves = {id(t) for t in _leaf_tensors(result.loss.grad_fn)}
    assert leaves <= {id(p) for p in model.parameters()}  # only student parameters
    assert leaves.isdisjoint(id(p) for p in bregman.teacher.parameters())
    result.loss.backward()
    assert all(p.grad is None for p in bregman.teacher.parameters())


def test_teacher_mode_follows_teacher_dropout(vocab_size):
    model = make_model(vocab_size)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    eval_teacher = BregmanProximal(opt, model, BregmanConfig(), total_updates=10)
    train_teacher = BregmanProximal(opt, model, BregmanConfig(teacher_dropout=True), total_updates=10)
    assert not any(m.training for m in eval_teacher.teacher.modules())
    assert all(m.training for m in train_teacher.teacher.modules())
    model.train()
    batch = make_batch("cls", seed=1)
    out = task_output(model, batch)
    # Eval mode: a deterministic target, so the term does not change between calls.
    assert eval_teacher.term(model, batch, out).divergence == eval_teacher.term(model, batch, out).divergence
    assert train_teacher.term(model, batch, out).divergence != train_teacher.term(model, batch, out).divergence


def test_teacher_copies_the_module_inside_a_ddp_style_wrapper(vocab_size):
    class Wrapped(nn.Module):  # what DistributedDataParallel looks like to us: `.module`
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, **kwargs):
            return self.module(**kwargs)

    model = make_model(vocab_size)
    wrapped = Wrapped(model)
    bregman = BregmanProximal(torch.optim.SGD(model.parameters(), lr=0.1), wrapped, BregmanConfig(), 10)
    assert type(bregman.teacher) is MultiTaskModel
    assert bregman.teacher_student_distance() == 0.0
    wrapped.eval()
    batch = make_batch("rank", seed=2)
    assert bregman.term(wrapped, batch, task_output(wrapped, batch)).divergence == 0.0  # θ = θ̃, no dropout
    with pytest.raises(ValueError, match="not the model"):
        bregman.term(make_model(vocab_size), batch, task_output(wrapped, batch))


def test_teacher_student_distance_is_the_l2_norm_of_the_difference(vocab_size):
    model = make_model(vocab_size)
    bregman = BregmanProximal(torch.optim.AdamW(model.parameters(), lr=1e-2), model, BregmanConfig(beta=0.5), 10)
    train(model, bregman, range(2))
    teacher = dict(bregman.teacher.named_parameters())
    by_hand = sum(((p.detach() - teacher[n]) ** 2).sum() for n, p in model.named_parameters()).sqrt()
    assert bregman.teacher_student_distance() == pytest.approx(float(by_hand), rel=1e-5)
    assert bregman.teacher_student_distance() > 0


# ---- the term ------------------------------------------------------------------------------------


def reference_divergence(name: str, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """ℓs written out from the paper: Σ (p − q)(log p − log q), KL(q‖p) or (s − t)², batch mean."""
    if name == "mse":
        return ((student - teacher) ** 2).sum() / student.shape[0]
    log_p, log_q = torch.log_softmax(student, -1), torch.log_softmax(teacher, -1)
    if name == "kl":
        return (log_q.exp() * (log_q - log_p)).sum() / student.shape[0]
    return ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum() / student.shape[0]


@pytest.mark.parametrize("task, divergence", [("cls", "sym_kl"), ("reg", "mse"), ("rank", "sym_kl"), ("cls", "kl")])
def test_term_gradient_equals_direct_autograd_with_the_teacher_fixed(vocab_size, task, divergence):
    # A one-sided KL is refused for regression heads, so that case uses a classification-only model.
    tasks = ("cls", "rank") if divergence == "kl" else tuple(SPECS)
    model = make_model(vocab_size, tasks=tasks)
    theta_0 = copy.deepcopy(model.state_dict())
    cfg = BregmanConfig(mu=2.5, divergence="kl" if divergence == "kl" else "auto")
    bregman = BregmanProximal(torch.optim.SGD(model.parameters(), lr=0.1), model, cfg, total_updates=10)
    with torch.no_grad():  # move the student away from θ̃ = θ_0
        gen = torch.Generator().manual_seed(5)
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    model.eval()
    batch = make_batch(task, seed=11)
    params = [p for p in model.parameters()]

    result = bregman.term(model, batch, task_output(model, batch))
    got = torch.autograd.grad(result.loss, params, allow_unused=True)

    reference_teacher = make_model(vocab_size, seed=99, tasks=tasks)
    reference_teacher.load_state_dict(theta_0)
    reference_teacher.eval()
    with torch.no_grad():
        target = task_output(reference_teacher, batch)
    reference = 2.5 * reference_divergence(divergence, task_output(model, batch), target)
    want = torch.autograd.grad(reference, params, allow_unused=True)

    assert result.divergence == pytest.approx(float(reference.detach()) / 2.5, rel=1e-5)
    assert float(reference.detach()) > 1e-6
    for g, w, (name, _) in zip(got, want, model.named_parameters()):
        if w is None:
            assert g is None, name  # the other tasks' heads
        else:
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-7, msg=name)


def test_mu_zero_is_exactly_plain_finetuning_and_keeps_no_teacher(vocab_size):
    plain = make_model(vocab_size)
    plain_opt = torch.optim.AdamW(plain.parameters(), lr=1e-2, weight_decay=0.01)
    plain.train()
    for step in range(5):
        torch.manual_seed(1000 + step)
        batch = make_batch(("cls", "reg", "rank")[step % 3], seed=step)
        task_loss(plain, batch)[0].backward()
        plain_opt.step()
        plain_opt.zero_grad(set_to_none=True)

    model = make_model(vocab_size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    bregman = BregmanProximal(opt, model, BregmanConfig(mu=0.0), total_updates=5)
    assert not bregman.enabled and bregman.teacher is None
    train(model, bregman, range(5))
    assert bregman.updates == 5
    for (name, p), q in zip(model.named_parameters(), plain.parameters()):
        assert torch.equal(p, q), name
    batch = make_batch("cls", seed=0)
    result = bregman.term(model, batch, task_output(model, batch))
    assert result.loss.item() == 0.0 and result.divergence == 0.0
    with pytest.raises(RuntimeError, match="no teacher"):
        bregman.teacher_student_distance()


# ---- optimizer plumbing --------------------------------------------------------------------------


def test_lr_scheduler_wraps_the_inner_optimizer(vocab_size):
    model = make_model(vocab_size)
    bregman = BregmanProximal(torch.optim.AdamW(model.parameters(), lr=1e-2), model, BregmanConfig(), 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(bregman.optimizer, lambda step: 0.5**step)
    for step in range(3):
        train(model, bregman, range(step, step + 1))
        scheduler.step()
    assert bregman.param_groups is bregman.optimizer.param_groups
    assert bregman.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5**3)


def test_step_passes_the_closure_through(vocab_size):
    model = make_model(vocab_size)
    bregman = BregmanProximal(torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=2), model, BregmanConfig(), 10)
    batch = make_batch("reg", seed=0)
    model.eval()

    def closure():
        bregman.zero_grad()
        loss, _ = task_loss(model, batch)
        loss.backward()
        return loss

    returned = bregman.step(closure)
    assert isinstance(returned, torch.Tensor) and bregman.updates == 1


def test_amp_skipped_steps_neither_count_nor_move_the_teacher(vocab_size):
    model = make_model(vocab_size)
    bregman = BregmanProximal(torch.optim.SGD(model.parameters(), lr=0.5), model, BregmanConfig(), 10)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    batch = make_batch("cls", seed=0)

    def backward(poison: bool) -> None:
        loss, out = task_loss(model, batch)
        scaler.scale(loss + bregman.term(model, batch, out).loss).backward()
        if poison:
            next(model.parameters()).grad.view(-1)[0] = float("inf")

    backward(poison=False)
    assert bregman.step_with(scaler) and bregman.updates == 1
    bregman.zero_grad()
    teacher, student = clone_params(bregman.teacher), clone_params(model)
    assert any(not torch.equal(teacher[n], student[n]) for n in teacher)  # the teacher lags

    backward(poison=True)
    assert not bregman.step_with(scaler)
    assert bregman.updates == 1 and scaler.get_scale() == 2.0**7
    for name, p in bregman.teacher.named_parameters():
        assert torch.equal(p, teacher[name]), name
    for name, p in model.named_parameters():
        assert torch.equal(p, student[name]), name


# ---- checkpoints ---------------------------------------------------------------------------------


def build(vocab_size: int, seed: int = 0) -> tuple[MultiTaskModel, BregmanProximal]:
    model = make_model(vocab_size, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    cfg = BregmanConfig(mu=1.0, beta=0.9, beta_schedule="two_phase", inner_steps=2)
    return model, BregmanProximal(opt, model, cfg, total_updates=40)  # β switches after update 4


def assert_same_state(model_a, bregman_a, model_b, bregman_b) -> None:
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), f"student {name}"
    for (name, a), b in zip(bregman_a.teacher.state_dict().items(), bregman_b.teacher.state_dict().values()):
        assert torch.equal(a, b), f"teacher {name}"
    opt_a, opt_b = bregman_a.optimizer.state_dict(), bregman_b.optimizer.state_dict()
    assert opt_a["param_groups"] == opt_b["param_groups"]
    for key, state in opt_a["state"].items():
        for field, value in state.items():
            assert torch.equal(value, opt_b["state"][key][field]), f"optimizer {key}.{field}"
    assert bregman_a.updates == bregman_b.updates and bregman_a.beta == bregman_b.beta


def test_resume_mid_inner_loop_continues_bitwise(vocab_size):
    straight_model, straight = build(vocab_size)
    train(straight_model, straight, range(9))

    first_model, first = build(vocab_size)
    train(first_model, first, range(5))  # stop at update 5: mid-way through S = 2, before the switch
    buffer = io.BytesIO()
    torch.save({"model": first_model.state_dict(), "bregman": first.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    resumed_model, resumed = build(vocab_size, seed=123)  # fresh objects from a different init
    resumed_model.load_state_dict(saved["model"])
    resumed.load_state_dict(saved["bregman"])
    train(resumed_model, resumed, range(5, 9))
    assert_same_state(straight_model, straight, resumed_model, resumed)

    # The test has power: batches differ, the teacher lags, and dropping the wrapper's state
    # (what a model+optimizer-only checkpoint does) gives a different run.
    assert not torch.equal(make_batch("cls", 0).input_ids, make_batch("cls", 3).input_ids)
    assert straight.teacher_student_distance() > 0
    lossy_model, lossy = build(vocab_size, seed=123)
    lossy_model.load_state_dict(saved["model"])
    lossy.optimizer.load_state_dict(saved["bregman"]["optimizer"])
    train(lossy_model, lossy, range(5, 9))
    assert not all(torch.equal(a, b) for a, b in zip(lossy.teacher.parameters(), straight.teacher.parameters()))


def test_load_refuses_a_checkpoint_from_another_setup(vocab_size):
    model, bregman = build(vocab_size)
    state = bregman.state_dict()
    other = BregmanProximal(torch.optim.AdamW(model.parameters()), model, BregmanConfig(), total_updates=41)
    with pytest.raises(ValueError, match="total_updates"):
        other.load_state_dict(state)
    off = BregmanProximal(torch.optim.AdamW(model.parameters()), model, BregmanConfig(mu=0.0), total_updates=40)
    with pytest.raises(ValueError, match="mu"):
        off.load_state_dict(state)
