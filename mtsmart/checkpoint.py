"""Checkpoints that resume a run exactly, written crash-safely, loaded without executing code.

Layout of one checkpoint directory (`checkpoints/step_00000100/`, `checkpoints/best/`):
  model.safetensors  the model: shared encoder and every head
  tensors.pt         optimizer + Bregman teacher + grad scaler, and per rank: adversary + torch RNG
                     (plain tensors/containers: loaded with torch.load(weights_only=True))
  state.json         step and counters, sampler and loaders positions, per rank Python/numpy RNG,
                     the config, the model name, the mtsmart version, the world size

Under torchrun every rank has its own RNG streams (dropout, SMART noise) and adversary state:
each rank's are gathered to rank 0, which alone writes; on resume each rank restores its own.
Everything else is identical on all ranks.

A checkpoint is written into a temporary directory and renamed when complete, so a kill at any
moment leaves the previous checkpoint intact.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import mtsmart
from mtsmart.config import Config, config_to_dict
from mtsmart.io import atomic_write_json

FORMAT_VERSION = 2  # 2: per-rank RNG and adversary states
# Keys allowed to differ between a checkpoint's config and the resuming run's.
RESUME_FREE_KEYS = ("train.resume", "train.resume_force", "train.stop_after_steps", "output_dir", "eval.every_steps", "train.log_every_steps",
                    "train.save_every_steps", "train.keep_checkpoints", "data.root", "train.keep_freed_memory")


STATE_KEYS = ("model_name", "config", "train_state", "sampler", "loaders", "world_size", "rng")


class CheckpointError(ValueError):
    pass


# --------------------------------------------------------------------------- RNG states


def _rng_json() -> dict:
    np_state = np.random.get_state()
    return {
        "python": base64.b64encode(json.dumps(random.getstate()).encode()).decode("ascii"),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }


def _restore_rng_json(state: dict) -> None:
    py = json.loads(base64.b64decode(state["python"]))
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _rng_tensors() -> dict:
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _restore_rng_tensors(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def rank_state(adversary) -> dict:
    """What differs between ranks: RNG streams and the adversary's state (gathered to rank 0)."""
    return {"rng": _rng_tensors(), "rng_json": _rng_json(), "adversary": adversary.state_dict()}


def _restore_rank_state(tensors: dict, state: dict, stateful: dict, rank: int) -> None:
    ranks = tensors["ranks"]
    stateful["adversary"].load_state_dict(ranks[rank]["adversary"])
    _restore_rng_tensors(ranks[rank]["rng"])
    _restore_rng_json(state["rng"][rank])


# --------------------------------------------------------------------------- write


def _write(directory: Path, stateful: dict, cfg: Config) -> None:
    """Write a complete checkpoint at `directory` (atomically: temp dir, then rename)."""
    tmp = directory.parent / f".tmp-{directory.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model = stateful["model"]
    ranks = stateful["ranks"]  # [rank_state(...) of rank 0, rank 1, …]
    # safetensors refuses shared storage (tied weights): store contiguous copies.
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    torch.save(
        {
            "bregman": stateful["bregman"].state_dict(),
            "scaler": stateful["scaler"].state_dict(),
            "ranks": [{"rng": r["rng"], "adversary": r["adversary"]} for r in ranks],
        },
        tmp / "tensors.pt",
    )
    state = {
        "format_version": FORMAT_VERSION,
        "mtsmart_version": mtsmart.__version__,
        "model_name": cfg.model.name_or_path,
        "config": config_to_dict(cfg),
        "train_state": dataclasses.asdict(stateful["train_state"]),
        "sampler": stateful["sampler"].state_dict(),
        "loaders": {name: loader.state_dict() for name, loader in stateful["loaders"].items()},
        "world_size": len(ranks),
        "rng": [r["rng_json"] for r in ranks],
    }
    atomic_write_json(tmp / "state.json", state)
    old = None
    if directory.exists():  # replace in two renames; the old copy goes only when the new is in place
        old = directory.parent / f".old-{directory.name}-{os.getpid()}"
        os.replace(directory, old)
    os.replace(tmp, directory)
    if old is not None:
        shutil.rmtree(old)


def step_checkpoints(out: Path) -> list[Path]:
    root = out / "checkpoints"
    return sorted(root.glob("step_*")) if root.is_dir() else []


def save_latest(out: Path, stateful: dict, cfg: Config) -> Path:
    step = stateful["train_state"].step
    directory = out / "checkpoints" / f"step_{step:08d}"
    _write(directory, stateful, cfg)
    for stale in step_checkpoints(out)[: -max(1, cfg.train.keep_checkpoints)]:
        shutil.rmtree(stale)
    return directory


