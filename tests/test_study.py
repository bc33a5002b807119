"""`mtsmart study`: the study file's checks, the statistics against hand computation, and a
tiny study run end to end (tuning picks the better point; interrupted runs resume)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats as scipy_stats

from mtsmart.cli import main
from mtsmart.recipes.study.report import _ratio, family_level, plot_panels, shared_half_width
from mtsmart.recipes.study.results import (
    PairedDifference, chosen_point, detectable_difference, metrics_by_seed, paired_difference, paired_ratio,
    pooled_difference, seed_means, summarise,
)
from mtsmart.recipes.study.run_times import fit_run_times, hours_to_go
from mtsmart.recipes.study.runner import RUN_RECORD, TIME_MARGIN, Queue, TimeBudget, last_error_line
from mtsmart.recipes.study.spec import Job, StudyError, load_study

REPO = Path(__file__).resolve().parents[1]

TINY_BASE = {
    "model": {"name_or_path": "tiny", "tiny_hidden_size": 32},
    "data": {"max_seq_len": 48, "train_examples": 48},
    "train": {"batch_size": 8, "lr": 1.0e-3, "max_steps": 3, "save_every_steps": 2},
    "eval": {"max_examples": 32},
    "adversarial": {"method": "none"},
    "bregman": {"mu": 0.0},
}


def write_study(folder: Path, **changes) -> Path:
    data = {
        "name": "tiny", "metric": "avg", "baseline": "plain",
        "seeds": {"tune": [1], "report": [2, 3]},
        "base": TINY_BASE,
        "settings": {"rte": {"tasks": ["rte"]}},
        "variants": {"plain": {}, "rdrop": {"adversarial": {"method": "rdrop"}, "grid": {"rdrop.alpha": [0.5, 1.0]}}},
    }
    data.update(changes)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "studies").glob("*.yaml")), ids=lambda p: p.name)
def test_the_committed_study_files_load(path):
    """An amendment that breaks a study file is caught here, not at the next session's rerun."""
    study = load_study(path)
    assert study.baseline in study.variants and study.report_seeds


# --------------------------------------------------------------------------- statistics by hand


def test_paired_difference_is_the_t_interval_of_the_seed_differences():
    values = {4: 0.80, 5: 0.83, 6: 0.79, 7: 0.85, 8: 0.81}
    reference = {4: 0.78, 5: 0.80, 6: 0.79, 7: 0.82, 8: 0.80, 9: 0.5}  # seed 9 has no partner: ignored
    d = paired_difference(values, reference)
    diffs = [0.02, 0.03, 0.0, 0.03, 0.01]
    mean = sum(diffs) / 5
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / 4)
    half = 2.7764451051977987 * sd / math.sqrt(5)  # Student's t, 0.975 quantile, 4 degrees of freedom
    assert d.n == 5
    assert d.mean == pytest.approx(mean)
    assert (d.low, d.high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert paired_difference({1: 0.5}, {1: 0.4}) is None  # one pair: no interval


@pytest.mark.parametrize("n", [5, 20])
def test_the_detectable_difference_is_detected_four_times_in_five(n):
    """A naive reference: simulate the t-test on normal differences with the pairs' own sd and the
    computed effect as the true mean, and count how often the 95% interval excludes 0."""
    rng = np.random.default_rng(n)
    reference = {seed: 0.0 for seed in range(n)}
    values = dict(enumerate(rng.normal(0.3, 1.7, n)))
    effect = detectable_difference(values, reference)
    sd = float(np.std(list(values.values()), ddof=1))
    draws = rng.normal(effect, sd, (40_000, n))
    t = draws.mean(axis=1) / (draws.std(axis=1, ddof=1) / math.sqrt(n))
    detected = np.mean(np.abs(t) > scipy_stats.t.ppf(0.975, n - 1))
    assert detected == pytest.approx(0.80, abs=0.01)
    # The textbook shortcut (t quantiles for 97.5% and 80%) lands near it.
    shortcut = (scipy_stats.t.ppf(0.975, n - 1) + scipy_stats.t.ppf(0.8, n - 1)) * sd / math.sqrt(n)
    assert effect == pytest.approx(shortcut, rel=0.06)
    assert detectable_difference({1: 0.5}, {1: 0.4}) is None
    assert detectable_difference({1: 0.5, 2: 0.6}, {1: 0.4, 2: 0.5}) == 0.0  # no spread


def t4_quantile(p: float) -> float:
    """Student's t with 4 degrees of freedom, inverted by bisection on its closed-form CDF
    F(t) = 1/2 + (3/4)·u·(1 − u²/3), u = t / √(4 + t²)."""
    low, high = 0.0, 100.0
    for _ in range(200):
        t = (low + high) / 2
        u = t / math.sqrt(4 + t * t)
        low, high = (t, high) if 0.5 + 0.75 * u * (1 - u * u / 3) < p else (low, t)
    return (low + high) / 2


def test_the_bonferroni_interval_uses_the_quantile_of_level_one_minus_alpha_over_m():
    assert family_level(7) == pytest.approx(1 - 0.05 / 7) and family_level(1) == pytest.approx(0.95)
    values = {4: 0.80, 5: 0.83, 6: 0.79, 7: 0.85, 8: 0.81}
    reference = {4: 0.78, 5: 0.80, 6: 0.79, 7: 0.82, 8: 0.80}
    diffs = [0.02, 0.03, 0.0, 0.03, 0.01]
    mean = sum(diffs) / 5
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / 4)
    assert t4_quantile(0.975) == pytest.approx(2.7764451051977987)  # the bisection against the table value
    half = t4_quantile(1 - 0.05 / 14) * sd / math.sqrt(5)  # two-sided: α/m split over both tails
    d = paired_difference(values, reference, family_level(7))
    assert (d.low, d.high) == (pytest.approx(mean - half), pytest.approx(mean + half))


