"""Task definitions as data: one YAML file per task under `tasks/` (MT-DNN's idea, typed here).

A task file looks like::

    name: rte
    type: classification          # classification | regression | ranking
    labels: [entailment, not_entailment]
    metrics: [accuracy]
    dropout: 0.1                   # dropout of this task's head
    eval_splits: {rte: dev}        # evaluation name -> split name
    local: {...}                   # how to read the files under data.root (mtsmart.data.readers)
    hub: {...}                     # how to read it from the Hugging Face hub

See tasks/README.md for every key.
"""
from __future__ import annotations

import math

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from mtsmart.support.yaml_files import load_yaml
from mtsmart.tasks.types import TASK_TYPES

KNOWN_METRICS = ("accuracy", "f1", "mcc", "pearson", "spearman", "acc_at_1", "mrr")
# What each task type's predictions can be scored by (mtsmart.arithmetic.metrics): refused in the task file otherwise.
METRICS_OF_TYPE = {"classification": ("accuracy", "f1", "mcc"), "regression": ("pearson", "spearman"),
                   "ranking": ("acc_at_1", "mrr")}

# tasks/ beside the package: the task files of an editable install or a source checkout.
DEFAULT_TASKS_DIR = Path(__file__).resolve().parents[2] / "tasks"  # the checkout's tasks/, beside mtsmart/


