"""The CUDA paths (issue 29 item 3): training in bf16 and fp16 on a GPU, resume there, and the same
weights evaluated alike on the GPU and the CPU. Skipped where torch sees no CUDA device; run on a
GPU machine with `bash scripts/device_check.sh` (docs/performance.md, "On a GPU")."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_TRAIN_ARGS, final_weights, last_step_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

REPO = Path(__file__).resolve().parents[1]
# SMART as released and the mean teacher on one task of each of two types.
TINY = [*TINY_TRAIN_ARGS, "tasks=[rte,stsb]", "train.max_steps=8", "train.log_every_steps=2", "eval.max_examples=64",
        "adversarial.method=smart", "bregman.mu=0.1"]


def mtsmart(args: list[str], data_root: Path, **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "mtsmart", *args], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "MTSMART_DATA": str(data_root), **env}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def run_info(run: Path) -> dict:
    return json.loads((run / "run_info.json").read_text())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_smart_run_trains_on_the_gpu_and_resumes_there(tmp_path, data_root, precision):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    mtsmart(["train", *TINY, f"train.precision={precision}", f"output_dir={straight}"], data_root)
    assert run_info(straight)["cuda"] is True
    results = json.loads((straight / "results.json").read_text())
    assert all(torch.isfinite(torch.tensor(v)) for v in results["final"].values())
    mtsmart(["train", *TINY, f"train.precision={precision}", f"output_dir={resumed}", "train.stop_after_steps=4"],
            data_root)
    mtsmart(["train", *TINY, f"train.precision={precision}", f"output_dir={resumed}", "train.resume=auto"], data_root)
    # CUDA kernels need not be bit-reproducible (atomic adds in the embedding's backward), so a
    # resumed run ends close to, not identical with, the straight one; a resume that lost state
    # (optimizer moments, the teacher, the loss scale, the RNG) would move the weights far more.
    a, b = final_weights(straight), final_weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), rtol=1e-3, atol=1e-4), key
    if precision == "fp16":
        tensors = torch.load(last_step_checkpoint(resumed) / "tensors.pt", map_location="cpu", weights_only=False)
        assert tensors["scaler"]["scale"] > 0  # the loss scale travels with the checkpoint


def test_the_same_weights_evaluate_alike_on_the_gpu_and_the_cpu(tmp_path, data_root):
    run = tmp_path / "run"
    mtsmart(["train", *TINY, "train.precision=fp32", f"output_dir={run}"], data_root)
    evaluate = ["evaluate", "--run", str(run), "--checkpoint", "last", "--json"]
    on_gpu = json.loads(mtsmart(evaluate, data_root).stdout)["results"]
    on_cpu = json.loads(mtsmart(evaluate, data_root, CUDA_VISIBLE_DEVICES="").stdout)["results"]
    assert on_gpu.keys() == on_cpu.keys()
    for key in on_gpu:
        assert on_gpu[key] == pytest.approx(on_cpu[key], abs=2e-3), key


def test_packed_masks_train_on_the_gpu_with_a_note(tmp_path, data_root):
    out = tmp_path / "packed"
    result = mtsmart(["train", *TINY, "train.precision=bf16", "model.dropout_masks=packed", f"output_dir={out}"],
                     data_root)
    assert "model.dropout_masks=packed is for CPUs" in result.stdout
    assert (out / "results.json").is_file()


def test_the_default_masks_on_the_gpu_are_torchs(tmp_path, data_root):
    out = tmp_path / "auto"
    result = mtsmart(["train", *TINY, "train.precision=bf16", f"output_dir={out}"], data_root)
    assert "dropout masks: torch (auto: torch's fused kernels on cuda)" in result.stdout
    assert "dropout_masks: torch" in (out / "config.yaml").read_text()
