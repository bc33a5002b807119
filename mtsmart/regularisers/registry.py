"""The one place that maps a method's options to the method that implements them.

Above the method modules (they import `base`, this imports them), so there is no import circle
and nothing outside `mtsmart/regularisers/` needs a method's name. The options' class says which
method: `SmartConfig` is SMART's Rs, `FGMConfig` FGM, ..., None plain fine-tuning; the run's
config chooses by `adversarial.method` (`Config.regulariser_options`).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import torch

from mtsmart.regularisers.ascent import FGM, PGD
from mtsmart.regularisers.base import AdversarialMethod, NoAdversary
from mtsmart.options.regularisers import (
    FGMConfig, FGSMConfig, FreeLBConfig, GradientPenaltyConfig, PGDConfig, R3FConfig, RDropConfig,
)
from mtsmart.regularisers.freelb import FreeLB
from mtsmart.regularisers.gradient_penalty import GradientPenalty
from mtsmart.regularisers.matrix import MatrixAttack
from mtsmart.regularisers.r3f import R3F
from mtsmart.regularisers.rdrop import RDrop
from mtsmart.regularisers.smart_method import SmartRegularizer
from mtsmart.options.smart import SmartConfig
from mtsmart.tasks.types import TaskType

Builder = Callable[[Any, Optional[torch.Generator]], AdversarialMethod]


def _fgsm(opt: FGSMConfig, generator: Optional[torch.Generator]) -> AdversarialMethod:
    """The sign step of size ε: FGM under the inf norm, on x or on the matrix."""
    if opt.scope == "matrix":
        return MatrixAttack(step_size=opt.epsilon, steps=1, norm="inf", radius=None, weight=opt.weight, name="fgsm")
    return FGM(epsilon=opt.epsilon, norm="inf", weight=opt.weight, name="fgsm")


def _fgm(opt: FGMConfig, generator: Optional[torch.Generator]) -> AdversarialMethod:
    if opt.scope == "matrix":
        return MatrixAttack(step_size=opt.epsilon, steps=1, norm=opt.norm, radius=None, weight=opt.weight, name="fgm")
    return FGM(epsilon=opt.epsilon, norm=opt.norm, weight=opt.weight, name="fgm")


def _pgd(opt: PGDConfig, generator: Optional[torch.Generator]) -> AdversarialMethod:
    if opt.scope == "matrix":
        return MatrixAttack(step_size=opt.step_size, steps=opt.steps, norm=opt.norm, radius=opt.epsilon, weight=opt.weight, name="pgd")
    return PGD(epsilon=opt.epsilon, step_size=opt.step_size, steps=opt.steps, norm=opt.norm, weight=opt.weight)


def _freelb(opt: FreeLBConfig, generator: Optional[torch.Generator]) -> AdversarialMethod:
    return FreeLB(epsilon=opt.epsilon, step_size=opt.step_size, steps=opt.steps, norm=opt.norm,
                  init=opt.init, init_scale=opt.init_scale, generator=generator)


BUILDERS: dict[Optional[type], Builder] = {
    type(None): lambda opt, generator: NoAdversary(),
    SmartConfig: lambda opt, generator: SmartRegularizer(opt),
    FGSMConfig: _fgsm,
    FGMConfig: _fgm,
    PGDConfig: _pgd,
    FreeLBConfig: _freelb,
    GradientPenaltyConfig: lambda opt, generator: GradientPenalty(epsilon=opt.epsilon, weight=opt.weight),
    R3FConfig: lambda opt, generator: R3F(init=opt.init, init_scale=opt.init_scale, weight=opt.weight, generator=generator),
    RDropConfig: lambda opt, generator: RDrop(alpha=opt.alpha),
}


def build_adversary(
    options: Any,
    task_types: Iterable[TaskType],
    generator: Optional[torch.Generator] = None,
) -> AdversarialMethod:
    """The method its options' class names (None: plain fine-tuning), checked against the types of
    the tasks it will regularise (a divergence a task type cannot use is refused here, before
    anything is loaded).

    `generator` draws the random starts of FreeLB and R3F; None uses torch's global RNG (which the
    loop seeds and checkpoints).
    """
    builder = BUILDERS.get(type(options))
    if builder is None:
        raise ValueError(f"no regulariser takes options of type {type(options).__name__}; "
                         f"give one of {sorted(t.__name__ for t in BUILDERS if t is not type(None))} or None")
    adversary = builder(options, generator)
    adversary.check_task_types(task_types)
    return adversary