class TaskSpecError(ValueError):
    """A task file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class TaskSpec:
    name: str
    type: str
    metrics: tuple[str, ...]
    labels: tuple[str, ...] = ()  # class names (classification); candidate labels (ranking)
    positive_label: Optional[str] = None  # ranking: the label that marks the right candidate
    score_range: Optional[tuple[float, float]] = None  # regression: valid target range
    dropout: float = 0.1
    loss_weight: float = 1.0  # w_task: this task's objective × w (mix.loss_weights overrides it per run)
    # Regression: the loss trains on (y − target_center) / target_scale and predictions are mapped
    # back (mtsmart.components.build.resolve_target_scaling writes these into a run's task files).
    target_center: float = 0.0
    target_scale: float = 1.0
    eval_splits: dict[str, str] = field(default_factory=dict)  # eval name -> split name
    local: dict[str, Any] = field(default_factory=dict)
    hub: dict[str, Any] = field(default_factory=dict)
    source_file: str = ""

    @property
    def num_outputs(self) -> int:
        """Width of the head: one logit per class, or one score per sequence."""
        return TASK_TYPES[self.type].num_outputs(self.labels)


_REQUIRED = ("name", "type", "metrics")
_ALLOWED = {
    "name", "type", "metrics", "labels", "positive_label", "score_range", "dropout", "loss_weight",
    "target_center", "target_scale", "eval_splits", "local", "hub", "description",
}


def _fail(path: Path, message: str) -> TaskSpecError:
    return TaskSpecError(f"{path}: {message}")


def _positive_number(raw: dict[str, Any], key: str, path: Path) -> float:
    """An optional finite number > 0 (default 1)."""
    value = raw.get(key, 1.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise _fail(path, f"key {key!r}: {value!r} must be a finite number > 0")
    return float(value)


def parse_task_spec(raw: dict[str, Any], path: Path) -> TaskSpec:
    if not isinstance(raw, dict):
        raise _fail(path, "a task file must hold a mapping")
    unknown = sorted(set(raw) - _ALLOWED)
    if unknown:
        raise _fail(path, f"unknown key(s) {unknown}; allowed: {sorted(_ALLOWED)}")
    for key in _REQUIRED:
        if key not in raw:
            raise _fail(path, f"missing key {key!r}")
    task_type = raw["type"]
    if task_type not in TASK_TYPES:
        raise _fail(path, f"key 'type': {task_type!r} is not one of {tuple(TASK_TYPES)}")
    metrics = tuple(raw["metrics"] or ())
    if not metrics:
        raise _fail(path, "key 'metrics': give at least one metric (the run is scored by them)")
    for metric in metrics:
        if metric not in KNOWN_METRICS:
            raise _fail(path, f"key 'metrics': unknown metric {metric!r}; known: {KNOWN_METRICS}")
        if metric not in METRICS_OF_TYPE[task_type]:
            raise _fail(path, f"key 'metrics': {metric!r} cannot score a {task_type} task; use one of {METRICS_OF_TYPE[task_type]}")
    raw_labels = raw.get("labels", ())
    for label in raw_labels:
        # YAML reads unquoted no/yes/true/1 as booleans or numbers: the data then never matches.
        if not isinstance(label, str):
            raise _fail(path, f"key 'labels': {label!r} is not a string; quote labels in YAML, e.g. [\"0\", \"1\"]")
    labels = tuple(raw_labels)
    if "f1" in metrics and len(labels) != 2:
        raise _fail(path, f"key 'metrics': f1 is the binary F1 of the second label; this task has {len(labels)} labels")
    positive = raw.get("positive_label")
    problem = TASK_TYPES[task_type].check_labels(labels, positive)
    if problem:
        raise _fail(path, problem)
    score_range = raw.get("score_range")
    if score_range is not None:
        if not isinstance(score_range, list) or len(score_range) != 2:
            raise _fail(path, f"key 'score_range': {score_range!r} must be [low, high]")
        score_range = (float(score_range[0]), float(score_range[1]))
    dropout = raw.get("dropout", 0.1)
    if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise _fail(path, f"key 'dropout': {dropout!r} must be a number in [0, 1)")
    loss_weight = _positive_number(raw, "loss_weight", path)
    target_center, target_scale = raw.get("target_center", 0.0), _positive_number(raw, "target_scale", path)
    if isinstance(target_center, bool) or not isinstance(target_center, (int, float)) or not math.isfinite(target_center):
        raise _fail(path, f"key 'target_center': {target_center!r} must be a finite number")
    if (target_center, target_scale) != (0.0, 1.0) and task_type != "regression":
        raise _fail(path, "keys 'target_center' / 'target_scale' are for regression tasks only")
    name = str(raw["name"])
    eval_splits = dict(raw.get("eval_splits") or {name: "dev"})
    return TaskSpec(
        name=name,
        type=task_type,
        metrics=metrics,
        labels=labels,
        positive_label=positive,
        score_range=score_range,
        dropout=float(dropout),
        loss_weight=loss_weight,
        target_center=float(target_center),
        target_scale=target_scale,
        eval_splits=eval_splits,
        local=dict(raw.get("local") or {}),
        hub=dict(raw.get("hub") or {}),
        source_file=str(path),
    )


def task_file(name_or_path: str, tasks_dir: Path | str = DEFAULT_TASKS_DIR) -> Path:
    """The file a task name (`tasks_dir/<name>.yaml`) or a YAML path stands for."""
    candidate = Path(name_or_path)
    return candidate if candidate.suffix in (".yaml", ".yml") else Path(tasks_dir) / f"{name_or_path}.yaml"


def load_task_spec(name_or_path: str, tasks_dir: Path | str = DEFAULT_TASKS_DIR) -> TaskSpec:
    """A task by name (`tasks_dir/<name>.yaml`) or by the path of a YAML file."""
    candidate = Path(name_or_path)
    path = task_file(name_or_path, tasks_dir)
    if not path.is_file():
        known = sorted(p.stem for p in Path(tasks_dir).glob("*.yaml"))
        raise TaskSpecError(f"unknown task {name_or_path!r}: no file {path}; known tasks: {known}")
    with open(path, encoding="utf-8") as handle:
        try:
            raw = load_yaml(handle)
        except yaml.YAMLError as error:
            raise _fail(path, f"not valid YAML: {error}") from None
    spec = parse_task_spec(raw, path)
    if candidate.suffix not in (".yaml", ".yml") and spec.name != name_or_path:
        raise _fail(path, f"key 'name': {spec.name!r} differs from the file name {name_or_path!r}")
    return spec
