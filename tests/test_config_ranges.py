"""Every config value is checked where it is declared, before anything is loaded or written:
one line naming the key, the value and what is allowed; exit code 2; no output folder made."""
from __future__ import annotations

import pytest

from mtsmart.cli import main

BAD = [
    ("train.grad_accum=0", "train.grad_accum: 0 is out of range; allowed: >= 1"),
    ("train.batch_size=0", "train.batch_size: 0 is out of range; allowed: >= 1"),
    ("train.epochs=0", "train.epochs: 0.0 is out of range; allowed: > 0"),
    ("train.log_every_steps=0", "train.log_every_steps: 0 is out of range; allowed: >= 1"),
    ("train.warmup_ratio=5", "train.warmup_ratio: 5.0 is out of range; allowed: in [0, 1)"),
    ("train.grad_clip=-1", "train.grad_clip: -1.0 is out of range; allowed: >= 0"),
    ("train.lr=-1", "train.lr: -1.0 is out of range; allowed: > 0"),
    ("train.lr=0", "train.lr: 0.0 is out of range; allowed: > 0"),
    ("train.adam_eps=0", "train.adam_eps: 0.0 is out of range; allowed: > 0"),
    ("train.weight_decay=-0.1", "train.weight_decay: -0.1 is out of range; allowed: >= 0"),
    ("train.max_steps=-5", "train.max_steps: -5 is out of range; allowed: >= 0"),
    ("train.seed=-1", "train.seed: -1 is out of range; allowed: >= 0"),
    ("train.save_every_steps=-1", "train.save_every_steps: -1 is out of range; allowed: >= 0"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints: 0 is out of range; allowed: >= 1"),
    ("train.max_nonfinite_in_row=0", "train.max_nonfinite_in_row: 0 is out of range; allowed: >= 1"),
    ("train.batch_size=10 train.grad_accum=3", "train.batch_size: 10 must be a multiple of train.grad_accum 3"),
    ("eval.batch_size=0", "eval.batch_size: 0 is out of range; allowed: >= 1"),
    ("eval.every_steps=-1", "eval.every_steps: -1 is out of range; allowed: >= 0"),
    ("eval.max_examples=-2", "eval.max_examples: -2 is out of range; allowed: >= 0"),
    ("model.tiny_heads=0", "model.tiny_heads: 0 is out of range; allowed: >= 1"),
    ("model.tiny_hidden_size=30 model.tiny_heads=4", "model.tiny_hidden_size: 30 must be a multiple of model.tiny_heads 4"),
    ("tasks=[]", "tasks: give at least one task"),
    ("tasks=[rte,stsb,rte]", "tasks: 'rte' is listed twice"),
    ("bregman.early_fraction=2", "bregman.early_fraction: 2.0 must be in [0, 1]"),
    ("data.train_examples=-3", "data.train_examples: -3 must be >= 0"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[case[0] for case in BAD])
def test_a_bad_value_is_refused_in_one_line_before_anything_is_written(tmp_path, capsys, overrides, message):
    out = tmp_path / "run"
    code = main(["train", *overrides.split(), f"output_dir={out}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("mtsmart: configuration error: ") and err.count("\n") == 1, err
    assert message in err
    assert not out.exists()


def test_epochs_do_not_matter_when_max_steps_is_set():
    from mtsmart.options.config import load_config

    assert load_config(None, ["train.epochs=0", "train.max_steps=10"]).train.max_steps == 10
