"""Stages of a study (docs/study.md "Stages"): a variant whose runs start from another cell's runs
(`init_from`), the source run each of its runs needs, whether a finished run's weights are still
needed, and a source run trained again when its weights are gone.

A dependent run on seed s starts from the source cell's run on seed s at the source's chosen grid
point (its `model.init_from`); it can start once that run is done and still has its checkpoint.
Checkpoints are never committed, so a study continued on a machine without them trains the
source run again, into the same folder, with the committed files set aside in `previous_run/`;
training is deterministic on one kind of machine, and the rerun is compared with them.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Optional

from mtsmart.recipes.study.results import PREVIOUS_RUN, RESULTS, chosen_point, is_done
from mtsmart.recipes.study.spec import Job, Study
CHECKPOINTS = "checkpoints"
KEPT_FILES = ("study_run.json",)  # a rerun adds its time to the run's record


def phase_of(study: Study, seed: int) -> str:
    return "tune" if seed in study.tune_seeds else "report"


def source_job(study: Study, variant: str, seed: int) -> Optional[Job]:
    """The run a run of `variant` (which has `init_from`) on `seed` starts from, or None while the
    source cell's grid point is not chosen."""
    source = study.init_from[variant]
    point = chosen_point(study, source.setting, source.variant)
    if point is None:
        return None
    values = dict(study.points(source.variant))[point]
    config = study.config_of(source.setting, source.variant, values, seed)
    return Job(source.setting, source.variant, point, seed, phase_of(study, seed), config)


def starting_from(job: Job, source_folder: Path) -> Job:
    """The job with its source run's folder as model.init_from."""
    overrides = copy.deepcopy(job.overrides)
    overrides.setdefault("model", {})["init_from"] = str(source_folder)
    return dataclasses.replace(job, overrides=overrides)


def has_weights(folder: Path) -> bool:
    checkpoints = folder / CHECKPOINTS
    return checkpoints.is_dir() and any(p.name.startswith("step_") for p in checkpoints.iterdir())


def dependent_jobs(study: Study, job: Job) -> Optional[list[Job]]:
    """The runs that start from this run (same seed, every setting of every dependent variant), or
    None while one of those variants has not chosen its grid point (any of its points may need it)."""
    jobs = []
    for variant in study.dependents_of(job.setting, job.variant):
        for setting in study.settings_of(variant):
            if job.phase == "tune":
                jobs += [j for j in study.tune_jobs(setting) if j.variant == variant and j.seed == job.seed]
                continue
            point = chosen_point(study, setting, variant)
            if point is None:
                return None
            jobs.append(study.report_job(setting, variant, point, job.seed))
    return jobs


def needs_weights(study: Study, job: Job) -> bool:
    """Whether a finished run's checkpoint must stay: some run still to come starts from it."""
    if not study.dependents_of(job.setting, job.variant):
        return False
    chosen = chosen_point(study, job.setting, job.variant)
    if chosen is not None and chosen != job.point:
        return False  # a grid point not chosen: nothing starts from it
    dependents = dependent_jobs(study, job)
    return dependents is None or not all(is_done(d, study) for d in dependents)


def set_aside(folder: Path) -> None:
    """Before a source run is trained again: its files (but its time record) go to previous_run/."""
    previous = folder / PREVIOUS_RUN
    if previous.exists():
        shutil.rmtree(previous)
    previous.mkdir()
    for item in list(folder.iterdir()):
        if item.name not in (PREVIOUS_RUN, *KEPT_FILES):
            shutil.move(str(item), previous / item.name)


def is_interrupted_rerun(folder: Path) -> bool:
    """A source run whose retraining started (its committed files set aside) and has not finished."""
    return (folder / PREVIOUS_RUN / RESULTS).is_file() and not (folder / RESULTS).is_file()


def compare_rerun(folder: Path) -> Optional[str]:
    """After a rerun finished: None if its final scores equal the set-aside run's (previous_run/ is
    then removed), else a line saying how they differ (both are kept)."""
    previous = folder / PREVIOUS_RUN
    if not (previous / RESULTS).is_file():
        return None
    before = json.loads((previous / RESULTS).read_text(encoding="utf-8")).get("final")
    after = json.loads((folder / RESULTS).read_text(encoding="utf-8")).get("final")
    if before == after:
        shutil.rmtree(previous)
        return None
    return f"its final scores {after} differ from the set-aside run's {before} ({previous})"
