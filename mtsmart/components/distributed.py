"""Data-parallel training under torchrun: process group, DDP wrapping, gradient sync, gathering.

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; a plain
`python -m mtsmart train` has none of them and is world size 1, where every helper here is a
no-op (no process group is created). See docs/distributed.md.

Gradient averaging. Every rank runs the same task on its shard of the global batch (equal
shard sizes: the loader fills the last batch of an epoch), the loss is a per-rank mean, and the
gradients are averaged over ranks, so 2 ranks × B/2 give the gradient of 1 process × B.
Two ways to average, chosen per run from what the regulariser declares (`extra_backward`,
mtsmart.regularisers.base):
  - DDP's own: its backward hooks all-reduce bucket by bucket while the backward still runs
    (communication overlaps compute). DDP reduces in the first backward after a forward run
    outside `no_sync()`, so this needs exactly one backward per micro-batch (the loop checks).
  - `average_gradients` after the last backward, every backward of the step run under
    `no_sync()`: needed by methods that back-propagate several times per micro-batch
    (FreeLB's K backwards, the matrix-scope attacks), where DDP's hooks would reduce only the
    first one.
Only the step's task head is used, so DDP is built with find_unused_parameters=True: the heads
of the other tasks are marked ready without a gradient and keep grad None, as in one process.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mtsmart.components.evaluate import EvalSet, TaskPredictions, evaluate, metrics_of, predict
from mtsmart.arithmetic.metrics import glue_average
from mtsmart.tasks.types import task_type_of

@dataclass(frozen=True)
class World:
    """This process's place in the run (from torchrun's environment variables)."""

    rank: int = 0  # global rank, 0 … world_size − 1
    local_rank: int = 0  # rank on this machine: the GPU index
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


ONE_PROCESS = World()


def world_from_env() -> World:
    def read(name: str, default: int) -> int:
        raw = os.environ.get(name, str(default))
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None

    world = World(rank=read("RANK", 0), local_rank=read("LOCAL_RANK", 0), world_size=read("WORLD_SIZE", 1))
    if world.world_size < 1 or not 0 <= world.rank < world.world_size:
        raise ValueError(f"RANK={world.rank} WORLD_SIZE={world.world_size}: need 0 <= RANK < WORLD_SIZE")
    return world


def setup() -> tuple[World, torch.device]:
    """Join the process group (env://) when WORLD_SIZE > 1; this rank's device.

    nccl on CUDA (one GPU per process: cuda:LOCAL_RANK), gloo on the CPU.
    """
    world = world_from_env()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", world.local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world.enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo", init_method="env://")
    return world, device


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP around `model` (which it broadcasts from rank 0); the model itself in one process.

    forward_sync_buffers=False: the encoder's buffers are constants (position ids), synced once
    at construction; re-broadcasting them at every forward would only cost communication.
    """
    if not dist.is_initialized():
        return model
    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=True,
        forward_sync_buffers=False,
    )


def gradient_sync(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Run a micro-batch with DDP's all-reduce on (`sync`) or off (`no_sync()`)."""
    if isinstance(model, DistributedDataParallel) and not sync:
        return model.no_sync()
    return contextlib.nullcontext()


@torch.no_grad()
def average_gradients(model: nn.Module) -> None:
    """grad ← mean over ranks, for every parameter that has one (one flat all-reduce).

    All ranks trained the same task, so the same parameters have grad None everywhere.
    """
    if not dist.is_initialized():
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def all_true(flag: bool, device: torch.device) -> bool:
    """True on every rank iff `flag` is True on every rank (e.g. "this step's loss is finite")."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor(int(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def gather_objects(obj: Any) -> list[Any]:
    """[obj of rank 0, obj of rank 1, …] on every rank (pickled; for small objects)."""
    if not dist.is_initialized():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# --------------------------------------------------------------------------- evaluation


def shard(items: Sequence, rank: int, world_size: int) -> list:
    """The contiguous `rank`-th of `world_size` near-equal parts of `items`."""
    bounds = np.linspace(0, len(items), world_size + 1).round().astype(int)
    return list(items[bounds[rank]:bounds[rank + 1]])


def merge_predictions(parts: Sequence[tuple[list[int], TaskPredictions]], grouped: bool) -> TaskPredictions:
    """Each rank's (sorted example ids, predictions) → the predictions of the whole set in id order.

    Ranking grids of different shards may differ in width: rows are re-padded as `predict`
    pads them (scores −inf, mask False beyond a row's candidates).
    """
    ids = np.concatenate([np.asarray(part_ids, dtype=np.int64) for part_ids, _ in parts])
    order = np.argsort(ids, kind="stable")
    labelled = all(p.labels is not None for _, p in parts)
    labels = np.concatenate([p.labels for _, p in parts])[order] if labelled else None
    if not grouped:
        return TaskPredictions(outputs=np.concatenate([p.outputs for _, p in parts])[order], mask=None, labels=labels)
    width = max(p.outputs.shape[1] for _, p in parts)
    scores = np.concatenate([_pad(p.outputs, width, -np.inf) for _, p in parts])[order]
    mask = np.concatenate([_pad(p.mask, width, False) for _, p in parts])[order]
    return TaskPredictions(outputs=scores.astype(np.float32), mask=mask, labels=labels)


def _pad(array: np.ndarray, width: int, value) -> np.ndarray:
    return np.pad(array, ((0, 0), (0, width - array.shape[1])), constant_values=value)


def evaluate_sharded(
    model: nn.Module, eval_sets: Sequence[EvalSet], device: torch.device, autocast, world: World
) -> dict[str, float]:
    """mtsmart.components.evaluate.evaluate with each rank predicting a contiguous share of the batches.

    The predictions of all ranks are gathered on every rank, so every rank computes the same
    metrics, equal to one process's (the same batches meet the same parameters).
    """
    if not world.enabled:
        return evaluate(model, eval_sets, device, autocast)
    results: dict[str, float] = {}
    for eval_set in eval_sets:
        mine = shard(eval_set.batches, world.rank, world.world_size)
        ids = sorted(i for batch in mine for i in batch.example_ids)
        local = predict(model, mine, eval_set.spec, device, autocast) if mine else None
        parts = [part for part in gather_objects((ids, local)) if part[1] is not None]
        merged = merge_predictions(parts, grouped=task_type_of(eval_set.spec).grouped)
        for metric, value in metrics_of(eval_set.spec, merged).items():
            results[f"{eval_set.name}/{metric}"] = value
    results["avg"] = glue_average(results, {e.name: list(e.spec.metrics) for e in eval_sets})
    return results
