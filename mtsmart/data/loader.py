"""Batches of one task: an endless, resumable, shardable training iterator, and eval batches.

Every epoch's batch order is a pure function of (seed, task, epoch): a private
torch.Generator is seeded from those three, never from the global RNG. A loader's state is
therefore just (epoch, position in the epoch) plus its settings, all plain JSON, and a restored
loader yields exactly the batches the original would have.

Distributed training: every rank computes the same global batches of `batch_size` examples
and takes its contiguous shard of `batch_size // world_size` (so the global batch, and the
gradient it averages over, does not depend on the number of ranks).
"""
from __future__ import annotations

import hashlib
import itertools
from typing import Iterator, Optional, Sequence

import torch

from mtsmart.tasks.batch import Batch
from mtsmart.data.encoding import collate

# group_by_length sorts by length within windows of this many batches: wide enough that
# batches are nearly uniform in length, narrow enough that order stays random.
CHUNK_BATCHES = 50


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any values; stable across processes (unlike hash())."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def subsample(items: Sequence, fraction: float, seed: int, count: int = 0) -> list:
    """A seed-determined `fraction` of items (at least one), or `count` of them when count > 0
    (all when the set is smaller), kept in dataset order."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"data.train_fraction: {fraction} must be in (0, 1]")
    keep = min(count, len(items)) if count > 0 else max(1, round(fraction * len(items)))
    if keep == len(items):
        return list(items)
    generator = torch.Generator().manual_seed(derive_seed("subsample", seed))
    chosen = sorted(torch.randperm(len(items), generator=generator)[:keep].tolist())
    return [items[i] for i in chosen]


def epoch_batches(
    lengths: Sequence[int],
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    group_by_length: bool = False,
    drop_last: bool = False,
    fill_last: bool = False,
    chunk_batches: int = CHUNK_BATCHES,
) -> list[list[int]]:
    """The global batches (lists of item positions) of one epoch.

    group_by_length: sort each window of `chunk_batches` batches by length, cut it into
    batches, then shuffle the batch order, so each batch holds similar lengths (less padding)
    but the sequence of batches is still random. A last partial batch is dropped
    (drop_last), filled up with the epoch's first items (fill_last: so every rank gets an equal
    shard), or kept short.
    """
    n = len(lengths)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator).tolist() if shuffle else list(range(n))
    if group_by_length:
        window = batch_size * chunk_batches
        order = [i for s in range(0, n, window) for i in sorted(order[s:s + window], key=lengths.__getitem__)]
    batches = [order[s:s + batch_size] for s in range(0, n, batch_size)]
    short = batch_size - len(batches[-1])
    if short and drop_last:
        batches.pop()
    elif short and fill_last:
        batches[-1] = batches[-1] + list(itertools.islice(itertools.cycle(order), short))
    if group_by_length and shuffle:
        batches = [batches[p] for p in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


class TaskLoader:
    """Endless iterator of one task's training Batches, epoch after epoch.

    `epoch` counts completed epochs; `position` the batches taken from the current one.
    """

    def __init__(
        self,
        task: str,
        items: Sequence,
        batch_size: int,
        seed: int,
        pad_token_id: int,
        shuffle: bool = True,
        group_by_length: bool = False,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        chunk_batches: int = CHUNK_BATCHES,
    ):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"task {task!r}: need batch_size >= 1 and 0 <= rank < world_size")
        if batch_size % world_size:
            raise ValueError(
                f"task {task!r}: batch size {batch_size} is not divisible by world size {world_size}"
            )
        if len(items) == 0 or (drop_last and len(items) < batch_size):
            raise ValueError(f"task {task!r}: {len(items)} items give no batch of {batch_size}")
        self.task = task
        self.items = items
        self.batch_size = batch_size
        self.seed = seed
        self.pad_token_id = pad_token_id
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.chunk_batches = chunk_batches
        self._lengths = [item.length for item in items]
        full, rest = divmod(len(items), batch_size)
        self.steps_per_epoch = full + (1 if rest and not drop_last else 0)
        self.epoch = 0
        self.position = 0
        self._plan: Optional[tuple[int, list[list[int]]]] = None  # (epoch, its batches)

    def _batches(self) -> list[list[int]]:
        if self._plan is None or self._plan[0] != self.epoch:
            batches = epoch_batches(
                self._lengths,
                self.batch_size,
                derive_seed(self.seed, self.task, self.epoch),
                shuffle=self.shuffle,
                group_by_length=self.group_by_length,
                drop_last=self.drop_last,
                fill_last=self.world_size > 1,
                chunk_batches=self.chunk_batches,
            )
            self._plan = (self.epoch, batches)
        return self._plan[1]

    def next_batch(self) -> Batch:
        global_batch = self._batches()[self.position]
        per_rank = len(global_batch) // self.world_size
        shard = global_batch[self.rank * per_rank:(self.rank + 1) * per_rank]
        self.position += 1
        if self.position == self.steps_per_epoch:
            self.epoch += 1
            self.position = 0
        return collate(self.task, [self.items[i] for i in shard], self.pad_token_id)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        return self.next_batch()

    def _settings(self) -> dict:
        return {
            "task": self.task,
            "seed": self.seed,
            "num_items": len(self.items),
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "shuffle": self.shuffle,
            "group_by_length": self.group_by_length,
            "drop_last": self.drop_last,
            "chunk_batches": self.chunk_batches,
        }

    def state_dict(self) -> dict:
        """Plain JSON: where the loader is, and the settings its batch order depends on."""
        return {"epoch": self.epoch, "position": self.position, **self._settings()}

    def load_state_dict(self, state: dict) -> None:
        for key, now in self._settings().items():
            if state.get(key) != now:
                raise ValueError(
                    f"loader state of task {self.task!r}: {key} is {state.get(key)!r} in the "
                    f"checkpoint but {now!r} now; the batch order would differ"
                )
        if not 0 <= state["position"] < self.steps_per_epoch:
            raise ValueError(f"loader state of task {self.task!r}: position {state['position']} out of range")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])


def eval_batches(task: str, items: Sequence, batch_size: int, pad_token_id: int) -> Iterator[Batch]:
    """Batches in dataset order, the last one possibly short: for evaluation and prediction."""
    if batch_size < 1:
        raise ValueError(f"task {task!r}: eval batch size {batch_size} must be positive")
    for start in range(0, len(items), batch_size):
        yield collate(task, items[start:start + batch_size], pad_token_id)
