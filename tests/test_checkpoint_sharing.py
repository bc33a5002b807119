"""`best`, the step checkpoint it equals and a task's best weights share their identical files
(hard links), so a run's size counts them once (issue 32: a quickstart run was 690 MB, `best`
a second copy of the last step)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from mtsmart.components import checkpoint as ckpt

RUN = ("tasks=[rte,stsb]", "train.max_steps=4", "eval.max_examples=16", "train.warmup_ratio=0")


@pytest.fixture(scope="module")
def run(tmp_path_factory, train_tiny) -> Path:
    """Evaluated at its last step only: best, best_per_task/step_4 and step_4 are the same model."""
    return train_tiny(tmp_path_factory.mktemp("sharing") / "run", *RUN)


def inodes_bytes(folder: Path) -> tuple[int, int]:
    """(bytes of every file as listed, bytes of the distinct files on the disk)."""
    files = [path for path in folder.rglob("*") if path.is_file()]
    distinct = {path.stat().st_ino: path.stat().st_size for path in files}
    return sum(path.stat().st_size for path in files), sum(distinct.values())


def test_best_and_the_step_it_equals_are_one_copy_on_the_disk(run):
    root = run / "checkpoints"
    step = root / "step_00000004"
    assert json.loads((root / "best" / "state.json").read_text())["train_state"]["step"] == 4
    for name in ("model.safetensors", "tensors.pt"):
        assert os.path.samefile(root / "best" / name, step / name)
    assert os.path.samefile(root / ckpt.TASK_BESTS / "step_00000004" / "model.safetensors", step / "model.safetensors")
    for directory in (root / "best", step, root / ckpt.TASK_BESTS / "step_00000004"):
        ckpt.verify(directory)
    listed, on_disk = inodes_bytes(root)
    weights = (step / "model.safetensors").stat().st_size
    state = (step / "tensors.pt").stat().st_size
    assert listed - on_disk >= 2 * weights + state  # two copies of the weights and one of the state saved


def test_a_twin_changed_on_the_disk_is_not_linked(run, tmp_path):
    """The listed checksum matches but the file no longer does: it is not shared (a corrupt copy
    would otherwise spread to a good checkpoint)."""
    root = tmp_path / "checkpoints"
    shutil.copytree(run / "checkpoints", root)  # copies: no links between them
    twin = root / "best" / "tensors.pt"
    data = bytearray(twin.read_bytes())
    data[-50] ^= 0xFF
    twin.write_bytes(bytes(data))
    step = root / "step_00000004"
    ckpt.share_identical_files(step, root)
    assert not os.path.samefile(step / "tensors.pt", twin)
    assert os.path.samefile(step / "model.safetensors", root / "best" / "model.safetensors")
    ckpt.verify(step)


def test_removing_the_step_checkpoint_leaves_best_whole(run, tmp_path):
    """keep_checkpoints deletes old step folders: `best`'s links keep its files."""
    root = tmp_path / "checkpoints"
    shutil.copytree(run / "checkpoints", root)
    ckpt.share_identical_files(root / "step_00000004", root)
    shutil.rmtree(root / "step_00000004")
    ckpt.verify(root / "best")


def test_a_file_system_without_hard_links_keeps_the_copies(run, tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    shutil.copytree(run / "checkpoints", root)

    def no_links(source, target):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(ckpt.os, "link", no_links)
    step = root / "step_00000004"
    ckpt.share_identical_files(step, root)
    assert not os.path.samefile(step / "model.safetensors", root / "best" / "model.safetensors")
    assert not list(step.glob(".link-*"))
    ckpt.verify(step)
    ckpt.verify(root / "best")
