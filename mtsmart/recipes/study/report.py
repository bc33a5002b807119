"""The study's tables (Markdown) and plot (PNG): per setting, the tuning grid on the tune seeds,
then each variant on the report seeds — mean ± std, best of 3, and the seed-paired difference to
the baseline with its 95% interval, and beside it the Bonferroni-adjusted interval over the
setting's comparisons (with m comparisons, one 95% interval in m excludes 0 by chance about
m/20 times; the adjusted ones, at level 1 − 0.05/m, hold together) — then each variant's metric
per report seed."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from mtsmart.recipes.study.results import (
    PairedDifference, chosen_point, detectable_difference, metrics_by_seed, paired_difference, paired_ratio,
    pooled_difference, seed_means, summarise,
)
from mtsmart.recipes.study.fit import FitRuleError, FitState, describe, fit_verdict
from mtsmart.recipes.study.results import is_done
from mtsmart.recipes.study.runner import RUN_RECORD
from mtsmart.recipes.study.spec import Job, Study

SCALE = 100.0  # metrics are shown in points
LEVEL = 0.95  # each paired interval's confidence level
POWER = 0.8  # of the smallest detectable difference shown beside each interval


def family_level(comparisons: int) -> float:
    """Bonferroni: each of `comparisons` intervals at 1 − (1 − LEVEL)/m holds all m at ≥ LEVEL."""
    return 1 - (1 - LEVEL) / max(comparisons, 1)


def _pm(values: list[float]) -> str:
    s = summarise([v * SCALE for v in values])
    return f"{s.mean:.2f} ± {s.std:.2f}" if s.n > 1 else f"{s.mean:.2f}"


def _scaled(values: dict[int, float]) -> dict[int, float]:
    return {k: v * SCALE for k, v in values.items()}


def _difference_cell(d: Optional[PairedDifference]) -> str:
    """mean [low, high], marked **+** / **−** when the interval excludes 0; — without one."""
    if d is None:
        return "—"
    mark = " **+**" if d.low > 0 else (" **−**" if d.high < 0 else "")
    return f"{d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}]{mark}"


def _interval(values: dict[int, float], reference: dict[int, float], level: float = LEVEL) -> str:
    return _difference_cell(paired_difference(_scaled(values), _scaled(reference), level))


def _detectable(values: dict[int, float], reference: dict[int, float]) -> str:
    """The smallest difference these pairs detect with 80% power at two-sided 95%; — without one."""
    effect = detectable_difference(_scaled(values), _scaled(reference), LEVEL, POWER)
    return "—" if effect is None else f"{effect:.2f}"


def _minutes(study: Study, setting: str, variant: str, point: str, seeds: list[int]) -> float:
    total = 0.0
    for seed in seeds:
        path = Job(setting, variant, point, seed, "", {}).folder(study.runs_dir) / RUN_RECORD
        if path.is_file():
            total += json.loads(path.read_text(encoding="utf-8"))["seconds"]
    return total / 60


def report_values(study: Study, setting: str) -> dict[str, tuple[Optional[str], dict[int, float]]]:
    """variant → (chosen point or None, {report seed: metric}), for the setting's variants."""
    out = {}
    for variant in study.variants_in(setting):
        point = chosen_point(study, setting, variant)
        out[variant] = (point, metrics_by_seed(study, setting, variant, point, study.report_seeds) if point else {})
    return out


