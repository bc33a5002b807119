"""Splits declared as a seed-fixed, disjoint part of other files (SciTail's test file as a held-out
set and a training pool, SNLI dev + test as an auxiliary task): sizes, disjointness, determinism."""
from __future__ import annotations

import hashlib

import pytest
import yaml

from mtsmart.data.readers import DataError, held_out_rows, read_split
from mtsmart.options.data import DataConfig
from mtsmart.tasks.spec import load_task_spec


def test_held_out_rows_by_hand():
    order = sorted(range(10), key=lambda row: hashlib.sha256(f"7:{row}".encode()).digest())
    assert held_out_rows(10, 3, 7) == set(order[:3])
    assert held_out_rows(10, 3, 7) == held_out_rows(10, 3, 7) != held_out_rows(10, 3, 8)
    assert len(held_out_rows(2126, 1000, 0)) == 1000


@pytest.fixture
def local(data_root):
    return DataConfig(root=str(data_root), source="local")


def key(example):
    return example.text_a, example.text_b, example.label


@pytest.mark.parametrize("task, rows, held_out", [("scitail_from_test", 2126, 1000), ("snli_aux", 9842 + 9824, 1000)])
def test_the_parts_are_disjoint_cover_the_files_and_keep_their_order(local, task, rows, held_out):
    spec = load_task_spec(task)
    train, dev = read_split(spec, "train", local), read_split(spec, "dev", local)
    assert (len(train), len(dev)) == (rows - held_out, held_out)
    assert not {e.origin for e in train} & {e.origin for e in dev}  # no row in both
    assert len({e.origin for e in train} | {e.origin for e in dev}) == rows
    assert [e.origin for e in read_split(spec, "dev", local)] == [e.origin for e in dev]  # the same every time
    line = lambda e: (e.origin.rsplit(":", 1)[0], int(e.origin.rsplit(":", 1)[1]))  # noqa: E731
    assert [line(e) for e in train] == sorted(line(e) for e in train)  # file order kept


def test_the_held_out_scitail_pairs_are_not_in_its_training_pool_by_content(local):
    spec = load_task_spec("scitail_from_test")
    train, dev = read_split(spec, "train", local), read_split(spec, "dev", local)
    duplicated_in_file = len(train) + len(dev) - len({key(e) for e in train + dev})
    assert len({key(e) for e in train} & {key(e) for e in dev}) <= duplicated_in_file


def write_task(tmp_path, local_block):
    data = tmp_path / "data" / "t"
    data.mkdir(parents=True)
    (data / "all.tsv").write_text("".join(f"premise {i}\thypothesis {i}\t{'entails' if i % 2 else 'neutral'}\n" for i in range(10)))
    task = {"name": "t", "type": "classification", "labels": ["entails", "neutral"], "metrics": ["accuracy"],
            "local": {"format": "tsv", "dir": "t", "text_a": "premise", "text_b": "hypothesis", "label": "label",
                      "headerless": {"splits": ["train", "dev"], "columns": ["premise", "hypothesis", "label"]},
                      **local_block}}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(task))
    return load_task_spec(str(path)), DataConfig(root=str(tmp_path / "data"), source="local")


@pytest.mark.parametrize("block, message", [
    ({"files": {"train": {"part_of": "all.tsv", "part": "rest"}}}, "needs local.parts"),
    ({"files": {"train": {"part_of": "all.tsv", "part": "middle"}}, "parts": {"held_out": 3, "seed": 0}}, "held_out or rest"),
    ({"files": {"train": {"part_of": "all.tsv", "part": "rest"}}, "parts": {"held_out": 10, "seed": 0}}, "between 1 and 9"),
    ({"files": {"train": {"part_of": "none.tsv", "part": "rest"}}, "parts": {"held_out": 3, "seed": 0}}, "none.tsv"),
])
def test_a_bad_part_declaration_is_refused_naming_the_file(tmp_path, block, message):
    spec, cfg = write_task(tmp_path, block)
    with pytest.raises(DataError, match=message) as caught:
        read_split(spec, "train", cfg)
    assert "\n" not in str(caught.value)


def test_a_derived_task_trains_from_a_few_pool_examples(tmp_path, train_tiny):
    import json

    out = train_tiny(tmp_path / "run", "tasks=[scitail_from_test]", "data.train_examples=23", "train.max_steps=2",
                     "eval.max_examples=16")
    assert "scitail_from_test/accuracy" in json.loads((out / "results.json").read_text())["final"]
