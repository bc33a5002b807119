"""Runs a study's training runs in N worker processes, T threads each; resumable.

Order: setting by setting, the tune runs first; a variant's report runs start as soon as its
grid point is chosen (at once for a variant without a grid). A finished run (results.json) is
skipped; an interrupted one continues from its latest checkpoint (`train.resume=auto`); one
that left no checkpoint starts again. A run the study measures for robustness goes on, in the
same worker slot, to `mtsmart robustness` once its training finishes; it is done when both are. Finished runs lose their checkpoints: what stays (config,
results.json, TensorBoard events, the log) is small enough to commit, so a study can be
continued later or elsewhere.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import yaml

from mtsmart.recipes.study import stages
from mtsmart.recipes.study.fit import FitGate
from mtsmart.recipes.study.results import RESULTS, ROBUSTNESS, chosen_point, is_done, is_finished
from mtsmart.recipes.study.run_times import Cell, fit_run_times, hours_to_go
from mtsmart.recipes.study.spec import Job, Study
from mtsmart.support.run_lock import FolderLock

RUN_CONFIG = "study_config.yaml"  # the run's config as the study built it (mtsmart train reads it)
RUN_RECORD = "study_run.json"  # wall time and exit status, summed over resumed attempts
# A running attempt's wall time is written this often, so a runner killed outright (a session's
# end, kill -9) leaves all but this much of it on record for the next attempt to add to.
PROGRESS_SECONDS = 60.0
CHECKPOINTS = stages.CHECKPOINTS
# Under a time budget a run starts only if this many times its expected time fits in what is
# left: 154 of smart_parts' first 155 runs took at most 1.5x the fit's time, 29 over 1.25x
# (other jobs on the machine, robustness measurements; docs/study.md).
TIME_MARGIN = 1.5
PR_SET_PDEATHSIG = 1  # prctl(2)


@dataclass
class Running:
    job: Job
    process: subprocess.Popen
    started: float
    log: object
    threads: int
    robustness: Optional[tuple[str, ...]]  # `mtsmart robustness` options the run owes, or None
    log_start: int  # where this attempt's output begins in train.log (earlier attempts' is above it)
    before: dict  # the run's record before this attempt: {"seconds": ..., "attempts": ...}
    stage: str = "train"  # the process: "train", then "robustness" when the run owes a measurement
    noted: float = 0.0  # when this attempt's time was last written (note_progress)

    def owes_robustness(self, runs_dir: Path) -> bool:
        """Training finished, the robustness measurement not yet made."""
        folder = self.job.folder(runs_dir)
        return (self.stage == "train" and self.robustness is not None and self.process.returncode == 0
                and is_finished(folder) and not (folder / ROBUSTNESS).is_file())


has_checkpoint = stages.has_weights


def thread_env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def stop_with_the_runner() -> None:
    """In a child before it runs (Linux): SIGTERM it when the runner dies, even by kill -9, so no
    orphaned run keeps writing into a folder a restarted runner hands out again."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: an orphan still meets the run folder's lock


def launch(job: Job, runs_dir: Path, threads: int, robustness: Optional[tuple[str, ...]] = None) -> Running:
    """Starts a run. A finished run handed out again is a source run whose weights are gone: it is
    trained again beside its set-aside files (mtsmart.recipes.study.stages)."""
    folder = job.folder(runs_dir)
    if is_finished(folder):
        stages.set_aside(folder)
    resume = has_checkpoint(folder)
    if folder.exists() and not resume:
        for item in folder.iterdir():  # an attempt that left nothing to continue from: start it again
            if item.name not in (stages.PREVIOUS_RUN, *stages.KEPT_FILES):
                shutil.rmtree(item) if item.is_dir() else item.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    config = {**job.overrides, "output_dir": str(folder)}
    (folder / RUN_CONFIG).write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    command = [sys.executable, "-m", "mtsmart", "train", str(folder / RUN_CONFIG)]
    if resume:
        command.append("train.resume=auto")
    before = previous_record(folder)
    log = open(folder / "train.log", "a", encoding="utf-8")
    log_start = log.tell()
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=thread_env(threads),
                               preexec_fn=stop_with_the_runner)
    started = time.monotonic()
    return Running(job, process, started, log, threads, robustness, log_start, before, noted=started)


