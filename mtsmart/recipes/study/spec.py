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

Stages (MT-DNN's recipe, transfer): a variant may run in some settings only (`settings: [...]`),
start each run from the same seed's finished run of another cell (`init_from: {setting, variant}`,
at that cell's chosen point; its model.init_from), or train nothing and read the same seed's run
of another cell on its setting's one task (`scores_of: {setting, variant}`: the multi-task model
itself, scored task by task).
"""
from __future__ import annotations

import copy
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from mtsmart.support.yaml_files import load_yaml
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
class Source:
    """The setting and variant whose runs a later stage starts from (`init_from`) or reads (`scores_of`)."""

    setting: str
    variant: str


@dataclass(frozen=True)
class RobustnessPlan:
    """Run `mtsmart robustness --run DIR *args` on the report runs of these variants in one setting,
    after each finishes and before its checkpoints are dropped: is the model measurably smoother?"""

    setting: str
    variants: tuple[str, ...]
    args: tuple[str, ...]  # e.g. ("--radii", "1e-3,1e-2", "--attack-steps", "5")


@dataclass(frozen=True)
class FitRule:
    """`fit: {variant, max_train_loss}`: a setting's report runs start only once this variant's tune
    runs there end at most this training loss (mtsmart.recipes.study.fit)."""

    variant: str
    max_train_loss: float


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
    runs_in: dict[str, list[str]] = field(default_factory=dict)  # variant → the settings it runs in (default all)
    init_from: dict[str, Source] = field(default_factory=dict)  # variant → the cell whose same-seed run each run starts from
    scores_of: dict[str, Source] = field(default_factory=dict)  # variant → the cell whose same-seed run it reads (trains nothing)
    fit: Optional[FitRule] = None  # report runs wait until the models fit (mtsmart.recipes.study.fit)

    def settings_of(self, variant: str) -> list[str]:
        return self.runs_in.get(variant, list(self.settings))

    def variants_in(self, setting: str) -> list[str]:
        """The variants of a setting's table, in file order (those that train and those that read)."""
        return [v for v in self.variants if setting in self.settings_of(v)]

    def trains(self, variant: str) -> bool:
        return variant not in self.scores_of

    def dependents_of(self, setting: str, variant: str) -> list[str]:
        """The variants whose runs start from this cell's runs."""
        return [v for v, source in self.init_from.items() if source == Source(setting, variant)]

    def tunes(self, setting: str, variant: str) -> bool:
        """Runs on the tune seeds: a grid to choose on, or a stage a tuned variant starts from."""
        if len(self.points(variant)) > 1:
            return True
        return any(len(self.points(d)) > 1 for d in self.dependents_of(setting, variant))

    def cost_twins(self, variant: str) -> list[str]:
        """The other training variants whose runs cost what this one's do in any setting they share,
        in file order: the same config overrides and grid, a learning-rate grid aside (the rate
        changes no run's cost, nor does starting from another stage's weights). What the run-time
        estimates price a variant by before any of its own runs has finished."""
        def cost(name: str) -> tuple[str, str]:
            grid = {key: values for key, values in self.grids.get(name, {}).items() if key not in COST_NEUTRAL_GRID_KEYS}
            return json.dumps(self.variants[name], sort_keys=True, default=str), json.dumps(grid, sort_keys=True, default=str)

        if not self.trains(variant):
            return []
        return [other for other in self.variants
                if other != variant and self.trains(other) and cost(other) == cost(variant)]

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
            for variant in self.variants_in(setting)
            if self.trains(variant) and self.tunes(setting, variant)  # without a grid there is nothing to tune
            for point, values in self.points(variant)
            for seed in self.tune_seeds
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
KNOWN = (*REQUIRED, "output_dir", "base", "comparisons", "robustness", "fit")
STAGE_KEYS = ("settings", "init_from", "scores_of")  # a variant's keys that are not config
COST_NEUTRAL_GRID_KEYS = ("train.lr",)  # grid keys that change no run's cost


def load_study(path: str | Path) -> Study:
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"study file not found: {path}")
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
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
    settings = {name: dict(_mapping(value or {}, f"settings.{name}"))
                for name, value in _mapping(data["settings"], "settings").items()}
    variants, grids, stages = {}, {}, {}
    for name, entry in _mapping(data["variants"], "variants").items():
        entry = dict(_mapping(entry or {}, f"variants.{name}"))
        stages[name] = {key: entry.pop(key) for key in STAGE_KEYS if key in entry}
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
    runs_in, init_from, scores_of = _stages(stages, settings, variants, grids)
    robustness = _robustness_plan(data.get("robustness"), list(data["settings"]), list(variants))
    fit = _fit_rule(data.get("fit"), variants, grids, bool(tune))
    return Study(
        fit=fit,
        runs_in=runs_in,
        init_from=init_from,
        scores_of=scores_of,
        robustness=robustness,
        path=path,
        name=str(data["name"]),
        output_dir=(path.parent / str(data.get("output_dir", path.stem))).resolve(),
        metric=str(data["metric"]),
        baseline=baseline,
        tune_seeds=tune,
        report_seeds=report,
        base=dict(_mapping(data.get("base") or {}, "base")),
        settings=settings,
        variants=variants,
        grids=grids,
        comparisons=comparisons,
    )


