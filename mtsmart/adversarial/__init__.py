"""The adversarial-training family (SMART.md §3): SMART, FGSM, FGM, PGD, FreeLB, gradient penalty, R3F."""
from mtsmart.adversarial.base import (
    AdversarialContext,
    AdversarialMethod,
    AdversarialResult,
    build_adversary,
)
from mtsmart.adversarial.config import METHODS, AdversarialConfig

__all__ = [
    "METHODS",
    "AdversarialConfig",
    "AdversarialContext",
    "AdversarialMethod",
    "AdversarialResult",
    "build_adversary",
]
