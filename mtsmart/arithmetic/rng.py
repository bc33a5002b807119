"""Replaying the random state of a forward pass, so two forwards draw the same dropout masks.

SMART's Rs compares f(x̃; θ) with f(x; θ). In training mode f is random (dropout): with
independent masks, ℓs(f(x̃), f(x)) measures mostly the dropout noise, not the perturbation
(docs/method.md "The radius" puts the perturbation's effect at ~1e-7 at the paper's ε). Replaying the clean
forward's random state makes both forwards use one sampled sub-network, so Rs is the smoothness
of one function, as Eq. (1) defines it.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional

import torch


@dataclass(frozen=True)
class RngSnapshot:
    cpu: torch.Tensor
    cuda_device: Optional[int]
    cuda: Optional[torch.Tensor]


def snapshot(device: torch.device) -> RngSnapshot:
    """The random state a forward on `device` is about to consume."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return RngSnapshot(torch.get_rng_state(), index, torch.cuda.get_rng_state(index))
    return RngSnapshot(torch.get_rng_state(), None, None)


@contextlib.contextmanager
def replay(state: RngSnapshot) -> Iterator[None]:
    """Run the block from `state`; afterwards the global random state is as before the block."""
    devices = [] if state.cuda_device is None else [state.cuda_device]
    with torch.random.fork_rng(devices=devices, device_type="cuda"):
        torch.set_rng_state(state.cpu)
        if state.cuda is not None:
            torch.cuda.set_rng_state(state.cuda, state.cuda_device)
        yield


class PrivateStream:
    """A random stream of its own, seeded once: inside `with stream.active():` every draw — dropout
    masks, torch.randn without a generator — comes from this stream, and afterwards the global
    state is exactly as before the block. A regulariser's extra forwards and noise run in one, so
    the clean forward's dropout masks and everything after them are the same with the regulariser
    as without it (docs/method.md, "Private random streams")."""

    def __init__(self, seed: int):
        self.seed = seed
        self.state: Optional[RngSnapshot] = None  # drawn on first use, on the device then in use

    def _start(self, device: torch.device) -> RngSnapshot:
        devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            torch.manual_seed(self.seed)
            return snapshot(device)

    @contextlib.contextmanager
    def active(self, device: torch.device) -> Iterator[None]:
        state = self.state if self.state is not None else self._start(device)
        with replay(state):
            try:
                yield
            finally:
                self.state = snapshot(device)  # where the stream has got to

    def state_dict(self) -> dict:
        if self.state is None:
            return {}
        return {"cpu": self.state.cpu, "cuda_device": self.state.cuda_device, "cuda": self.state.cuda}

    def load_state_dict(self, state: dict) -> None:
        # RNG states are CPU byte tensors wherever a checkpoint was mapped to.
        cuda = None if state.get("cuda") is None else state["cuda"].cpu()
        self.state = RngSnapshot(state["cpu"].cpu(), state["cuda_device"], cuda) if state else None
