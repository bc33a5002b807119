"""What finished runs left (results.json), the grid point chosen on the tune seeds, and the
statistics reported on the report seeds: mean ± std, best of 3, seed-paired differences."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from scipy import optimize as scipy_optimize
from scipy import stats as scipy_stats

from mtsmart.recipes.study.spec import Job, Study

RESULTS = "results.json"
ROBUSTNESS = "robustness.json"  # written by `mtsmart robustness` into the run folder
PREVIOUS_RUN = "previous_run"  # where a source run trained again keeps its committed files (stages.set_aside)


def is_finished(folder: Path) -> bool:
    return (folder / RESULTS).is_file()


def is_done(job: Job, study: Study) -> bool:
    """Finished, with its robustness measured when the study asks for it."""
    folder = job.folder(study.runs_dir)
    return is_finished(folder) and (not study.measures_robustness(job) or (folder / ROBUSTNESS).is_file())


def results_file(folder: Path) -> Optional[Path]:
    """The run's results.json; for a source run being trained again (its weights were gone), the
    committed one set aside in previous_run/ until the rerun replaces it — training is
    deterministic, the rerun is compared with it, and its grid point stays chosen meanwhile, so
    the runs whose source has its weights need not wait. None if the run has no results."""
    for path in (folder / RESULTS, folder / PREVIOUS_RUN / RESULTS):
        if path.is_file():
            return path
    return None


def run_metric(folder: Path, metric: str) -> Optional[float]:
    """The run's final dev `metric` (results.json "final"), or None if the run has not finished."""
    path = results_file(folder)
    if path is None:
        return None
    final = json.loads(path.read_text(encoding="utf-8")).get("final", {})
    if metric not in final:
        raise KeyError(f"{path}: no metric {metric!r} in final (has {sorted(final)})")
    return float(final[metric])


def task_metric(folder: Path, metric: str, task: str) -> Optional[float]:
    """A multi-task run's score on one task: with metric `avg`, the mean of that task's metrics in
    results.json "final" (what `avg` is in a run of that task alone); another metric as it is."""
    if metric != "avg":
        return run_metric(folder, metric)
    path = results_file(folder)
    if path is None:
        return None
    final = json.loads(path.read_text(encoding="utf-8")).get("final", {})
    values = [float(v) for key, v in final.items() if key.startswith(f"{task}/")]
    if not values:
        raise KeyError(f"{path}: no metric of task {task!r} in final (has {sorted(final)})")
    return sum(values) / len(values)


def metrics_by_seed(study: Study, setting: str, variant: str, point: str, seeds: list[int]) -> dict[int, float]:
    """{seed: metric} of the finished runs among `seeds`. A `scores_of` variant reads the same
    seed's run of its source cell (at the source's chosen point) on this setting's task."""
    source = study.scores_of.get(variant)
    if source is not None:
        source_point = chosen_point(study, source.setting, source.variant)
        if source_point is None:
            return {}
        task = study.settings[setting]["tasks"][0]
        read = lambda seed: task_metric(Job(source.setting, source.variant, source_point, seed, "", {}).folder(study.runs_dir),
                                        study.metric, task)
    else:
        read = lambda seed: run_metric(Job(setting, variant, point, seed, "", {}).folder(study.runs_dir), study.metric)
    found = {}
    for seed in seeds:
        value = read(seed)
        if value is not None:
            found[seed] = value
    return found


def chosen_point(study: Study, setting: str, variant: str) -> Optional[str]:
    """The variant's grid point with the best mean metric over the tune seeds (the first on a
    tie), or None while one of its tune runs in this setting is unfinished."""
    points = study.points(variant)
    if len(points) == 1:
        return points[0][0]
    means = []
    for point, _ in points:
        found = metrics_by_seed(study, setting, variant, point, study.tune_seeds)
        if len(found) < len(study.tune_seeds):
            return None
        means.append((sum(found.values()) / len(found), point))
    best = max(mean for mean, _ in means)
    return next(point for mean, point in means if mean == best)


@dataclass
class Summary:
    n: int
    mean: float
    std: float  # sample standard deviation (n − 1); nan for n < 2
    best_of_3: Optional[float]  # the best of the first three report seeds, as the paper reports


def summarise(values: list[float]) -> Summary:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return Summary(n, mean, std, max(values[:3]) if n >= 3 else None)


@dataclass
class PairedDifference:
    n: int  # seeds where both runs finished
    mean: float
    low: float  # 95% confidence interval of the mean difference (Student's t, n − 1 dof)
    high: float


def paired_difference(values: dict[int, float], reference: dict[int, float], level: float = 0.95) -> Optional[PairedDifference]:
    """Mean of value − reference over the seeds both have, with its t-interval; None under 2 seeds.

    Pairing by seed removes what the two runs share (the same training subset, data order and
    head initialisation), so the interval is far tighter than one from two independent means.
    """
    spread = _seed_differences(values, reference)
    if spread is None:
        return None
    n, mean, sd = spread
    half = scipy_stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return PairedDifference(n, mean, mean - half, mean + half)


