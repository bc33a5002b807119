"""`mtsmart evaluate`: a trained run's metrics equal the ones the training loop logged; bad input exits 2."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mtsmart.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory, train_tiny) -> Path:
    # Evaluated at steps 2, 4 and 6: `best` and `last` are usually different checkpoints.
    out = tmp_path_factory.mktemp("eval") / "run"
    return train_tiny(out, "tasks=[rte,stsb]", "train.max_steps=6", "eval.every_steps=2", "eval.max_examples=32")


def evaluate_json(capsys, *args: str) -> dict:
    capsys.readouterr()
    assert main(["evaluate", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_last_checkpoint_reproduces_final_results_exactly(run, capsys):
    logged = json.loads((run / "results.json").read_text())
    report = evaluate_json(capsys, "--run", str(run))
    assert report["step"] == 6
    assert report["results"] == logged["final"]  # bit-identical floats


def test_best_checkpoint_reproduces_best_results_exactly(run, capsys):
    logged = json.loads((run / "results.json").read_text())
    report = evaluate_json(capsys, "--run", str(run), "--checkpoint", "best")
    best = dict(logged["best"])
    assert report["step"] == best.pop("step")
    assert report["results"] == best


def test_checkpoint_path_and_table(run, capsys):
    step = sorted((run / "checkpoints").glob("step_*"))[-1]
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--checkpoint", str(step)]) == 0
    out = capsys.readouterr().out
    final = json.loads((run / "results.json").read_text())["final"]
    assert f"rte         accuracy  {100 * final['rte/accuracy']:.2f}" in out  # × 100, as `train`'s table
    assert f"avg                   {100 * final['avg']:.2f}" in out


def test_more_examples_than_logged_changes_the_numbers_only_by_data(run, capsys):
    # --max-examples 16 evaluates a prefix: RTE accuracy must be a multiple of 1/16.
    report = evaluate_json(capsys, "--run", str(run), "--max-examples", "16")
    assert (report["results"]["rte/accuracy"] * 16) == pytest.approx(round(report["results"]["rte/accuracy"] * 16))


def test_unlabelled_test_split_is_refused(run, capsys):
    assert main(["evaluate", "--run", str(run), "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert "no labelled test set" in err and "rte" in err and "stsb" in err


@pytest.mark.parametrize(
    "make, args, message",
    [
        (lambda run, tmp: tmp / "absent", [], "run directory not found"),
        (lambda run, tmp: tmp, [], "config.yaml is missing"),
        (lambda run, tmp: run, ["--checkpoint", "/nonexistent/ckpt"], "no checkpoint directory /nonexistent/ckpt"),
    ],
)
def test_bad_input_exits_2_naming_it(run, tmp_path, capsys, make, args, message):
    assert main(["evaluate", "--run", str(make(run, tmp_path)), *args]) == 2
    assert message in capsys.readouterr().err


def test_run_without_checkpoints_exits_2(run, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(run / "config.yaml", bare / "config.yaml")
    assert main(["evaluate", "--run", str(bare)]) == 2
    assert f"no checkpoint under {bare / 'checkpoints'}" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(bare), "--checkpoint", "best"]) == 2
    assert "no best checkpoint" in capsys.readouterr().err
