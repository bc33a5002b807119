"""The study file: what to run, as data, checked before anything runs.

    name: smart_parts
    output_dir: smart_parts          # relative to the study file: runs/, report.md, report.png
    metric: avg                      # key of results.json "final" (avg: the GLUE-style mean)
    baseline: plain                  # the variant every other one is paired with
    seeds: {tune: [1, 2, 3], report: [4, 5, 6, 7, 8]}
    base: {train: {precision: bf16}}                  # config of every run
    settings: {sst2_1k: {tasks: [sst2], data: {train_examples: 1000}}}
    variants:
      plain: {adversarial: {method: none}}
      rdrop: {adversarial: {method: rdrop}, grid: {rdrop.alpha: [0.5, 1.0]}}

A run's config is base ← setting ← variant ← grid point ← train.seed, checked by the same
loader as `mtsmart train`. A variant's grid is searched on the tune seeds only; the point with
the best mean metric there is the one run on the report seeds (reporting on the seeds used for
tuning would inflate every gain). Without tune seeds, grids are refused.
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from mtsmart.options.config import ConfigError, apply_override, config_from_dict

DEFAULT_POINT = "default"  # the folder of a variant without a grid
GRID_KEY = "grid"


class StudyError(ValueError):
    """A study file that cannot be run; the message names the file and the key."""


@dataclass(frozen=True)
class Job:
    """One training run of the study."""

    setting: str
    variant: str
    point: str  # DEFAULT_POINT or "key_value+key_value"
    seed: int
    phase: str  # "tune" or "report"
    overrides: dict[str, Any]  # the full nested config of the run, output_dir excluded

    def folder(self, runs_dir: Path) -> Path:
        return runs_dir / self.setting / self.variant / self.point / f"seed_{self.seed}"


@dataclass(frozen=True)
class RobustnessPlan:
    """Run `mtsmart robustness --run DIR *args` on the report runs of these variants in one setting,
    after each finishes and before its checkpoints are dropped: is the model measurably smoother?"""

    setting: str
    variants: tuple[str, ...]
    args: tuple[str, ...]  # e.g. ("--radii", "1e-3,1e-2", "--attack-steps", "5")


@dataclass
class Study:
    path: Path
    name: str
    output_dir: Path
    metric: str
    baseline: str
    tune_seeds: list[int]
    report_seeds: list[int]
    base: dict[str, Any]
    settings: dict[str, dict[str, Any]]
    variants: dict[str, dict[str, Any]]  # config overrides, without the grid
    grids: dict[str, dict[str, list[Any]]] = field(default_factory=dict)  # variant → dotted key → values
    comparisons: list[tuple[str, str]] = field(default_factory=list)  # extra (variant, reference) pairs
    robustness: Optional[RobustnessPlan] = None  # `mtsmart robustness` on some report runs

    def measures_robustness(self, job: Job) -> bool:
        plan = self.robustness
        return (plan is not None and job.phase == "report" and job.setting == plan.setting
                and job.variant in plan.variants)

    @property
    def runs_dir(self) -> Path:
        return self.output_dir / "runs"

    def points(self, variant: str) -> list[tuple[str, dict[str, Any]]]:
        """(folder name, {dotted key: value}) of every grid point of a variant, in grid order.
        Folder names read `key_value+key_value` (no "=", which the train command reads as an override)."""
        grid = self.grids.get(variant, {})
        if not grid:
            return [(DEFAULT_POINT, {})]
        keys = list(grid)
        combos = itertools.product(*(grid[key] for key in keys))
        return [("+".join(f"{k}_{v}" for k, v in zip(keys, values)), dict(zip(keys, values))) for values in combos]

    def config_of(self, setting: str, variant: str, values: dict[str, Any], seed: int) -> dict[str, Any]:
        data = merge(merge(copy.deepcopy(self.base), self.settings[setting]), self.variants[variant])
        for key, value in values.items():
            apply_override(data, key.split("."), value)
        apply_override(data, ["train", "seed"], seed)
        return data

    def tune_jobs(self, setting: str) -> list[Job]:
        return [
            Job(setting, variant, point, seed, "tune", self.config_of(setting, variant, values, seed))
            for variant in self.variants
            for point, values in self.points(variant)
            for seed in self.tune_seeds
            if len(self.points(variant)) > 1  # without a grid there is nothing to tune
        ]

    def report_job(self, setting: str, variant: str, point: str, seed: int) -> Job:
        """A report-seed run of the variant at its chosen grid point (folder name)."""
        values = dict(self.points(variant))[point]
        return Job(setting, variant, point, seed, "report", self.config_of(setting, variant, values, seed))


def merge(into: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Nested mappings merged key by key (extra wins); returns `into`."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)
    return into


REQUIRED = ("name", "metric", "baseline", "seeds", "settings", "variants")
KNOWN = (*REQUIRED, "output_dir", "base", "comparisons", "robustness")


def load_study(path: str | Path) -> Study:
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"study file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise StudyError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise StudyError(f"{path}: a study file must hold a mapping")
    try:
        study = _build(path, data)
        _check_every_run(study)
    except (StudyError, ConfigError) as error:
        raise StudyError(f"{path}: {error}") from None
    return study


def _build(path: Path, data: dict[str, Any]) -> Study:
    unknown = sorted(set(data) - set(KNOWN))
    if unknown:
        raise StudyError(f"unknown key {unknown[0]}; known keys: {list(KNOWN)}")
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise StudyError(f"missing key {missing[0]}")
    seeds = _mapping(data["seeds"], "seeds")
    extra_seed_keys = sorted(set(seeds) - {"tune", "report"})
    if extra_seed_keys:
        raise StudyError(f"unknown key seeds.{extra_seed_keys[0]}; known: tune, report")
    tune = _seed_list(seeds["tune"], "seeds.tune") if seeds.get("tune") else []
    report = _seed_list(seeds.get("report"), "seeds.report")
    if set(tune) & set(report):
        raise StudyError(f"seeds.tune and seeds.report share {sorted(set(tune) & set(report))}: report on fresh seeds")
    variants, grids = {}, {}
    for name, entry in _mapping(data["variants"], "variants").items():
        entry = dict(_mapping(entry or {}, f"variants.{name}"))
        grid = _mapping(entry.pop(GRID_KEY, {}) or {}, f"variants.{name}.grid")
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise StudyError(f"variants.{name}.grid.{key}: give a non-empty list of values")
        if grid and not tune:
            raise StudyError(f"variants.{name}.grid: a grid needs tune seeds (seeds.tune) to choose a point on")
        variants[name], grids[name] = entry, grid
    baseline = str(data["baseline"])
    if baseline not in variants:
        raise StudyError(f"baseline: {baseline!r} is not one of the variants {list(variants)}")
    comparisons = []
    for i, pair in enumerate(data.get("comparisons") or []):
        if not (isinstance(pair, list) and len(pair) == 2 and all(p in variants for p in pair)):
            raise StudyError(f"comparisons[{i}]: give [variant, reference variant], both among {list(variants)}")
        comparisons.append((pair[0], pair[1]))
    robustness = _robustness_plan(data.get("robustness"), list(data["settings"]), list(variants))
    return Study(
        robustness=robustness,
        path=path,
        name=str(data["name"]),
        output_dir=(path.parent / str(data.get("output_dir", path.stem))).resolve(),
        metric=str(data["metric"]),
        baseline=baseline,
        tune_seeds=tune,
        report_seeds=report,
        base=dict(_mapping(data.get("base") or {}, "base")),
        settings={name: dict(_mapping(value or {}, f"settings.{name}"))
                  for name, value in _mapping(data["settings"], "settings").items()},
        variants=variants,
        grids=grids,
        comparisons=comparisons,
    )


def _robustness_plan(value: Any, settings: list[str], variants: list[str]) -> Optional[RobustnessPlan]:
    """robustness: {setting: S, variants: [...], args: [...]} (args: `mtsmart robustness` options)."""
    if value is None:
        return None
    value = _mapping(value, "robustness")
    unknown = sorted(set(value) - {"setting", "variants", "args"})
    if unknown:
        raise StudyError(f"unknown key robustness.{unknown[0]}; known: setting, variants, args")
    if value.get("setting") not in settings:
        raise StudyError(f"robustness.setting: {value.get('setting')!r} is not one of the settings {settings}")
    chosen = value.get("variants")
    if not isinstance(chosen, list) or not chosen or any(v not in variants for v in chosen):
        raise StudyError(f"robustness.variants: give a list of variants among {variants}, got {chosen!r}")
    args = value.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, (str, int, float)) for a in args):
        raise StudyError(f"robustness.args: give a list of `mtsmart robustness` options, got {args!r}")
    return RobustnessPlan(value["setting"], tuple(chosen), tuple(str(a) for a in args))


def _check_every_run(study: Study) -> None:
    """Every grid point of every variant in every setting is a valid config (refused before any run)."""
    if not study.settings:
        raise StudyError("settings: give at least one setting")
    for setting in study.settings:
        for variant in study.variants:
            for point, values in study.points(variant):
                where = f"settings.{setting} × variants.{variant} ({point})"
                data = study.config_of(setting, variant, values, seed=0)
                if "output_dir" in data:
                    raise StudyError(f"{where}: output_dir is set by the study (runs/<setting>/<variant>/<point>/seed_<n>)")
                try:
                    config_from_dict(data)
                except ConfigError as error:
                    raise StudyError(f"{where}: {error}") from None


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise StudyError(f"{key}: expected a mapping, got {value!r}")
    return value


def _seed_list(value: Any, key: str) -> list[int]:
    if not isinstance(value, list) or not value or not all(isinstance(s, int) and not isinstance(s, bool) for s in value):
        raise StudyError(f"{key}: expected a non-empty list of integer seeds, got {value!r}")
    if len(set(value)) != len(value):
        raise StudyError(f"{key}: a seed is listed twice: {value}")
    return list(value)
