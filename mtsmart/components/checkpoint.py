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

  checksums.json     the sha256 of each file above, written last: a checkpoint is trusted only
                     when every file matches it (`verify`)

A checkpoint is written into a temporary directory and renamed when complete, so a kill at any
moment leaves the previous checkpoint intact; a failed write (a full disk) removes its partial
files and says why. Weights with a NaN or an infinity are never written. `train.resume=auto`
takes the newest intact checkpoint (step checkpoints and `best` alike), sets corrupt ones aside
and cleans up what an interrupted write left (`resume_directory`).
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
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
from mtsmart.options.config import EARLIER_DEFAULTS, Config, config_to_dict, renamed_to_current
from mtsmart.support.io import atomic_write_json, give_default_mode
from mtsmart.tasks.spec import DEFAULT_TASKS_DIR, task_file

FORMAT_VERSION = 2  # 2: per-rank RNG and adversary states
# Keys allowed to differ between a checkpoint's config and the resuming run's.
RESUME_FREE_KEYS = ("train.resume", "train.resume_force", "train.stop_after_steps", "output_dir", "eval.every_steps", "train.log_every_steps",
                    "train.save_every_steps", "train.keep_checkpoints", "data.root", "train.keep_freed_memory",
                    "train.record_step_times")


STATE_KEYS = ("model_name", "config", "train_state", "sampler", "loaders", "world_size", "rng")


class CheckpointError(ValueError):
    pass


class NewerCheckpointError(CheckpointError):
    """A checkpoint written by a newer mtsmart: intact, only unreadable here. It is never set aside
    as corrupt; the run stops with this line until mtsmart is updated."""


