"""Bad input, table-driven: each case fails with exit code 2 and a message naming the file, line or key.

Cases run through the CLI entry point (`mtsmart.cli.main`, in-process: the same code as
`python -m mtsmart train`, without paying for a new interpreter per case); one case runs in a
real subprocess to pin the exit code and stderr. Failing runs must leave everything an earlier
run wrote byte for byte as it was.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mtsmart.components import checkpoint as ckpt
from mtsmart.cli import main
from mtsmart.support.run_lock import LOCK_FILE

REPO = Path(__file__).resolve().parents[1]

TOY_TASK = """name: {name}
type: {type}
{labels}
metrics: [{metric}]
eval_splits: {{{name}: dev}}
local:
  format: {format}
  dir: {name}
  files: {{train: train.{ext}, dev: dev.{ext}}}
  text_a: sentence
  label: label
"""
GOOD_TSV = "sentence\tlabel\n" + "".join(f"sentence number {i}\t{'yes' if i % 2 else 'no'}\n" for i in range(12))


def write_task(root: Path, name: str, train: bytes | str, *, type_: str = "classification", fmt: str = "tsv") -> None:
    """tasks/<name>.yaml and data/<name>/{train,dev}.<ext> under `root`; dev is always good."""
    ext = "tsv" if fmt == "tsv" else "jsonl"
    labels = "labels: [\"no\", \"yes\"]" if type_ == "classification" else "score_range: [0, 5]"
    metric = "accuracy" if type_ == "classification" else "pearson"
    (root / "tasks").mkdir(exist_ok=True)
    (root / "tasks" / f"{name}.yaml").write_text(
        TOY_TASK.format(name=name, type=type_, labels=labels, metric=metric, format=fmt, ext=ext)
    )
    folder = root / "data" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"train.{ext}").write_bytes(train if isinstance(train, bytes) else train.encode())
    dev = GOOD_TSV if type_ == "classification" else "sentence\tlabel\n" + "".join(f"s {i}\t{i % 5}.5\n" for i in range(8))
    (folder / f"dev.{ext}").write_text(dev if fmt == "tsv" else '{"sentence": "a", "label": "yes"}\n{"sentence": "b", "label": "no"}\n')


def tiny_args(root: Path, out: Path, task: str = "good") -> list[str]:
    return [
        "model.name_or_path=tiny", "model.tiny_hidden_size=16", "model.tiny_layers=1", f"tasks=[{task}]",
        f"tasks_dir={root / 'tasks'}", f"data.root={root / 'data'}", "data.max_seq_len=16", "train.batch_size=4",
        "train.max_steps=2", "eval.batch_size=8", f"output_dir={out}",
    ]


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(["train", *args])
    return code, capsys.readouterr().err


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` (TensorBoard event files excluded: a run may add its own;
    and the run-folder lock, which each attempt takes and stamps with its pid)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file() and "tb" not in p.parts and p.name != LOCK_FILE
    }


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    write_task(root, "good", GOOD_TSV)
    write_task(root, "good2", GOOD_TSV)
    write_task(root, "truncated", GOOD_TSV + "a row cut short")
    write_task(root, "headeronly", "sentence\tlabel\n")
    write_task(root, "nothing", b"")
    write_task(root, "latin1", GOOD_TSV.encode() + "caf\u00e9 au lait\tyes\n".encode("latin-1"))
    write_task(root, "badlabel", GOOD_TSV + "a sentence\tmaybe\n")
    write_task(root, "badscore", "sentence\tlabel\ns one\t2.5\ns two\t7.0\n", type_="regression")
    write_task(root, "nanscore", "sentence\tlabel\ns one\tnan\n", type_="regression")
    write_task(root, "badjson", b'{"sentence": "a", "label": "yes"}\n{"sentence": "b", "lab\n', fmt="jsonl")
    return root


@pytest.fixture(scope="module")
def finished_run(toy, tmp_path_factory) -> Path:
    """A finished 2-step run of the toy task, checkpoints and results.json included."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", *tiny_args(toy, out)]) == 0
    assert (out / "results.json").is_file() and ckpt.step_checkpoints(out)
    return out


# (case id, overrides after the good ones, words the message must contain)
INPUT_CASES = [
    ("truncated_file", ["tasks=[truncated]"], ["truncated/train.tsv:14", "malformed row"]),
    ("empty_split", ["tasks=[headeronly]"], ["headeronly/train.tsv", "no examples"]),
    ("empty_file", ["tasks=[nothing]"], ["nothing/train.tsv", "empty"]),
    ("latin1_bytes", ["tasks=[latin1]"], ["latin1/train.tsv:14", "not valid UTF-8"]),
    ("unknown_label", ["tasks=[badlabel]"], ["badlabel/train.tsv:14", "unknown label 'maybe'"]),
    ("score_out_of_range", ["tasks=[badscore]"], ["badscore/train.tsv:3", "outside score_range"]),
    ("score_not_finite", ["tasks=[nanscore]"], ["nanscore/train.tsv:2", "not finite"]),
    ("malformed_jsonl", ["tasks=[badjson]"], ["badjson/train.jsonl:2", "not valid JSON"]),
    ("unknown_task", ["tasks=[nosuch]"], ["unknown task 'nosuch'"]),
    ("unknown_key", ["train.nosuch=1"], ["unknown key train.nosuch"]),
    ("unknown_section", ["trainer.lr=1"], ["unknown key trainer"]),
    ("wrong_type", ["train.lr=fast"], ["train.lr", "expected a number"]),
    ("wrong_literal", ["train.precision=fp8"], ["train.precision", "fp8"]),
    ("bad_value", ["bregman.beta=1.5"], ["bregman.beta"]),
    ("accum_not_dividing_batch", ["train.grad_accum=3"], ["train.batch_size", "train.grad_accum"]),
    ("resume_missing_dir", ["train.resume=/nonexistent/ckpt"], ["train.resume", "/nonexistent/ckpt"]),
]


