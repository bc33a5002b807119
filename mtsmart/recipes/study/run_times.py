"""How long a study's runs left will take, from how long its finished runs took.

A run's time depends on its setting (data size, epochs, sequence length) and its variant (extra
forward and backward passes, fp32 instead of bf16) roughly as a product, so the log time is fit
as a[setting] + b[variant]: a heavier variant costs the same factor in every setting. The fit
predicts a setting × variant that has no finished run yet from the variant's cost elsewhere —
the first runs of a new setting (the cheap baseline first) would otherwise make the rest look
as cheap as they were. A setting × variant with finished runs is expected to take what they
took (their geometric mean): the product is only roughly right — on smart_parts' RTE the fp32
variants took 1.3x what the fit said (docs/study.md).
"""
from __future__ import annotations

import math
from typing import Callable

Cell = tuple[str, str]  # (setting, variant)
FIT_ROUNDS = 50  # alternating means converge to the least-squares fit well within this


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def fit_run_times(observed: dict[Cell, list[float]]) -> Callable[[Cell], float]:
    """The expected seconds of one run of a (setting, variant): the geometric mean of its
    finished runs' seconds, or, for one without any, the least-squares fit of log seconds as
    a[setting] + b[variant] (alternating means), where a variant without a finished run (or one
    timed only in settings not linked to this one) takes the mean variant term of the setting's
    group, and a setting without one the mean setting term of the variant's group (a cell of
    neither: the overall means). `observed` must hold at least one time."""
    log_times = {cell: [math.log(max(seconds, 1.0)) for seconds in times] for cell, times in observed.items() if times}
    if not log_times:
        raise ValueError("fit_run_times needs at least one finished run")
    logs = [(setting, variant, t) for (setting, variant), ts in log_times.items() for t in ts]
    settings = sorted({s for s, _, _ in logs})
    variants = sorted({v for _, v, _ in logs})
    a = dict.fromkeys(settings, 0.0)
    b = dict.fromkeys(variants, 0.0)
    for _ in range(FIT_ROUNDS):
        b = {v: _mean([t - a[s] for s, w, t in logs if w == v]) for v in variants}
        a = {s: _mean([t - b[w] for r, w, t in logs if r == s]) for s in settings}
    seen = {cell: _mean(ts) for cell, ts in log_times.items()}
    group = _connected(list(log_times))
    mean_a, mean_b = _mean(list(a.values())), _mean(list(b.values()))

    def expected(cell: Cell) -> float:
        setting, variant = cell
        if cell in seen:
            return math.exp(seen[cell])
        if setting in a and variant in b and group[("s", setting)] == group[("v", variant)]:
            return math.exp(a[setting] + b[variant])
        if setting in a:
            # The fit splits a run's time between its setting and its variant only up to a constant
            # within each connected group of cells (settings and variants linked by finished runs):
            # across groups their terms do not add up. So the setting's term goes with the mean
            # variant term of its own group.
            mine = [b[v] for v in b if group[("v", v)] == group[("s", setting)]]
            return math.exp(a[setting] + _mean(mine))
        if variant in b:
            mine = [a[t] for t in a if group[("s", t)] == group[("v", variant)]]
            return math.exp(_mean(mine) + b[variant])
        return math.exp(mean_a + mean_b)

    return expected


def _connected(cells: list[Cell]) -> dict[tuple[str, str], int]:
    """Each setting ("s", name) and variant ("v", name) of `cells` → the number of its connected
    group in the graph whose edges are the cells."""
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def root(node: tuple[str, str]) -> tuple[str, str]:
        while parent.setdefault(node, node) != node:
            node = parent[node]
        return node

    for setting, variant in cells:
        parent[root(("s", setting))] = root(("v", variant))
    roots = sorted({root(node) for node in parent})
    return {node: roots.index(root(node)) for node in parent}


def hours_to_go(observed: dict[Cell, list[float]], pending: list[Cell], running: list[tuple[Cell, float]],
                workers: int) -> float | None:
    """The runs left — `pending` ones whole, `running` ones less the seconds they have run — at
    `workers` at a time, in hours; None before any run has finished."""
    if not observed:
        return None
    expected = fit_run_times(observed)
    seconds = sum(expected(cell) for cell in pending)
    seconds += sum(max(expected(cell) - elapsed, 0.0) for cell, elapsed in running)
    return seconds / workers / 3600
