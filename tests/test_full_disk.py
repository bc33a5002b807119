"""A real full disk (a small tmpfs, as root; skipped where it cannot be mounted) while a checkpoint is
written: one line naming the folder and the space, no partial files left, exit 2."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from mtsmart.cli import main


@pytest.fixture
def small_disk(tmp_path):
    def mount(megabytes: float) -> Path:
        folder = tmp_path / "disk"
        folder.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(megabytes * 1024)}k", "tmpfs", str(folder)],
                                capture_output=True, text=True)
        if result.returncode != 0 or os.geteuid() != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or 'not root'})")
        mounted.append(folder)
        return folder

    mounted: list[Path] = []
    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=False)


@pytest.mark.parametrize("megabytes", [1.5, 6])  # the weights do not fit / the weights fit, the optimizer state not
def test_a_full_disk_during_a_checkpoint_is_one_line_and_leaves_no_partial_files(small_disk, data_root, capsys, megabytes):
    disk = small_disk(megabytes)
    out = disk / "run"
    code = main(["train", "model.name_or_path=tiny", "model.tiny_hidden_size=32", f"data.root={data_root}",
                 "tasks=[rte]", "train.max_steps=2", "eval.max_examples=8", f"output_dir={out}"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "writing checkpoint" in err and ("the disk is full" in err or "No space left" in err), err
    leftovers = [p.name for p in (out / "checkpoints").iterdir()] if (out / "checkpoints").exists() else []
    assert not [name for name in leftovers if name.startswith(".tmp-")], leftovers  # the partial files went
