"""Tokenisation against per-example tokenizer calls, padding and label tensors per task type,
ranking groups (QNLI dev counted independently from the file), and the model's view of a batch."""
from __future__ import annotations

import csv
import logging
from collections import defaultdict

import numpy as np
import pytest
import torch

from mtsmart.options.data import DataConfig
from mtsmart.data.encoding import GroupItem, Item, collate, encode_split
from mtsmart.data.examples import Example
from mtsmart.data.readers import read_split
from mtsmart.arithmetic.divergence import MASKED_SCORE
from mtsmart.model.multitask import task_output
from mtsmart.tasks.spec import load_task_spec


def item(ids, label=None, index=0, types=True):
    ids = np.asarray(ids, dtype=np.int32)
    return Item(ids, np.zeros_like(ids) if types else None, label, index)


def test_pairs_match_one_by_one_tokenisation(data_root, tiny_tokenizer):
    spec = load_task_spec("rte")
    examples = read_split(spec, "dev", DataConfig(root=str(data_root)))
    items = encode_split(spec, examples, tiny_tokenizer, max_seq_len=48)
    assert len(items) == 277 and items.excluded_groups == 0
    truncated = 0
    for ex, it in zip(examples, items):
        ref = tiny_tokenizer(ex.text_a, ex.text_b, truncation="longest_first", max_length=48)
        assert it.input_ids.tolist() == ref["input_ids"]
        assert it.token_type_ids.tolist() == ref["token_type_ids"]
        assert it.label == ex.label
        truncated += len(ref["input_ids"]) == 48
    assert truncated > 50  # RTE premises are long: truncation really happened
    assert [it.index for it in items] == list(range(277))


def test_single_sentences_and_mixed_splits(tiny_tokenizer):
    spec = load_task_spec("cola")
    examples = [Example("The cat sat.", None, 1, "f:1"), Example("Cat the sat on.", None, 0, "f:2")]
    items = encode_split(spec, examples, tiny_tokenizer, max_seq_len=16)
    assert items[0].input_ids.tolist() == tiny_tokenizer("The cat sat.")["input_ids"]
    assert not items[0].token_type_ids.any()
    mixed = examples + [Example("a", "b", 1, "f:3")]
    with pytest.raises(ValueError, match="f:1: a single sentence in a split of sentence pairs"):
        encode_split(spec, mixed, tiny_tokenizer, max_seq_len=16)