def save_best(out: Path, stateful: dict, cfg: Config) -> Path:
    directory = out / "checkpoints" / "best"
    _write(directory, stateful, cfg)
    return directory


# --------------------------------------------------------------------------- read


def read_state(directory: Path) -> dict:
    path = directory / "state.json"
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a checkpoint: {path.name} is missing")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{directory}: checkpoint format {state.get('format_version')} (mtsmart {state.get('mtsmart_version')}), "
            f"this mtsmart {mtsmart.__version__} reads format {FORMAT_VERSION}"
        )
    missing = [key for key in STATE_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint state, missing {missing}")
    return state


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(saved: dict, current: dict) -> list[str]:
    a, b = _flatten(saved), _flatten(current)
    keys = sorted(set(a) | set(b))
    return [k for k in keys if k not in RESUME_FREE_KEYS and a.get(k) != b.get(k)]


def load_model_weights(model: torch.nn.Module, directory: Path) -> None:
    path = directory / "model.safetensors"
    try:
        weights = load_file(str(path))
    except (OSError, SafetensorError) as error:
        raise CheckpointError(f"{path}: cannot read the model weights ({error})") from None
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as error:  # same names, other shapes
        raise CheckpointError(f"{directory}: the checkpoint is from another model ({error})") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{directory}: the checkpoint is from another model (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )


def _read_tensors(directory: Path) -> dict:
    path = directory / "tensors.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise CheckpointError(f"{path}: cannot read the checkpoint state ({type(error).__name__}: {error})") from None


def check_compatible(directory: Path, cfg: Config, world_size: int) -> dict:
    """Refuse a checkpoint of another format, model, config or world size; its state.json.

    Cheap (reads state.json only): called before any data or model is loaded, and before the
    run writes anything into its output directory.
    """
    state = read_state(directory)
    if state["model_name"] != cfg.model.name_or_path:
        raise CheckpointError(f"{directory}: checkpoint of model {state['model_name']!r}, this run uses {cfg.model.name_or_path!r}")
    differences = config_differences(state["config"], config_to_dict(cfg))
    if differences and not cfg.train.resume_force:
        raise CheckpointError(
            f"{directory}: config differs from the checkpoint's in {differences}; "
            "use the same config or set train.resume_force=true"
        )
    if state["world_size"] != world_size:
        raise CheckpointError(
            f"{directory}: written by {state['world_size']} process(es), this run has {world_size}; "
            "resume with the same number of processes (each rank's RNG streams and data shard are saved)"
        )
    return state


def load(directory: Path, stateful: dict, cfg: Config, rank: int = 0, world_size: int = 1) -> None:
    """Restore every stateful object from `directory` (refusing a different config unless forced)."""
    state = check_compatible(directory, cfg, world_size)
    load_model_weights(stateful["model"], directory)
    tensors = _read_tensors(directory)
    try:
        stateful["bregman"].load_state_dict(tensors["bregman"])
        stateful["scaler"].load_state_dict(tensors["scaler"])
        stateful["sampler"].load_state_dict(state["sampler"])
        for name, loader in stateful["loaders"].items():
            loader.load_state_dict(state["loaders"][name])
        _restore_rank_state(tensors, state, stateful, rank)
    except (KeyError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{directory}: cannot restore the run from it ({type(error).__name__}: {error})") from None
    train_state = stateful["train_state"]
    for key, value in state["train_state"].items():
        setattr(train_state, key, value)


def resume_directory(out: Path, cfg: Config) -> Path | None:
    """train.resume: "" → None; "auto" → the latest step checkpoint in `out`, if any; else that path."""
    if not cfg.train.resume:
        return None
    if cfg.train.resume == "auto":
        found = step_checkpoints(out)
        return found[-1] if found else None
    directory = Path(cfg.train.resume)
    if not directory.is_dir():
        raise CheckpointError(f"train.resume: no checkpoint directory {directory}")
    return directory


def refuse_overwrite(out: Path) -> None:
    """A fresh run must not replace what an earlier run wrote into the same output_dir."""
    existing = [p.name for p in (out / "results.json", out / "checkpoints") if p.exists() and (p.is_file() or any(p.iterdir()))]
    if existing:
        raise CheckpointError(
            f"output_dir {out} already holds a run ({', '.join(existing)}); continue it with train.resume=auto "
            "or choose another output_dir"
        )