def test_a_runs_expected_time_is_its_settings_factor_times_its_variants():
    """Times that are exactly setting × variant (s2 takes 2×, v2 3×) are fit exactly: the
    unseen (s2, v2) is 100 × 2 × 3; an unseen variant takes the geometric mean of the setting's
    variants, an unseen setting that of the variant's settings."""
    observed = {("s1", "v1"): [100.0, 100.0], ("s1", "v2"): [300.0], ("s2", "v1"): [200.0]}
    expected = fit_run_times(observed)
    assert expected(("s2", "v2")) == pytest.approx(600.0)
    assert expected(("s1", "v1")) == pytest.approx(100.0)
    assert expected(("s1", "v3")) == pytest.approx(math.sqrt(100.0 * 300.0))
    assert expected(("s3", "v1")) == pytest.approx(math.sqrt(100.0 * 200.0))
    with pytest.raises(ValueError):
        fit_run_times({})


def test_a_setting_and_variant_with_finished_runs_is_expected_to_take_what_they_took():
    """(s2, v2) took 900 and 1600 s, 1.6× what the product of the others' factors says: it is
    expected to take their geometric mean, 1200 s; the unseen (s3, v2) still comes from the fit."""
    observed = {("s1", "v1"): [100.0], ("s1", "v2"): [300.0], ("s2", "v1"): [200.0], ("s2", "v2"): [900.0, 1600.0]}
    expected = fit_run_times(observed)
    assert expected(("s2", "v2")) == pytest.approx(1200.0)
    assert expected(("s1", "v1")) == pytest.approx(100.0)
    # The unseen setting: the mean setting term plus v2's term of the least-squares fit of every
    # run's log time (numpy's, on columns a_s1, a_s2, b_v1, b_v2; the sum is the same in any solution).
    rows = [((1, 0, 1, 0), 100.0), ((1, 0, 0, 1), 300.0), ((0, 1, 1, 0), 200.0), ((0, 1, 0, 1), 900.0), ((0, 1, 0, 1), 1600.0)]
    solution = np.linalg.lstsq(np.array([r for r, _ in rows], float), np.log([t for _, t in rows]), rcond=None)[0]
    assert expected(("s3", "v2")) == pytest.approx(math.exp((solution[0] + solution[1]) / 2 + solution[3]), rel=1e-6)


def test_groups_of_runs_not_linked_by_a_setting_or_variant_are_not_mixed():
    """mt_glue's first runs: a 90-minute SMART stage-one run in setting mt, and 1- to 40-minute
    SMART fine-tuning runs elsewhere, no variant in both. The fit cannot tell how a group's time
    splits between its settings and its variants, so an unseen variant in `stsb` is priced by the
    fine-tuning group's variant alone (what stsb's runs took), not by a mean mixed with mt's."""
    observed = {("mt", "mt_smart"): [5400.0], ("cola", "ft_smart"): [170.0], ("stsb", "ft_smart"): [380.0]}
    expected = fit_run_times(observed)
    assert expected(("stsb", "single")) == pytest.approx(380.0)
    assert expected(("mt", "mt")) == pytest.approx(5400.0)
    # A variant seen only in the other group: the setting's group decides.
    assert expected(("stsb", "mt_smart")) == pytest.approx(380.0)
    # An unseen setting, a seen variant: the mean setting term of the variant's group.
    assert expected(("rte", "ft_smart")) == pytest.approx(math.sqrt(170.0 * 380.0))


def test_run_times_cannot_be_fitted_without_a_finished_run():
    with pytest.raises(ValueError, match="at least one finished run"):
        fit_run_times({("s1", "v1"): []})
    # A cell without runs beside one with runs is fitted like an unseen one.
    assert fit_run_times({("s1", "v1"): [], ("s1", "v2"): [300.0]})(("s1", "v1")) == pytest.approx(300.0)


def test_the_time_to_go_is_the_runs_left_at_their_expected_times_over_the_workers():
    observed = {("s1", "v1"): [100.0], ("s1", "v2"): [300.0], ("s2", "v1"): [200.0]}
    # Pending: (s2, v2) 600 s and (s1, v1) 100 s; running: (s2, v2) 150 s in (450 left), (s1, v1) past its time (0).
    hours = hours_to_go(observed, [("s2", "v2"), ("s1", "v1")], [(("s2", "v2"), 150.0), (("s1", "v1"), 500.0)], workers=2)
    assert hours == pytest.approx((600 + 100 + 450) / 2 / 3600)
    assert hours_to_go({}, [("s1", "v1")], [], workers=2) is None


def test_the_smoothness_ratio_is_the_geometric_mean_of_the_paired_ratios_with_a_log_t_interval():
    values, reference = {4: 2.0, 5: 8.0, 6: 3.0}, {4: 1.0, 5: 2.0, 6: 1.0, 7: 5.0}  # ratios 2, 4, 3; seed 7 unpaired
    logs = [math.log(2), math.log(4), math.log(3)]
    mean = sum(logs) / 3
    half = 4.302652729911275 * math.sqrt(sum((x - mean) ** 2 for x in logs) / 2) / math.sqrt(3)  # t 0.975, 2 dof
    expected = f"{math.exp(mean):.2f} [{math.exp(mean - half):.2f}, {math.exp(mean + half):.2f}] **>**"  # excludes 1
    assert _ratio(values, reference) == expected and math.exp(mean) == pytest.approx(24 ** (1 / 3))
    assert _ratio({4: 0.5, 5: 0.52}, {4: 1.0, 5: 1.0}).endswith("**<**")  # reliably below 1: smoother
    assert _ratio({4: 0.5}, {4: 1.0}) == "—"  # one pair: no interval
    r = paired_ratio(values, reference)
    assert (r.n, r.geometric_mean, r.low, r.high) == pytest.approx((3, math.exp(mean), math.exp(mean - half), math.exp(mean + half)))
    assert paired_ratio({4: 0.0, 5: 1.0, 6: 2.0}, {4: 1.0, 5: 1.0, 6: 1.0}).n == 2  # a zero has no log: left out


