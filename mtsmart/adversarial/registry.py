"""The one place that maps `adversarial.method` names to the methods that implement them.

Above the method modules (they import `base`, this imports them), so there is no import circle
and nothing outside `mtsmart/adversarial/` needs a method's name.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch

from mtsmart.adversarial.ascent import FGM, PGD
from mtsmart.adversarial.base import AdversarialMethod, NoAdversary
from mtsmart.adversarial.config import AdversarialConfig
from mtsmart.adversarial.freelb import FreeLB
from mtsmart.adversarial.gradient_penalty import GradientPenalty
from mtsmart.adversarial.matrix import MatrixAttack
from mtsmart.adversarial.r3f import R3F
from mtsmart.adversarial.rdrop import RDrop
from mtsmart.adversarial.smart_method import SmartRegularizer
from mtsmart.smart_config import SmartConfig
from mtsmart.task_types import TaskType

Builder = Callable[[AdversarialConfig, SmartConfig, Optional[torch.Generator]], AdversarialMethod]


def _fgm(adv: AdversarialConfig, smart: SmartConfig, generator: Optional[torch.Generator]) -> AdversarialMethod:
    """fgsm and fgm: one step of size ε (fgsm is the inf-norm sign step), on x or on the matrix."""
    if adv.scope == "matrix":
        return MatrixAttack(step_size=adv.epsilon, steps=1, norm=adv.resolved_norm, radius=None, weight=adv.weight, name=adv.method)
    return FGM(epsilon=adv.epsilon, norm=adv.resolved_norm, weight=adv.weight, name=adv.method)


def _pgd(adv: AdversarialConfig, smart: SmartConfig, generator: Optional[torch.Generator]) -> AdversarialMethod:
    if adv.scope == "matrix":
        return MatrixAttack(
            step_size=adv.step_size, steps=adv.steps, norm=adv.resolved_norm, radius=adv.epsilon, weight=adv.weight, name="pgd"
        )
    return PGD(epsilon=adv.epsilon, step_size=adv.step_size, steps=adv.steps, norm=adv.resolved_norm, weight=adv.weight)


BUILDERS: dict[str, Builder] = {
    "none": lambda adv, smart, generator: NoAdversary(),
    "smart": lambda adv, smart, generator: SmartRegularizer(smart),
    "fgsm": _fgm,
    "fgm": _fgm,
    "pgd": _pgd,
    "freelb": lambda adv, smart, generator: FreeLB(
        epsilon=adv.epsilon, step_size=adv.step_size, steps=adv.steps, norm=adv.resolved_norm,
        init=adv.init, init_scale=adv.init_scale, generator=generator,
    ),
    "gradient_penalty": lambda adv, smart, generator: GradientPenalty(epsilon=adv.epsilon, weight=adv.weight),
    "r3f": lambda adv, smart, generator: R3F(init=adv.init, init_scale=adv.init_scale, weight=adv.weight, generator=generator),
    "rdrop": lambda adv, smart, generator: RDrop(weight=adv.weight),
}


def build_adversary(
    adv: AdversarialConfig,
    smart: SmartConfig,
    task_types: Iterable[TaskType],
    generator: Optional[torch.Generator] = None,
) -> AdversarialMethod:
    """The method `adversarial.method` selects (`smart` configures method smart), its options
    checked against the types of the tasks it will regularise (a divergence a task type cannot
    use is refused here, before anything is loaded).

    `generator` draws the random starts of FreeLB and R3F; None uses torch's global RNG (which the
    loop seeds and checkpoints).
    """
    if adv.method not in BUILDERS:
        raise ValueError(f"adversarial.method: unknown method {adv.method!r}; choose one of {sorted(BUILDERS)}")
    adversary = BUILDERS[adv.method](adv, smart, generator)
    adversary.check_task_types(task_types)
    return adversary
