"""Resume always has a way forward (issue 13): verified checkpoints, fallback past a corrupt one,
recovery from a kill during a checkpoint write or in a run whose only checkpoint is `best`; and
writes that refuse non-finite weights and clean up after an OS error."""
from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mtsmart.components import checkpoint as ckpt
from mtsmart.cli import main
from conftest import TINY_TRAIN_ARGS

RUN = ("tasks=[rte]", "train.max_steps=6", "train.save_every_steps=2", "train.keep_checkpoints=2",
       "eval.max_examples=16", "train.warmup_ratio=0")


@pytest.fixture(scope="module")
def straight(tmp_path_factory, train_tiny) -> Path:
    """The uninterrupted run every recovery must reproduce."""
    return train_tiny(tmp_path_factory.mktemp("straight") / "run", *RUN)


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt.step_checkpoints(out)[-1] / "model.safetensors"))


def assert_same_run(out: Path, reference: Path) -> None:
    assert json.loads((out / "results.json").read_text()) == json.loads((reference / "results.json").read_text())
    ours, theirs = final_weights(out), final_weights(reference)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def interrupted_copy(straight: Path, tmp_path: Path) -> Path:
    """The straight run as a kill just after its step-6 checkpoint leaves it: no final evaluation
    (so no results and no `best`), checkpoints 4 and 6 (train.keep_checkpoints=2)."""
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    (out / "results.json").unlink()
    shutil.rmtree(out / "checkpoints" / "best")
    return out


def test_every_checkpoint_carries_checksums_that_verify(straight):
    for directory in ckpt.step_checkpoints(straight):
        ckpt.verify(directory)
        listed = json.loads((directory / ckpt.CHECKSUMS).read_text())
        assert set(listed) == set(ckpt.CHECKED_FILES)


def test_resume_falls_back_past_a_checkpoint_corrupted_at_the_same_size(straight, tmp_path, train_tiny, capsys):
    out = interrupted_copy(straight, tmp_path)
    newest = out / "checkpoints" / "step_00000006" / "model.safetensors"
    data = bytearray(newest.read_bytes())
    data[-100:-90] = b"\xff" * 10  # bytes overwritten inside the weights: same size, still parseable
    newest.write_bytes(bytes(data))
    capsys.readouterr()
    train_tiny(out, *RUN, "train.resume=auto")
    printed = capsys.readouterr().out
    assert "checksum mismatch" in printed and "set aside as corrupt-step_00000006" in printed
    assert f"resume: from {out / 'checkpoints' / 'step_00000004'}" in printed
    assert (out / "checkpoints" / "corrupt-step_00000006").is_dir()  # kept for inspection, not deleted
    assert_same_run(out, straight)


def test_a_kill_during_the_first_checkpoint_write_leaves_a_run_that_starts_again(straight, tmp_path, train_tiny, capsys):
    out = tmp_path / "run"
    (out / "checkpoints" / ".tmp-step_00000002-4242").mkdir(parents=True)  # the write a kill interrupted
    (out / "checkpoints" / ".tmp-step_00000002-4242" / "model.safetensors").write_bytes(b"\x00" * 10)
    (out / "config.yaml").write_text("written before the kill\n")
    capsys.readouterr()
    train_tiny(out, *RUN, "train.resume=auto")
    printed = capsys.readouterr().out
    assert "removed .tmp-step_00000002-4242, an interrupted checkpoint write" in printed
    assert "starting fresh" in printed
    assert not list((out / "checkpoints").glob(".tmp-*"))
    assert_same_run(out, straight)


def test_a_fresh_start_is_not_blocked_by_an_interrupted_write(straight, tmp_path, train_tiny):
    out = tmp_path / "run"
    (out / "checkpoints" / ".tmp-step_00000002-4242").mkdir(parents=True)
    train_tiny(out, *RUN)  # no train.resume: the leftovers are not a run to protect
    assert_same_run(out, straight)


def test_a_best_only_run_resumes_from_best(tmp_path, train_tiny):
    """save_every_steps=0 with periodic evaluation: before the end, `best` is the only checkpoint."""
    best_only = (*RUN[:1], "train.max_steps=6", "train.save_every_steps=0", "eval.every_steps=2",
                 "eval.max_examples=16", "train.warmup_ratio=0")
    reference = train_tiny(tmp_path / "reference", *best_only)
    out = tmp_path / "run"
    train_tiny(out, *best_only, "train.stop_after_steps=4")  # a run stopped at step 4 ...
    for directory in ckpt.step_checkpoints(out):  # ... as a kill would leave it: best only
        shutil.rmtree(directory)
    best_step = json.loads((out / "checkpoints" / "best" / "state.json").read_text())["train_state"]["step"]
    assert best_step in (2, 4)
    train_tiny(out, *best_only, "train.resume=auto")
    assert json.loads((out / "results.json").read_text())["final"] == json.loads((reference / "results.json").read_text())["final"]


