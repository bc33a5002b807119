"""A study's fit rule (`fit: {variant: V, max_train_loss: L}`; docs/study.md, "The fit rule").

An underfit setting cannot show what a regulariser buys (smart_parts' RTE at 3 epochs ended at a
training loss of 0.43 with every model), so a study may require the models to fit before it
reports: in every setting where variant V runs, the report runs — of every variant — wait until
V's tune runs there are finished, and start only if those runs, at V's chosen grid point, end
with a training task loss of at most L (the last logged `train/<task>/loss` in the run's
TensorBoard events: the task's loss alone, without any regulariser), averaged over the tune seeds,
for each task of the setting. A setting that fails is held: its epochs are the study file's to
amend (a pre-registered amendment) before its report runs.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean
from typing import Optional

from mtsmart.recipes.study.results import chosen_point
from mtsmart.recipes.study.spec import Job, Study, StudyError

LOSS_TAG = "train/{task}/loss"


class FitState(enum.Enum):
    NOT_RULED = enum.auto()  # the study has no rule, or its variant does not run in the setting
    WAITING = enum.auto()  # the rule variant's tune runs in the setting are not all finished
    FITS = enum.auto()
    UNDERFIT = enum.auto()


@dataclass(frozen=True)
class FitVerdict:
    state: FitState
    losses: dict[str, float] = field(default_factory=dict)  # task → mean final training loss over the tune seeds
    point: Optional[str] = None  # the rule variant's chosen grid point

    @property
    def allows_report_runs(self) -> bool:
        return self.state in (FitState.NOT_RULED, FitState.FITS)


class FitRuleError(StudyError):
    """A finished run whose training loss cannot be read (no TensorBoard events)."""


def final_task_loss(run: Path, task: str) -> float:
    """The last logged training loss of `task` in a finished run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    tag = LOSS_TAG.format(task=task)
    if tag not in events.Tags().get("scalars", []):
        raise FitRuleError(f"{run / 'tb'}: no {tag} logged, so the fit rule cannot read the run")
    return events.Scalars(tag)[-1].value


def fit_verdict(study: Study, setting: str) -> FitVerdict:
    rule = study.fit
    if rule is None or setting not in study.settings_of(rule.variant):
        return FitVerdict(FitState.NOT_RULED)
    point = chosen_point(study, setting, rule.variant)
    if point is None:
        return FitVerdict(FitState.WAITING)
    runs = [Job(setting, rule.variant, point, seed, "tune", {}).folder(study.runs_dir) for seed in study.tune_seeds]
    tasks = [Path(task).stem for task in study.settings[setting]["tasks"]]  # a task file's name is its stem
    losses = {task: mean(final_task_loss(run, task) for run in runs) for task in tasks}
    fits = all(loss <= rule.max_train_loss for loss in losses.values())
    return FitVerdict(FitState.FITS if fits else FitState.UNDERFIT, losses, point)


def describe(study: Study, verdict: FitVerdict) -> str:
    """What the rule found in a setting, in words (for the runner's log and the report)."""
    rule = study.fit
    if verdict.state is FitState.NOT_RULED:
        return "no fit rule here"
    if verdict.state is FitState.WAITING:
        return f"waiting for {rule.variant}'s tune runs"
    losses = ", ".join(f"{task} {loss:.3f}" for task, loss in verdict.losses.items())
    seeds = f"mean of tune seeds {study.tune_seeds}"
    if verdict.state is FitState.FITS:
        return (f"fits — {rule.variant} at {verdict.point} ends with training loss {losses} ({seeds}), "
                f"at most {rule.max_train_loss:g}")
    return (f"underfit — {rule.variant} at {verdict.point} ends with training loss {losses} ({seeds}), above "
            f"{rule.max_train_loss:g}: its report runs are held; amend the setting's epochs in {study.path.name} "
            f"(an amendment, stated there) and rerun")


class FitGate:
    """The runner's view of the rule: whether a setting's report runs may start, each setting's
    verdict read once it is final (fits or underfit), and a line for each verdict as it is reached."""

    def __init__(self, study: Study):
        self.study = study
        self.final: dict[str, FitVerdict] = {}
        self.news: list[str] = []  # verdict lines not yet printed

    def allows(self, setting: str) -> bool:
        if setting in self.final:
            return self.final[setting].allows_report_runs
        verdict = fit_verdict(self.study, setting)
        if verdict.state in (FitState.FITS, FitState.UNDERFIT):
            self.final[setting] = verdict
            self.news.append(f"{setting}: {describe(self.study, verdict)}")
        return verdict.allows_report_runs

    def held(self) -> list[str]:
        """The lines of the settings held as underfit."""
        return [f"{s}: {describe(self.study, v)}" for s, v in self.final.items() if v.state is FitState.UNDERFIT]

    def take_news(self) -> list[str]:
        news, self.news = self.news, []
        return news
