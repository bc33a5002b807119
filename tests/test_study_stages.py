"""Stages in a study (docs/study.md "Stages"): variants that run in some settings only, start from
another cell's same-seed run (`init_from`) or read it task by task (`scores_of`); the queue's
order, the source's kept weights, and a source trained again when its weights are gone."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mtsmart.cli import main
from mtsmart.recipes.study import stages
from mtsmart.recipes.study.report import markdown
from mtsmart.recipes.study.results import metrics_by_seed
from mtsmart.recipes.study.runner import RUN_RECORD, Queue, drop_finished_checkpoints, with_sources
from mtsmart.recipes.study.spec import Job, StudyError, load_study
from test_study import TINY_BASE as STUDY_TINY_BASE

# The tiny encoder of tests/test_study.py; each run checkpoints at its end (step 3), so a later stage can start from it.
TINY_BASE = {**STUDY_TINY_BASE, "train": {**STUDY_TINY_BASE["train"], "save_every_steps": 3}}
SETTINGS = {"mt": {"tasks": ["rte", "mrpc"]}, "rte": {"tasks": ["rte"]}, "mrpc": {"tasks": ["mrpc"]}}
VARIANTS = {
    "plain": {"settings": ["rte", "mrpc"]},
    "mt": {"settings": ["mt"]},
    "mtdnn": {"settings": ["rte", "mrpc"], "init_from": {"setting": "mt", "variant": "mt"},
              "model": {"init_heads": "carry"}},
    "mt_model": {"settings": ["rte", "mrpc"], "scores_of": {"setting": "mt", "variant": "mt"}},
}


def write_study(folder: Path, **changes) -> Path:
    data = {"name": "staged", "metric": "avg", "baseline": "plain", "seeds": {"report": [1, 2]},
            "base": TINY_BASE, "settings": SETTINGS, "variants": VARIANTS}
    data.update(changes)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def finish(study, setting: str, variant: str, seed: int, final: dict, point: str = "default", weights: bool = False) -> Path:
    """A finished run as the runner leaves it: results.json, and a step checkpoint if `weights`."""
    folder = Job(setting, variant, point, seed, "", {}).folder(study.runs_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps({"final": final}), encoding="utf-8")
    if weights:
        (folder / "checkpoints" / "step_3").mkdir(parents=True)
    return folder


# --------------------------------------------------------------------------- the study file


@pytest.mark.parametrize("variants,words", [
    ({"plain": {"settings": ["rte", "qnli"]}}, "variants.plain.settings"),
    ({"plain": {}, "ft": {"init_from": {"setting": "mt", "variant": "nothing"}}}, "variants.ft.init_from"),
    ({"plain": {}, "ft": {"init_from": {"setting": "rte", "variant": "mt"}}}, "does not run in setting 'rte'"),
    ({"plain": {}, "ft": {"init_from": "mt"}}, "variants.ft.init_from"),
    ({"plain": {}, "ft": {"init_from": {"setting": "mt", "variant": "mt"}, "model": {"init_from": "/x"}}}, "model.init_from"),
    ({"plain": {}, "view": {"settings": ["rte"], "scores_of": {"setting": "mt", "variant": "mt"}, "train": {"lr": 1.0}}},
     "trains nothing"),
    ({"plain": {}, "view": {"settings": ["mt"], "scores_of": {"setting": "mt", "variant": "mt"}}}, "must have one task"),
    ({"plain": {}, "ft": {"settings": ["rte"], "init_from": {"setting": "mt", "variant": "mt"}},
      "ft2": {"settings": ["mrpc"], "init_from": {"setting": "rte", "variant": "ft"}}}, "is itself a later stage"),
])
def test_a_bad_stage_is_refused_naming_the_key(tmp_path, variants, words):
    variants = {"mt": {"settings": ["mt"]}, **variants}
    with pytest.raises(StudyError, match=words.replace(".", r"\.")):
        load_study(write_study(tmp_path, variants=variants))


def test_each_variant_runs_only_in_its_settings_and_views_train_nothing(tmp_path):
    study = load_study(write_study(tmp_path))
    assert study.variants_in("mt") == ["mt"]
    assert study.variants_in("rte") == ["plain", "mtdnn", "mt_model"]
    queue = Queue(study)
    assert queue.report == {"mt": [("mt", 1), ("mt", 2)],
                            "rte": [("plain", 1), ("plain", 2), ("mtdnn", 1), ("mtdnn", 2)],
                            "mrpc": [("plain", 1), ("plain", 2), ("mtdnn", 1), ("mtdnn", 2)]}


# --------------------------------------------------------------------------- the queue


def handed(queue: Queue) -> list[tuple[str, str, int]]:
    out = []
    while (job := queue.next_ready()) is not None:
        out.append((job.setting, job.variant, job.seed))
    return out


def test_a_later_stage_waits_for_its_source_run_and_starts_from_its_folder(tmp_path):
    study = load_study(write_study(tmp_path))
    first = handed(Queue(study))
    assert ("mt", "mt", 1) in first and not any(variant == "mtdnn" for _, variant, _ in first)
    source = finish(study, "mt", "mt", 1, {"avg": 0.6, "rte/accuracy": 0.5, "mrpc/accuracy": 0.7}, weights=True)
    queue = Queue(study)
    job = queue.next_ready()
    # Runs whose source is done come first, each with that run's folder as model.init_from.
    assert (job.setting, job.variant, job.seed) == ("rte", "mtdnn", 1)
    assert job.overrides["model"]["init_from"] == str(source) and job.overrides["model"]["init_heads"] == "carry"
    rest = handed(queue)
    assert rest[0] == ("mrpc", "mtdnn", 1) and ("rte", "mtdnn", 2) not in rest  # seed 2's source has not run


def test_variants_limit_the_queue_to_them_and_their_sources(tmp_path):
    study = load_study(write_study(tmp_path))
    assert handed(Queue(study, variants=["plain"])) == [(s, "plain", seed) for seed in (1, 2) for s in ("rte", "mrpc")]
    # mtdnn's runs start from mt's, and mt_model reads them: mt joins both, plain stays out.
    assert stages_needed(study, ["mtdnn"]) == stages_needed(study, ["mt_model"]) == ["mt"]
    first = handed(Queue(study, variants=["mtdnn"]))
    assert first == [("mt", "mt", 1), ("mt", "mt", 2)]  # mtdnn waits for them
    finish(study, "mt", "mt", 1, {"avg": 0.6}, weights=True)
    assert handed(Queue(study, variants=["mtdnn"])) == [("rte", "mtdnn", 1), ("mrpc", "mtdnn", 1), ("mt", "mt", 2)]


def stages_needed(study, variants: list[str]) -> list[str]:
    """The variants a selection adds: its sources."""
    return [v for v in with_sources(study, variants) if v not in variants]


def test_a_source_whose_weights_are_gone_is_handed_out_again_once(tmp_path):
    study = load_study(write_study(tmp_path))
    finish(study, "mt", "mt", 1, {"avg": 0.6}, weights=False)  # committed results, no checkpoint here
    queue = Queue(study)
    job = queue.next_ready()
    assert (job.setting, job.variant, job.seed) == ("mt", "mt", 1)  # trained again before its dependents
    stages.set_aside(job.folder(study.runs_dir))  # what launching it does: its results wait in previous_run/
    rest = handed(queue)
    assert not any(v == "mtdnn" for _, v, _ in rest)  # they wait for it
    assert ("mt", "mt", 1) not in rest  # and it is handed out once, not again as an unfinished run


def test_runs_whose_source_has_its_weights_go_before_a_source_is_trained_again(tmp_path):
    """mt's seed 1 has its weights here, seed 2's are gone (committed results only): every run that
    starts from seed 1 is handed out before seed 2's source is trained again — a session's end
    takes the weights with it, so the runs needing them should not wait behind another retraining."""
    study = load_study(write_study(tmp_path))
    finish(study, "mt", "mt", 1, {"avg": 0.6}, weights=True)
    finish(study, "mt", "mt", 2, {"avg": 0.6}, weights=False)
    assert handed(Queue(study))[:3] == [("rte", "mtdnn", 1), ("mrpc", "mtdnn", 1), ("mt", "mt", 2)]


def test_a_source_tune_run_being_trained_again_keeps_its_point_chosen(tmp_path):
    """mt and mtdnn both tune (mtdnn's tune runs start from mt's at its chosen point). mt's seed 2
    run at that point is being trained again (its committed files set aside, a partial checkpoint):
    its set-aside score still counts, so mt's point stays chosen and the runs starting from seed 1,
    whose weights are here, are handed out — not held until the rerun ends."""
    lr = {"train.lr": [1.0e-3, 1.0e-4]}
    variants = {**VARIANTS, "mt": {**VARIANTS["mt"], "grid": lr}, "mtdnn": {**VARIANTS["mtdnn"], "grid": lr}}
    study = load_study(write_study(tmp_path, variants=variants, seeds={"tune": [1, 2], "report": [3]}))
    high, low = "train.lr_0.001", "train.lr_0.0001"
    for seed in (1, 2):
        finish(study, "mt", "mt", seed, {"avg": 0.4}, point=low)
        finish(study, "mt", "mt", seed, {"avg": 0.6}, point=high, weights=seed == 1)
    rerun = Job("mt", "mt", high, 2, "", {}).folder(study.runs_dir)
    stages.set_aside(rerun)
    (rerun / "checkpoints" / "step_3").mkdir(parents=True)
    assert metrics_by_seed(study, "mt", "mt", high, [1, 2]) == {1: 0.6, 2: 0.6}
    queue = Queue(study, variants=["mtdnn"])
    every = handed(queue)
    assert sorted(every[:4]) == [("mrpc", "mtdnn", 1), ("mrpc", "mtdnn", 1), ("rte", "mtdnn", 1), ("rte", "mtdnn", 1)]
    # Then the retraining resumes, before mt's report run; seed 2's runs wait for it.
    assert every[4:] == [("mt", "mt", 2), ("mt", "mt", 3)]
    assert ("mt", "mt") not in queue.pending()  # handed out: not counted as left
    (rerun / "results.json").write_text(json.dumps({"final": {"avg": 0.6}}), encoding="utf-8")
    # Finished (its checkpoint kept): seed 2's runs start from it, and it leaves the tune queue.
    assert ("rte", "mtdnn", 2) in handed(queue) and not [job for job in queue.tune["mt"] if job.seed == 2]


def test_an_interrupted_retraining_is_resumed_before_another_source_is_trained_again(tmp_path):
    """A restarted runner finds mt's seed 1 half retrained (its files set aside, a checkpoint) and
    seed 2 finished without weights: seed 1's retraining is resumed first, each is handed out once,
    and a finished retraining is no longer counted as left."""
    study = load_study(write_study(tmp_path))
    for seed in (1, 2):
        finish(study, "mt", "mt", seed, {"avg": 0.6})
    half = Job("mt", "mt", "default", 1, "", {}).folder(study.runs_dir)
    stages.set_aside(half)
    (half / "checkpoints" / "step_3").mkdir(parents=True)
    queue = Queue(study, variants=["mtdnn"])
    assert handed(queue) == [("mt", "mt", 1), ("mt", "mt", 2)]  # their runs wait for both
    assert ("mt", "mt") not in queue.pending()  # handed out, not left
    assert sorted(queue.pending()) == [("mrpc", "mtdnn")] * 2 + [("rte", "mtdnn")] * 2


def test_a_sources_checkpoint_stays_until_every_run_that_starts_from_it_is_done(tmp_path):
    study = load_study(write_study(tmp_path))
    source = finish(study, "mt", "mt", 1, {"avg": 0.6}, weights=True)
    plain = finish(study, "rte", "plain", 1, {"avg": 0.5}, weights=True)
    drop_finished_checkpoints(study)
    assert (source / "checkpoints").is_dir() and not (plain / "checkpoints").exists()
    finish(study, "rte", "mtdnn", 1, {"avg": 0.55})
    drop_finished_checkpoints(study)
    assert (source / "checkpoints").is_dir()  # mrpc's run from it is still to come
    finish(study, "mrpc", "mtdnn", 1, {"avg": 0.65})
    drop_finished_checkpoints(study)
    assert not (source / "checkpoints").exists()


def test_a_rerun_sets_the_committed_files_aside_and_compares_its_scores(tmp_path):
    folder = tmp_path / "seed_1"
    (folder / "tb").mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"final": {"avg": 0.6}}))
    (folder / "study_run.json").write_text("{}")
    stages.set_aside(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["previous_run", "study_run.json"]
    assert sorted(p.name for p in (folder / "previous_run").iterdir()) == ["results.json", "tb"]
    (folder / "results.json").write_text(json.dumps({"final": {"avg": 0.6}}))
    assert stages.compare_rerun(folder) is None and not (folder / "previous_run").exists()  # reproduced
    stages.set_aside(folder)
    (folder / "results.json").write_text(json.dumps({"final": {"avg": 0.7}}))
    assert "differ" in stages.compare_rerun(folder) and (folder / "previous_run" / "results.json").is_file()


# --------------------------------------------------------------------------- the report


def test_a_view_reads_its_settings_task_from_the_multi_task_run_and_is_paired(tmp_path):
    study = load_study(write_study(tmp_path))
    for seed, (rte, mrpc_acc, mrpc_f1) in {1: (0.50, 0.70, 0.80), 2: (0.60, 0.72, 0.82)}.items():
        finish(study, "mt", "mt", seed, {"avg": 0.6, "rte/accuracy": rte, "mrpc/accuracy": mrpc_acc, "mrpc/f1": mrpc_f1})
        finish(study, "rte", "plain", seed, {"avg": 0.52})
    # By hand: a task's score is the mean of its metrics, as `avg` is in a run of that task alone.
    assert metrics_by_seed(study, "mrpc", "mt_model", "default", [1, 2]) == pytest.approx({1: 0.75, 2: 0.77})
    assert metrics_by_seed(study, "rte", "mt_model", "default", [1, 2]) == pytest.approx({1: 0.50, 2: 0.60})
    report = markdown(study)
    assert "### mt" in report and "(plain does not run in this setting)" in report
    assert "| mt | default | 2 | 60.00 ± 0.00 |" in report  # the stage's own runs, in points (once)
    # rte: mt_model − plain = (−2, +8) points, mean +3.00.
    row = next(line for line in report.splitlines() if line.startswith("| mt_model | default | 2 | 55.00"))
    assert "+3.00 [" in row
    assert "Runs done: 4 of 10." in report  # of 2 mt + 2 × 2 plain + 2 × 2 mtdnn runs; the view trains nothing


def test_the_overview_is_a_row_per_variant_and_a_column_per_baseline_setting(tmp_path):
    study = load_study(write_study(tmp_path))
    for seed, (rte, mrpc) in {1: (0.50, 0.70), 2: (0.60, 0.72)}.items():
        finish(study, "mt", "mt", seed, {"avg": 0.6, "rte/accuracy": rte, "mrpc/accuracy": mrpc})
        finish(study, "rte", "plain", seed, {"avg": 0.52})
    finish(study, "mrpc", "plain", 1, {"avg": 0.70})
    report = markdown(study)
    lines = report.split("## Overview")[1].splitlines()
    assert "| variant | rte | mrpc |" in lines  # the mt stage, where plain does not run, has no column
    # rte by hand: plain 52.00 ± 0.00; mt_model 50, 60 → 55.00 ± 7.07, differences −2, +8 → +3.00 with
    # t(0.975, 1) · sd(−2, 8) / √2 = 12.706 · 7.071 / 1.414 = 63.53; mrpc: one plain seed, no interval.
    assert "| plain | 52.00 ± 0.00 | 70.00 |" in lines
    assert "| mt_model | 55.00 ± 7.07<br>+3.00 [-60.53, +66.53] | 71.00 ± 1.41 |" in lines
    assert "| mtdnn | — | — |" in lines


def test_the_plan_lists_the_runs_left_at_the_finished_runs_pace_and_touches_nothing(tmp_path, capsys):
    path = write_study(tmp_path)
    study = load_study(path)
    for (setting, variant), seconds in {("mt", "mt"): 600.0, ("rte", "plain"): 100.0, ("mrpc", "plain"): 200.0}.items():
        folder = finish(study, setting, variant, 1, {"avg": 0.5}, weights=True)
        (folder / RUN_RECORD).write_text(json.dumps({"seconds": seconds, "finished": True}), encoding="utf-8")
    assert main(["study", str(path), "--plan"]) == 0
    out = capsys.readouterr().out.splitlines()
    # Seed 2 of mt, plain on rte and mrpc (seen: 600, 100, 200 s), and mtdnn's four runs, priced by
    # their setting in plain's group (mt's group shares no setting or variant with it): 100 and 200 s.
    assert out[0] == "study staged: 7 runs left, 2 workers"
    assert "| mt | mt | 1 | 10.0 | seen |" in out and "| rte | plain | 1 | 1.7 | seen |" in out
    assert "| rte | mtdnn | 2 | 1.7 | fit |" in out and "| mrpc | mtdnn | 2 | 3.3 | fit |" in out
    total = 600 + 100 + 200 + 2 * 100 + 2 * 200
    assert out[-1].startswith(f"About {total / 2 / 3600:.1f} h with 2 workers ({total / 3600:.1f} h of runs; 3 of the 7")
    assert (Job("rte", "plain", "default", 1, "", {}).folder(study.runs_dir) / "checkpoints").is_dir()  # nothing dropped
    assert not (study.output_dir / "report.md").exists()  # nor written


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_a_tiny_staged_study_runs_each_stage_from_its_source(tmp_path, data_root, monkeypatch, capsys):
    monkeypatch.setenv("MTSMART_DATA", str(data_root))
    path = write_study(tmp_path, seeds={"report": [1]})
    assert main(["study", str(path), "--workers", "2", "--threads", "1"]) == 0
    study = load_study(path)
    source = Job("mt", "mt", "default", 1, "", {}).folder(study.runs_dir)
    for setting in ("rte", "mrpc"):
        folder = Job(setting, "mtdnn", "default", 1, "", {}).folder(study.runs_dir)
        info = json.loads((folder / "run_info.json").read_text())
        assert Path(info["init_from"]["checkpoint"]).parent.parent == source
        assert info["init_from"]["heads"] == {setting: "carried"}  # model.init_heads=carry: the mt run's head
    assert not (source / "checkpoints").exists()  # dropped once both fine-tuned runs were done
    report = (study.output_dir / "report.md").read_text()
    assert "Runs done: 5 of 5." in report and "| mt_model | default | 1 |" in report


def test_the_plot_takes_settings_that_hold_different_variants(tmp_path, monkeypatch):
    """mt_glue's settings hold different variants (mt_model only on the GLUE tasks): the plot has a
    row for every variant of any panel and leaves a panel's missing rows empty (it raised KeyError
    once the first runs finished)."""
    from types import SimpleNamespace

    from mtsmart.recipes.study import report

    shown = SimpleNamespace(mean=1.0, low=0.5, high=1.5)
    panels = [("cola", {"mtdnn": shown, "mt_model": shown}, "none yet"),
              ("scitail_23", {"mtdnn": shown}, "none yet"),
              ("all settings (mean)", {"mtdnn": None}, "none yet")]
    monkeypatch.setattr(report, "plot_panels", lambda study: panels)
    study = SimpleNamespace(variants={"single": {}, "mtdnn": {}, "mt_model": {}}, metric="avg", baseline="single")
    report.plot(study, tmp_path / "report.png")
    assert (tmp_path / "report.png").stat().st_size > 1000
