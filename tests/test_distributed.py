"""torchrun with 2 gloo processes on the CPU = 1 process with the same global batch.

Dropout is switched off (an encoder saved with dropout 0, task files with head dropout 0): 2 ranks
draw their dropout masks from their own streams, so with dropout on the runs differ by design.
SMART's initial noise (σ = 1e-5) is also drawn per rank; its effect on the parameters is far
below the tolerance.
"""
from __future__ import annotations

import json
import os
from contextlib import nullcontext
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mtsmart.data.encoding import encode_split
from mtsmart.options.data import DataConfig
from mtsmart.data.loader import eval_batches
from mtsmart.data.readers import read_split
from mtsmart.components.distributed import merge_predictions, shard
from mtsmart.components.evaluate import metrics_of, predict
from mtsmart.tasks.spec import DEFAULT_TASKS_DIR, load_task_spec
from mtsmart.tasks.types import task_type_of

from conftest import last_step_checkpoint

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def no_dropout(tmp_path_factory, tiny_tokenizer) -> tuple[Path, Path]:
    """(a tiny BERT folder with dropout 0, a tasks folder whose rte/stsb heads have dropout 0)."""
    from mtsmart.model.multitask import tiny_bert_config
    from transformers import BertModel

    root = tmp_path_factory.mktemp("nodrop")
    config = tiny_bert_config(len(tiny_tokenizer), 32, 2, 2)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    torch.manual_seed(0)
    BertModel(config, add_pooling_layer=False).save_pretrained(root / "encoder")
    tasks = root / "tasks"
    tasks.mkdir()
    for name in ("rte", "stsb"):
        text = (DEFAULT_TASKS_DIR / f"{name}.yaml").read_text()
        (tasks / f"{name}.yaml").write_text(text.replace("dropout: 0.1", "dropout: 0.0"))
    return root / "encoder", tasks


def args_for(no_dropout: tuple[Path, Path], out: Path) -> list[str]:
    encoder, tasks = no_dropout
    return [
        f"model.name_or_path={encoder}", "model.tokenizer=minilm", f"tasks_dir={tasks}", "tasks=[rte,stsb]",
        "data.max_seq_len=40", "train.batch_size=8", "train.lr=1e-3", "train.max_steps=4", "train.warmup_ratio=0",
        "train.log_every_steps=2", "eval.max_examples=48", "eval.batch_size=16", f"output_dir={out}",
        "train.precision=fp32",  # equal within float32 rounding: not under bf16 autocast
    ]


def run(args: list[str], data_root: Path, nproc: int) -> None:
    env = {**os.environ, "MTSMART_DATA": str(data_root), "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        command = [sys.executable, "-m", "mtsmart", "train", *args]
    else:
        torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}"]
        command = [*torchrun, "-m", "mtsmart", "train", *args]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


def assert_close_tensors(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)


def test_two_ranks_equal_one_process_and_resume(tmp_path, data_root, no_dropout):
    one, two, resumed = tmp_path / "one", tmp_path / "two", tmp_path / "resumed"
    run(args_for(no_dropout, one), data_root, nproc=1)
    run(args_for(no_dropout, two), data_root, nproc=2)
    a, b = last_step_checkpoint(one), last_step_checkpoint(two)
    assert a.name == b.name == "step_00000004"
    weights_one, weights_two = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert_close_tensors(weights_one, weights_two, atol=1e-5)
    # They moved: the comparison is not of two untouched initialisations.
    start = load_file(str(no_dropout[0] / "model.safetensors"))
    assert not torch.allclose(weights_one["encoder.embeddings.word_embeddings.weight"], start["embeddings.word_embeddings.weight"])
    teacher_one = torch.load(a / "tensors.pt", weights_only=True)["bregman"]["teacher"]
    teacher_two = torch.load(b / "tensors.pt", weights_only=True)["bregman"]["teacher"]
    assert_close_tensors(teacher_one, teacher_two, atol=1e-5)
    state_one, state_two = (json.loads((c / "state.json").read_text()) for c in (a, b))
    assert state_one["sampler"] == state_two["sampler"]
    assert state_one["train_state"]["examples_seen"] == state_two["train_state"]["examples_seen"] == 4 * 8
    assert state_two["world_size"] == 2 and len(state_two["rng"]) == 2
    assert state_two["rng"][0] != state_two["rng"][1], "ranks must have their own RNG streams"
    final_one = json.loads((one / "results.json").read_text())["final"]
    final_two = json.loads((two / "results.json").read_text())["final"]
    assert final_one.keys() == final_two.keys()
    for key in final_one:
        assert final_two[key] == pytest.approx(final_one[key], abs=1e-3), key

    # DDP resume: 2 ranks stop at step 2, a new torchrun continues; bitwise the straight 2-rank run.
    run([*args_for(no_dropout, resumed), "train.stop_after_steps=2"], data_root, nproc=2)
    run([*args_for(no_dropout, resumed), "train.resume=auto"], data_root, nproc=2)
    c = last_step_checkpoint(resumed)
    weights_resumed = load_file(str(c / "model.safetensors"))
    for key in weights_two:
        assert torch.equal(weights_two[key], weights_resumed[key]), key
    assert json.loads((resumed / "results.json").read_text()) == json.loads((two / "results.json").read_text())


@pytest.mark.parametrize("task, split", [("rte", "dev"), ("qnli_ranking", "dev")])
def test_sharded_predictions_merge_to_the_one_process_ones(task, split, data_root, tiny_model_factory, tiny_tokenizer):
    """Every rank predicts a share of the batches; merged, they equal one process's predictions bitwise."""
    spec = load_task_spec(task)
    items = encode_split(spec, read_split(spec, split, DataConfig(root=str(data_root))), tiny_tokenizer, 32)[:60]
    batches = list(eval_batches(task, items, 7, tiny_tokenizer.pad_token_id))
    model = tiny_model_factory({task: spec})
    cpu = torch.device("cpu")
    whole = predict(model, batches, spec, cpu, nullcontext)
    parts = []
    for rank in range(3):
        mine = shard(batches, rank, 3)
        parts.append((sorted(i for b in mine for i in b.example_ids), predict(model, mine, spec, cpu, nullcontext)))
    merged = merge_predictions(parts, grouped=task_type_of(spec).grouped)
    np.testing.assert_array_equal(merged.outputs, whole.outputs)
    np.testing.assert_array_equal(merged.labels, whole.labels)
    if spec.type == "ranking":
        np.testing.assert_array_equal(merged.mask, whole.mask)
    assert metrics_of(spec, merged) == metrics_of(spec, whole)


def test_shard_splits_contiguously_and_completely():
    items = list(range(10))
    parts = [shard(items, r, 3) for r in range(3)]
    assert sum(parts, []) == items
    assert [len(p) for p in parts] == [3, 4, 3]
    assert shard([1], 1, 2) == [1] and shard([1], 0, 2) == []


def test_bench_memory_quick_runs():
    """scripts/bench_memory.py --quick: one fresh process per variant, a positive peak for each."""
    result = subprocess.run(
        [sys.executable, "scripts/bench_memory.py", "--quick"], cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    assert list(rows) == ["plain fine-tuning", "SMART (Rs)", "SMART + Bregman"]
    for row in rows.values():
        assert row["device"] == "cpu" and row["peak_mib"] >= row["before_mib"] > 0 and row["step_mib"] > 0
    assert "| SMART + Bregman |" in result.stdout
