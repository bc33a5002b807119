"""A study's fit rule (docs/study.md, "The fit rule"): a setting's report runs wait for the rule
variant's tune runs and start only if, at its chosen point, they end at most the given training
loss (mean over the tune seeds, per task); an underfit setting is held and said so."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from torch.utils.tensorboard import SummaryWriter

from mtsmart.cli import main
from mtsmart.recipes.study.fit import FitRuleError, FitState, final_task_loss, fit_verdict
from mtsmart.recipes.study.report import markdown
from mtsmart.recipes.study.runner import Queue
from mtsmart.recipes.study.spec import FitRule, Job, StudyError, load_study
from test_study import TINY_BASE

RULE = {"variant": "plain", "max_train_loss": 0.3}
# plain tunes its learning rate (lr 1e-3 wins on the dev score below); rdrop has no grid, so
# without the rule its report runs would be handed out first.
VARIANTS = {"plain": {"grid": {"train.lr": [1.0e-3, 1.0e-4]}}, "rdrop": {"adversarial": {"method": "rdrop"}}}
LR_HIGH, LR_LOW = "train.lr_0.001", "train.lr_0.0001"


def write_study(folder: Path, **changes) -> Path:
    data = {"name": "fitted", "metric": "avg", "baseline": "plain", "seeds": {"tune": [1, 2], "report": [3, 4]},
            "base": TINY_BASE, "settings": {"rte": {"tasks": ["rte"]}}, "variants": VARIANTS, "fit": RULE}
    data.update(changes)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def finish(study, variant: str, point: str, seed: int, score: float, losses: list[float]) -> Path:
    """A finished run: results.json and the training losses it logged (the last one counts)."""
    folder = Job("rte", variant, point, seed, "", {}).folder(study.runs_dir)
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"final": {"avg": score, "rte/accuracy": score}}), encoding="utf-8")
    with SummaryWriter(str(folder / "tb")) as writer:
        for step, loss in enumerate(losses, start=1):
            writer.add_scalar("train/rte/loss", loss, step)
    return folder


def finish_tuning(study, chosen_losses: tuple[float, float]) -> None:
    """plain's four tune runs; lr 1e-3 has the better dev score (0.70 against 0.60) and ends at
    `chosen_losses` on seeds 1 and 2; lr 1e-4 ends at 0.1 (it is not the chosen point)."""
    for seed, loss in zip((1, 2), chosen_losses):
        finish(study, "plain", LR_HIGH, seed, 0.70, [0.9, 0.5, loss])
        finish(study, "plain", LR_LOW, seed, 0.60, [0.9, 0.1])


def handed_out(queue: Queue) -> list[tuple[str, str, int]]:
    jobs = []
    while (job := queue.next_ready()) is not None:
        jobs.append((job.variant, job.phase, job.seed))
    return jobs


@pytest.mark.parametrize("rule, words", [
    ({"variant": "nope", "max_train_loss": 0.3}, "fit.variant: 'nope' is not one of the variants"),
    ({"variant": "rdrop", "max_train_loss": 0.3}, "fit.variant: 'rdrop' has no grid of two points or more"),
    ({"variant": "plain", "max_train_loss": 0}, "fit.max_train_loss: give a positive finite loss, got 0"),
    ({"variant": "plain", "max_train_loss": float("inf")}, "fit.max_train_loss: give a positive finite loss, got inf"),
    ({"variant": "plain", "max_train_loss": "0.3"}, "fit.max_train_loss: give a positive finite loss, got '0.3'"),
    ({"variant": "plain", "max_train_loss": True}, "fit.max_train_loss: give a positive finite loss, got True"),
    ({"variant": "plain"}, "fit: give {variant: V, max_train_loss: L}"),
    ({"variant": "plain", "max_train_loss": 0.3, "tasks": ["rte"]}, "fit: give {variant: V, max_train_loss: L}"),
    ("plain", "fit: expected a mapping"),
])
def test_a_bad_fit_rule_is_refused_naming_the_key(tmp_path, rule, words):
    with pytest.raises(StudyError) as error:
        load_study(write_study(tmp_path, fit=rule))
    assert words in str(error.value) and str(tmp_path / "study.yaml") in str(error.value)


def test_the_rule_is_read_from_the_study_file(tmp_path):
    assert load_study(write_study(tmp_path)).fit == FitRule("plain", 0.3)
    assert load_study(write_study(tmp_path, fit=None)).fit is None


def test_the_last_logged_loss_is_the_final_one(tmp_path):
    study = load_study(write_study(tmp_path))
    run = finish(study, "plain", LR_HIGH, 1, 0.7, [0.9, 0.4, 0.25])
    assert final_task_loss(run, "rte") == pytest.approx(0.25)
    with pytest.raises(FitRuleError, match="no train/mrpc/loss logged"):
        final_task_loss(run, "mrpc")


def test_report_runs_wait_for_the_rule_variants_tune_runs(tmp_path):
    queue = Queue(load_study(write_study(tmp_path)))
    # Only the tune runs: rdrop's report runs (no grid) wait with plain's.
    assert handed_out(queue) == [("plain", "tune", 1), ("plain", "tune", 2), ("plain", "tune", 1), ("plain", "tune", 2)]
    assert fit_verdict(queue.study, "rte").state is FitState.WAITING and queue.fit.take_news() == []


def test_a_setting_that_fits_runs_its_report_runs_and_says_so(tmp_path):
    study = load_study(write_study(tmp_path))
    finish_tuning(study, (0.25, 0.35))  # mean 0.30: at most 0.3
    queue = Queue(study)
    assert sorted(handed_out(queue)) == [("plain", "report", 3), ("plain", "report", 4),
                                         ("rdrop", "report", 3), ("rdrop", "report", 4)]
    verdict = fit_verdict(study, "rte")
    assert verdict.state is FitState.FITS and verdict.point == LR_HIGH
    assert verdict.losses["rte"] == pytest.approx(0.30)
    assert queue.fit.take_news() == [f"rte: fits — plain at {LR_HIGH} ends with training loss rte 0.300 "
                                     f"(mean of tune seeds [1, 2]), at most 0.3"]
    assert queue.fit.held() == []


def test_an_underfit_setting_is_held_naming_the_loss_and_what_to_do(tmp_path):
    """Seeds 1 and 2 end at 0.25 and 0.40 at the chosen point: mean 0.325 > 0.3. The other point,
    which ends at 0.1, does not count: the rule reads the chosen one."""
    study = load_study(write_study(tmp_path))
    finish_tuning(study, (0.25, 0.40))
    queue = Queue(study)
    assert handed_out(queue) == []
    assert queue.held_runs() == 4 and queue.remaining() == 4
    assert queue.fit.held() == [f"rte: underfit — plain at {LR_HIGH} ends with training loss rte 0.325 (mean of tune "
                                f"seeds [1, 2]), above 0.3: its report runs are held; amend the setting's epochs in "
                                f"study.yaml (an amendment, stated there) and rerun"]
    assert "Fit rule (`fit`, training loss at most 0.3): underfit — plain at" in markdown(study)


def test_the_cli_ends_with_the_held_settings_and_a_failing_status(tmp_path, capsys):
    path = write_study(tmp_path)
    finish_tuning(load_study(path), (0.5, 0.5))
    assert main(["study", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("fit    rte: underfit — plain at")
    assert out[-1].startswith("held: rte: underfit — plain at") and "amend the setting's epochs" in out[-1]
    assert not (load_study(path).runs_dir / "rte" / "rdrop").exists()  # nothing of the held setting ran


def test_a_study_without_the_rule_hands_out_report_runs_at_once(tmp_path):
    queue = Queue(load_study(write_study(tmp_path, fit=None)))
    assert handed_out(queue)[:2] == [("rdrop", "report", 3), ("rdrop", "report", 4)]
