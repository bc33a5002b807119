"""Load a trained run: `config.yaml` + a checkpoint → model, tokenizer, task specs.

    run = load_run("runs/rte", checkpoint="best")
    run.model(task="rte", input_ids=..., attention_mask=...)

Nothing from the run directory is executed: the config is YAML (safe_load), the weights are
safetensors, the checkpoint's state is JSON (`mtsmart.components.checkpoint.read_state`); the optimizer file
`tensors.pt` is not read. Task definitions are loaded from the run's `tasks_dir` (or the
checkout's tasks/), as training loaded them; a head whose shape no longer matches its task file
is an error naming the checkpoint.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from mtsmart.components.build import (
    autocast_factory, build_eval_sets, build_tokenizer, build_untrained_encoder, device_of, load_run_specs,
)
from mtsmart.components.checkpoint import (
    CheckpointError, load_model_weights, read_state, step_checkpoints, task_best_checkpoint, verify,
)
from mtsmart.options.config import Config, load_config
from mtsmart.model.multitask import MultiTaskModel
from mtsmart.tasks.spec import TaskSpec
from mtsmart.components.evaluate import EvalSet
from mtsmart.support.precision import resolve_precision


class RunDirError(ValueError):
    """A run directory or checkpoint that cannot be used; the message names the path."""


@dataclass
class LoadedRun:
    directory: Path
    checkpoint: Path
    step: int  # optimizer steps behind the checkpoint's weights
    cfg: Config
    specs: dict[str, TaskSpec]
    tokenizer: object
    model: MultiTaskModel  # in eval mode, on `device`
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager]


def resolve_checkpoint(run: Path, which: str) -> Path:
    """`best` → checkpoints/best (the best average); `best:<task>` → that task's best by its own dev
    score (checkpoints/best_per_task); `last` → the latest checkpoints/step_*; anything else: a path."""
    if which.startswith("best:"):
        try:
            return task_best_checkpoint(run, which.removeprefix("best:"))
        except CheckpointError as error:
            raise RunDirError(str(error)) from None
    if which == "best":
        path = run / "checkpoints" / "best"
        if not path.is_dir():
            raise RunDirError(f"{run}: no best checkpoint ({path} is missing: the run never evaluated)")
        return path
    if which == "last":
        found = step_checkpoints(run)
        if not found:
            raise RunDirError(f"{run}: no checkpoint under {run / 'checkpoints'} (step_* directories)")
        return found[-1]
    path = Path(which)
    if not path.is_dir():
        raise RunDirError(f"--checkpoint {which}: no checkpoint directory {path}")
    return path


def run_config(run: Path, data_root: Optional[str] = None) -> Config:
    """The run's config.yaml; `data_root` replaces data.root (the data may have moved)."""
    if not run.is_dir():
        raise RunDirError(f"run directory not found: {run}")
    path = run / "config.yaml"
    if not path.is_file():
        raise RunDirError(f"{run} is not a run directory: {path.name} is missing")
    cfg = load_config(path, written_by_mtsmart=True)  # a run from before a rename still loads
    if data_root is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=data_root))
    return cfg


def load_run(
    run: Path | str, checkpoint: str = "last", data_root: Optional[str] = None, device: Optional[torch.device] = None
) -> LoadedRun:
    run = Path(run)
    cfg = run_config(run, data_root)
    directory = resolve_checkpoint(run, checkpoint)
    verify(directory)  # a corrupt checkpoint is refused by name, never evaluated or exported
    state = read_state(directory)
    if state["model_name"] != cfg.model.name_or_path:
        raise RunDirError(f"{directory}: checkpoint of model {state['model_name']!r}, {run / 'config.yaml'} says {cfg.model.name_or_path!r}")
    specs = load_run_specs(run, cfg)
    tokenizer = build_tokenizer(cfg)
    model = MultiTaskModel(build_untrained_encoder(cfg, len(tokenizer)), specs)
    try:
        load_model_weights(model, directory)
    except RuntimeError as error:  # shape mismatch: a task file changed since training
        raise CheckpointError(f"{directory}: weights do not fit the current task files/config: {error}") from None
    device = device or device_of()
    model.to(device).eval()
    return LoadedRun(
        directory=run,
        checkpoint=directory,
        step=int(state["train_state"]["step"]),
        cfg=cfg,
        specs=specs,
        tokenizer=tokenizer,
        model=model,
        device=device,
        autocast=autocast_factory(resolve_precision(cfg.train.precision, device)[0], device),
    )


# --------------------------------------------------------------------------- evaluation sets


def test_split_of(split: str) -> str:
    """The test split matching a dev split: dev → test, dev_matched → test_matched (MNLI)."""
    if not split.startswith("dev"):
        raise RunDirError(f"evaluation split {split!r} has no matching test split (expected a name starting with 'dev')")
    return "test" + split[len("dev"):]


def unlabelled_splits(spec: TaskSpec, cfg: Config) -> list[str]:
    block = spec.local if cfg.data.source == "local" else spec.hub
    return list(block.get("unlabelled_splits", []))


def run_eval_sets(run: LoadedRun, split: str = "dev", max_examples: Optional[int] = None) -> tuple[list[EvalSet], list[str]]:
    """The run's evaluations on `split` ("dev" or "test"), batched exactly as training batched them.

    max_examples: None = the run's eval.max_examples (so the numbers equal the logged ones);
    0 = every example. Returns (eval sets, names of evaluations skipped because their test
    split is unlabelled, e.g. GLUE's).
    """
    cfg = run.cfg
    if max_examples is not None:
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, max_examples=max_examples))
    if split == "dev":
        return build_eval_sets(cfg, run.specs, run.tokenizer), []
    if split != "test":
        raise RunDirError(f"--split {split!r}: choose dev or test")
    specs, skipped = {}, []
    for name, spec in run.specs.items():
        tests = {eval_name: test_split_of(dev) for eval_name, dev in spec.eval_splits.items()}
        unlabelled = unlabelled_splits(spec, cfg)
        skipped += [eval_name for eval_name, test in tests.items() if test in unlabelled]
        kept = {eval_name: test for eval_name, test in tests.items() if test not in unlabelled}
        if kept:
            specs[name] = dataclasses.replace(spec, eval_splits=kept)
    return build_eval_sets(cfg, specs, run.tokenizer), skipped
