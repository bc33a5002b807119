"""`mtsmart predict --glue-submission`: file names, headers, row counts, order and label formats of
the GLUE leaderboard, checked against the test sets themselves and against the model run by hand."""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mtsmart.cli import main
from mtsmart.recipes.commands.predict import GLUE_FILES, spec_for
from mtsmart.components.run_dir import RunDirError, load_run
from mtsmart.tasks.spec import DEFAULT_TASKS_DIR


# Test-set sizes (GLUE's official counts, as in the shared data's README).
TEST_ROWS = {"CoLA": 1063, "SST-2": 1821, "MRPC": 1725, "STS-B": 1379, "RTE": 3000, "WNLI": 146, "QNLI": 5463, "AX": 1104}
TEST_FILES = {
    "CoLA": "glue/CoLA/test.tsv", "SST-2": "glue/SST-2/test.tsv", "MRPC": "glue/MRPC/test.tsv",
    "STS-B": "glue/STS-B/test.tsv", "RTE": "glue/RTE/test.tsv", "WNLI": "glue/WNLI/test.tsv",
    "QNLI": "glue/QNLI/test.tsv", "AX": "glue/diagnostic/diagnostic.tsv",
}
LABELS = {
    "CoLA": {"0", "1"}, "SST-2": {"0", "1"}, "MRPC": {"0", "1"}, "WNLI": {"0", "1"},
    "RTE": {"entailment", "not_entailment"}, "QNLI": {"entailment", "not_entailment"},
    "MNLI-m": {"entailment", "neutral", "contradiction"}, "MNLI-mm": {"entailment", "neutral", "contradiction"},
    "AX": {"entailment", "neutral", "contradiction"},
}
MNLI_TEST_ROWS = {"test_matched": 7, "test_mismatched": 5}
SMALL_TEST_ROWS = 60