def _seed_differences(values: dict[int, float], reference: dict[int, float]) -> Optional[tuple[int, float, float]]:
    """(n, mean, sample sd) of value − reference over the seeds both have; None under 2 seeds."""
    seeds = sorted(set(values) & set(reference))
    if len(seeds) < 2:
        return None
    diffs = [values[s] - reference[s] for s in seeds]
    n = len(diffs)
    mean = sum(diffs) / n
    return n, mean, math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))


def detectable_difference(values: dict[int, float], reference: dict[int, float], level: float = 0.95,
                          power: float = 0.8) -> Optional[float]:
    """The smallest true mean difference that a seed-paired t-test on as many pairs, with the spread
    of these pairs' differences, detects (two-sided, at `level`) with probability `power`: what a
    null result on these seeds could have seen. Exact for normal differences: power is computed
    from the noncentral t distribution (ncp = δ·√n / sd) and solved for δ. None under 2 pairs."""
    spread = _seed_differences(values, reference)
    if spread is None:
        return None
    n, _, sd = spread
    if sd == 0:
        return 0.0
    critical = scipy_stats.t.ppf(0.5 + level / 2, n - 1)

    def power_at(effect: float) -> float:
        shift = effect * math.sqrt(n) / sd
        wrong_side = scipy_stats.nct.cdf(-critical, n - 1, shift)  # NaN where it underflows (large shifts)
        return scipy_stats.nct.sf(critical, n - 1, shift) + (0.0 if math.isnan(wrong_side) else wrong_side)

    high = sd
    while power_at(high) < power:
        high *= 2
    return scipy_optimize.brentq(lambda effect: power_at(effect) - power, 0.0, high, xtol=sd * 1e-9)


@dataclass
class PairedRatio:
    n: int  # seeds where both runs have a positive value
    geometric_mean: float  # of the seed-paired ratios value / reference
    low: float  # 95% confidence interval of the geometric mean (a t-interval on the log ratios)
    high: float


def paired_ratio(values: dict[int, float], reference: dict[int, float], level: float = 0.95) -> Optional[PairedRatio]:
    """The geometric mean of the seed-paired ratios value / reference, with the t-interval of the
    mean log ratio mapped back through exp; None under 2 pairs. For quantities that span orders of
    magnitude (ℓs), where a ratio, not a difference, is what compares across runs."""
    d = paired_difference({k: math.log(v) for k, v in values.items() if v > 0},
                          {k: math.log(v) for k, v in reference.items() if v > 0}, level)
    if d is None:
        return None
    return PairedRatio(d.n, math.exp(d.mean), math.exp(d.low), math.exp(d.high))


def seed_means(per_setting: list[tuple[dict[int, float], dict[int, float]]]) -> tuple[dict[int, float], dict[int, float]]:
    """({seed: the values' mean over the settings}, {seed: the reference's}) for the seeds that every
    setting has for both. Seed-paired differences of these means read the settings' average as one
    outcome per seed, the reading a study that reports the same seeds in every setting can
    pre-register; its t-interval has n − 1 dof over the seeds (pooled_difference instead pools each
    setting's own variance)."""
    if not per_setting:
        return {}, {}
    seeds = set.intersection(*(set(values) & set(reference) for values, reference in per_setting))
    k = len(per_setting)
    return ({s: sum(values[s] for values, _ in per_setting) / k for s in sorted(seeds)},
            {s: sum(reference[s] for _, reference in per_setting) / k for s in sorted(seeds)})


def pooled_difference(
    per_setting: list[tuple[dict[int, float], dict[int, float]]], level: float = 0.95
) -> Optional[PairedDifference]:
    """The unweighted mean over settings of each setting's mean seed-paired difference, with a
    Welch–Satterthwaite t-interval: var = Σ sᵢ²/nᵢ / k², dof = (Σ sᵢ²/nᵢ)² / Σ (sᵢ²/nᵢ)²/(nᵢ − 1).

    Each (values, reference) pair is one setting's {seed: metric}. Settings differ in their seed
    noise, so each keeps its own variance; None unless every setting has ≥ 2 paired seeds. `n` is
    the number of pairs over all settings.
    """
    means, variances, counts = [], [], []
    for values, reference in per_setting:
        seeds = sorted(set(values) & set(reference))
        if len(seeds) < 2:
            return None
        diffs = [values[s] - reference[s] for s in seeds]
        mean = sum(diffs) / len(diffs)
        means.append(mean)
        variances.append(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs))  # sᵢ²/nᵢ
        counts.append(len(diffs))
    if not means:
        return None
    k = len(means)
    mean = sum(means) / k
    total = sum(variances)
    if total == 0:
        return PairedDifference(sum(counts), mean, mean, mean)
    dof = total ** 2 / sum(v ** 2 / (n - 1) for v, n in zip(variances, counts))
    half = scipy_stats.t.ppf(0.5 + level / 2, dof) * math.sqrt(total) / k
    return PairedDifference(sum(counts), mean, mean - half, mean + half)
