"""`mtsmart predict --run DIR --glue-submission OUT`: the files the GLUE leaderboard takes.

One `<Task>.tsv` per GLUE test set the run trained (header `index\\tprediction`, rows in test-set
order, labels as GLUE spells them), AX (the diagnostic set) from the MNLI head, and
`OUT/submission.zip` holding them all. Tasks the run did not train get no file: they are listed
as "not trained". SNLI and SciTail have labelled test sets: their test metrics are printed.
"""
from __future__ import annotations

import argparse
import dataclasses
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtsmart.recipes.commands.common import add_run_arguments, check_target, open_run, table
from mtsmart.data.encoding import encode_split
from mtsmart.data.loader import eval_batches
from mtsmart.data.readers import read_split
from mtsmart.tasks.types import task_type_of
from mtsmart.components.evaluate import evaluate, predict
from mtsmart.components.run_dir import LoadedRun, RunDirError, run_eval_sets
from mtsmart.tasks.spec import TaskSpec


@dataclass(frozen=True)
class GlueFile:
    file: str  # name the leaderboard expects
    task: str  # the run's task whose head predicts it
    split: str  # the task's split holding the test set
    labels: tuple[str, ...] = ()  # GLUE's label vocabulary; () = a score


NLI3 = ("entailment", "neutral", "contradiction")
QNLI_RTE = ("entailment", "not_entailment")
BINARY = ("0", "1")

GLUE_FILES = (
    GlueFile("CoLA.tsv", "cola", "test", BINARY),
    GlueFile("SST-2.tsv", "sst2", "test", BINARY),
    GlueFile("MRPC.tsv", "mrpc", "test", BINARY),
    GlueFile("STS-B.tsv", "stsb", "test"),
    GlueFile("QQP.tsv", "qqp", "test", BINARY),
    GlueFile("MNLI-m.tsv", "mnli", "test_matched", NLI3),
    GlueFile("MNLI-mm.tsv", "mnli", "test_mismatched", NLI3),
    GlueFile("QNLI.tsv", "qnli", "test", QNLI_RTE),
    GlueFile("RTE.tsv", "rte", "test", QNLI_RTE),
    GlueFile("WNLI.tsv", "wnli", "test", BINARY),
    GlueFile("AX.tsv", "mnli", "test", NLI3),  # read with AX_LOCAL / AX_HUB below
)
STSB_RANGE = (0.0, 5.0)
# Tasks with labelled test sets: their test metrics are printed instead of written.
LABELLED_TEST_TASKS = ("snli", "scitail")

# The GLUE diagnostic set (AX) as a split of MNLI: the MNLI head predicts it.
AX_LOCAL = {
    "format": "tsv",
    "dir": "glue/diagnostic",
    "files": {"test": "diagnostic.tsv"},
    "text_a": "sentence1",
    "text_b": "sentence2",
    "label": "label",
    "unlabelled_splits": ["test"],
}
AX_HUB = {
    "path": "nyu-mll/glue",
    "name": "ax",
    "splits": {"test": "test"},
    "text_a": "premise",
    "text_b": "hypothesis",
    "label": "label",
    "label_names": list(NLI3),
    "unlabelled_splits": ["test"],
    "local_dir": "hf/glue/ax",
}


def add_parser(commands) -> None:
    parser = commands.add_parser("predict", help="GLUE leaderboard files (and SNLI/SciTail test metrics) of a run")
    add_run_arguments(parser)
    parser.add_argument("--glue-submission", required=True, metavar="OUT",
                        help="folder for the .tsv files and submission.zip (new or empty, unless --force)")
    parser.add_argument("--force", action="store_true",
                        help="write into a non-empty folder; an older submission's files there are removed first")
    parser.set_defaults(handler=run)


def spec_for(glue: GlueFile, spec: TaskSpec) -> TaskSpec:
    """The task spec that reads `glue`'s test set; checks the head speaks GLUE's labels."""
    if glue.labels and set(spec.labels) != set(glue.labels):
        raise RunDirError(
            f"{spec.source_file}: task {spec.name!r} has labels {list(spec.labels)}, "
            f"but {glue.file} needs {list(glue.labels)}"
        )
    if not glue.labels and not task_type_of(spec).scores:
        raise RunDirError(f"{spec.source_file}: {glue.file} needs a regression task, {spec.name!r} is {spec.type}")
    if glue.file == "AX.tsv":
        return dataclasses.replace(spec, local=AX_LOCAL, hub=AX_HUB)
    return spec