def launch_robustness(trained: Running, runs_dir: Path) -> Running:
    """`mtsmart robustness` of a run whose training just finished, in the same worker slot, from
    its last checkpoint (output appended to train.log; the attempt's clock keeps running)."""
    folder = trained.job.folder(runs_dir)
    command = [sys.executable, "-m", "mtsmart", "robustness", "--run", str(folder), *trained.robustness]
    process = subprocess.Popen(command, stdout=trained.log, stderr=subprocess.STDOUT, env=thread_env(trained.threads),
                               preexec_fn=stop_with_the_runner)
    return Running(trained.job, process, trained.started, trained.log, trained.threads, trained.robustness,
                   trained.log_start, trained.before, "robustness", trained.noted)


def previous_record(folder: Path) -> dict:
    """The run's wall seconds and attempts so far (its study_run.json), zero for a new run."""
    path = folder / RUN_RECORD
    previous = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return {"seconds": float(previous.get("seconds", 0.0)), "attempts": int(previous.get("attempts", 0))}


def _write_record(running: Running, runs_dir: Path, returncode: Optional[int], finished: bool) -> None:
    entry = {
        "phase": running.job.phase,
        "seconds": running.before["seconds"] + time.monotonic() - running.started,
        "attempts": running.before["attempts"] + 1,
        "returncode": returncode,
        "finished": finished,
    }
    (running.job.folder(runs_dir) / RUN_RECORD).write_text(json.dumps(entry, indent=2) + "\n", encoding="utf-8")


def note_progress(running: Running, runs_dir: Path) -> None:
    """Writes a running attempt's time so far (returncode null, not finished) every PROGRESS_SECONDS."""
    now = time.monotonic()
    if now - running.noted >= PROGRESS_SECONDS:
        _write_record(running, runs_dir, None, False)
        running.noted = now


def record(running: Running, runs_dir: Path, keep_checkpoints: bool = False) -> bool:
    """Notes the attempt's wall time and status; drops a finished run's checkpoints unless told to
    keep them (a later stage starts from them)."""
    running.log.close()
    folder = running.job.folder(runs_dir)
    finished = is_finished(folder) and (running.robustness is None or (folder / ROBUSTNESS).is_file())
    _write_record(running, runs_dir, running.process.returncode, finished)
    if finished and not keep_checkpoints and (folder / CHECKPOINTS).exists():
        shutil.rmtree(folder / CHECKPOINTS)
    return finished


def drop_finished_checkpoints(study: Study) -> None:
    """Checkpoints of done runs that no later stage starts from: those that finished while the
    runner was not watching (an interrupt), and sources whose dependent runs are all done. A run
    that still owes its robustness measurement keeps them."""
    if not study.runs_dir.is_dir():
        return
    for results in study.runs_dir.glob(f"*/*/*/seed_*/{RESULTS}"):  # not previous_run/ of a rerun
        folder = results.parent
        setting, variant, point, seed = folder.relative_to(study.runs_dir).parts
        number = int(seed.removeprefix("seed_"))
        job = Job(setting, variant, point, number, stages.phase_of(study, number), {})
        if (folder / CHECKPOINTS).exists() and is_done(job, study) and not stages.needs_weights(study, job):
            shutil.rmtree(folder / CHECKPOINTS)


def with_sources(study: Study, variants: list[str]) -> list[str]:
    """`variants` and the variants their runs start from or read (`init_from`, `scores_of`), in
    file order: a stage's runs cannot run without its source's."""
    needed = set(variants)
    for variant in variants:
        source = study.init_from.get(variant) or study.scores_of.get(variant)
        if source is not None:
            needed.add(source.variant)
    return [v for v in study.variants if v in needed]