def setting_markdown(study: Study, setting: str) -> tuple[list[str], float]:
    lines, minutes = [f"### {setting}", ""], 0.0
    tuned = [v for v in study.variants_in(setting) if study.trains(v) and study.tunes(setting, v)]
    if tuned:
        lines += [f"Tuning, seeds {study.tune_seeds} (the chosen point in bold):", "",
                  "| variant | grid point | n | mean ± std |", "|---|---|---|---|"]
        for variant in tuned:
            chosen = chosen_point(study, setting, variant)
            for point, _ in study.points(variant):
                found = metrics_by_seed(study, setting, variant, point, study.tune_seeds)
                minutes += _minutes(study, setting, variant, point, study.tune_seeds)
                name = f"**{point}**" if point == chosen else point
                lines.append(f"| {variant} | {name} | {len(found)} | {_pm(list(found.values())) if found else '—'} |")
        lines.append("")
    lines += fit_markdown(study, setting)
    values = report_values(study, setting)
    if study.baseline not in values:
        return lines + scores_markdown(study, values) + per_seed_markdown(study, values), minutes
    baseline = values[study.baseline][1]
    comparisons = len(values) - 1 + len([pair for pair in study.comparisons if set(pair) <= set(values)])
    level = family_level(comparisons)
    adjust = comparisons > 1  # with one comparison the Bonferroni interval is the 95% one
    bonferroni = (f"; beside it the same difference's interval at {100 * level:.2f}%, Bonferroni over the setting's "
                  f"m = {comparisons} comparisons (all of them hold together at 95%)") if adjust else ""
    lines += [f"Report, seeds {study.report_seeds}; Δ = seed-paired difference to {study.baseline} with its 95% "
              f"t-interval (**+** / **−**: the interval excludes 0){bonferroni}; \"detects\" is the smallest true "
              f"difference these seed pairs, with their spread, detect with {100 * POWER:.0f}% power at two-sided 95% — "
              f"what a null could have seen:", "",
              "| variant | grid point | n | mean ± std | best of 3 | Δ vs " + study.baseline + " [95% CI] | detects | "
              + (f"Δ [Bonferroni, m = {comparisons}] | " if adjust else "") + "min / run |",
              "|---|---|---|---|---|---|---|" + ("---|" if adjust else "") + "---|"]

    def row(*cells: str) -> str:
        """A table row; the Bonferroni cell (the second to last) only where there is that column."""
        cells = cells if adjust else cells[:-2] + cells[-1:]
        return "| " + " | ".join(cells) + " |"

    for variant, (point, found) in values.items():
        if point is None:
            lines.append(row(variant, "(tuning unfinished)", "0", "—", "—", "—", "—", "—", "—"))
            continue
        run_minutes = _minutes(study, setting, variant, point, study.report_seeds)
        minutes += run_minutes
        ordered = [found[s] for s in study.report_seeds if s in found]
        summary = summarise([v * SCALE for v in ordered]) if ordered else None
        best = f"{summary.best_of_3:.2f}" if summary and summary.best_of_3 is not None else "—"
        is_baseline = variant == study.baseline
        delta = "(baseline)" if is_baseline else _interval(found, baseline)
        detects = "" if is_baseline else _detectable(found, baseline)
        adjusted = "" if is_baseline else _interval(found, baseline, level)
        per_run = f"{run_minutes / len(found):.1f}" if found else "—"
        lines.append(row(variant, point, str(len(found)), _pm(ordered) if ordered else "—", best, delta, detects,
                         adjusted, per_run))
    for variant, reference in [pair for pair in study.comparisons if set(pair) <= set(values)]:
        pair = values[variant][1], values[reference][1]
        lines.append(row(f"{variant} − {reference}", "", "", "", "", _interval(*pair), _detectable(*pair),
                         _interval(*pair, level=level), ""))
    lines.append("")
    return lines + per_seed_markdown(study, values), minutes


def fit_markdown(study: Study, setting: str) -> list[str]:
    """The fit rule's verdict on the setting (nothing where the rule does not apply)."""
    try:
        verdict = fit_verdict(study, setting)
    except FitRuleError as error:
        return [f"Fit rule: {error}", ""]
    if verdict.state is FitState.NOT_RULED:
        return []
    return [f"Fit rule (`fit`, training loss at most {study.fit.max_train_loss:g}): {describe(study, verdict)}.", ""]


def scores_markdown(study: Study, values: dict[str, tuple[Optional[str], dict[int, float]]]) -> list[str]:
    """A setting without the baseline (a stage that later stages start from): each variant's
    mean ± std on the report seeds, nothing to pair with."""
    lines = [f"Report, seeds {study.report_seeds} ({study.baseline} does not run in this setting):", "",
             "| variant | grid point | n | mean ± std | best of 3 |", "|---|---|---|---|---|"]
    for variant, (point, found) in values.items():
        ordered = [found[s] for s in study.report_seeds if s in found]
        summary = summarise([v * SCALE for v in ordered]) if ordered else None
        best = f"{summary.best_of_3:.2f}" if summary and summary.best_of_3 is not None else "—"
        lines.append(f"| {variant} | {point or '(tuning unfinished)'} | {len(ordered)} | {_pm(ordered) if ordered else '—'} | {best} |")
    return lines + [""]


def per_seed_markdown(study: Study, values: dict[str, tuple[Optional[str], dict[int, float]]]) -> list[str]:
    """Each variant's metric on each report seed: the numbers behind the means and the paired
    differences, so a reader sees whether one seed carries a difference (a seed on which every
    variant scores low is a hard seed, not one variant's failure)."""
    seeds = study.report_seeds
    lines = ["Per report seed:", "", "| variant | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|" + "---|" * len(seeds)]
    for variant, (_, found) in values.items():
        lines.append(f"| {variant} | " + " | ".join(f"{found[s] * SCALE:.2f}" if s in found else "—" for s in seeds) + " |")
    lines.append("")
    return lines