def t_quantile(p: float, dof: float) -> float:
    """Student's t quantile for any (non-integer) dof: Simpson's rule on the closed-form density,
    inverted by bisection — independent of scipy."""
    const = math.exp(math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2)) / math.sqrt(dof * math.pi)

    def cdf(x: float, steps: int = 4000) -> float:
        h = x / steps
        f = [const * (1 + (i * h) ** 2 / dof) ** (-(dof + 1) / 2) for i in range(steps + 1)]
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    low, high = 0.0, 60.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) < p else (low, mid)
    return (low + high) / 2


def test_the_pooled_difference_is_the_mean_over_settings_with_a_welch_satterthwaite_interval():
    # Setting A: paired differences 1, 2, 3 (mean 2, s² = 1, s²/n = 1/3); B: 0, 2 (mean 1, s² = 2, s²/n = 1).
    a = ({1: 11.0, 2: 12.0, 3: 13.0}, {1: 10.0, 2: 10.0, 3: 10.0})
    b = ({1: 5.0, 2: 7.0}, {1: 5.0, 2: 5.0, 9: 1.0})  # seed 9 has no partner
    d = pooled_difference([a, b])
    variance = (1 / 3 + 1) / 4  # Σ sᵢ²/nᵢ / k²
    dof = (1 / 3 + 1) ** 2 / ((1 / 3) ** 2 / 2 + 1 ** 2 / 1)  # 32/19
    half = t_quantile(0.975, dof) * math.sqrt(variance)
    assert t_quantile(0.975, 4.0) == pytest.approx(2.7764451051977987, rel=1e-6)  # the reference against the table
    assert (d.n, d.mean) == (5, pytest.approx(1.5))
    assert (d.low, d.high) == (pytest.approx(1.5 - half, rel=1e-5), pytest.approx(1.5 + half, rel=1e-5))
    # One setting: exactly the paired difference; a setting without two pairs: no pooled value.
    one, single = pooled_difference([a]), paired_difference(*a)
    assert (one.mean, one.low, one.high) == (pytest.approx(single.mean), pytest.approx(single.low), pytest.approx(single.high))
    assert pooled_difference([a, ({1: 1.0}, {1: 0.0})]) is None


def test_the_report_pools_each_variant_over_settings_from_the_runs_results(tmp_path):
    """Two settings of hand-written results.json (no training): the "All settings" row is the
    pooled difference of those numbers, and it waits until every setting has its runs."""
    from mtsmart.recipes.study.report import markdown

    path = write_study(tmp_path, settings={"rte": {"tasks": ["rte"]}, "mrpc": {"tasks": ["mrpc"]}},
                       variants={"plain": {}, "rdrop": {"adversarial": {"method": "rdrop"}}},
                       comparisons=[["plain", "rdrop"]])
    study = load_study(path)
    scores = {("rte", "plain"): {2: 0.50, 3: 0.60}, ("rte", "rdrop"): {2: 0.53, 3: 0.61},
              ("mrpc", "plain"): {2: 0.70, 3: 0.72}}
    for (setting, variant), by_seed in scores.items():
        for seed, value in by_seed.items():
            folder = Job(setting, variant, "default", seed, "", {}).folder(study.runs_dir)
            folder.mkdir(parents=True)
            (folder / "results.json").write_text(json.dumps({"final": {"avg": value}}))
    assert "| rdrop − plain | 1 of 2 | — |" in markdown(study)  # mrpc's rdrop runs are missing
    # The plot's panels: rte's difference (3 and 1 points: mean 2); mrpc and the mean say they wait.
    rte, mrpc, pooled = plot_panels(study)
    assert rte[0] == "rte" and rte[1]["rdrop"].mean == pytest.approx(2.0)
    assert mrpc[1] == {"rdrop": None} and mrpc[2] == "no paired report runs yet"
    assert pooled[0] == "all settings (mean)" and pooled[1] == {"rdrop": None} and "waits" in pooled[2]
    for seed, value in {2: 0.70, 3: 0.76}.items():
        folder = Job("mrpc", "rdrop", "default", seed, "", {}).folder(study.runs_dir)
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps({"final": {"avg": value}}))
    # In points: rte differences 3, 1; mrpc 0, 4.
    d = pooled_difference([({2: 3.0, 3: 1.0}, {2: 0.0, 3: 0.0}), ({2: 0.0, 3: 4.0}, {2: 0.0, 3: 0.0})])
    assert d.mean == pytest.approx(2.0)
    report = markdown(study)
    assert f"| rdrop − plain | 2 of 2 | {d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}] |" in report
    # Two comparisons per setting (rdrop − plain and plain − rdrop): the Bonferroni column at 97.5%.
    assert "Δ [Bonferroni, m = 2] | min / run |" in report and "interval at 97.50%, Bonferroni" in report
    rte_row = next(line for line in report.splitlines() if line.startswith("| rdrop | default | 2 |"))
    adjusted = paired_difference({2: 53.0, 3: 61.0}, {2: 50.0, 3: 60.0}, level=0.975)
    assert rte_row.split(" | ")[-2] == f"{adjusted.mean:+.2f} [{adjusted.low:+.2f}, {adjusted.high:+.2f}]"
    assert f"| plain − rdrop | 2 of 2 | {-d.mean:+.2f} [{-d.high:+.2f}, {-d.low:+.2f}] |" in report  # a `comparisons` row
    pooled_panel = plot_panels(study)[-1][1]["rdrop"]
    assert (pooled_panel.mean, pooled_panel.low, pooled_panel.high) == pytest.approx((d.mean, d.low, d.high))
    # Each seed's mean over the two settings: seed 2 (3 + 0) / 2 = 1.5, seed 3 (1 + 4) / 2 = 2.5 —
    # mean 2, sd √0.5, two pairs: half-width t(1) · √0.5 / √2 = 12.706 / 2.
    half = t_quantile(0.975, 1.0) * math.sqrt(0.5) / math.sqrt(2)
    assert half == pytest.approx(6.353, abs=1e-3)
    detects = detectable_difference({2: 1.5, 3: 2.5}, {2: 0.0, 3: 0.0})
    assert f"| rdrop − plain | 2 | +2.00 [{2 - half:+.2f}, {2 + half:+.2f}] | {detects:.2f} |" in report


