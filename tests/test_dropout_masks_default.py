"""model.dropout_masks=auto (the default): packed masks on a CPU, torch's on CUDA, and a resumed run
keeps the masks it started with — torch's for a checkpoint from before the option existed (its
random stream: studies/dropout_masks.yaml's decision asks for it)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import TINY_TRAIN_ARGS, same_weights
from mtsmart.cli import main
from mtsmart.components.checkpoint import config_differences
from mtsmart.model.packed_dropout import resolve_dropout_masks
from mtsmart.options.config import Config, config_to_dict

RUN = ["tasks=[rte]", "train.max_steps=6", "train.save_every_steps=3", "eval.max_examples=16"]


@pytest.mark.parametrize("requested, device, resumed, expected", [
    ("torch", "cpu", None, "torch"),
    ("packed", "cuda", None, "packed"),
    ("torch", "cpu", {"model": {"dropout_masks": "packed"}}, "torch"),  # an explicit choice is the user's
    ("auto", "cpu", None, "packed"),
    ("auto", "cuda", None, "torch"),
    ("auto", "cpu", {"model": {"dropout_masks": "torch"}}, "torch"),
    ("auto", "cuda", {"model": {"dropout_masks": "packed"}}, "packed"),
    ("auto", "cpu", {"model": {"name_or_path": "minilm"}}, "torch"),  # saved before the option existed
])
def test_auto_resolves_by_the_device_or_the_resumed_run(requested, device, resumed, expected):
    assert resolve_dropout_masks(requested, torch.device(device), resumed)[0] == expected


def test_a_saved_config_without_the_key_ran_with_torch_masks():
    current = config_to_dict(Config())
    saved = json.loads(json.dumps(current))
    del saved["model"]["dropout_masks"]
    current["model"]["dropout_masks"] = "torch"
    assert config_differences(saved, current) == []
    current["model"]["dropout_masks"] = "packed"
    assert config_differences(saved, current) == ["model.dropout_masks"]


def as_written_before_the_option(run: Path) -> None:
    """The run's config.yaml and every checkpoint's saved config without model.dropout_masks, as
    mtsmart wrote them before the option existed (checksums rewritten to match)."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    del config["model"]["dropout_masks"]
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    for checkpoint in (run / "checkpoints").glob("step_*"):
        state = json.loads((checkpoint / "state.json").read_text())
        del state["config"]["model"]["dropout_masks"]
        (checkpoint / "state.json").write_text(json.dumps(state))
        sums = json.loads((checkpoint / "checksums.json").read_text())
        sums["state.json"] = hashlib.sha256((checkpoint / "state.json").read_bytes()).hexdigest()
        (checkpoint / "checksums.json").write_text(json.dumps(sums))


def test_a_fresh_run_on_the_cpu_trains_with_packed_masks_and_records_them(tmp_path, train_tiny, capsys):
    auto = train_tiny(tmp_path / "auto", *RUN)
    assert "dropout masks: packed (auto: a CPU)" in capsys.readouterr().out
    assert yaml.safe_load((auto / "config.yaml").read_text())["model"]["dropout_masks"] == "packed"
    packed = train_tiny(tmp_path / "packed", *RUN, "model.dropout_masks=packed")
    assert same_weights(auto, packed)


def test_a_run_from_before_the_option_resumes_with_torch_masks_exactly(tmp_path, train_tiny, capsys):
    """Stopped at step 3 with torch's masks, its saved configs stripped of the key, resumed with the
    default: the weights are those of an uninterrupted torch-mask run, not a packed one."""
    straight = train_tiny(tmp_path / "straight", *RUN, "model.dropout_masks=torch")
    old = train_tiny(tmp_path / "old", *RUN, "model.dropout_masks=torch", "train.stop_after_steps=3")
    as_written_before_the_option(old)
    capsys.readouterr()
    train_tiny(old, *RUN, "train.resume=auto")
    assert "dropout masks: torch (auto: the masks the resumed run started with)" in capsys.readouterr().out
    assert same_weights(old, straight)
    assert not same_weights(old, train_tiny(tmp_path / "packed", *RUN, "model.dropout_masks=packed"))


def test_resuming_with_the_other_masks_named_explicitly_is_refused(tmp_path, train_tiny, data_root, capsys):
    old = train_tiny(tmp_path / "old", *RUN, "model.dropout_masks=torch", "train.stop_after_steps=3")
    as_written_before_the_option(old)
    capsys.readouterr()
    code = main(["train", *TINY_TRAIN_ARGS, f"data.root={data_root}", f"output_dir={old}", *RUN,
                 "model.dropout_masks=packed", "train.resume=auto"])
    err = capsys.readouterr().err
    assert code == 2 and "config differs from the checkpoint's in ['model.dropout_masks']" in err and "Traceback" not in err
