"""Momentum Bregman proximal point optimisation (Jiang et al. 2020, Eq. 2-3) as an optimizer wrapper.

Each update minimises F(θ) + μ · D_Breg(θ, θ̃) (Eq. 2 with the teacher θ̃ of Eq. 3), where

    D_Breg(θ, θ̃) = 1/n Σ_i ℓs(f(x_i; θ), f(x_i; θ̃))          (Eq. 2)
    θ̃ ← (1 − β) θ + β θ̃   after every S optimizer steps          (Eq. 3, Algorithm 1 line 14)

`BregmanProximal` wraps any torch optimizer, owns θ̃ (a private copy of the model), returns
the μ · D_Breg term for a batch and moves θ̃ on its schedule. β = 0 is the vanilla method
(θ̃ = the previous iterate); μ = 0 turns everything off and keeps no teacher. See docs/bregman.md.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from mtsmart.tasks.batch import Batch
from mtsmart.options.bregman import BregmanConfig
from mtsmart.arithmetic.divergence import get_divergence
from mtsmart.model.multitask import task_output, unwrap
from mtsmart.tasks.types import task_type_of

@dataclass
class BregmanResult:
    loss: torch.Tensor  # () μ · D_Breg, differentiable w.r.t. the student only; 0 when μ = 0
    divergence: float  # D_Breg itself (before μ), for logging


def ema_update_(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor], beta: float) -> None:
    """θ̃ ← (1 − β) θ + β θ̃ in place, for each pair (Eq. 3). β = 0 copies θ exactly.

    lerp(θ̃, θ, w) with w = 1 − β is θ̃ + w (θ − θ̃) = (1 − β) θ + β θ̃; torch evaluates it as
    θ − (θ − θ̃)(1 − w) for w ≥ 0.5, so w = 1 gives θ bit for bit.
    """
    with torch.no_grad():
        torch._foreach_lerp_(list(teacher), list(student), 1.0 - beta)


def early_updates(total_updates: int, fraction: float) -> int:
    """The number of updates in the early phase: ⌊fraction · total⌋ (a guard keeps 0.1 · 70 at 7)."""
    return math.floor(fraction * total_updates + 1e-9)


def scheduled_beta(update: int, total_updates: int, cfg: BregmanConfig) -> float:
    """β for the teacher update that follows optimizer update number `update` (1-based)."""
    if cfg.beta_schedule == "two_phase" and update <= early_updates(total_updates, cfg.early_fraction):
        return cfg.early_beta
    return cfg.beta


def _check_divergence(cfg: BregmanConfig, model: nn.Module) -> None:
    for name, spec in model.specs.items():
        try:
            task_type_of(spec).divergence("bregman.divergence", cfg.divergence)
        except ValueError as error:
            raise ValueError(f"{error} (task {name!r})") from None


class BregmanProximal:
    """An optimizer wrapper that adds μ · D_Breg(θ, θ̃) and keeps the mean teacher θ̃.

    Loop (plain):   out = task_output(model, batch); loss = task_loss + bregman.term(model, batch, out).loss
                    loss.backward(); bregman.step(); bregman.zero_grad()
    Loop (AMP):     scaler.scale(loss).backward(); bregman.step_with(scaler)   # also calls scaler.update()
    LR schedulers wrap `bregman.optimizer`. Build it after the model is on its device; under
    DDP pass the wrapped model (the teacher copies `model.module`, never the DDP wrapper).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module, cfg: BregmanConfig, total_updates: int):
        if total_updates < 1:
            raise ValueError(f"BregmanProximal: total_updates={total_updates} must be >= 1")
        student = unwrap(model)  # the teacher copies the model, never a DDP wrapper
        _check_divergence(cfg, student)
        self.optimizer = optimizer
        self.cfg = cfg
        self.total_updates = total_updates
        self.updates = 0  # optimizer steps taken (skipped AMP steps excluded)
        self._student = student
        self.teacher: Optional[nn.Module] = None
        # Matched lists (same names, same order): θ̃ and θ for the EMA, teacher/student buffers.
        self._teacher_params: list[torch.Tensor] = []
        self._student_params: list[torch.Tensor] = []
        self._buffer_pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        if self.enabled:
            self._make_teacher(student)

    @property
    def enabled(self) -> bool:
        return self.cfg.mu > 0.0

    @property
    def beta(self) -> float:
        """β at the current update count: what the teacher update after update `updates` uses."""
        return scheduled_beta(self.updates, self.total_updates, self.cfg)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def _make_teacher(self, student: nn.Module) -> None:
        # θ̃_1 ← θ_0 (Algorithm 1 line 1). deepcopy allocates fresh storage for every tensor, so
        # the teacher never aliases the student; it also copies .grad, which the teacher drops.
        teacher = copy.deepcopy(student)
        teacher.requires_grad_(False)
        for param in teacher.parameters():
            param.grad = None
        teacher.train(self.cfg.teacher_dropout)
        self.teacher = teacher
        pairs = _matched(teacher.named_parameters(), student.named_parameters(), "parameter")
        self._teacher_params = [t for t, _ in pairs]
        self._student_params = [s for _, s in pairs]
        self._buffer_pairs = _matched(teacher.named_buffers(), student.named_buffers(), "buffer")

    # ---- the term -------------------------------------------------------------------------------

    def term(self, model: nn.Module, batch: Batch, student_output: torch.Tensor) -> BregmanResult:
        """μ · D_Breg for one batch: ℓs(f(x; θ), f(x; θ̃)) with the student's output first.

        `student_output` is `model`'s task output of the training forward on `batch`
        (classification (B, C), regression (B,), ranking (G, C)); the teacher runs on the same
        clean inputs. `model` (or its DDP wrapper) must be the one this wrapper was built from.
        """
        if unwrap(model) is not self._student:
            raise ValueError("BregmanProximal.term: model is not the model this wrapper's teacher was copied from")
        if not self.enabled:
            return BregmanResult(loss=torch.zeros((), device=student_output.device), divergence=0.0)
        # no_grad, not inference_mode: a tensor made under inference_mode cannot be saved for
        # backward, so a divergence using the raw target in a saving op (student * target) would
        # fail; and inference_mode measured no faster here (MiniLM on CPU, docs/bregman.md).
        with torch.no_grad():
            target = task_output(self.teacher, batch)
        divergence = self._divergence_fn(batch.task)(student_output, target)
        return BregmanResult(loss=self.cfg.mu * divergence, divergence=float(divergence.detach()))

    def _divergence_fn(self, task: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return get_divergence(task_type_of(self._student.specs[task]).divergence("bregman.divergence", self.cfg.divergence))

    # ---- stepping -------------------------------------------------------------------------------

    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """One inner optimizer step (Algorithm 1 line 11), then the teacher's schedule."""
        result = self.optimizer.step(closure)
        self.after_optimizer_step()
        return result

    def step_with(self, scaler: torch.amp.GradScaler) -> bool:
        """AMP: scaler.step + scaler.update; counts the step only if it was not skipped (inf/NaN).

        A skipped step is detected by the scale shrinking in `update()`, so the loop must not call
        `scaler.update()` itself. Returns whether the parameters were updated.
        """
        if scaler.is_enabled() and not scaler.get_backoff_factor() < 1.0:
            raise ValueError("BregmanProximal.step_with needs a GradScaler with backoff_factor < 1")
        scale = scaler.get_scale()
        scaler.step(self.optimizer)
        scaler.update()
        stepped = not scaler.is_enabled() or scaler.get_scale() >= scale
        if stepped:
            self.after_optimizer_step()
        return stepped

    def after_optimizer_step(self) -> None:
        """Count one optimizer update; every S-th one moves θ̃ (Algorithm 1 line 14)."""
        self.updates += 1
        if self.enabled and self.updates % self.cfg.inner_steps == 0:
            ema_update_(self._teacher_params, self._student_params, self.beta)
            with torch.no_grad():
                for teacher_buffer, student_buffer in self._buffer_pairs:
                    teacher_buffer.copy_(student_buffer)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    # ---- logging and checkpoints ---------------------------------------------------------------

    def teacher_student_distance(self) -> float:
        """‖θ − θ̃‖₂ over all parameters, in float32."""
        if not self.enabled:
            raise RuntimeError("teacher_student_distance: bregman.mu = 0, so there is no teacher")
        with torch.no_grad():
            pairs = zip(self._teacher_params, self._student_params)
            squares = [(s.float() - t.float()).pow(2).sum() for t, s in pairs]
            return float(torch.stack(squares).sum().sqrt())

    def state_dict(self) -> dict[str, Any]:
        """Teacher tensors, update counter (the β schedule's position) and the optimizer's state.

        Like torch's own state_dicts it holds references to live tensors: torch.save it, or
        deepcopy it before training on.
        """
        return {**self.teacher_state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "optimizer" not in state:
            raise ValueError("bregman checkpoint state lacks ['optimizer']")
        self.load_teacher_state_dict(state)
        self.optimizer.load_state_dict(state["optimizer"])

    def teacher_state_dict(self) -> dict[str, Any]:
        """The wrapper's own state without the optimizer's: teacher tensors and the update counter
        (the β schedule's position). For a host that saves the optimizer itself (mtsmart.recipes.hf)."""
        return {
            "updates": self.updates,
            "total_updates": self.total_updates,
            "teacher": None if self.teacher is None else self.teacher.state_dict(),
        }

    def load_teacher_state_dict(self, state: dict[str, Any]) -> None:
        missing = sorted({"updates", "total_updates", "teacher"} - set(state))
        if missing:
            raise ValueError(f"bregman checkpoint state lacks {missing}")
        if state["total_updates"] != self.total_updates:
            raise ValueError(
                f"bregman checkpoint: total_updates={state['total_updates']} but this run has "
                f"{self.total_updates}; the β schedule would change on resume"
            )
        if (state["teacher"] is None) != (self.teacher is None):
            saved = "no teacher (mu = 0)" if state["teacher"] is None else "a teacher (mu > 0)"
            raise ValueError(f"bregman checkpoint holds {saved} but this run has bregman.mu = {self.cfg.mu}")
        if self.teacher is not None:
            self.teacher.load_state_dict(state["teacher"])  # copies into the teacher's own storage
        self.updates = int(state["updates"])


def _matched(teacher_named, student_named, kind: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    teacher, student = dict(teacher_named), dict(student_named)
    if teacher.keys() != student.keys():
        raise RuntimeError(f"teacher and student {kind} names differ: {sorted(teacher.keys() ^ student.keys())}")
    return [(teacher[name], student[name]) for name in student]