def test_seed_means_average_each_seed_over_the_settings_that_all_have_it():
    a = ({1: 10.0, 2: 12.0, 3: 14.0}, {1: 9.0, 2: 9.0, 3: 9.0})
    b = ({1: 20.0, 2: 22.0}, {1: 19.0, 2: 20.0, 7: 1.0})  # seed 3 missing here, seed 7 unpaired
    values, reference = seed_means([a, b])
    assert values == {1: 15.0, 2: 17.0} and reference == {1: 14.0, 2: 14.5}
    assert seed_means([]) == ({}, {})


def test_the_report_lists_each_variants_metric_per_report_seed(tmp_path):
    """Hand-written results.json: the per-seed table has each run's metric in points, in the
    report seeds' order, and — for a run that has not finished."""
    from mtsmart.recipes.study.report import markdown

    path = write_study(tmp_path, variants={"plain": {}, "r3f": {"adversarial": {"method": "r3f"}}})
    study = load_study(path)
    for variant, seed, value in [("plain", 3, 0.7512), ("plain", 2, 0.6), ("r3f", 2, 0.655)]:
        folder = Job("rte", variant, "default", seed, "", {}).folder(study.runs_dir)
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps({"final": {"avg": value}}))
    lines = markdown(study).splitlines()
    table = lines[lines.index("Per report seed:") + 2:][:4]
    assert table == ["| variant | seed 2 | seed 3 |", "|---|---|---|", "| plain | 60.00 | 75.12 |", "| r3f | 65.50 | — |"]
    # One comparison (r3f − plain): no Bonferroni column, its interval would be the 95% one.
    assert "| variant | grid point | n | mean ± std | best of 3 | Δ vs plain [95% CI] | detects | min / run |" in lines
    assert "Bonferroni" not in "\n".join(lines)


def test_every_plot_panel_shares_one_x_scale_centred_on_zero():
    """The widest interval end over all panels, either side of zero, plus 10%; 1 with nothing."""
    panels = [("a", {"x": PairedDifference(5, 0.5, -0.4, 1.4), "y": None}, ""),
              ("b", {"x": PairedDifference(5, -1.0, -2.5, 0.5), "y": PairedDifference(5, 0.0, -0.1, 0.1)}, ""),
              ("c", {"x": None, "y": None}, "")]
    assert shared_half_width(panels) == pytest.approx(2.75)
    assert shared_half_width([("c", {"x": None}, "")]) == 1.0


def test_the_smoothness_table_pairs_the_clean_and_attacked_metric_with_the_baseline(tmp_path):
    """Hand-written robustness.json (no training): the clean and under-attack metric cells carry
    the seed-paired difference to the baseline, computed here by hand (t(1) quantile 12.706)."""
    from mtsmart.recipes.study.report import markdown

    plan = {"setting": "rte", "variants": ["plain", "r3f"], "args": ["--radii", "1e-2"]}
    path = write_study(tmp_path, variants={"plain": {}, "r3f": {"adversarial": {"method": "r3f"}}}, robustness=plan)
    study = load_study(path)
    measured = {("plain", 2): (0.60, 0.20, 1.0, 0.9), ("plain", 3): (0.70, 0.30, 2.0, 0.8),
                ("r3f", 2): (0.62, 0.26, 0.5, 0.7), ("r3f", 3): (0.70, 0.34, 1.0, 0.6)}  # clean, attacked, ℓs, confidence
    for (variant, seed), (clean, attacked, ls, confidence) in measured.items():
        folder = Job("rte", variant, "default", seed, "", {}).folder(study.runs_dir)
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps({"final": {"avg": clean}}))
        radius = {"attack": ls, "random": ls / 10, "robust": {"accuracy": attacked}}
        (folder / "robustness.json").write_text(json.dumps(
            {"results": {"rte": {"clean": {"accuracy": clean}, "confidence": confidence, "radii": {"0.01": radius}}}}))
    # Paired differences in points: clean (2, 0) → mean 1, sd √2, half-width 12.706·√2/√2 = 12.706;
    # attacked (6, 4) → mean 5, sd √2, the same half-width; ℓs ratios 0.5, 0.5 → 0.50 [0.50, 0.50];
    # confidence (−20, −20) → −20 exactly.
    row = next(line for line in markdown(study).splitlines() if line.startswith("| r3f | rte | 0.01 |"))
    assert "| 0.50 [0.50, 0.50] **<** |" in row
    assert "| accuracy 66.00 ± 5.66, Δ +1.00 [-11.71, +13.71]; confidence 65.00 ± 7.07, Δ -20.00 [-20.00, -20.00] **−** |" in row
    assert row.endswith("| accuracy 30.00 ± 5.66, Δ +5.00 [-7.71, +17.71] |")