class Queue:
    """The study's runs (of `settings` and `variants`, default all; a variant's sources join it)
    in priority order; report runs appear once their point is chosen."""

    def __init__(self, study: Study, settings: Optional[list[str]] = None, variants: Optional[list[str]] = None,
                 tidy: bool = True):
        """`tidy`: first drop the checkpoints no later stage needs (a runner's queue; a plan only reads)."""
        self.study = study
        self.settings = list(study.settings) if settings is None else settings
        chosen = set(study.variants if variants is None else with_sources(study, variants))
        if tidy:
            drop_finished_checkpoints(study)
        self.tune = {s: [j for j in study.tune_jobs(s) if j.variant in chosen and not is_finished(j.folder(study.runs_dir))]
                     for s in self.settings}
        self.report = {s: [(v, seed) for v in study.variants_in(s) if study.trains(v) and v in chosen
                           for seed in study.report_seeds]
                       for s in self.settings}
        self.reruns: set[Path] = set()  # source runs handed out to be trained again (each once per invocation)
        self.fit = FitGate(study)  # a setting's report runs wait until its models fit (the study's fit rule)

    def next_ready(self, fits: Callable[[Job], bool] = lambda job: True) -> Optional[Job]:
        """The first run that can start now and `fits`, or None; each run is handed out once. Runs
        whose source run is done and has its weights go first, so a source's checkpoint is dropped
        soon (and a machine's time limit, which takes the weights with it, finds few runs still
        needing them); then a source run whose weights are gone (a finished run, handed out to be
        trained again, once) for the runs that start from it; then report runs of variants whose
        point is chosen (the baseline's among them), seed by seed across settings and variants, so
        that whole seed-paired comparisons — one seed's every arm in every setting — complete
        early and a study cut short leaves complete pairs; then the remaining tune runs, setting
        by setting. A run that does not fit, or whose source run is not done, stays queued. Report
        runs in a setting the study's fit rule holds (waiting for its tune runs, or underfit) stay
        queued."""
        for only_dependents, may_retrain in ((True, False), (True, True), (False, True)):
            handed = (self._next_report(fits, only_dependents, may_retrain)
                      or self._next_tune(fits, only_dependents, may_retrain))
            if handed is not None:
                return handed
        return None

    def _report_order(self) -> list[tuple[str, str, int]]:
        """(setting, variant, seed) of the queued report runs, seed-major: the study's report seeds
        in order; within a seed, settings in order; within a setting, variants in file order."""
        rank = {seed: i for i, seed in enumerate(self.study.report_seeds)}
        queued = [(setting, variant, seed) for setting in self.settings for variant, seed in self.report[setting]]
        return sorted(queued, key=lambda item: rank[item[2]])  # stable: settings, then variants, keep their order

    def _next_report(self, fits: Callable[[Job], bool], only_dependents: bool, may_retrain: bool) -> Optional[Job]:
        allowed: dict[str, bool] = {}  # the fit rule's verdict, read once per setting (it reads training logs)
        for setting, variant, seed in self._report_order():
            point = chosen_point(self.study, setting, variant)
            if point is None or (only_dependents and variant not in self.study.init_from):
                continue
            if setting not in allowed:
                allowed[setting] = self.fit.allows(setting)
            if not allowed[setting]:
                continue
            job = self.study.report_job(setting, variant, point, seed)
            if is_done(job, self.study):
                self.report[setting].remove((variant, seed))
                continue
            handed = self._hand_out(job, fits, may_retrain)
            if handed is not None:
                if handed.variant == variant:
                    self.report[setting].remove((variant, seed))
                return handed
        return None

    def _next_tune(self, fits: Callable[[Job], bool], only_dependents: bool, may_retrain: bool) -> Optional[Job]:
        for setting in self.settings:
            for job in list(self.tune[setting]):
                if is_done(job, self.study):  # a source handed out (and finished) as a retraining
                    self.tune[setting].remove(job)
                    continue
                if only_dependents and job.variant not in self.study.init_from:
                    continue
                handed = self._hand_out(job, fits, may_retrain)
                if handed is not None:
                    if handed.variant == job.variant:
                        self.tune[setting].remove(job)
                    return handed
        return None

    def _hand_out(self, job: Job, fits: Callable[[Job], bool], may_retrain: bool) -> Optional[Job]:
        """The job if it can start now; its source run if that must be trained again first (its
        weights are gone) and `may_retrain`; None if it waits (for its source run, or for time)."""
        if job.folder(self.study.runs_dir) in self.reruns:
            return None  # being trained again: handed out already
        if job.variant in self.study.init_from:
            source = stages.source_job(self.study, job.variant, job.seed)
            if source is None:
                return None  # the source cell is still tuning
            folder = source.folder(self.study.runs_dir)
            if not is_done(source, self.study):
                # A retraining an earlier runner left unfinished is resumed before another starts.
                if may_retrain and stages.is_interrupted_rerun(folder) and folder not in self.reruns and fits(source):
                    self.reruns.add(folder)
                    return source
                return None  # the source is running, or queued like any other run
            if not has_checkpoint(folder):
                if not may_retrain or folder in self.reruns or not fits(source):
                    return None
                self.reruns.add(folder)
                return source
            job = stages.starting_from(job, folder)
        return job if fits(job) else None

    def pending(self) -> list[Cell]:
        """(setting, variant) of each run not yet handed out and not done (a source handed out to be
        trained again counts as handed out)."""
        def waiting(job: Job) -> bool:
            return not is_done(job, self.study) and job.folder(self.study.runs_dir) not in self.reruns

        cells = [(job.setting, job.variant) for jobs in self.tune.values() for job in jobs if waiting(job)]
        for setting, items in self.report.items():
            points = {variant: chosen_point(self.study, setting, variant) for variant in {v for v, _ in items}}
            for variant, seed in items:
                point = points[variant]
                if point is None or waiting(self.study.report_job(setting, variant, point, seed)):
                    cells.append((setting, variant))
        return cells

    def remaining(self) -> int:
        return len(self.pending())

    def held_runs(self) -> int:
        """Report runs not yet done in the settings the fit rule holds as underfit."""
        held = {setting for setting, verdict in self.fit.final.items() if not verdict.allows_report_runs}
        return sum(len(self.report[setting]) for setting in held)