def _stages(stages: dict[str, dict[str, Any]], settings: dict[str, dict[str, Any]], variants: dict[str, dict[str, Any]],
            grids: dict[str, dict[str, list[Any]]]) -> tuple[dict[str, list[str]], dict[str, Source], dict[str, Source]]:
    """(runs_in, init_from, scores_of) from each variant's `settings`, `init_from` and `scores_of`."""
    runs_in: dict[str, list[str]] = {}
    for name, keys in stages.items():
        if "settings" in keys:
            chosen = keys["settings"]
            if not isinstance(chosen, list) or not chosen or any(s not in settings for s in chosen):
                raise StudyError(f"variants.{name}.settings: give a list of settings among {list(settings)}, got {chosen!r}")
            runs_in[name] = list(chosen)

    def where(variant: str) -> list[str]:
        return runs_in.get(variant, list(settings))

    def cell(name: str, key: str) -> Source:
        value = _mapping(stages[name][key], f"variants.{name}.{key}")
        if set(value) != {"setting", "variant"}:
            raise StudyError(f"variants.{name}.{key}: give {{setting: S, variant: V}}, got {value!r}")
        source = Source(str(value["setting"]), str(value["variant"]))
        if source.variant not in variants or source.setting not in where(source.variant):
            raise StudyError(f"variants.{name}.{key}: {source.variant!r} does not run in setting {source.setting!r}")
        if {"init_from", "scores_of"} & set(stages[source.variant]):
            raise StudyError(f"variants.{name}.{key}: {source.variant!r} is itself a later stage; "
                             "start from (or read) a cell that trains from the packaged encoder")
        return source

    init_from, scores_of = {}, {}
    for name, keys in stages.items():
        if "init_from" in keys and "scores_of" in keys:
            raise StudyError(f"variants.{name}: init_from trains from a run, scores_of reads one; give one of them")
        if "init_from" in keys:
            init_from[name] = cell(name, "init_from")
            if variants[name].get("model", {}).get("init_from"):
                raise StudyError(f"variants.{name}: model.init_from is set by init_from (the same seed's run of the cell)")
        if "scores_of" in keys:
            scores_of[name] = source = cell(name, "scores_of")
            if variants[name] or grids[name]:
                raise StudyError(f"variants.{name}: a variant with scores_of trains nothing; give it no config and no grid")
            source_tasks = settings[source.setting].get("tasks", [])
            for setting in where(name):
                tasks = settings[setting].get("tasks", [])
                if len(tasks) != 1 or tasks[0] not in source_tasks:
                    raise StudyError(f"variants.{name}.scores_of: setting {setting!r} must have one task that setting "
                                     f"{source.setting!r} trains (has {tasks!r})")
    return runs_in, init_from, scores_of


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


def _fit_rule(value: Any, variants: dict[str, dict[str, Any]], grids: dict[str, dict[str, list[Any]]],
              has_tune_seeds: bool) -> Optional[FitRule]:
    """fit: {variant: V, max_train_loss: L}; V needs a grid of two points or more: the rule reads its
    tune runs at the chosen point (a variant with one point runs no tune seeds)."""
    if value is None:
        return None
    value = _mapping(value, "fit")
    if set(value) != {"variant", "max_train_loss"}:
        raise StudyError(f"fit: give {{variant: V, max_train_loss: L}}, got {value!r}")
    variant, limit = value["variant"], value["max_train_loss"]
    if variant not in variants:
        raise StudyError(f"fit.variant: {variant!r} is not one of the variants {list(variants)}")
    if not has_tune_seeds or math.prod(len(values) for values in grids.get(variant, {}).values()) < 2:
        raise StudyError(f"fit.variant: {variant!r} has no grid of two points or more, so it runs no tune seeds "
                         "for the rule to read")
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not (0 < limit < float("inf")):
        raise StudyError(f"fit.max_train_loss: give a positive finite loss, got {limit!r}")
    return FitRule(str(variant), float(limit))


def _check_every_run(study: Study) -> None:
    """Every grid point of every variant in every setting is a valid config (refused before any run)."""
    if not study.settings:
        raise StudyError("settings: give at least one setting")
    for setting in study.settings:
        for variant in [v for v in study.variants_in(setting) if study.trains(v)]:
            for point, values in study.points(variant):
                where = f"settings.{setting} × variants.{variant} ({point})"
                data = study.config_of(setting, variant, values, seed=0)
                if variant in study.init_from:  # the source run's folder, known once it has run
                    apply_override(data, ["model", "init_from"], "<the source run>")
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
