"""scripts/make_table.py against hand-computed means and stds; scripts/ablate.sh end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import make_table  # noqa: E402


def write_run(root: Path, variant: str, seed: int, scores: dict) -> None:
    path = root / variant / f"seed_{seed}" / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"final": scores, "best": {**scores, "step": 3}}))


def test_table_by_hand(tmp_path):
    write_run(tmp_path, "smart", 1, {"rte/accuracy": 0.60, "avg": 0.60})
    write_run(tmp_path, "smart", 2, {"rte/accuracy": 0.70, "avg": 0.70})
    write_run(tmp_path, "plain", 1, {"rte/accuracy": 0.50, "avg": 0.50})
    write_run(tmp_path, "plain", 2, {"rte/accuracy": 0.54, "avg": 0.54})
    text = make_table.table(make_table.collect(tmp_path, "final"))
    lines = text.splitlines()
    assert lines[0] == "| variant | seeds | rte/accuracy | avg |"
    # plain: mean 52.00, sample std sqrt(((50-52)^2 + (54-52)^2) / 1) = 2.83; smart: 65.00 ± 7.07
    assert lines[2] == "| plain | 2 | 52.00 ± 2.83 | 52.00 ± 2.83 |"
    assert lines[3] == "| smart | 2 | 65.00 ± 7.07 | 65.00 ± 7.07 |"


def test_ablate_script_runs_every_variant(tmp_path, data_root):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "tasks": ["rte"], "model": {"name_or_path": "tiny", "tiny_hidden_size": 32},
        "data": {"max_seq_len": 32, "train_fraction": 0.02},
        "train": {"batch_size": 8, "max_steps": 2, "log_every_steps": 1}, "eval": {"max_examples": 16},
    }))
    env = {**os.environ, "MTSMART_DATA": str(data_root), "MTSMART_VENV": sys.prefix, "SEEDS": "1",
           "METHODS": "fgm", "ABLATION_DIR": str(tmp_path / "abl")}
    result = subprocess.run(["bash", "scripts/ablate.sh", str(config)], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for variant, method, mu in [("plain", "none", 0.0), ("rs_only", "smart", 0.0), ("bregman_only", "none", 1.0),
                                ("smart", "smart", 1.0), ("fgm", "fgm", 0.0)]:
        saved = yaml.safe_load((tmp_path / "abl" / variant / "seed_1" / "config.yaml").read_text())
        assert saved["adversarial"]["method"] == method and saved["bregman"]["mu"] == mu, variant
        assert saved["train"]["seed"] == 1
    assert "| smart | 1 |" in result.stdout and "| fgm | 1 |" in result.stdout
