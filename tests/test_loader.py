"""Training loader: determinism without the global RNG, epochs as permutations, exact resume,
length grouping, distributed shards; subsampling; evaluation order."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mtsmart.data.encoding import GroupItem, Item
from mtsmart.data.loader import TaskLoader, eval_batches, subsample


def make_items(n: int, seed: int = 0) -> list[Item]:
    lengths = np.random.default_rng(seed).integers(3, 120, size=n)
    return [Item(np.full(k, 5 + i, dtype=np.int32), np.zeros(k, dtype=np.int32), i % 2, i)
            for i, k in enumerate(lengths)]


def ids(loader: TaskLoader, steps: int) -> list[list[int]]:
    return [loader.next_batch().example_ids for _ in range(steps)]


def test_subsample_is_seeded_sorted_and_ignores_the_global_rng():
    items = list(range(1000))
    torch.manual_seed(0)
    first = subsample(items, 0.1, seed=3)
    torch.manual_seed(99)
    torch.rand(5)
    assert subsample(items, 0.1, seed=3) == first
    assert len(first) == 100 and first == sorted(first) and len(set(first)) == 100
    assert subsample(items, 0.1, seed=4) != first
    assert subsample(items, 1.0, seed=3) == items
    assert len(subsample(items, 0.0001, seed=3)) == 1  # SciTail 0.1%-style fractions keep one
    with pytest.raises(ValueError, match="data.train_fraction"):
        subsample(items, 0.0, seed=3)


def test_epochs_are_permutations_and_deterministic():
    items = make_items(50)
    loader = TaskLoader("rte", items, batch_size=8, seed=1, pad_token_id=0)
    assert loader.steps_per_epoch == 7  # 6 full batches + one of 2
    torch.manual_seed(123)  # the global RNG must not matter
    epoch0, epoch1 = ids(loader, 7), ids(loader, 7)
    assert loader.epoch == 2 and loader.position == 0
    for epoch in (epoch0, epoch1):
        flat = [i for batch in epoch for i in batch]
        assert sorted(flat) == list(range(50))
        assert [len(b) for b in epoch] == [8] * 6 + [2]
    assert epoch0 != epoch1
    torch.manual_seed(7)
    again = TaskLoader("rte", items, batch_size=8, seed=1, pad_token_id=0)
    assert ids(again, 14) == epoch0 + epoch1
    assert ids(TaskLoader("rte", items, 8, seed=2, pad_token_id=0), 7) != epoch0
    assert ids(TaskLoader("mrpc", items, 8, seed=1, pad_token_id=0), 7) != epoch0


def test_batches_carry_the_items():
    items = make_items(10)
    batch = TaskLoader("rte", items, batch_size=4, seed=0, pad_token_id=0).next_batch()
    for row, i in enumerate(batch.example_ids):
        assert batch.attention_mask[row].sum() == items[i].length
        assert batch.input_ids[row, 0] == 5 + i and batch.labels[row] == i % 2


@pytest.mark.parametrize("taken", [3, 7, 10, 14, 16])  # mid-epoch, at the boundary, past it
@pytest.mark.parametrize("group_by_length", [False, True])
def test_resume_yields_exactly_the_same_batches(taken, group_by_length):
    items = make_items(50)
    original = TaskLoader("rte", items, 8, seed=5, pad_token_id=0, group_by_length=group_by_length, chunk_batches=2)
    ids(original, taken)
    state = json.loads(json.dumps(original.state_dict()))  # plain JSON round trip
    resumed = TaskLoader("rte", items, 8, seed=5, pad_token_id=0, group_by_length=group_by_length, chunk_batches=2)
    resumed.load_state_dict(state)
    assert (resumed.epoch, resumed.position) == (original.epoch, original.position)
    expected = [original.next_batch() for _ in range(9)]
    got = [resumed.next_batch() for _ in range(9)]
    assert [b.example_ids for b in got] == [b.example_ids for b in expected]
    assert all(torch.equal(a.input_ids, b.input_ids) for a, b in zip(got, expected))


def test_resume_refuses_a_different_setup():
    items = make_items(50)
    state = TaskLoader("rte", items, 8, seed=5, pad_token_id=0).state_dict()
    with pytest.raises(ValueError, match="seed is 5 in the checkpoint but 6 now"):
        TaskLoader("rte", items, 8, seed=6, pad_token_id=0).load_state_dict(state)
    with pytest.raises(ValueError, match="num_items is 50 in the checkpoint but 49 now"):
        TaskLoader("rte", items[:49], 8, seed=5, pad_token_id=0).load_state_dict(state)


def padded_tokens(loader: TaskLoader) -> tuple[int, int]:
    """(padded positions, real tokens) over one epoch."""
    pad = real = 0
    for _ in range(loader.steps_per_epoch):
        batch = loader.next_batch()
        real += int(batch.attention_mask.sum())
        pad += batch.attention_mask.numel() - int(batch.attention_mask.sum())
    return pad, real


def test_group_by_length_cuts_padding_and_stays_random():
    items = make_items(800)
    plain_pad, real = padded_tokens(TaskLoader("rte", items, 16, seed=0, pad_token_id=0))
    grouped = TaskLoader("rte", items, 16, seed=0, pad_token_id=0, group_by_length=True, chunk_batches=10)
    grouped_pad, grouped_real = padded_tokens(grouped)
    assert grouped_real == real  # the same examples, once each
    assert grouped_pad < 0.2 * plain_pad, (grouped_pad, plain_pad)
    grouped.load_state_dict({**grouped.state_dict(), "epoch": 0, "position": 0})
    longest = [int(grouped.next_batch().attention_mask.shape[1]) for _ in range(grouped.steps_per_epoch)]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)
    epoch = [i for _ in range(grouped.steps_per_epoch) for i in grouped.next_batch().example_ids]
    assert sorted(epoch) == list(range(800))


def test_shards_cover_each_global_batch_exactly():
    items = make_items(50)
    world = 4
    global_batches = ids(TaskLoader("rte", items, 8, seed=2, pad_token_id=0, drop_last=True), 12)
    ranks = [TaskLoader("rte", items, 8, seed=2, pad_token_id=0, rank=r, world_size=world, drop_last=True)
             for r in range(world)]
    for step in range(12):
        shards = [rank.next_batch().example_ids for rank in ranks]
        assert all(len(s) == 2 for s in shards)
        assert [i for s in shards for i in s] == global_batches[step]


def test_sharded_last_batch_is_filled_so_every_rank_gets_a_full_shard():
    items = make_items(50)  # 6 full batches of 8 and 2 left over
    ranks = [TaskLoader("rte", items, 8, seed=2, pad_token_id=0, rank=r, world_size=4) for r in range(4)]
    assert ranks[0].steps_per_epoch == 7
    epoch = [[r.next_batch().example_ids for r in ranks] for _ in range(7)]
    assert all(len(shard) == 2 for step in epoch for shard in step)
    seen = [i for step in epoch for shard in step for i in shard]
    assert set(seen) == set(range(50)) and len(seen) == 56  # 6 fill-ins from the epoch's start


def test_bad_batch_setups_are_refused():
    items = make_items(10)
    with pytest.raises(ValueError, match="batch size 6 is not divisible by world size 4"):
        TaskLoader("rte", items, 6, seed=0, pad_token_id=0, rank=0, world_size=4)
    with pytest.raises(ValueError, match="10 items give no batch of 16"):
        TaskLoader("rte", items, 16, seed=0, pad_token_id=0, drop_last=True)


def test_drop_last_gives_full_batches_only():
    loader = TaskLoader("rte", make_items(50), 8, seed=0, pad_token_id=0, drop_last=True)
    assert loader.steps_per_epoch == 6
    assert all(len(b) == 8 for b in ids(loader, 18))


def test_ranking_groups_batch_by_group():
    groups = [GroupItem(tuple(make_items(k, seed=k)), 0, g, f"q{g}") for g, k in enumerate([1, 2, 3, 2, 1])]
    loader = TaskLoader("qnli_ranking", groups, 2, seed=0, pad_token_id=0)
    batch = loader.next_batch()
    assert batch.num_examples == 2 and batch.labels.tolist() == [0, 0]
    assert batch.num_sequences == sum(len(groups[i].candidates) for i in batch.example_ids)


def test_eval_batches_keep_dataset_order():
    items = make_items(23)
    batches = list(eval_batches("rte", items, 5, pad_token_id=0))
    assert [len(b.example_ids) for b in batches] == [5, 5, 5, 5, 3]
    assert [i for b in batches for i in b.example_ids] == list(range(23))
