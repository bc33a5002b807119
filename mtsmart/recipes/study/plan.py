"""`mtsmart study FILE --plan`: the runs a study has left, per setting and variant, and how long
they will take at the finished runs' pace — what a budget amendment is decided on, before the runs
it affects. Reads the runs folder only; starts, deletes and writes nothing."""
from __future__ import annotations

from collections import Counter
from typing import Optional

from mtsmart.recipes.study.run_times import fit_run_times
from mtsmart.recipes.study.runner import Queue, finished_run_seconds, with_twins_runs
from mtsmart.recipes.study.spec import Study


def plan_text(study: Study, workers: int, settings: Optional[list[str]] = None,
              variants: Optional[list[str]] = None) -> str:
    """A table of the runs left (tune and report; a variant still tuning counts its report runs
    too) with each cell's expected minutes a run — its finished runs' geometric mean ("seen"),
    else those of a variant of the same cost in the setting ("as <variant>", Study.cost_twins),
    else the setting × variant fit of mtsmart.recipes.study.run_times ("fit") — and the hours
    they take at `workers` at a time."""
    left = Counter(Queue(study, settings, variants, tidy=False).pending())
    own = finished_run_seconds(study)
    observed = with_twins_runs(study, own)
    lines = [f"study {study.name}: {sum(left.values())} runs left, {workers} workers", "",
             "| setting | variant | runs left | min / run | from |", "|---|---|---|---|---|"]
    if not left:
        return "\n".join(lines[:1] + ["nothing left to run"])
    expected = fit_run_times(observed) if observed else None
    total = 0.0
    order = {name: i for i, name in enumerate(study.settings)}
    for (setting, variant), count in sorted(left.items(), key=lambda item: (order[item[0][0]], item[0][1])):
        if expected is None:
            lines.append(f"| {setting} | {variant} | {count} | — | no finished run yet |")
            continue
        seconds = expected((setting, variant))
        total += count * seconds
        lines.append(f"| {setting} | {variant} | {count} | {seconds / 60:.1f} | "
                     f"{_source(study, own, observed, setting, variant)} |")
    lines.append("")
    if expected is None:
        lines.append("No run has finished: nothing to time the rest by.")
    else:
        timed = sum(count for cell, count in left.items() if observed.get(cell))
        lines.append(f"About {total / workers / 3600:.1f} h with {workers} workers ({total / 3600:.1f} h of runs; "
                     f"{timed} of the {sum(left.values())} runs timed by finished runs like them, the others by the fit).")
    return "\n".join(lines)


def _source(study: Study, own: dict, observed: dict, setting: str, variant: str) -> str:
    """Where a cell's expected time comes from: its own finished runs, a cost twin's, or the fit."""
    if own.get((setting, variant)):
        return "seen"
    if observed.get((setting, variant)):
        twin = next(other for other in study.cost_twins(variant) if own.get((setting, other)))
        return f"as {twin}"
    return "fit"
