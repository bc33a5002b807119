"""Files mtsmart writes get the mode any tool's output has under the user's umask (not mkstemp's
0600), so a colleague on a shared machine can read a run."""
from __future__ import annotations

import os
import stat

import pytest

from mtsmart.support.io import atomic_write_json


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_an_atomically_written_file_has_the_umasks_mode(tmp_path, umask):
    previous = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "results.json", {"final": {"avg": 0.5}})
        plain = tmp_path / "plain.txt"
        plain.write_text("x")  # what open() gives under the same umask
    finally:
        os.umask(previous)
    mode = stat.S_IMODE((tmp_path / "results.json").stat().st_mode)
    assert mode == 0o666 & ~umask == stat.S_IMODE(plain.stat().st_mode)


def test_a_training_runs_files_are_readable_by_others_under_umask_022(train_tiny, tmp_path):
    previous = os.umask(0o022)
    try:
        out = train_tiny(tmp_path / "run", "tasks=[rte]", "train.max_steps=2", "eval.max_examples=8")
    finally:
        os.umask(previous)
    written = [p for p in out.rglob("*") if p.is_file()]
    assert written and all(stat.S_IMODE(p.stat().st_mode) & 0o044 == 0o044 for p in written), \
        [(str(p), oct(stat.S_IMODE(p.stat().st_mode))) for p in written if stat.S_IMODE(p.stat().st_mode) & 0o044 != 0o044]