class NoTypeIdsTokenizer:
    """A tokenizer without token_type_ids (as RoBERTa's): the real one with that key removed."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, *args, **kwargs):
        encoded = self.tokenizer(*args, **kwargs)
        del encoded["token_type_ids"]
        return encoded


def test_tokenizer_without_token_types(tiny_tokenizer):
    spec = load_task_spec("rte")
    items = encode_split(spec, [Example("a b", "c", 0, "f:1")], NoTypeIdsTokenizer(tiny_tokenizer), 16)
    assert items[0].token_type_ids is None
    assert collate("rte", items, 0).token_type_ids is None


def test_collate_classification_pads_to_longest():
    items = [item([101, 5, 102], 1, 7), item([101, 5, 6, 7, 102], 0, 3), item([101, 102], 1, 9)]
    batch = collate("rte", items, pad_token_id=0)
    assert batch.input_ids.tolist() == [[101, 5, 102, 0, 0], [101, 5, 6, 7, 102], [101, 102, 0, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0, 0], [1] * 5, [1, 1, 0, 0, 0]]
    assert batch.token_type_ids.shape == (3, 5) and batch.input_ids.dtype == torch.long
    assert batch.labels.dtype == torch.long and batch.labels.tolist() == [1, 0, 1]
    assert batch.example_ids == [7, 3, 9] and batch.num_examples == 3
    assert batch.candidate_slots is None and batch.candidate_mask is None


def test_collate_regression_and_unlabelled():
    batch = collate("stsb", [item([1, 2], 4.5), item([1, 2, 3], 0.0)], pad_token_id=9)
    assert batch.labels.dtype == torch.float32 and batch.labels.tolist() == [4.5, 0.0]
    assert batch.input_ids.tolist() == [[1, 2, 9], [1, 2, 3]]
    assert collate("rte", [item([1]), item([1, 2])], 0).labels is None
    with pytest.raises(ValueError, match="mixes labelled and unlabelled"):
        collate("rte", [item([1], 1), item([1, 2])], 0)


def test_collate_ranking_builds_the_candidate_grid():
    groups = [
        GroupItem((item([1, 2], index=0), item([1, 2, 3], index=1)), 1, 0, "q0"),
        GroupItem((item([1], index=2), item([1, 4], index=3), item([1, 5, 6, 7], index=4)), 2, 1, "q1"),
        GroupItem((item([1, 8], index=5),), 0, 2, "q2"),
    ]
    batch = collate("qnli_ranking", groups, pad_token_id=0)
    assert batch.input_ids.shape == (6, 4)  # N = all candidates, T = longest candidate
    assert batch.candidate_mask.tolist() == [[True, True, False], [True, True, True], [True, False, False]]
    assert batch.candidate_slots.tolist() == [0, 1, 3, 4, 5, 6]  # g * C + c with C = 3
    assert batch.labels.tolist() == [1, 2, 0] and batch.example_ids == [0, 1, 2]
    assert batch.num_examples == 3 and batch.num_sequences == 6


def test_ranking_batch_through_the_model(tiny_model_factory):
    spec = load_task_spec("qnli_ranking")
    model = tiny_model_factory([spec]).eval()
    groups = [GroupItem((item([101, 7, 102]), item([101, 8, 9, 102])), 0, 0, "a"),
              GroupItem((item([101, 10, 102]),), 0, 1, "b")]
    batch = collate("qnli_ranking", groups, 0)
    with torch.no_grad():
        grid = task_output(model, batch)
        raw = model(task="qnli_ranking", input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    token_type_ids=batch.token_type_ids).squeeze(-1)
    assert grid.shape == (2, 2)
    assert torch.equal(grid[0], raw[:2]) and grid[1, 0] == raw[2] and grid[1, 1] == MASKED_SCORE


def qnli_dev_groups_by_hand(data_root):
    """Independent count: candidate labels per question, straight from the file."""
    with open(data_root / "glue/QNLI/dev.tsv", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    groups = defaultdict(list)
    for _, question, _, label in rows:
        groups[question].append(label)
    return groups


def test_qnli_dev_ranking_groups(data_root, tiny_tokenizer, caplog):
    spec = load_task_spec("qnli_ranking")
    examples = read_split(spec, "dev", DataConfig(root=str(data_root)))
    with caplog.at_level(logging.WARNING):
        items = encode_split(spec, examples, tiny_tokenizer, max_seq_len=64)
    by_hand = qnli_dev_groups_by_hand(data_root)
    rankable = {q: labels for q, labels in by_hand.items() if labels.count("entailment") == 1}
    assert len(by_hand) == 4100 and len(rankable) == 2702  # 1398 questions have no positive
    assert len(items) == 2702 and items.excluded_groups == 1398
    assert "1398 of 4100 query groups" in caplog.text
    assert [g.group for g in items] == list(rankable)
    for g in items:
        assert rankable[g.group][g.target] == "entailment"
        assert len(g.candidates) == len(rankable[g.group])
    assert [g.index for g in items] == list(range(2702))
    assert collate("qnli_ranking", items[:16], 0).candidate_mask.sum() == sum(len(g.candidates) for g in items[:16])


def test_unlabelled_ranking_groups_are_all_kept(tiny_tokenizer):
    spec = load_task_spec("qnli_ranking")
    examples = [Example("q1", "s1", None, "f:1", "q1"), Example("q1", "s2", None, "f:2", "q1"),
                Example("q2", "s3", None, "f:3", "q2")]
    items = encode_split(spec, examples, tiny_tokenizer, 16)
    assert [len(g.candidates) for g in items] == [2, 1] and items.excluded_groups == 0
    assert all(g.target is None for g in items) and collate("qnli_ranking", items, 0).labels is None


def test_sst2_train_is_tokenised_in_batches(data_root, tiny_tokenizer):
    """67k sentences go to the fast tokenizer in chunks of TOKENIZE_CHUNK, not one call each (the
    speed itself is a benchmark's business, not a timed test's)."""
    from mtsmart.data.encoding import TOKENIZE_CHUNK

    spec = load_task_spec("sst2")
    examples = read_split(spec, "train", DataConfig(root=str(data_root)))
    calls = []

    class Counting:
        def __getattr__(self, name):
            return getattr(tiny_tokenizer, name)

        def __call__(self, *args, **kwargs):
            calls.append(len(args[0]))
            return tiny_tokenizer(*args, **kwargs)

    items = encode_split(spec, examples, Counting(), max_seq_len=128)
    assert len(items) == 67349
    assert len(calls) == -(-67349 // TOKENIZE_CHUNK) and sum(calls) == 67349
