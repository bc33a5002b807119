"""An output_dir that would write a run over other things is refused in one line before anything is
written: empty (`output_dir=$OUT` with OUT unset), the current folder, the checkout, its source tree."""
from __future__ import annotations

from pathlib import Path

import pytest

from mtsmart.cli import main
from mtsmart.options.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("value,words", [
    ("", "output_dir: empty"),
    (".", "is the current folder"),
    (str(REPO / "tasks"), "inside the source folder"),
    (str(REPO / "mtsmart" / "runs" / "x"), "inside the source folder"),
    (str(REPO / "tests"), "inside the source folder"),
])
def test_an_output_dir_over_other_things_is_refused(value, words):
    with pytest.raises(ConfigError, match=words):
        load_config(overrides=[f"output_dir={value}"])


def test_the_checkout_itself_is_refused(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # not the current folder: the checkout's own rule
    with pytest.raises(ConfigError, match="the mtsmart checkout itself"):
        load_config(overrides=[f"output_dir={REPO}"])


def test_runs_and_study_folders_are_fine(tmp_path):
    for value in ("runs/my_run", str(REPO / "studies" / "mt_glue" / "runs" / "x"), str(tmp_path / "run")):
        assert load_config(overrides=[f"output_dir={value}"]).output_dir == value


def test_the_cli_refuses_an_empty_output_dir_in_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "output_dir=", "model.name_or_path=tiny"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "output_dir: empty" in err
    assert list(tmp_path.iterdir()) == []