@dataclass
class Outcome:
    failed: list[Job]  # runs that ended without finishing (the others are done)
    stopped: Optional[str] = None  # why the runner stopped starting runs before the queue was empty
    out_of_time: int = 0  # runs left unstarted because none of them fitted in the time budget
    held: list[str] = field(default_factory=list)  # settings whose report runs the fit rule holds (underfit), why


class TimeBudget:
    """`--hours`: a run starts only if the study's finished runs say it ends in time (its
    setting's and variant's expected seconds, mtsmart.recipes.study.run_times, times TIME_MARGIN). Before
    any run has finished nothing can be predicted, and every run fits."""

    def __init__(self, study: Study, hours: float):
        self.deadline = time.monotonic() + hours * 3600
        self.refit(with_twins_runs(study, finished_run_seconds(study)))

    def refit(self, observed: dict[Cell, list[float]]) -> None:
        """Predict from these finished runs' times (with_twins_runs, after a run finishes)."""
        self.expected = fit_run_times(observed) if observed else None

    def fits(self, job: Job) -> bool:
        if self.expected is None:
            return True
        return time.monotonic() + TIME_MARGIN * self.expected((job.setting, job.variant)) <= self.deadline


def run_study(
    study: Study, workers: int, threads: int, settings: Optional[list[str]] = None,
    stop_after_failures: int = 3, poll_seconds: float = 2.0, hours: Optional[float] = None,
    variants: Optional[list[str]] = None,
) -> Outcome:
    """Runs every unfinished run (of `settings`, default all: machines can share a study by
    setting, their run folders never overlap; of `variants` and their sources, default all: the
    order of a study's questions is the user's). After `stop_after_failures` runs in a row fail —
    a cause every run shares, such as data that cannot be found, would otherwise fail the whole
    queue one run at a time — it starts no more, lets the running ones end, and says why. With
    `hours`, it starts only runs expected to end within that many hours (TimeBudget) and ends
    when none is left that fits; a run killed at a machine's time limit would lose its work
    since its last checkpoint."""
    with contextlib.ExitStack() as locks:  # one runner per setting: a second one stops in one line
        for setting in sorted(settings if settings is not None else study.settings):
            locks.enter_context(FolderLock(study.runs_dir / setting, f"study {study.name}'s setting folder"))
        return _run_queue(study, workers, threads, Queue(study, settings, variants), stop_after_failures,
                          poll_seconds, hours)


def _run_queue(study: Study, workers: int, threads: int, queue: Queue, stop_after_failures: int,
               poll_seconds: float, hours: Optional[float]) -> Outcome:
    running, failed = [], []
    budget = None if hours is None else TimeBudget(study, hours)
    fits = (lambda job: True) if budget is None else budget.fits
    failures_in_a_row, stopped = 0, None
    # Whether a run may be startable: a report run becomes ready and an estimate changes only when
    # a run ends, and the time left only shrinks, so between two endings nothing new can start.
    look_for_runs = True
    left = queue.remaining()
    print(f"study {study.name}: {left} run{'' if left == 1 else 's'} to consider, {workers} workers × {threads} threads",
          flush=True)
    try:
        while True:
            while look_for_runs and len(running) < workers and stopped is None:
                job = queue.next_ready(fits)
                if job is None:
                    break
                plan = study.robustness.args if study.measures_robustness(job) else None
                rerun = is_finished(job.folder(study.runs_dir))
                running.append(launch(job, study.runs_dir, threads, plan))
                print(f"start  {_name(job)} ({job.phase}{'; trained again: a later stage needs its weights' if rerun else ''})",
                      flush=True)
            for line in queue.fit.take_news():
                print(f"fit    {line}", flush=True)
            look_for_runs = False
            if not running:
                break
            time.sleep(poll_seconds)
            for item in [r for r in running if r.process.returncode is None]:
                note_progress(item, study.runs_dir)
            for item in [r for r in running if r.process.poll() is not None]:
                running.remove(item)
                look_for_runs = True
                if item.owes_robustness(study.runs_dir):
                    running.append(launch_robustness(item, study.runs_dir))
                    print(f"robust {_name(item.job)} (training done; measuring robustness)", flush=True)
                    continue
                done = record(item, study.runs_dir, keep_checkpoints=stages.needs_weights(study, item.job))
                seconds = time.monotonic() - item.started
                if done:
                    failures_in_a_row = 0
                    difference = stages.compare_rerun(item.job.folder(study.runs_dir))
                    if difference:
                        print(f"RERUN  {_name(item.job)}: {difference}", flush=True)
                    drop_finished_checkpoints(study)  # sources whose last dependent run just finished
                    observed = with_twins_runs(study, finished_run_seconds(study))
                    if budget is not None:
                        budget.refit(observed)
                    pending = queue.pending()
                    left = len(pending) + len(running)
                    print(f"done   {_name(item.job)} in {seconds:.0f} s; {left} left{_estimate(observed, pending, running, workers)}",
                          flush=True)
                    continue
                failed.append(item.job)
                failures_in_a_row += 1
                reason = last_error_line(item.job.folder(study.runs_dir) / "train.log", item.log_start)
                print(f"FAILED {_name(item.job)} (exit {item.process.returncode}) in {seconds:.0f} s: {reason}", flush=True)
                if failures_in_a_row >= stop_after_failures and stopped is None:
                    stopped = f"{failures_in_a_row} runs in a row failed, the last with: {reason}"
                    print(f"stopping: {failures_in_a_row} runs in a row failed; starting no more runs", flush=True)
    finally:
        for item in running:  # interrupted: stop the children; they resume from their checkpoints
            item.process.terminate()
            item.process.wait()
            record(item, study.runs_dir)
    out_of_time = queue.remaining() - queue.held_runs() if budget is not None and stopped is None else 0
    return Outcome(failed, stopped, out_of_time, queue.fit.held())


