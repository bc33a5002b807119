"""Per-task model selection: a multi-task run keeps each task's best checkpoint by that task's own
dev score, one weights-only copy per distinct step; `--checkpoint best:<task>` loads it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtsmart.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory, train_tiny) -> Path:
    out = tmp_path_factory.mktemp("select") / "run"
    return train_tiny(out, "tasks=[rte,stsb]", "train.max_steps=8", "eval.every_steps=2", "eval.max_examples=32")


def eval_history(run: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run / "tb"))
    accumulator.Reload()
    return {tag.removeprefix("eval/"): {e.step: e.value for e in accumulator.Scalars(tag)}
            for tag in accumulator.Tags()["scalars"] if tag.startswith("eval/")}


def test_each_task_s_best_step_is_the_argmax_of_its_own_score(run):
    history = eval_history(run)
    rte = history["rte/accuracy"]
    stsb = {step: (history["stsb/pearson"][step] + history["stsb/spearman"][step]) / 2 for step in rte}
    best = json.loads((run / "results.json").read_text())["best_per_task"]
    # The first evaluation reaching the maximum (a later tie does not replace it).
    assert best["rte"]["step"] == min(s for s, v in rte.items() if v == max(rte.values()))
    assert best["stsb"]["step"] == min(s for s, v in stsb.items() if v == max(stsb.values()))
    assert set(best["rte"]) == {"rte/accuracy", "step"} and set(best["stsb"]) == {"stsb/pearson", "stsb/spearman", "step"}


def test_one_weights_only_copy_per_distinct_step(run):
    folder = run / "checkpoints" / "best_per_task"
    index = json.loads((folder / "index.json").read_text())
    copies = sorted(p.name for p in folder.glob("step_*"))
    assert copies == sorted({f"step_{step:08d}" for step in index.values()})
    assert all(not (folder / name / "tensors.pt").exists() for name in copies)


@pytest.mark.parametrize("task", ["rte", "stsb"])
def test_evaluate_best_task_reproduces_its_logged_score(run, task, capsys):
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--checkpoint", f"best:{task}", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    best = json.loads((run / "results.json").read_text())["best_per_task"][task]
    assert report["step"] == best["step"]
    assert {k: v for k, v in report["results"].items() if k.startswith(f"{task}/")} == {k: v for k, v in best.items() if k != "step"}


def test_an_unknown_task_is_refused_in_one_line(run, capsys):
    assert main(["evaluate", "--run", str(run), "--checkpoint", "best:cola"]) == 2
    err = capsys.readouterr().err
    assert "best:cola" in err and err.count("\n") == 1


def test_a_best_task_checkpoint_never_resumes_a_run(run):
    from mtsmart.components.checkpoint import _newest_first

    assert all("best_per_task" not in str(d) for d in _newest_first(run))


def test_a_one_task_run_keeps_no_per_task_copies(tmp_path, train_tiny):
    out = train_tiny(tmp_path / "one", "tasks=[rte]", "train.max_steps=2", "eval.every_steps=1", "eval.max_examples=16")
    assert not (out / "checkpoints" / "best_per_task").exists()
    assert "best_per_task" not in json.loads((out / "results.json").read_text())