def test_an_interrupted_replace_is_put_back(straight, tmp_path):
    out = interrupted_copy(straight, tmp_path)
    root = out / "checkpoints"
    root.joinpath("step_00000006").rename(root / ".old-step_00000006-999")  # killed between the two renames
    notes = ckpt.clean_interrupted_writes(out)
    assert (root / "step_00000006").is_dir() and notes == [
        "restored step_00000006 from .old-step_00000006-999, left by an interrupted checkpoint replace"]


def test_non_finite_weights_are_never_written(straight, tmp_path):
    from mtsmart.options.config import load_config

    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(ckpt.CheckpointError, match="non-finite values in \\['weight'\\]"):
        ckpt._write(tmp_path / "checkpoints" / "step_00000001", {"model": model}, load_config(None, []))
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_a_full_disk_is_reported_and_leaves_no_partial_checkpoint(straight, tmp_path, monkeypatch, data_root, capsys):
    out = interrupted_copy(straight, tmp_path)
    shutil.rmtree(out / "checkpoints" / "step_00000006")  # killed before step 6: the next write is step 6's

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "model.safetensors")

    monkeypatch.setattr(ckpt, "save_file", no_space)
    capsys.readouterr()
    assert main(["train", *TINY_TRAIN_ARGS, f"data.root={data_root}", f"output_dir={out}", *RUN, "train.resume=auto"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "partial files were removed" in err
    assert not list((out / "checkpoints").glob(".tmp-*"))
    ckpt.verify(out / "checkpoints" / "step_00000004")  # the last good checkpoint is intact


def test_evaluate_refuses_a_corrupt_checkpoint_by_name(straight, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    weights = ckpt.step_checkpoints(out)[-1] / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-50] ^= 0xFF
    weights.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["evaluate", "--run", str(out)]) == 2
    assert f"{weights}: checksum mismatch" in capsys.readouterr().err


# --------------------------------------------------------------------------- real kills (kill -9 of the process)

KILLER = '''
import os, signal
import mtsmart.components.checkpoint as ckpt

import mtsmart.recipes.train as train

_mode = os.environ["MTSMART_TEST_KILL"]
_write_json = ckpt.atomic_write_json
_evaluate = train.Trainer.run_evaluation
_calls = {"eval": 0}


def _json_then_die(path, data):
    # The first checkpoint's state.json: its weights and tensors are already in the .tmp folder.
    if _mode == "first_write" and path.name == "state.json":
        os.kill(os.getpid(), signal.SIGKILL)
    return _write_json(path, data)


def _die_at_the_second_evaluation(self):
    # Step 4 of a run that evaluates every 2 steps: `best` (from step 2) is its only checkpoint.
    _calls["eval"] += 1
    if _mode == "second_evaluation" and _calls["eval"] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return _evaluate(self)


ckpt.atomic_write_json = _json_then_die
train.Trainer.run_evaluation = _die_at_the_second_evaluation
'''


def killed_run(tmp_path: Path, data_root: Path, mode: str, *overrides: str) -> Path:
    """`mtsmart train` in a subprocess that kills itself with SIGKILL at the moment `mode` names."""
    import os
    import subprocess
    import sys

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILLER, encoding="utf-8")
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]),
           "MTSMART_TEST_KILL": mode, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "mtsmart", "train", *TINY_TRAIN_ARGS, f"data.root={data_root}",
                             f"output_dir={out}", *overrides], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == -9, result.stderr[-2000:]  # killed, as planned
    return out


@pytest.mark.slow
def test_kill_9_during_the_first_checkpoint_write_then_resume_auto(straight, tmp_path, data_root, train_tiny):
    out = killed_run(tmp_path, data_root, "first_write", *RUN)
    assert list((out / "checkpoints").glob(".tmp-step_00000002-*")) and not ckpt.step_checkpoints(out)
    train_tiny(out, *RUN, "train.resume=auto")
    assert_same_run(out, straight)


@pytest.mark.slow
def test_kill_9_in_a_best_only_run_then_resume_auto(tmp_path, data_root, train_tiny):
    best_only = ("tasks=[rte]", "train.max_steps=6", "train.save_every_steps=0", "eval.every_steps=2",
                 "eval.max_examples=16", "train.warmup_ratio=0")
    reference = train_tiny(tmp_path / "reference", *best_only)
    out = killed_run(tmp_path, data_root, "second_evaluation", *best_only)
    assert (out / "checkpoints" / "best").is_dir() and not ckpt.step_checkpoints(out)
    assert not (out / "results.json").exists()
    train_tiny(out, *best_only, "train.resume=auto")
    final = json.loads((out / "results.json").read_text())["final"]
    assert final == json.loads((reference / "results.json").read_text())["final"]


