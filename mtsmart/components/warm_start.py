"""Start a run from a finished run's weights (`model.init_from`; MT-DNN's second stage, docs/multitask.md).

    model.init_from=runs/mt          the run's latest step checkpoint (or give a checkpoint folder)
    model.init_heads=new | carry     fresh task heads, or the source's heads for the tasks it has

The shared encoder is always taken; with `carry`, each of this run's tasks that the source also
trained gets the source's head (the others a fresh one). Refused in one line, before anything is
trained: a folder that is no run or no checkpoint, a checkpoint that fails its checksums, another
encoder or tokenizer than this run's, a carried head whose shape differs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from mtsmart.components.checkpoint import CheckpointError, read_state, step_checkpoints, verify
from mtsmart.components.build import load_run_specs
from mtsmart.components.run_dir import run_config
from mtsmart.model.multitask import MultiTaskModel
from mtsmart.options.config import Config, ConfigError

# The model options that must agree for the source's weights to mean the same here.
SAME_MODEL_KEYS = ("name_or_path", "tokenizer")
SAME_TINY_KEYS = ("tiny_hidden_size", "tiny_layers", "tiny_heads")  # and these for the random `tiny` encoder


@dataclass(frozen=True)
class WarmStart:
    run: Path  # the source run
    config: Config  # its config
    checkpoint: Path  # its checkpoint whose weights are taken
    step: int  # the source's optimizer steps behind those weights


def source_of(cfg: Config) -> WarmStart:
    """The checkpoint `model.init_from` names, checked against this run's model options."""
    given = Path(cfg.model.init_from)
    if (given / "model.safetensors").is_file():  # a checkpoint folder: its run is the folder above with a config
        checkpoint = given
        run = next((folder for folder in given.resolve().parents if (folder / "config.yaml").is_file()), given.parent.parent)
    else:
        found = step_checkpoints(given) if given.is_dir() else []
        if not found:
            raise ConfigError(f"model.init_from: {given} is no finished run (no checkpoints/step_* with model.safetensors)")
        checkpoint, run = found[-1], given
    try:
        source = run_config(run)
        verify(checkpoint)
        state = read_state(checkpoint)
    except (ValueError, OSError) as error:
        raise ConfigError(f"model.init_from: {error}") from None
    keys = SAME_MODEL_KEYS + (SAME_TINY_KEYS if cfg.model.name_or_path == "tiny" else ())
    for key in keys:
        theirs, ours = getattr(source.model, key), getattr(cfg.model, key)
        if theirs != ours:
            raise ConfigError(f"model.init_from: {run} was trained with model.{key}={theirs!r}, this run has {ours!r}")
    return WarmStart(run=run, config=source, checkpoint=checkpoint, step=int(state["train_state"]["step"]))


def warm_start(model: MultiTaskModel, cfg: Config, source: WarmStart) -> dict[str, str]:
    """Copies the source's encoder (and, with init_heads=carry, the heads of shared tasks) into
    `model`; returns where each task's head came from ("carried" or "new")."""
    try:
        weights = load_file(str(source.checkpoint / "model.safetensors"))
    except (OSError, SafetensorError) as error:
        raise CheckpointError(f"{source.checkpoint}: cannot read the model weights ({error})") from None
    encoder = {key[len("encoder."):]: value for key, value in weights.items() if key.startswith("encoder.")}
    try:
        model.encoder.load_state_dict(encoder, strict=True)
    except RuntimeError as error:
        raise ConfigError(f"model.init_from: {source.checkpoint}'s encoder does not fit this run's ({str(error).splitlines()[0]})") from None
    source_specs = load_run_specs(source.run, source.config)
    origins = {}
    for task, head in model.heads.items():
        theirs = {key[len(f"heads.{task}."):]: value for key, value in weights.items() if key.startswith(f"heads.{task}.")}
        if cfg.model.init_heads != "carry" or not theirs:
            origins[task] = "new"
            continue
        ours = head.state_dict()
        shapes = {key: (tuple(theirs[key].shape), tuple(ours[key].shape)) for key in ours if key in theirs}
        if set(theirs) != set(ours) or any(a != b for a, b in shapes.values()):
            raise ConfigError(f"model.init_from: task {task}'s head in {source.checkpoint} has shapes "
                              f"{ {k: a for k, (a, _) in shapes.items()} }, this run's {({k: b for k, (_, b) in shapes.items()})}")
        theirs_units = (source_specs[task].target_center, source_specs[task].target_scale) if task in source_specs else None
        ours_units = (model.specs[task].target_center, model.specs[task].target_scale)
        if theirs_units is not None and theirs_units != ours_units:
            raise ConfigError(f"model.init_from: task {task}'s head was trained on targets (y − {theirs_units[0]:g})/{theirs_units[1]:g}, "
                              f"this run's are (y − {ours_units[0]:g})/{ours_units[1]:g}; use the source's mix.regression_targets or model.init_heads=new")
        with torch.no_grad():
            head.load_state_dict(theirs, strict=True)
        origins[task] = "carried"
    return origins
