"""model.name_or_path that names no usable model: one line naming it, exit 2, nothing written."""
from __future__ import annotations

import pytest

from mtsmart.cli import main


@pytest.mark.parametrize("make, words", [
    (lambda tmp: tmp / "no_such_model", ["no folder", "no_such_model"]),
    (lambda tmp: (tmp / "empty_model").mkdir() or tmp / "empty_model", ["has no config.json", "empty_model"]),
])
def test_a_bad_model_folder_is_named(tmp_path, capsys, make, words):
    folder = make(tmp_path)
    out = tmp_path / "run"
    assert main(["train", f"model.name_or_path={folder}", "tasks=[rte]", f"output_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(word in err for word in words), err
    assert not out.exists()


def test_a_hub_id_offline_and_not_cached_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    assert main(["train", "model.name_or_path=nobody-has/this-model-xyz", "tasks=[rte]", f"output_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'nobody-has/this-model-xyz'" in err and "hub did not provide it" in err, err
    assert not out.exists()