def test_summary_has_the_sample_std_and_the_best_of_the_first_three():
    s = summarise([1.0, 3.0, 2.0, 9.0])
    assert (s.n, s.mean, s.best_of_3) == (4, 3.75, 3.0)
    assert s.std == pytest.approx(math.sqrt(((1 - 3.75) ** 2 + (3 - 3.75) ** 2 + (2 - 3.75) ** 2 + (9 - 3.75) ** 2) / 3))


# --------------------------------------------------------------------------- the study file


@pytest.mark.parametrize(
    "changes,words",
    [
        ({"seeds": {"tune": [1, 2], "report": [2, 3]}}, "fresh seeds"),
        ({"seeds": {"report": [2, 3]}}, "needs tune seeds"),
        ({"baseline": "nothing"}, "baseline"),
        ({"colour": "red"}, "unknown key colour"),
        ({"variants": {"plain": {"train": {"lr": "fast"}}}}, "variants.plain"),
        ({"variants": {"plain": {"train": {"grad_clip": 1.0, "unknown": 1}}}}, "train.unknown"),
        ({"settings": {"rte": {"output_dir": "x"}}}, "output_dir is set by the study"),
        ({"comparisons": [["plain", "nope"]]}, "comparisons[0]"),
        ({"robustness": {"setting": "rte", "variants": ["nope"]}}, "robustness.variants"),
        ({"robustness": {"setting": "mnli", "variants": ["plain"]}}, "robustness.setting"),
    ],
)
def test_a_bad_study_file_is_refused_naming_the_key(tmp_path, changes, words):
    with pytest.raises(StudyError, match=None) as error:
        load_study(write_study(tmp_path, **changes))
    assert words in str(error.value) and str(tmp_path / "study.yaml") in str(error.value)


def test_the_cli_refuses_a_bad_study_in_one_line(tmp_path, capsys):
    assert main(["study", str(write_study(tmp_path, baseline="nothing"))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "baseline" in err


def test_run_configs_are_base_setting_variant_point_and_seed(tmp_path):
    study = load_study(write_study(tmp_path))
    [first, second] = [j for j in study.tune_jobs("rte")]
    assert first.overrides["adversarial"] == {"method": "rdrop"} and first.overrides["rdrop"] == {"alpha": 0.5}
    assert second.overrides["rdrop"] == {"alpha": 1.0}
    assert first.overrides["train"]["seed"] == 1 and first.overrides["tasks"] == ["rte"]
    assert first.folder(study.runs_dir) == tmp_path / "study" / "runs" / "rte" / "rdrop" / "rdrop.alpha_0.5" / "seed_1"
    assert study.tune_jobs("rte") == [first, second]  # plain has no grid: no tune runs


def fake_result(study, variant: str, point: str, seed: int, value: float) -> None:
    folder = Job("rte", variant, point, seed, "", {}).folder(study.runs_dir)
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"final": {"avg": value}}), encoding="utf-8")


def test_the_chosen_point_has_the_best_tune_mean_and_waits_for_every_tune_run(tmp_path):
    study = load_study(write_study(tmp_path, seeds={"tune": [1, 2], "report": [3]}))
    assert chosen_point(study, "rte", "plain") == "default"
    fake_result(study, "rdrop", "rdrop.alpha_0.5", 1, 0.70)
    fake_result(study, "rdrop", "rdrop.alpha_0.5", 2, 0.60)
    fake_result(study, "rdrop", "rdrop.alpha_1.0", 1, 0.66)
    assert chosen_point(study, "rte", "rdrop") is None
    fake_result(study, "rdrop", "rdrop.alpha_1.0", 2, 0.66)
    assert chosen_point(study, "rte", "rdrop") == "rdrop.alpha_1.0"  # 0.66 > 0.65


def test_report_runs_go_seed_by_seed_across_settings_and_variants_before_tune_runs(tmp_path):
    """Two settings, plain without a grid and rdrop with one: plain's report runs start at once,
    seed-major (seed 2 in rte and mrpc before seed 3), then the tune runs; once rdrop's point is
    chosen, its report runs too go seed by seed — a study cut short keeps whole seed-paired rows."""
    settings = {"rte": {"tasks": ["rte"]}, "mrpc": {"tasks": ["mrpc"]}}
    study = load_study(write_study(tmp_path, settings=settings, seeds={"tune": [1], "report": [2, 3]}))
    order = [(j.setting, j.variant, j.seed) for j in iter(Queue(study).next_ready, None)]
    assert order == [("rte", "plain", 2), ("mrpc", "plain", 2), ("rte", "plain", 3), ("mrpc", "plain", 3),
                     ("rte", "rdrop", 1), ("rte", "rdrop", 1), ("mrpc", "rdrop", 1), ("mrpc", "rdrop", 1)]
    for setting in settings:
        for point, value in (("rdrop.alpha_0.5", 0.7), ("rdrop.alpha_1.0", 0.6)):
            folder = Job(setting, "rdrop", point, 1, "", {}).folder(study.runs_dir)
            folder.mkdir(parents=True)
            (folder / "results.json").write_text(json.dumps({"final": {"avg": value}}), encoding="utf-8")
    order = [(j.setting, j.variant, j.seed) for j in iter(Queue(study).next_ready, None)]
    assert order == [(setting, variant, seed) for seed in (2, 3) for setting in ("rte", "mrpc") for variant in ("plain", "rdrop")]


def fake_finished_run(study, variant: str, point: str, seed: int, seconds: float) -> None:
    """A finished run as the runner leaves it: results.json and its wall time in study_run.json."""
    fake_result(study, variant, point, seed, 0.6)
    record = {"phase": "", "seconds": seconds, "attempts": 1, "returncode": 0, "finished": True}
    (Job("rte", variant, point, seed, "", {}).folder(study.runs_dir) / RUN_RECORD).write_text(json.dumps(record))