def last_error_line(log: Path, start: int = 0) -> str:
    """What a failed attempt (its output from byte `start` of train.log) said last: mtsmart's
    one-line error when it gave one, else its last line (train.log holds the whole of it)."""
    with open(log, "rb") as handle:
        handle.seek(start)
        text = handle.read().decode("utf-8", errors="replace")
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("mtsmart: ")]
    return (errors or lines or ["(train.log is empty)"])[-1]


def finished_run_seconds(study: Study) -> dict[Cell, list[float]]:
    """(setting, variant) → the wall seconds of each of its finished runs (study_run.json, all
    attempts and the robustness measurement included), from every invocation that wrote them."""
    found: dict[Cell, list[float]] = {}
    if not study.runs_dir.is_dir():
        return found
    for path in study.runs_dir.glob(f"*/*/*/*/{RUN_RECORD}"):
        entry = json.loads(path.read_text(encoding="utf-8"))
        if entry.get("finished"):
            setting, variant = path.relative_to(study.runs_dir).parts[:2]
            found.setdefault((setting, variant), []).append(float(entry["seconds"]))
    return found


def with_twins_runs(study: Study, observed: dict[Cell, list[float]]) -> dict[Cell, list[float]]:
    """`observed` (finished_run_seconds) and, for each training variant none of whose runs has
    finished, in each of its settings, the runs there of its first cost twin that has some
    (Study.cost_twins), as its own: the run-time fit then prices single-task fine-tuning by the
    MT-DNN fine-tuning runs of the same config, not by the mean of every variant's cost."""
    timed = {variant for _, variant in observed}
    found = dict(observed)
    for variant in study.variants:
        if variant in timed or not study.trains(variant):
            continue
        for setting in study.settings_of(variant):
            twin = next((other for other in study.cost_twins(variant) if (setting, other) in observed), None)
            if twin is not None:
                found[(setting, variant)] = list(observed[(setting, twin)])
    return found


def _estimate(observed: dict[Cell, list[float]], pending: list[Cell], running: list[Running], workers: int) -> str:
    """A rough time to go (mtsmart.recipes.study.run_times): each run left at what the finished runs
    (`observed`) say its setting and variant cost, `workers` at a time; with how many of the runs
    left are in a setting × variant that has a finished run (the others are extrapolated)."""
    if not pending and not running:
        return ""
    now = time.monotonic()
    elapsed = [((r.job.setting, r.job.variant), now - r.started) for r in running]
    hours = hours_to_go(observed, pending, elapsed, workers)
    cells = pending + [cell for cell, _ in elapsed]
    timed = sum(cell in observed for cell in cells)
    return "" if hours is None else f", about {hours:.1f} h more ({timed} of the {len(cells)} runs left timed by runs like them)"


def _name(job: Job) -> str:
    return f"{job.setting}/{job.variant}/{job.point}/seed_{job.seed}"