def overview_markdown(study: Study) -> list[str]:
    """The paper's table: a row per variant, a column per setting the baseline runs in, each cell
    the report seeds' mean ± std and the seed-paired difference to the baseline with its 95%
    interval (the setting's section has the rest)."""
    settings = [s for s in study.settings if study.baseline in study.variants_in(s)]
    if len(settings) < 2:
        return []
    values = {setting: report_values(study, setting) for setting in settings}
    lines = ["## Overview", "",
             f"Report seeds' mean ± std; below it, once both have two seeds, the seed-paired difference to "
             f"{study.baseline} with its 95% t-interval (— where a variant does not run or has no report runs yet):", "",
             "| variant | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
    for variant in [v for v in study.variants if any(v in values[s] for s in settings)]:
        cells = []
        for setting in settings:
            found = values[setting].get(variant, (None, {}))[1]
            if not found:
                cells.append("—")
                continue
            ordered = [found[seed] for seed in study.report_seeds if seed in found]
            delta = None if variant == study.baseline else paired_difference(
                _scaled(found), _scaled(values[setting][study.baseline][1]))
            cells.append(_pm(ordered) + ("" if delta is None else f"<br>{_difference_cell(delta)}"))
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def pooled_rows(study: Study) -> list[tuple[str, str, int, int, Optional[PairedDifference]]]:
    """(variant, reference, settings with ≥ 2 paired report seeds, settings where both run, the
    pooled difference in points or None until every such setting has them): every variant against
    the baseline, then the `comparisons` pairs."""
    per_setting = [report_values(study, setting) for setting in study.settings]
    pairs = [(v, study.baseline) for v in study.variants if v != study.baseline] + list(study.comparisons)
    rows = []
    for variant, reference in pairs:
        data = [(_scaled(v[variant][1]), _scaled(v[reference][1])) for v in per_setting if variant in v and reference in v]
        ready = sum(len(set(a) & set(b)) >= 2 for a, b in data)
        rows.append((variant, reference, ready, len(data), pooled_difference(data) if data and ready == len(data) else None))
    return rows


def pooled_markdown(study: Study) -> list[str]:
    """Each difference averaged over the settings (a secondary reading: does it help on average?
    The per-setting intervals decide)."""
    if len(study.settings) < 2:
        return []
    lines = ["### All settings", "",
             f"Each seed-paired difference (to {study.baseline}, then the `comparisons`), averaged over the "
             "settings where both run (the unweighted mean of the per-setting mean differences), with its "
             "95% Welch–Satterthwaite t-interval (each setting keeps its own seed variance):", "",
             "| difference | settings with results | mean over settings [95% CI] |", "|---|---|---|"]
    for variant, reference, ready, shared, d in pooled_rows(study):
        if shared:
            lines.append(f"| {variant} − {reference} | {ready} of {shared} | {_difference_cell(d)} |")
    lines.append("")
    return lines + seed_means_markdown(study)


def seed_means_markdown(study: Study) -> list[str]:
    """Each seed's mean over the settings, seed-paired: one outcome per seed (results.seed_means),
    for the variants that run in every setting."""
    per_setting = [report_values(study, setting) for setting in study.settings]
    pairs = [(v, study.baseline) for v in study.variants if v != study.baseline] + list(study.comparisons)
    rows = []
    for variant, reference in pairs:
        if not all(variant in v and reference in v for v in per_setting):
            continue
        values, base = seed_means([(v[variant][1], v[reference][1]) for v in per_setting])
        rows.append(f"| {variant} − {reference} | {len(values)} | {_interval(values, base)} | {_detectable(values, base)} |")
    if not rows:
        return []
    return ["Each seed's mean over all settings, seed-paired (the seeds every setting has for both "
            "variants), with its 95% t-interval and the smallest difference these pairs detect with 80% "
            "power at two-sided 95%:", "",
            "| difference | seeds | mean of the seed means [95% CI] | detects |", "|---|---|---|---|", *rows, ""]


def robustness_by_seed(study: Study, variant: str, point: Optional[str]) -> dict[int, dict]:
    """report seed → the run's robustness.json "results", for the seeds that have one."""
    found = {}
    for seed in study.report_seeds:
        path = Job(study.robustness.setting, variant, point or "", seed, "", {}).folder(study.runs_dir) / "robustness.json"
        if point and path.is_file():
            found[seed] = json.loads(path.read_text(encoding="utf-8"))["results"]
    return found


def _ratio(values: dict[int, float], reference: dict[int, float]) -> str:
    """The geometric mean of the seed-paired ratios value / reference with its 95% interval."""
    r = paired_ratio(values, reference)
    if r is None:
        return "—"
    mark = " **<**" if r.high < 1 else (" **>**" if r.low > 1 else "")
    return f"{r.geometric_mean:.2f} [{r.low:.2f}, {r.high:.2f}]{mark}"


def robustness_markdown(study: Study) -> list[str]:
    """Per variant and radius: ℓs under the attack and under random noise, each also as a
    seed-paired ratio to the baseline, and the metric under attack with its seed-paired
    difference to the baseline's; over the report seeds. ℓs is a divergence between output
    distributions, so a less confident model has a lower one whether or not its decisions are
    harder to flip; the metric under attack is the scale-free reading (docs/results.md)."""
    plan = study.robustness
    if plan is None:
        return []
    base = study.baseline
    lines = [f"### Smoothness after training ({plan.setting}, `mtsmart robustness {' '.join(plan.args)}`)", "",
             "ℓs under a PGD attack on the embeddings within ε and under random noise of the same size (lower = "
             "smoother), mean ± std over the report seeds that have it; ÷ " + base + ": the geometric mean of the "
             "seed-paired ratios to " + base + " with its 95% interval (**<** / **>**: the interval excludes 1); "
             "and the task metric on the same examples, clean and under the attack, each with its seed-paired "
             "difference to " + base + " (95% interval):", "",
             f"| variant | eval set | ε | n | ℓs attack | ÷ {base} [95% CI] | ℓs random | ÷ {base} [95% CI] "
             "| metric clean | metric under attack |", "|---|---|---|---|---|---|---|---|---|---|"]
    values = report_values(study, plan.setting)
    reference = robustness_by_seed(study, base, values[base][0])
    for variant in plan.variants:
        found = robustness_by_seed(study, variant, values[variant][0])
        if not found:
            lines.append(f"| {variant} | — | — | 0 | — | — | — | — | — | — |")
            continue
        first = next(iter(found.values()))
        for eval_name, measured in first.items():
            for eps in measured["radii"]:
                runs = {seed: r[eval_name]["radii"][eps] for seed, r in found.items()}
                paired = {seed: r[eval_name]["radii"][eps] for seed, r in reference.items()
                          if eps in r.get(eval_name, {}).get("radii", {})}
                cells = []
                for kind in ("attack", "random"):
                    mine = {seed: r[kind] for seed, r in runs.items()}
                    ratio = "" if variant == base else _ratio(mine, {seed: r[kind] for seed, r in paired.items()})
                    cells += [_spread(list(mine.values())), ratio]
                clean = {seed: _clean(r[eval_name]) for seed, r in found.items()}
                clean_reference = {seed: _clean(r[eval_name]) for seed, r in reference.items() if eval_name in r}
                attacked = {seed: r["robust"] for seed, r in runs.items()}
                attacked_reference = {seed: r["robust"] for seed, r in paired.items()}
                cells += [_metrics_cell(clean, clean_reference, variant == base),
                          _metrics_cell(attacked, attacked_reference, variant == base)]
                lines.append(f"| {variant} | {eval_name} | {eps} | {len(runs)} | {' | '.join(cells)} |")
    lines.append("")
    return lines


def _clean(measured: dict) -> dict[str, float]:
    """The clean metrics of one evaluation set's robustness.json entry, and the model's mean
    confidence in its predictions where it was measured (a classifier, measured since session 6)."""
    confidence = measured.get("confidence")
    return {**measured["clean"], **({} if confidence is None else {"confidence": confidence})}


def _metrics_cell(runs: dict[int, dict], reference: dict[int, dict], is_base: bool) -> str:
    """Each metric every run of {seed: {metric: value}} has, mean ± std in points, and beside it
    the seed-paired difference to the baseline's (not for the baseline itself)."""
    cells = []
    for metric in [m for m in next(iter(runs.values())) if all(m in r for r in runs.values())]:
        mine = {seed: r[metric] for seed, r in runs.items()}
        cell = f"{metric} {_pm(list(mine.values()))}"
        if not is_base:
            cell += f", Δ {_interval(mine, {seed: r[metric] for seed, r in reference.items() if metric in r})}"
        cells.append(cell)
    return "; ".join(cells)


def _spread(values: list[float]) -> str:
    s = summarise(values)
    return f"{s.mean:.3e} ± {s.std:.1e}" if s.n > 1 else f"{s.mean:.3e}"


def runs_done(study: Study) -> tuple[int, int]:
    """(runs done, runs in all): every tune run, and every variant's report runs (at its chosen
    point; a variant still tuning has none done). Done includes a robustness measurement owed."""
    done = total = 0
    for setting in study.settings:
        for job in study.tune_jobs(setting):
            total, done = total + 1, done + is_done(job, study)
        for variant in [v for v in study.variants_in(setting) if study.trains(v)]:
            point = chosen_point(study, setting, variant)
            for seed in study.report_seeds:
                total += 1
                done += point is not None and is_done(study.report_job(setting, variant, point, seed), study)
    return done, total


def markdown(study: Study) -> str:
    done, total = runs_done(study)
    lines = [f"# Study `{study.name}`", "",
             f"Study file: `{study.path.name}`. Metric: final dev `{study.metric}` × 100 (results.json \"final\"). "
             f"Grid points are chosen on seeds {study.tune_seeds or '—'}; reported on seeds {study.report_seeds}. "
             f"Runs done: {done} of {total}.", ""]
    lines += overview_markdown(study)
    total = 0.0
    for setting in study.settings:
        block, minutes = setting_markdown(study, setting)
        lines += block
        total += minutes
    lines += pooled_markdown(study)
    lines += robustness_markdown(study)
    lines += [f"Wall time of the finished runs, summed over runs: {total / 60:.1f} h (each run on its own worker).", ""]
    return "\n".join(lines)


Panel = tuple[str, dict[str, Optional[PairedDifference]], str]  # title, each variant's difference, what it says when empty


def plot_panels(study: Study) -> list[Panel]:
    """The plot's panels: one per setting, each variant's paired difference to the baseline (None
    until both have two paired report runs); with several settings, the differences averaged over
    them (None until every setting has them)."""
    panels: list[Panel] = []
    for setting in study.settings:
        values = report_values(study, setting)
        if study.baseline not in values:
            continue  # a stage without the baseline: nothing to pair
        baseline = _scaled(values[study.baseline][1])
        panels.append((setting, {v: paired_difference(_scaled(values[v][1]), baseline) for v in values if v != study.baseline},
                       "no paired report runs yet"))
    if len(study.settings) > 1:
        pooled = {variant: d for variant, reference, _, shared, d in pooled_rows(study)
                  if reference == study.baseline and shared}
        panels.append(("all settings (mean)", pooled, "waits for every setting's\npaired report runs"))
    return panels


def shared_half_width(panels: list[Panel]) -> float:
    """Every panel's x-axis is [−w, +w]: centred on zero and wide enough for every interval (with
    a 10% margin), so the settings' differences read on one scale; w = 1 with nothing to show."""
    ends = [abs(end) for _, differences, _ in panels for d in differences.values() if d is not None
            for end in (d.low, d.high)]
    return 1.1 * max(ends) if ends and max(ends) > 0 else 1.0


def plot(study: Study, path: Path) -> None:
    """`plot_panels` side by side on one x scale: each difference with its 95% interval, green
    when the interval lies above zero, red below, grey across."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = plot_panels(study)
    half_width = shared_half_width(panels)
    # Every variant compared with the baseline in any panel, in the study's order: settings can hold
    # different variants (a stage runs in some settings only), so a panel may lack a row.
    others = [v for v in study.variants if any(v in differences for _, differences, _ in panels)]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 0.45 * len(others) + 1.6), squeeze=False)
    for axis, (title, differences, empty_note) in zip(axes[0], panels):
        for row, variant in enumerate(others):
            d = differences.get(variant)
            if d is not None:
                colour = "tab:green" if d.low > 0 else ("tab:red" if d.high < 0 else "tab:gray")
                axis.errorbar(d.mean, row, xerr=[[d.mean - d.low], [d.high - d.mean]], fmt="o", color=colour, capsize=3)
        axis.set_xlim(-half_width, half_width)
        if all(d is None for d in differences.values()):  # nothing to plot yet: say so
            axis.text(0.5, 0.5, empty_note, transform=axis.transAxes, ha="center", va="center",
                      color="tab:gray", backgroundcolor="white")
        axis.axvline(0.0, color="black", linewidth=0.8)
        axis.set_yticks(range(len(others)), others if axis is axes[0][0] else [""] * len(others))
        axis.invert_yaxis()
        axis.set_title(title)
        axis.set_xlabel(f"Δ {study.metric} vs {study.baseline} (points, 95% CI)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(study: Study) -> tuple[Path, Path]:
    study.output_dir.mkdir(parents=True, exist_ok=True)
    md, png = study.output_dir / "report.md", study.output_dir / "report.png"
    md.write_text(markdown(study), encoding="utf-8")
    plot(study, png)
    return md, png
