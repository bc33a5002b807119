"""A model.name_or_path that names no usable model, an output_dir that cannot be used: one line
naming it, exit 2, nothing written."""
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


def test_an_output_dir_that_is_a_file_is_refused_in_one_line(tmp_path, capsys):
    target = tmp_path / "a_file"
    target.write_text("the user's file")
    assert main(["train", "model.name_or_path=tiny", "tasks=[rte]", f"output_dir={target}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"output_dir {target}: is a file" in err
    assert main(["train", "model.name_or_path=tiny", "tasks=[rte]", f"output_dir={target / 'run'}"]) == 2
    assert "is a file, so the folder cannot be made" in capsys.readouterr().err
    assert target.read_text() == "the user's file"


def test_an_output_dir_where_nothing_can_be_written_is_refused(tmp_path, capsys, monkeypatch):
    import tempfile

    def read_only(*args, **kwargs):  # as an unwritable folder answers (root ignores chmod)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", read_only)
    assert main(["train", "model.name_or_path=tiny", "tasks=[rte]", f"output_dir={tmp_path / 'run'}"]) == 2
    assert "cannot write in" in capsys.readouterr().err and not (tmp_path / "run").exists()
