"""Task files: every shipped one parses; bad files are refused naming file and key."""

import pytest
import yaml

from mtsmart.tasks.spec import DEFAULT_TASKS_DIR, TaskSpecError, load_task_spec

SHIPPED = sorted(p.stem for p in DEFAULT_TASKS_DIR.glob("*.yaml"))


def test_all_tasks_shipped():
    expected = {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli", "snli", "scitail", "qnli_ranking"}
    assert expected <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_task_parses(name):
    spec = load_task_spec(name)
    assert spec.name == name
    assert spec.type in ("classification", "regression", "ranking")
    if spec.type == "classification":
        assert spec.num_outputs == len(spec.labels) >= 2


def test_mnli_evaluates_matched_and_mismatched_separately():
    assert load_task_spec("mnli").eval_splits == {"mnli_m": "dev_matched", "mnli_mm": "dev_mismatched"}


@pytest.mark.parametrize(
    "content, message",
    [
        ({"name": "t", "type": "classification", "metrics": ["accuracy"], "labels": [False, True]}, "quote labels"),
        ({"name": "t", "type": "classify", "metrics": ["accuracy"]}, "'type'"),
        ({"name": "t", "type": "classification", "metrics": ["acc"], "labels": ["a", "b"]}, "unknown metric"),
        ({"name": "t", "type": "classification", "metrics": ["accuracy"], "labels": ["a"]}, "at least two"),
        ({"name": "t", "type": "ranking", "metrics": ["mrr"], "labels": ["a", "b"], "positive_label": "c"}, "positive_label"),
        ({"name": "t", "type": "regression", "metrics": ["pearson"], "score_range": [0]}, "score_range"),
        ({"name": "t", "type": "regression", "metrics": ["pearson"], "dropout": 1.5}, "dropout"),
        ({"name": "t", "type": "regression", "metrics": ["pearson"], "colour": "red"}, "unknown key"),
        ({"type": "regression", "metrics": ["pearson"]}, "missing key 'name'"),
    ],
)
def test_bad_task_file(tmp_path, content, message):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(TaskSpecError, match=message) as error:
        load_task_spec(str(path))
    assert str(path) in str(error.value)


def test_unknown_task_lists_known_ones():
    with pytest.raises(TaskSpecError, match="known tasks"):
        load_task_spec("nosuchtask")


@pytest.mark.parametrize("metrics,words", [
    ("[]", "give at least one metric"),
    ("[pearson]", "'pearson' cannot score a classification task"),
    ("[accuracy, mrr]", "'mrr' cannot score a classification task"),
])
def test_metrics_that_cannot_score_the_task_are_refused_before_training(tmp_path, metrics, words):
    path = tmp_path / "toy.yaml"
    path.write_text(f"name: toy\ntype: classification\nlabels: [a, b]\nmetrics: {metrics}\n")
    with pytest.raises(TaskSpecError, match=words):
        load_task_spec(str(path))


def test_f1_needs_two_labels(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text("name: toy\ntype: classification\nlabels: [a, b, c]\nmetrics: [accuracy, f1]\n")
    with pytest.raises(TaskSpecError, match="f1 is the binary F1"):
        load_task_spec(str(path))


def test_a_regression_task_scored_by_accuracy_is_refused(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text("name: toy\ntype: regression\nmetrics: [accuracy]\n")
    with pytest.raises(TaskSpecError, match="'accuracy' cannot score a regression task"):
        load_task_spec(str(path))