def test_a_checkpoint_from_a_newer_mtsmart_is_refused_never_set_aside(straight, tmp_path, capsys):
    """format_version above this mtsmart's: resume stops in one line; the checkpoint, intact, stays
    where it is (it used to be renamed corrupt-* and the run retrained from an older one)."""
    out = interrupted_copy(straight, tmp_path)
    newest = out / "checkpoints" / "step_00000006"
    state = json.loads((newest / "state.json").read_text())
    state["format_version"] = ckpt.FORMAT_VERSION + 1
    (newest / "state.json").write_text(json.dumps(state))
    checksums = json.loads((newest / ckpt.CHECKSUMS).read_text())
    checksums["state.json"] = ckpt._sha256(newest / "state.json")  # as a newer mtsmart would have written it
    (newest / ckpt.CHECKSUMS).write_text(json.dumps(checksums))
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert main(["train", *TINY_TRAIN_ARGS, f"output_dir={out}", *RUN, "train.resume=auto"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "written by a newer mtsmart" in err and "update mtsmart" in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before  # nothing renamed or removed
    assert not (out / "results.json").exists()


def test_a_task_file_edited_between_stop_and_resume_is_refused(straight, tmp_path, data_root, capsys):
    """Two labels swapped in the task file after the stop: results.json would have said 0.5625 where
    `mtsmart evaluate` of the same checkpoint says 0.4375. Refused naming the task file."""
    tasks = tmp_path / "tasks"
    shutil.copytree(Path(ckpt.DEFAULT_TASKS_DIR), tasks)
    common = (*TINY_TRAIN_ARGS, f"data.root={data_root}", f"tasks_dir={tasks}", *RUN)
    out = tmp_path / "run"
    assert main(["train", *common, f"output_dir={out}", "train.stop_after_steps=4"]) == 0
    text = (tasks / "rte.yaml").read_text()
    (tasks / "rte.yaml").write_text(text.replace("[entailment, not_entailment]", "[not_entailment, entailment]"))
    assert text != (tasks / "rte.yaml").read_text()
    capsys.readouterr()
    assert main(["train", *common, f"output_dir={out}", "train.resume=auto"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the task file of rte" in err and "changed since the checkpoint" in err
    (tasks / "rte.yaml").write_text(text)  # restored: the run continues
    assert main(["train", *common, f"output_dir={out}", "train.resume=auto"]) == 0


def save_tiny_encoder(folder: Path, vocab_size: int, seed: int) -> None:
    from transformers import BertModel

    from mtsmart.model.multitask import tiny_bert_config

    torch.manual_seed(seed)
    BertModel(tiny_bert_config(vocab_size, 32, 2, 2), add_pooling_layer=False).save_pretrained(folder)


def test_an_encoder_folder_rewritten_between_stop_and_resume_is_refused(tmp_path, data_root, tiny_tokenizer, capsys):
    """The same model.name_or_path, other weights in it (a folder re-exported, a hub model's new
    revision): the checkpoint records the sha256 of the weights the run started from."""
    encoder = tmp_path / "encoder"
    save_tiny_encoder(encoder, len(tiny_tokenizer), seed=0)
    common = (f"model.name_or_path={encoder}", "model.tokenizer=minilm", "data.max_seq_len=48", "train.batch_size=8",
              f"data.root={data_root}", *RUN)
    out = tmp_path / "run"
    assert main(["train", *common, f"output_dir={out}", "train.stop_after_steps=4"]) == 0
    state = json.loads((ckpt.step_checkpoints(out)[-1] / "state.json").read_text())
    assert len(state["encoder"]) == 64
    save_tiny_encoder(encoder, len(tiny_tokenizer), seed=1)
    capsys.readouterr()
    assert main(["train", *common, f"output_dir={out}", "train.resume=auto"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after transformers' own loading report
    assert last.startswith("mtsmart: error: ") and "now loads other weights than the run started from" in last
    assert str(encoder) in last
    assert not (out / "results.json").exists()
    save_tiny_encoder(encoder, len(tiny_tokenizer), seed=0)  # the same weights again: the run continues
    assert main(["train", *common, f"output_dir={out}", "train.resume=auto"]) == 0
    assert (out / "results.json").is_file()


def test_the_encoder_digest_covers_every_weight_byte(tiny_model_factory):
    from mtsmart.components.build import encoder_digest

    encoder = tiny_model_factory({}).encoder
    before = encoder_digest(encoder)
    assert before == encoder_digest(encoder)
    with torch.no_grad():
        weight = encoder.embeddings.word_embeddings.weight
        weight[3, 5] = torch.nextafter(weight[3, 5], torch.tensor(float("inf")))  # one ulp
    assert encoder_digest(encoder) != before
    assert encoder_digest(encoder.to(torch.bfloat16)) != encoder_digest(encoder.float())