def read_tsv(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def write_mnli(folder: Path) -> None:
    """Small MNLI files in the GLUE layout (columns found by header name)."""
    folder.mkdir(parents=True)
    labels = ["entailment", "neutral", "contradiction"]
    for split, rows in {"train": 24, "dev_matched": 9, "dev_mismatched": 6}.items():
        lines = ["index\tpromptID\tsentence1\tsentence2\tgold_label"]
        lines += [f"{i}\t{100 + i}\tA man plays guitar number {i}.\tSomeone plays music {i % 4}.\t{labels[i % 3]}" for i in range(rows)]
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for split, rows in MNLI_TEST_ROWS.items():
        lines = ["index\tsentence1\tsentence2"] + [f"{i}\tA dog runs {i}.\tAn animal moves {i}." for i in range(rows)]
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def task_file(tasks: Path, name: str, **local) -> None:
    """tasks/<name>.yaml, with `local:` keys replaced (train sets missing here read other splits)."""
    raw = yaml.safe_load((DEFAULT_TASKS_DIR / f"{name}.yaml").read_text(encoding="utf-8"))
    raw["local"].update(local)
    (tasks / f"{name}.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_root, train_tiny) -> Path:
    tmp = tmp_path_factory.mktemp("predict")
    tasks = tmp / "tasks"
    tasks.mkdir()
    for name in ("cola", "mrpc", "stsb", "rte", "wnli"):
        task_file(tasks, name)
    # Training sets absent from the shared data (QNLI) or large (SST-2): train on the dev split.
    task_file(tasks, "sst2", files={"train": "dev.tsv", "dev": "dev.tsv", "test": "test.tsv"})
    task_file(tasks, "qnli", files={"train": "dev.tsv", "dev": "dev.tsv", "test": "test.tsv"})
    # SNLI and SciTail: the first rows of their real test sets, as every split (keeps the test fast).
    head = {"snli_1.0_test.jsonl": data_root / "snli/snli_1.0/snli_1.0_test.jsonl",
            "scitail_1.0_test.tsv": data_root / "scitail/tsv_format/scitail_1.0_test.tsv"}
    for name, source in head.items():
        lines = source.read_text(encoding="utf-8").splitlines()[:SMALL_TEST_ROWS]
        (tmp / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    task_file(tasks, "snli", dir=str(tmp), files={split: "snli_1.0_test.jsonl" for split in ("train", "dev", "test")})
    task_file(tasks, "scitail", dir=str(tmp), files={split: "scitail_1.0_test.tsv" for split in ("train", "dev", "test")},
              headerless={"splits": ["train", "dev", "test"], "columns": ["premise", "hypothesis", "label"]})
    write_mnli(tmp / "MNLI")
    task_file(tasks, "mnli", dir=str(tmp / "MNLI"))  # an absolute dir overrides data.root
    names = "cola,sst2,mrpc,stsb,rte,wnli,qnli,mnli,snli,scitail"
    return train_tiny(tmp / "run", f"tasks_dir={tasks}", f"tasks=[{names}]", "train.max_steps=2", "eval.max_examples=16")


@pytest.fixture(scope="module")
def loaded(run):
    return load_run(run)


@pytest.fixture(scope="module")
def submission(run, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("submission")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["predict", "--run", str(run), "--glue-submission", str(out)]) == 0
    return out, printed.getvalue()


def test_the_leaderboard_files_and_the_zip(submission):
    out, printed = submission
    expected = {f"{name}.tsv" for name in [*TEST_ROWS, "MNLI-m", "MNLI-mm"]}
    assert {p.name for p in out.glob("*.tsv")} == expected
    with zipfile.ZipFile(out / "submission.zip") as archive:
        assert set(archive.namelist()) == expected
        assert archive.read("RTE.tsv") == (out / "RTE.tsv").read_bytes()
    # QQP's data is absent: it was not trained, and no file is invented for it.
    assert "not trained: qqp (QQP.tsv)" in printed
    assert not (out / "QQP.tsv").exists()


@pytest.mark.parametrize("name", sorted(TEST_ROWS))
def test_rows_follow_the_test_set(submission, data_root, name):
    out, _ = submission
    rows = read_tsv(out / f"{name}.tsv")
    assert rows[0] == ["index", "prediction"]
    test = read_tsv(data_root / TEST_FILES[name])
    assert len(rows) - 1 == len(test) - 1 == TEST_ROWS[name]
    # The index column is the test file's own.
    assert [r[0] for r in rows[1:]] == [r[0] for r in test[1:]]
    predictions = [r[1] for r in rows[1:]]
    if name == "STS-B":
        scores = np.array([float(p) for p in predictions])
        assert scores.min() >= 0.0 and scores.max() <= 5.0
    else:
        assert set(predictions) <= LABELS[name]


def test_mnli_files_from_the_mnli_head(submission):
    out, _ = submission
    for name, split in (("MNLI-m", "test_matched"), ("MNLI-mm", "test_mismatched")):
        rows = read_tsv(out / f"{name}.tsv")
        assert rows[0] == ["index", "prediction"]
        assert [r[0] for r in rows[1:]] == [str(i) for i in range(MNLI_TEST_ROWS[split])]
        assert {r[1] for r in rows[1:]} <= LABELS[name]


def model_outputs(loaded, task: str, pairs: list[tuple[str, str | None]]) -> torch.Tensor:
    """The run's head outputs, one example at a time (no padding, no batching): (n, outputs)."""
    rows = []
    with torch.no_grad():
        for a, b in pairs:
            enc = loaded.tokenizer(a, b, truncation="longest_first", max_length=loaded.cfg.data.max_seq_len, return_tensors="pt")
            rows.append(loaded.model(task=task, **dict(enc))[0])
    return torch.stack(rows)


@pytest.mark.parametrize("name, task, column_a, column_b", [
    ("RTE", "rte", "sentence1", "sentence2"),
    ("CoLA", "cola", "sentence", None),
    ("AX", "mnli", "sentence1", "sentence2"),
    ("STS-B", "stsb", "sentence1", "sentence2"),
])
def test_predictions_equal_the_model_run_by_hand(loaded, submission, data_root, name, task, column_a, column_b):
    out, _ = submission
    test = read_tsv(data_root / TEST_FILES[name])
    header, body = test[0], test[1:21]
    a, b = header.index(column_a), header.index(column_b) if column_b else None
    outputs = model_outputs(loaded, task, [(r[a], r[b] if b is not None else None) for r in body])
    written = [r[1] for r in read_tsv(out / f"{name}.tsv")[1:21]]
    if name == "STS-B":
        expected = outputs[:, 0].clamp(0, 5).numpy()
        np.testing.assert_allclose([float(w) for w in written], expected, atol=1e-5)
    else:
        labels = loaded.specs[task].labels
        assert written == [labels[i] for i in outputs.argmax(-1).tolist()]


def test_snli_and_scitail_test_metrics_are_printed(loaded, submission, run):
    _, printed = submission
    folder = run.parent
    scitail = [line.split("\t") for line in (folder / "scitail_1.0_test.tsv").read_text(encoding="utf-8").splitlines()]
    snli = [json.loads(line) for line in (folder / "snli_1.0_test.jsonl").read_text(encoding="utf-8").splitlines()]
    snli = [row for row in snli if row["gold_label"] != "-"]  # SNLI rows without a gold label are dropped
    for task, rows in (("scitail", [(p, h, y) for p, h, y in scitail]), ("snli", [(r["sentence1"], r["sentence2"], r["gold_label"]) for r in snli])):
        outputs = model_outputs(loaded, task, [(a, b) for a, b, _ in rows])
        labels = loaded.specs[task].labels
        gold = np.array([labels.index(y) for _, _, y in rows])
        accuracy = float((outputs.argmax(-1).numpy() == gold).mean())
        assert re.search(rf"^{task} +accuracy +{accuracy:.4f}$", printed, re.MULTILINE)


def test_a_head_with_other_labels_is_refused(loaded):
    # A run whose "rte" task predicts other labels cannot write GLUE's RTE.tsv.
    wrong = dataclasses.replace(loaded.specs["rte"], labels=("yes", "no"))
    rte = next(g for g in GLUE_FILES if g.file == "RTE.tsv")
    with pytest.raises(RunDirError, match="RTE.tsv needs"):
        spec_for(rte, wrong)


def test_a_non_empty_folder_is_refused_unless_forced_and_stale_files_go(run, tmp_path, capsys):
    out = tmp_path / "submission"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file")
    (out / "WNLI.tsv").write_text("index\tprediction\n0\tstale\n")  # an older submission's file
    assert main(["predict", "--run", str(run), "--glue-submission", str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err and (out / "WNLI.tsv").read_text().endswith("stale\n")
    assert main(["predict", "--run", str(run), "--glue-submission", str(out), "--force"]) == 0
    assert (out / "notes.txt").read_text() == "the user's own file"  # only predict's own files are replaced
    assert "stale" not in (out / "WNLI.tsv").read_text()
    (tmp_path / "a_file").write_text("x")
    assert main(["predict", "--run", str(run), "--glue-submission", str(tmp_path / "a_file")]) == 2
    assert "is a file" in capsys.readouterr().err
