"""The closing lines of a run: its TensorBoard command works as printed, activated or not."""
from __future__ import annotations

import sys
from pathlib import Path

from mtsmart.components import progress

FINAL = {"rte/accuracy": 0.5957, "avg": 0.5957}


def test_the_final_table_is_x100_and_names_the_run(tmp_path):
    text = progress.final_summary(FINAL, tmp_path)
    assert "rte   accuracy           59.57" in text and f"run directory: {tmp_path}" in text


def test_tensorboard_on_path_is_named_plainly(tmp_path, monkeypatch):
    monkeypatch.setattr(progress.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert progress.final_summary(FINAL, tmp_path).endswith(f"curves: tensorboard --logdir {tmp_path / 'tb'}")


def test_an_environment_not_activated_gets_the_tensorboard_beside_its_python(tmp_path, monkeypatch):
    """scripts/train_mt.sh runs .venv/bin/python without activating .venv: `tensorboard` alone is not found."""
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "tensorboard").write_text("#!/bin/sh\n")
    monkeypatch.setattr(progress.shutil, "which", lambda name: None)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    assert progress.final_summary(FINAL, tmp_path).endswith(f"curves: {bin_dir / 'tensorboard'} --logdir {tmp_path / 'tb'}")