@pytest.mark.parametrize("case, overrides, words", INPUT_CASES, ids=[c[0] for c in INPUT_CASES])
def test_bad_input_is_named(case, overrides, words, toy, tmp_path, capsys):
    code, err = run_cli([*tiny_args(toy, tmp_path / "out"), *overrides], capsys)
    assert code == 2, err
    for word in words:
        assert word in err, f"{case}: {word!r} not in {err!r}"
    assert "Traceback" not in err


def corrupt_tensors(c: Path) -> None:
    data = (c / "tensors.pt").read_bytes()
    (c / "tensors.pt").write_bytes(data[: len(data) // 2])


def corrupt_weights(c: Path) -> None:
    (c / "model.safetensors").write_bytes(b"\x00" * 64)


# (case id, how to damage the copied run's latest checkpoint, overrides, words)
CHECKPOINT_CASES = [
    ("other_model_name", None, ["model.name_or_path=minilm"], ["checkpoint of model 'tiny'", "'minilm'"]),
    ("other_head_set", None, ["tasks=[good,good2]", "train.resume_force=true"], ["another model", "heads.good2"]),
    ("other_encoder_size", None, ["model.tiny_hidden_size=32", "train.resume_force=true"], ["another model"]),
    ("other_config", None, ["train.lr=1e-3", "train.weight_decay=0.5"], ["train.lr", "train.weight_decay", "resume_force"]),
    ("missing_weights", lambda c: (c / "model.safetensors").unlink(), [], ["model.safetensors"]),
    ("corrupt_weights", corrupt_weights, [], ["model.safetensors", "checksum mismatch"]),
    ("truncated_tensors", corrupt_tensors, [], ["tensors.pt", "checksum mismatch"]),
    ("missing_state", lambda c: (c / "state.json").unlink(), [], ["state.json is missing"]),
    ("corrupt_state", lambda c: (c / "state.json").write_text('{"format_version": 2, "model'), [], ["state.json", "not valid JSON"]),
    ("old_format", lambda c: (c / "state.json").write_text('{"format_version": 1}'), [], ["checkpoint format 1"]),
]


@pytest.mark.parametrize("case, damage, overrides, words", CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_bad_checkpoint_is_named_and_nothing_is_lost(case, damage, overrides, words, toy, finished_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    latest = ckpt.step_checkpoints(out)[-1]
    if damage is not None:
        damage(latest)
    before = snapshot(out)
    code, err = run_cli([*tiny_args(toy, out), f"train.resume={latest}", *overrides], capsys)
    assert code == 2, err
    for word in words:
        assert word in err, f"{case}: {word!r} not in {err!r}"
    assert snapshot(out) == before, "a failed resume changed files of the earlier run"


def test_fresh_run_into_a_used_output_dir_is_refused(toy, finished_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = snapshot(out)
    code, err = run_cli(tiny_args(toy, out), capsys)
    assert code == 2 and "already holds a run" in err and "train.resume=auto" in err
    assert snapshot(out) == before


def test_load_model_weights_refuses_other_heads(finished_run, tiny_tokenizer):
    """Directly: a model with another head set cannot take the checkpoint's weights."""
    from mtsmart.model.multitask import MultiTaskModel, load_encoder
    from mtsmart.tasks.spec import load_task_spec

    encoder = load_encoder("tiny", len(tiny_tokenizer), tiny_hidden_size=16, tiny_layers=1)
    model = MultiTaskModel(encoder, {"rte": load_task_spec("rte")})
    with pytest.raises(ckpt.CheckpointError, match="another model.*heads.good"):
        ckpt.load_model_weights(model, ckpt.step_checkpoints(finished_run)[-1])


def test_nonfinite_steps_stop_the_run_and_keep_the_last_checkpoint(toy, tmp_path, capsys):
    """lr = 1e30 blows the weights up at step 1: later steps are skipped, then the run stops."""
    out = tmp_path / "nan"
    code, err = run_cli(
        [*tiny_args(toy, out), "train.lr=1e30", "train.grad_clip=0", "train.warmup_ratio=0", "train.max_steps=20",
         "train.save_every_steps=1", "train.max_nonfinite_in_row=3", "adversarial.method=none", "bregman.mu=0"],
        capsys,
    )
    assert code == 2, err
    assert "non-finite loss or gradient" in err and "3 in a row" in err and "step_" in err
    assert ckpt.step_checkpoints(out), "the last good checkpoint must be kept"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    assert [e.value for e in events.Scalars("train/nonfinite_skipped")] == [1.0, 2.0, 3.0]
    assert not (out / "results.json").exists()


def test_nonfinite_raise_stops_at_the_first(toy, tmp_path, capsys):
    out = tmp_path / "raise"
    code, err = run_cli(
        [*tiny_args(toy, out), "train.lr=1e30", "train.grad_clip=0", "train.warmup_ratio=0", "train.max_steps=20",
         "train.nonfinite=raise", "adversarial.method=none", "bregman.mu=0"],
        capsys,
    )
    assert code == 2 and "1 in a row" in err, err


def test_real_subprocess_exit_code_and_stderr(toy, tmp_path):
    env = {**os.environ, "MTSMART_DATA": str(toy / "data")}
    result = subprocess.run(
        [sys.executable, "-m", "mtsmart", "train", *tiny_args(toy, tmp_path / "out", task="badlabel")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert "badlabel/train.tsv:14" in result.stderr and "unknown label 'maybe'" in result.stderr
    assert not (tmp_path / "out").exists(), "a run refused at its input must not create its output_dir"