def test_under_a_time_budget_only_runs_expected_to_end_in_time_start(tmp_path):
    """plain's runs took 60 s and rdrop's 2 h: with 1 hour left plain's last report run starts and
    rdrop's two wait; with 3.5 hours (> 1.5 × 2 h) rdrop's fit too."""
    study = load_study(write_study(tmp_path))
    fake_finished_run(study, "rdrop", "rdrop.alpha_0.5", 1, 7200.0)
    fake_finished_run(study, "rdrop", "rdrop.alpha_1.0", 1, 7200.0)
    fake_finished_run(study, "plain", "default", 2, 60.0)
    assert TIME_MARGIN * 7200 < 3.5 * 3600
    queue, budget = Queue(study), TimeBudget(study, hours=1.0)
    job = queue.next_ready(budget.fits)
    assert (job.variant, job.seed) == ("plain", 3)
    assert queue.next_ready(budget.fits) is None
    assert sorted(queue.pending()) == [("rte", "rdrop"), ("rte", "rdrop")]  # still queued, not dropped
    later = TimeBudget(study, hours=3.5)
    assert [(j.variant, j.seed) for j in (queue.next_ready(later.fits), queue.next_ready(later.fits))] == [("rdrop", 2), ("rdrop", 3)]
    assert queue.next_ready(later.fits) is None and queue.remaining() == 0