CHECKSUMS = "checksums.json"
CHECKED_FILES = ("model.safetensors", "tensors.pt", "state.json")
SHARED_FILES = ("model.safetensors", "tensors.pt")  # the large ones: state.json (kilobytes) stays each checkpoint's own
TASK_BESTS = "best_per_task"  # checkpoints/best_per_task/step_N: each task's best weights, one copy per step


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(directory: Path) -> None:
    """Refuse a checkpoint whose files do not match the checksums written with them."""
    listing = directory / CHECKSUMS
    if not listing.is_file():
        raise CheckpointError(f"{directory}: no {CHECKSUMS} (an incomplete checkpoint, or one written before checksums)")
    try:
        expected = json.loads(listing.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as error:
        raise CheckpointError(f"{listing}: unreadable ({error})") from None
    for name in CHECKED_FILES:
        path = directory / name
        if name == "tensors.pt" and name not in expected and path.parent.parent.name == TASK_BESTS:
            continue  # a task's best weights: no optimizer state (it is evaluated, never resumed)
        if not path.is_file():
            raise CheckpointError(f"{path}: missing from the checkpoint")
        if _sha256(path) != expected.get(name):
            raise CheckpointError(f"{path}: checksum mismatch: the file changed after it was written (corrupt); "
                                  "this checkpoint is not used")


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


def rank_state(adversary, objective=None) -> dict:
    """What differs between ranks: RNG streams, the objective's private streams and the adversary's
    state (gathered to rank 0)."""
    private = {} if objective is None else objective.state_dict()
    return {"rng": _rng_tensors(), "rng_json": _rng_json(), "adversary": adversary.state_dict(), "objective": private}


def _restore_rank_state(tensors: dict, state: dict, stateful: dict, rank: int) -> None:
    ranks = tensors["ranks"]
    stateful["adversary"].load_state_dict(ranks[rank]["adversary"])
    if stateful.get("objective") is not None:
        stateful["objective"].load_state_dict(ranks[rank].get("objective", {}))
    _restore_rng_tensors(ranks[rank]["rng"])
    _restore_rng_json(state["rng"][rank])


# --------------------------------------------------------------------------- write


def _write(directory: Path, stateful: dict, cfg: Config, weights_only: bool = False) -> None:
    """Write a complete checkpoint at `directory` (atomically: temp dir, then rename). Refuses
    non-finite weights; an OS error (e.g. a full disk) removes the partial files and is reported."""
    bad = [name for name, value in stateful["model"].state_dict().items()
           if value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if bad:
        raise CheckpointError(f"not writing {directory}: the model has non-finite values in {bad[:3]}; "
                              "the checkpoints already written are kept")
    tmp = directory.parent / f".tmp-{directory.name}-{os.getpid()}"
    try:
        _write_files(tmp, directory, stateful, cfg, weights_only)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"writing checkpoint {directory} failed: {error.strerror or error} "
                              f"({error.filename or tmp}); its partial files were removed and the "
                              "checkpoints already written are kept") from None
    except (RuntimeError, SafetensorError) as error:
        # torch.save and safetensors report a full disk as their own errors ("unexpected pos ...").
        shutil.rmtree(tmp, ignore_errors=True)
        needed = _checkpoint_bytes(stateful["model"], weights_only)
        free = shutil.disk_usage(directory.parent).free
        if free >= needed:
            raise  # not a full disk: a real error, with its traceback
        raise CheckpointError(f"writing checkpoint {directory} failed: the disk is full ({free / 2**20:.1f} MiB free "
                              f"in {directory.parent}, about {needed / 2**20:.0f} MiB needed); its partial files were "
                              "removed and the checkpoints already written are kept") from None


def _checkpoint_bytes(model: torch.nn.Module, weights_only: bool) -> int:
    """About what a checkpoint takes: the weights, and with the optimizer's two moments and the
    teacher's copy, four times them."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return weights if weights_only else 4 * weights


def _write_files(tmp: Path, directory: Path, stateful: dict, cfg: Config, weights_only: bool = False) -> None:
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model = stateful["model"]
    ranks = stateful["ranks"]  # [rank_state(...) of rank 0, rank 1, …]
    # safetensors refuses shared storage (tied weights): store contiguous copies.
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    give_default_mode(tmp / "model.safetensors")  # safetensors writes 0600
    if not weights_only:
        torch.save(
            {
                "bregman": stateful["bregman"].state_dict(),
                "scaler": stateful["scaler"].state_dict(),
                "ranks": [{"rng": r["rng"], "adversary": r["adversary"], "objective": r.get("objective", {})} for r in ranks],
                **({"task_gradients": stateful["task_gradients"].state_dict()} if stateful.get("task_gradients") is not None else {}),
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
        "task_files": task_file_hashes(cfg),
        **({"encoder": stateful["encoder_digest"]} if stateful.get("encoder_digest") else {}),
    }
    atomic_write_json(tmp / "state.json", state)
    atomic_write_json(tmp / CHECKSUMS, {name: _sha256(tmp / name) for name in CHECKED_FILES if (tmp / name).exists()})
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


def share_identical_files(directory: Path, root: Path) -> None:
    """Hard-link each large file of the checkpoint `directory` to an identical one (the same name and
    sha256, checked on the disk) in another checkpoint under `root`: `best` and the step checkpoint
    it equals, or a task's best weights and that step, then take their space once. Files are never
    written in place, so a link is never changed under the other checkpoint. Where the file system
    has no hard links the copies stay."""
    ours = {name: digest for name, digest in _listed_checksums(directory).items() if name in SHARED_FILES}
    others = [d for d in (root / "best", *root.glob("step_*"), *root.glob(f"{TASK_BESTS}/step_*")) if d != directory]
    for other in others:
        theirs = _listed_checksums(other)
        for name, digest in list(ours.items()):
            mine, twin = directory / name, other / name
            if theirs.get(name) != digest or not twin.is_file() or _sha256(twin) != digest:
                continue
            del ours[name]  # one twin per file: its other copies already share with it, or stay apart
            if os.path.samefile(mine, twin):
                continue
            link = directory / f".link-{name}"
            try:
                os.link(twin, link)
            except OSError:
                return
            os.replace(link, mine)


def _listed_checksums(directory: Path) -> dict:
    try:
        listed = json.loads((directory / CHECKSUMS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return listed if isinstance(listed, dict) else {}


def save_latest(out: Path, stateful: dict, cfg: Config) -> Path:
    step = stateful["train_state"].step
    directory = out / "checkpoints" / f"step_{step:08d}"
    _write(directory, stateful, cfg)
    share_identical_files(directory, out / "checkpoints")
    for stale in step_checkpoints(out)[: -max(1, cfg.train.keep_checkpoints)]:
        shutil.rmtree(stale)
    return directory


def save_best(out: Path, stateful: dict, cfg: Config) -> Path:
    directory = out / "checkpoints" / "best"
    _write(directory, stateful, cfg)
    share_identical_files(directory, out / "checkpoints")
    return directory


def task_best_directory(out: Path, step: int) -> Path:
    return out / "checkpoints" / TASK_BESTS / f"step_{step:08d}"


def save_task_bests(out: Path, stateful: dict, cfg: Config, steps: dict[str, int]) -> None:
    """The weights of the current step for the tasks whose best it now is: `steps` maps every task
    to the step of its best dev score. One weights-only copy per distinct step
    (checkpoints/best_per_task/step_N); a copy no task points to any more is removed."""
    step = stateful["train_state"].step
    directory = task_best_directory(out, step)
    if not directory.is_dir():
        _write(directory, stateful, cfg, weights_only=True)
        share_identical_files(directory, out / "checkpoints")
    atomic_write_json(out / "checkpoints" / TASK_BESTS / "index.json", steps)
    wanted = {task_best_directory(out, s).name for s in steps.values()}
    for stale in sorted((out / "checkpoints" / TASK_BESTS).glob("step_*")):
        if stale.name not in wanted:
            shutil.rmtree(stale)


def task_best_checkpoint(out: Path, task: str) -> Path:
    """checkpoints/best_per_task/step_N of `task`'s best dev score."""
    index = out / "checkpoints" / TASK_BESTS / "index.json"
    if not index.is_file():
        raise CheckpointError(f"{out}: no per-task best checkpoints ({index} is missing: the run never evaluated, "
                              "or was trained before per-task selection)")
    steps = json.loads(index.read_text(encoding="utf-8"))
    if task not in steps:
        raise CheckpointError(f"best:{task}: the run has no task {task!r}; its tasks: {sorted(steps)}")
    return task_best_directory(out, int(steps[task]))


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
    version = state.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise NewerCheckpointError(
            f"{directory}: checkpoint format {version} was written by a newer mtsmart ({state.get('mtsmart_version')}); "
            f"this mtsmart {mtsmart.__version__} reads format {FORMAT_VERSION}: update mtsmart to continue it (nothing was changed)"
        )
    if version != FORMAT_VERSION:
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
    """The keys whose values differ. A key the saved config lacks was added to mtsmart after the
    checkpoint was written: it counts as what the run did then — the key's default, or, where the
    default has changed since, the earlier one (EARLIER_DEFAULTS)."""
    a = {**_flatten(config_to_dict(Config())), **EARLIER_DEFAULTS, **_flatten(saved)}
    b = _flatten(current)
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


def task_file_hashes(cfg: Config, with_paths: bool = False) -> dict:
    """{task: sha256 of its task file} (or {task: (path, sha256)}), for the files that exist."""
    tasks_dir = Path(cfg.tasks_dir) if cfg.tasks_dir else DEFAULT_TASKS_DIR
    found = {}
    for name in cfg.tasks:
        path = task_file(name, tasks_dir)
        if path.is_file():
            digest = _sha256(path)
            found[Path(name).stem] = (path, digest) if with_paths else digest
    return found


def check_compatible(directory: Path, cfg: Config, world_size: int) -> dict:
    """Refuse a checkpoint of another format, model, config or world size; its state.json.

    Cheap (reads state.json only): called before any data or model is loaded, and before the
    run writes anything into its output directory.
    """
    state = read_state(directory)
    if state["model_name"] != cfg.model.name_or_path:
        raise CheckpointError(f"{directory}: checkpoint of model {state['model_name']!r}, this run uses {cfg.model.name_or_path!r}")
    differences = config_differences(renamed_to_current(state["config"]), config_to_dict(cfg))
    if differences and not cfg.train.resume_force:
        raise CheckpointError(
            f"{directory}: config differs from the checkpoint's in {differences}; "
            "use the same config or set train.resume_force=true"
        )
    changed = [f"{task} ({path})" for task, (path, digest) in task_file_hashes(cfg, with_paths=True).items()
               if task in state.get("task_files", {}) and state["task_files"][task] != digest]
    if changed and not cfg.train.resume_force:  # checkpoints before task_files was recorded are not checked
        raise CheckpointError(
            f"{directory}: the task file of {', '.join(changed)} changed since the checkpoint was written "
            "(labels, columns or splits may differ); restore it, or set train.resume_force=true"
        )
    if state["world_size"] != world_size:
        raise CheckpointError(
            f"{directory}: written by {state['world_size']} process(es), this run has {world_size}; "
            "resume with the same number of processes (each rank's RNG streams and data shard are saved)"
        )
    return state


def check_encoder(directory: Path, digest: str, cfg: Config) -> None:
    """Refuse to resume over other pretrained weights than the run started from: the same
    `model.name_or_path` can name a folder rewritten since, or a hub model with a new revision."""
    recorded = read_state(directory).get("encoder")  # checkpoints before it was recorded are not checked
    if recorded is not None and recorded != digest and not cfg.train.resume_force:
        raise CheckpointError(
            f"{directory}: the encoder {cfg.model.name_or_path!r} now loads other weights than the run started from "
            f"(sha256 {digest[:12]}, recorded {recorded[:12]}); restore them, or set train.resume_force=true"
        )


def load(directory: Path, stateful: dict, cfg: Config, rank: int = 0, world_size: int = 1) -> None:
    """Restore every stateful object from `directory` (refusing a different config unless forced)."""
    verify(directory)
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
        if stateful.get("task_gradients") is not None:
            stateful["task_gradients"].load_state_dict(tensors["task_gradients"])
    except (KeyError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{directory}: cannot restore the run from it ({type(error).__name__}: {error})") from None
    train_state = stateful["train_state"]
    for key, value in state["train_state"].items():
        setattr(train_state, key, value)


def resume_directory(out: Path, cfg: Config) -> tuple[Path | None, list[str]]:
    """train.resume: "" → None; "auto" → the newest intact checkpoint in `out` (step checkpoints
    and `best`), or None; else that path. Also returns one line per thing it did on the way
    (a corrupt checkpoint set aside, an interrupted write cleaned up)."""
    if not cfg.train.resume:
        return None, []
    if cfg.train.resume != "auto":
        directory = Path(cfg.train.resume)
        if not directory.is_dir():
            raise CheckpointError(f"train.resume: no checkpoint directory {directory}")
        return directory, []
    notes = clean_interrupted_writes(out)
    for directory in _newest_first(out):
        try:
            verify(directory)
            read_state(directory)
        except NewerCheckpointError:
            raise  # intact, from a newer mtsmart: neither set aside nor skipped for an older checkpoint
        except CheckpointError as error:
            aside = directory.parent / f"corrupt-{directory.name}"
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(directory, aside)
            notes.append(f"{error}; set aside as {aside.name}, falling back to an earlier checkpoint")
            continue
        return directory, notes
    return None, notes


def _newest_first(out: Path) -> list[Path]:
    """Step checkpoints and `best`, the highest step first (a step checkpoint before `best` on a tie)."""
    found = [(int(d.name.removeprefix("step_")), 1, d) for d in step_checkpoints(out)]
    best = out / "checkpoints" / "best"
    if best.is_dir():
        try:
            found.append((int(read_state(best)["train_state"]["step"]), 0, best))
        except (CheckpointError, KeyError, TypeError, ValueError):
            found.append((-1, 0, best))  # unreadable: tried last, then set aside
    return [d for _, _, d in sorted(found, key=lambda item: (item[0], item[1]), reverse=True)]


def clean_interrupted_writes(out: Path) -> list[str]:
    """What a kill during a checkpoint write leaves: `.tmp-*` (an incomplete new checkpoint) is
    removed; `.old-NAME-*` (the previous copy, mid-replace) is put back when NAME is gone."""
    root = out / "checkpoints"
    notes = []
    if not root.is_dir():
        return notes
    for tmp in sorted(root.glob(".tmp-*")):
        shutil.rmtree(tmp, ignore_errors=True)
        notes.append(f"removed {tmp.name}, an interrupted checkpoint write")
    for old in sorted(root.glob(".old-*")):
        name = old.name.removeprefix(".old-").rsplit("-", 1)[0]
        if (root / name).exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, root / name)
            notes.append(f"restored {name} from {old.name}, left by an interrupted checkpoint replace")
    return notes


def refuse_overwrite(out: Path) -> None:
    """A fresh run must not replace what an earlier run wrote into the same output_dir: its
    results or an intact-looking checkpoint (leftovers of interrupted writes do not count)."""
    clean_interrupted_writes(out)
    existing = [p.name for p in (out / "results.json",) if p.is_file()]
    existing += [f"checkpoints/{d.name}" for d in _newest_first(out)]
    if existing:
        raise CheckpointError(
            f"output_dir {out} already holds a run ({', '.join(existing)}); continue it with train.resume=auto "
            "or choose another output_dir"
        )