def prediction_strings(spec: TaskSpec, outputs: np.ndarray) -> list[str]:
    """Classification: the label name of the argmax; regression: the score clipped to [0, 5]."""
    predicted = task_type_of(spec).predict(outputs)
    if task_type_of(spec).scores:
        return [f"{score:.6f}" for score in np.clip(predicted, *STSB_RANGE)]
    return [spec.labels[i] for i in predicted]


def predict_test_set(loaded: LoadedRun, spec: TaskSpec, split: str) -> list[str]:
    """Predictions for every row of `split`, in file order (the row's position is GLUE's index)."""
    cfg = loaded.cfg
    items = encode_split(spec, read_split(spec, split, cfg.data), loaded.tokenizer, cfg.data.max_seq_len)
    batches = eval_batches(spec.name, items, cfg.eval.batch_size, loaded.tokenizer.pad_token_id)
    predictions = predict(loaded.model, batches, spec, loaded.device, loaded.autocast)
    return prediction_strings(spec, predictions.outputs)


def remove_old_submission(out: Path) -> None:
    """The GLUE files and submission.zip an earlier `predict` wrote into `out` (nothing else)."""
    for name in [glue.file for glue in GLUE_FILES] + ["submission.zip"]:
        (out / name).unlink(missing_ok=True)


def write_tsv(path: Path, predictions: list[str]) -> None:
    lines = ["index\tprediction"] + [f"{i}\t{p}" for i, p in enumerate(predictions)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_submission(loaded: LoadedRun, out: Path) -> tuple[list[Path], dict[str, list[str]]]:
    """(files written, {task not trained: the GLUE files it would have given})."""
    out.mkdir(parents=True, exist_ok=True)
    written, missing = [], {}
    for glue in GLUE_FILES:
        if glue.task not in loaded.specs:
            missing.setdefault(glue.task, []).append(glue.file)
            continue
        spec = spec_for(glue, loaded.specs[glue.task])
        path = out / glue.file
        write_tsv(path, predict_test_set(loaded, spec, glue.split))
        written.append(path)
    if written:
        with zipfile.ZipFile(out / "submission.zip", "w", zipfile.ZIP_DEFLATED) as archive:
            for path in written:
                archive.write(path, arcname=path.name)
    return written, missing


def labelled_test_metrics(loaded: LoadedRun) -> dict[str, float]:
    """Full test-set metrics of the run's SNLI / SciTail tasks (empty if it trained neither)."""
    if not any(task in loaded.specs for task in LABELLED_TEST_TASKS):
        return {}
    eval_sets, _ = run_eval_sets(loaded, "test", max_examples=0)
    eval_sets = [e for e in eval_sets if e.spec.name in LABELLED_TEST_TASKS]
    results = evaluate(loaded.model, eval_sets, loaded.device, loaded.autocast)
    return {key: value for key, value in results.items() if key != "avg"}


def run(args: argparse.Namespace) -> int:
    out = Path(args.glue_submission)
    check_target(out, args.force, "--glue-submission")
    loaded = open_run(args)
    remove_old_submission(out)  # with --force: no stale file of an older submission stays beside the new ones
    written, missing = write_submission(loaded, out)
    print(f"{loaded.checkpoint} (step {loaded.step})")
    if written:
        print(f"wrote {len(written)} files to {out}: {', '.join(p.name for p in written)}; upload {out / 'submission.zip'}")
    else:
        print(f"no GLUE task trained: nothing written to {out}")
    if missing:
        print("not trained: " + ", ".join(f"{task} ({', '.join(files)})" for task, files in missing.items()))
    metrics = labelled_test_metrics(loaded)
    if metrics:
        print(table([["test set", "metric", "value"]] + [[*key.split("/"), f"{value:.4f}"] for key, value in metrics.items()]))
    return 0