def test_a_variant_without_finished_runs_is_priced_by_its_cost_twin_in_the_same_setting(tmp_path, capsys):
    """`again` has plain's overrides and a learning-rate grid: its runs cost plain's (60 s), not the
    fit's mean over plain and rdrop (√(60 · 7200) ≈ 657 s); rdrop's overrides differ, so it has no twin."""
    variants = {"plain": {}, "again": {"grid": {"train.lr": [1.0e-4, 2.0e-4]}},
                "rdrop": {"adversarial": {"method": "rdrop"}}}
    path = write_study(tmp_path, variants=variants)
    study = load_study(path)
    assert study.cost_twins("again") == ["plain"] and study.cost_twins("rdrop") == []
    fake_finished_run(study, "plain", "default", 2, 60.0)
    fake_finished_run(study, "rdrop", "default", 2, 7200.0)
    budget = TimeBudget(study, hours=0.1)  # 360 s: plain's pace fits, the fit's mean would not
    job = next(j for j in study.tune_jobs("rte") if j.variant == "again")
    assert budget.fits(job)
    assert main(["study", str(path), "--plan"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "| rte | again | 4 | 1.0 | as plain |" in out  # two tune runs, two report runs
    assert "| rte | rdrop | 1 | 120.0 | seen |" in out


def test_a_budget_with_no_finished_run_lets_every_run_start(tmp_path):
    study = load_study(write_study(tmp_path))
    assert TimeBudget(study, hours=1e-6).fits(study.tune_jobs("rte")[0])  # nothing to predict from


def test_a_study_out_of_time_starts_nothing_and_says_how_many_runs_are_left(tmp_path, capsys):
    study = load_study(path := write_study(tmp_path))
    fake_finished_run(study, "rdrop", "rdrop.alpha_0.5", 1, 7200.0)
    fake_finished_run(study, "rdrop", "rdrop.alpha_1.0", 1, 7200.0)
    assert main(["study", str(path), "--hours", "0.5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert not [line for line in lines if line.startswith("start ")]
    assert lines[-1] == ("out of time: 4 runs left, none expected to end within --hours 0.5; "
                         "rerun to continue (finished runs are kept)")


@pytest.mark.parametrize("hours", ["0", "-1", "nan", "inf"])
def test_the_cli_refuses_hours_that_are_not_a_positive_number(tmp_path, capsys, hours):
    assert main(["study", str(write_study(tmp_path)), "--hours", hours]) == 2
    err = capsys.readouterr().err
    assert f"--hours must be a positive number of hours, not {float(hours)}" in err and "Traceback" not in err
    assert err.count("\n") == 1 and not (tmp_path / "study" / "runs").exists()


@pytest.mark.parametrize("option", ["--workers", "--threads", "--stop-after-failures"])
def test_the_cli_refuses_a_count_below_one_in_one_line(tmp_path, capsys, option):
    assert main(["study", str(write_study(tmp_path)), option, "0"]) == 2
    err = capsys.readouterr().err
    assert "--workers, --threads and --stop-after-failures must be at least 1" in err and "Traceback" not in err
    assert err.count("\n") == 1 and not (tmp_path / "study" / "runs").exists()  # nothing started


def test_the_cli_refuses_plan_with_report_only_in_one_line(tmp_path, capsys):
    assert main(["study", str(write_study(tmp_path)), "--plan", "--report-only"]) == 2
    err = capsys.readouterr().err
    assert "--plan and --report-only: give one of them" in err and "Traceback" not in err
    assert err.count("\n") == 1 and not (tmp_path / "study").exists()  # no report written, no runs


@pytest.mark.parametrize("given, words", [("nope", "unknown setting 'nope'"), (",", "no setting given")])
def test_the_cli_refuses_unknown_settings_in_one_line(tmp_path, capsys, given, words):
    assert main(["study", str(write_study(tmp_path)), "--settings", given]) == 2
    err = capsys.readouterr().err
    assert f"--settings: {words}; the study has ['rte']" in err and "Traceback" not in err


@pytest.mark.parametrize("given, words", [("nope", "unknown variant 'nope'"), (",", "no variant given")])
def test_the_cli_refuses_unknown_variants_in_one_line(tmp_path, capsys, given, words):
    assert main(["study", str(write_study(tmp_path)), "--variants", given]) == 2
    err = capsys.readouterr().err
    assert f"--variants: {words}; the study has ['plain', 'rdrop']" in err and "Traceback" not in err
    assert not (tmp_path / "study" / "runs").exists()


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_a_tiny_study_runs_reports_and_continues(tmp_path, data_root, monkeypatch, capsys):
    monkeypatch.setenv("MTSMART_DATA", str(data_root))
    plan = {"setting": "rte", "variants": ["plain"], "args": ["--max-examples", "8", "--attack-steps", "1", "--radii", "1e-2"]}
    path = write_study(tmp_path, robustness=plan)
    assert main(["study", str(path), "--workers", "2", "--threads", "2"]) == 0
    printed = capsys.readouterr().out
    done = [line for line in printed.splitlines() if line.startswith("done ")]
    assert len(done) == 6 and done[-1].endswith("; 0 left")  # nothing left: no time to go
    assert all(" h more" in line for line in done[:-1]), done  # a time to go once a run has finished
    # Robustness runs as its own stage in the run's worker slot, for the plain report runs only.
    assert printed.count("robust ") == 2 and "robust rte/plain/default/seed_2" in printed
    study = load_study(path)
    point = chosen_point(study, "rte", "rdrop")
    folders = [Job("rte", v, p, s, "", {}).folder(study.runs_dir)
               for v, p, s in [("plain", "default", 2), ("plain", "default", 3), ("rdrop", point, 2), ("rdrop", point, 3)]]
    for folder in folders:
        assert (folder / "results.json").is_file() and (folder / "tb").is_dir()
        assert not (folder / "checkpoints").exists()  # never committed: dropped once the run finished
        assert json.loads((folder / RUN_RECORD).read_text())["returncode"] == 0
        assert json.loads((folder / "run_info.json").read_text())["intra_op_threads"] == 2  # --threads 2
    for folder in folders:  # measured on the plain report runs, before their checkpoints went
        assert (folder / "robustness.json").is_file() == ("plain" in str(folder))
    report = (study.output_dir / "report.md").read_text()
    assert "### Smoothness after training (rte" in report and "| plain | rte | 0.01 | 2 |" in report
    assert "| plain | default | 2 |" in report and f"| rdrop | {point} | 2 |" in report
    assert "Bonferroni" not in report  # rdrop vs plain, one comparison: its interval is the 95% one
    rdrop, plain = (metrics_by_seed(study, "rte", v, p, [2, 3]) for v, p in [("rdrop", point), ("plain", "default")])
    scaled = [{k: 100 * v for k, v in found.items()} for found in (rdrop, plain)]
    assert f"| {detectable_difference(*scaled):.2f} |" in report.split(f"| rdrop | {point} | 2 |")[1].splitlines()[0]
    assert "Runs done: 6 of 6." in report  # 2 rdrop tune runs (one seed, two points) + 2 variants × 2 report seeds
    assert (study.output_dir / "report.png").stat().st_size > 1000

    # The fit rule's reading: each run's last logged task loss, tune seeds at every grid point.
    losses = subprocess.run([sys.executable, str(REPO / "scripts" / "study_train_loss.py"), str(path), "rte",
                             "--seeds", "tune"], capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(losses) == 2 and all("n = 1: final train/rte/loss" in line for line in losses)  # rdrop's two points
    assert sum(f"{point} " in line and "* n = 1" in line for line in losses) == 1  # the chosen one marked

    # --report-only writes the same report from the finished runs and starts nothing.
    (study.output_dir / "report.md").unlink()
    assert main(["study", str(path), "--report-only"]) == 0
    assert "start " not in capsys.readouterr().out
    assert (study.output_dir / "report.md").read_text() == report

    # A run that was killed after its first checkpoint continues from it; finished runs are skipped.
    killed = folders[0]
    (killed / "results.json").unlink()
    assert main(["study", str(path), "--report-only"]) == 0
    assert "Runs done: 5 of 6." in (study.output_dir / "report.md").read_text()
    capsys.readouterr()
    assert main(["train", str(killed / "study_config.yaml"), "train.stop_after_steps=2", "train.resume=auto"]) == 0
    assert main(["study", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count("start ") == 1 and "plain/default/seed_2" in out
    assert "study tiny: 1 run to consider" in out  # the finished runs are not counted
    assert (killed / "config.resumed_step_2.yaml").is_file()  # it resumed, not restarted
    assert (killed / "results.json").is_file()


@pytest.mark.slow
def test_settings_limits_the_runs_to_those_settings(tmp_path, data_root, monkeypatch, capsys):
    """Two machines can share a study by setting; the report still covers every setting."""
    monkeypatch.setenv("MTSMART_DATA", str(data_root))
    path = write_study(tmp_path, seeds={"tune": [1], "report": [2]}, variants={"plain": {}},
                       settings={"rte": {"tasks": ["rte"]}, "mrpc": {"tasks": ["mrpc"]}})
    assert main(["study", str(path), "--settings", "mrpc", "--workers", "1"]) == 0
    study = load_study(path)
    ran = sorted(str(p.parent.relative_to(study.runs_dir)) for p in study.runs_dir.glob("**/results.json"))
    assert ran == ["mrpc/plain/default/seed_2"]
    report = (study.output_dir / "report.md").read_text()
    assert "### rte" in report and "### mrpc" in report and "Runs done: 1 of 2." in report


def test_a_failed_runs_reason_is_its_last_attempts_error_line(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("step 1\nmtsmart: error: an earlier attempt's\n", encoding="utf-8")
    start = log.stat().st_size
    with open(log, "a", encoding="utf-8") as handle:
        handle.write("Loading weights: 10%\rLoading weights: 100%\nmtsmart: error: no local file x.tsv\n\n")
    assert last_error_line(log, start) == "mtsmart: error: no local file x.tsv"
    with open(log, "a", encoding="utf-8") as handle:  # a crash without mtsmart's line: its last line
        start = handle.tell()
        handle.write("Traceback (most recent call last):\nRuntimeError: boom\n")
    assert last_error_line(log, start) == "RuntimeError: boom"


@pytest.mark.slow
def test_a_study_whose_runs_all_fail_stops_after_k_in_a_row_and_says_why(tmp_path, monkeypatch, capsys):
    """Data that cannot be found fails every run: the runner stops after K failures in a row
    instead of failing the whole queue one run at a time, and prints the runs' error line."""
    empty = tmp_path / "no_data"
    empty.mkdir()
    monkeypatch.setenv("MTSMART_DATA", str(empty))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = write_study(tmp_path)  # 6 runs
    assert main(["study", str(path), "--workers", "1", "--stop-after-failures", "2"]) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    failures = [line for line in lines if line.startswith("FAILED ")]
    assert len([line for line in lines if line.startswith("start ")]) == 2 and len(failures) == 2, out
    assert all("(exit 2)" in line and ": mtsmart: error: task 'rte'" in line and "no local file" in line
               for line in failures), failures  # each run's own error line
    assert "stopping: 2 runs in a row failed; starting no more runs" in lines
    assert lines[-1].startswith("stopped early: 2 runs in a row failed, the last with: mtsmart: error: task 'rte'")
    assert lines[-1].endswith("rerun the same command (finished runs are kept, the others resume or start again)")
    study = load_study(path)
    records = [json.loads(p.read_text()) for p in study.runs_dir.glob(f"**/{RUN_RECORD}")]
    assert len(records) == 2 and all(r["returncode"] == 2 and not r["finished"] for r in records)


@pytest.mark.slow
def test_sigterm_stops_a_background_study_cleanly(tmp_path, data_root):
    """`kill` of a study running in the background (where SIGINT is ignored) stops its training
    children and exits 130; rerunning the command finishes the study."""
    import os
    import signal
    import subprocess
    import sys
    import time

    longer = {**TINY_BASE, "train": {**TINY_BASE["train"], "max_steps": 100000, "save_every_steps": 50}}
    path = write_study(tmp_path, base=longer, variants={"plain": {}}, seeds={"report": [1, 2]})
    env = {**os.environ, "MTSMART_DATA": str(data_root), "OMP_NUM_THREADS": "1"}
    runner = subprocess.Popen([sys.executable, "-m", "mtsmart", "study", str(path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    study = load_study(path)
    folders = [Job("rte", "plain", "default", seed, "", {}).folder(study.runs_dir) for seed in (1, 2)]
    deadline = time.monotonic() + 300
    while not all(list((f / "checkpoints").glob("step_*")) for f in folders if f.exists()) or not all(
            f.exists() for f in folders):  # both runs under way, whatever the machine's speed
        assert time.monotonic() < deadline and runner.poll() is None
        time.sleep(0.5)
    runner.send_signal(signal.SIGTERM)
    out, _ = runner.communicate(timeout=120)
    assert runner.returncode == 130, out
    assert "interrupted: rerun the same command" in out
    for seed in (1, 2):
        record = json.loads((Job("rte", "plain", "default", seed, "", {}).folder(study.runs_dir) / RUN_RECORD).read_text())
        assert record["finished"] is False and record["attempts"] == 1  # stopped and recorded, not orphaned


def test_a_runner_killed_outright_leaves_the_attempts_time_for_the_next_one(tmp_path, monkeypatch):
    """study_run.json holds a running attempt's time so far (every PROGRESS_SECONDS), so the time of
    an attempt whose runner died without recording it (a session's end, kill -9) is not lost: the
    next attempt adds to it. Wall seconds faked by a clock the test moves."""
    import subprocess
    import sys

    from mtsmart.recipes.study import runner

    clock = [1000.0]
    monkeypatch.setattr(runner.time, "monotonic", lambda: clock[0])
    job = Job("rte", "plain", "default", 1, "report", {})
    folder = job.folder(tmp_path)
    folder.mkdir(parents=True)
    (folder / RUN_RECORD).write_text(json.dumps({"phase": "report", "seconds": 100.0, "attempts": 1,
                                                  "returncode": -15, "finished": False}))
    quick = [sys.executable, "-c", "pass"]

    def attempt() -> runner.Running:
        log = open(folder / "train.log", "a", encoding="utf-8")
        return runner.Running(job, subprocess.Popen(quick), clock[0], log, 1, None, 0, runner.previous_record(folder),
                              noted=clock[0])

    first = attempt()
    clock[0] += runner.PROGRESS_SECONDS - 1
    runner.note_progress(first, tmp_path)  # not yet due: nothing written
    assert json.loads((folder / RUN_RECORD).read_text())["seconds"] == 100.0
    clock[0] += 31  # 90 s into the attempt
    runner.note_progress(first, tmp_path)
    noted = json.loads((folder / RUN_RECORD).read_text())
    assert noted == {"phase": "report", "seconds": 190.0, "attempts": 2, "returncode": None, "finished": False}
    first.process.wait(), first.log.close()
    clock[0] += 50  # the runner dies here without recording: the last 50 s are lost, the 90 s are not

    second = attempt()  # a new runner resumes the run
    clock[0] += 20
    second.process.wait()
    runner.record(second, tmp_path)
    final = json.loads((folder / RUN_RECORD).read_text())
    assert final["seconds"] == 210.0 and final["attempts"] == 3 and final["returncode"] == 0


def test_the_time_to_go_says_how_many_runs_left_are_timed_by_runs_like_them():
    from mtsmart.recipes.study.runner import _estimate

    observed = {("rte", "plain"): [3600.0]}
    # (rte, plain) at its run's hour; (mrpc, smart) has no run like it: the fit gives it the mean terms (1 h).
    text = _estimate(observed, [("rte", "plain"), ("rte", "plain"), ("mrpc", "smart")], [], workers=3)
    assert text == ", about 1.0 h more (2 of the 3 runs left timed by runs like them)"
    assert _estimate(observed, [], [], workers=2) == ""
