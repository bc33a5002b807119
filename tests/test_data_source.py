"""data.source=auto (the default): local files when they are there, else the Hugging Face hub;
with neither, one line naming both. The README's main command is run with no data folder."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mtsmart.options.data import DataConfig
from mtsmart.data.readers import DataError, read_split
from mtsmart.tasks.spec import load_task_spec

REPO = Path(__file__).resolve().parents[1]

# Stands in for the hub: `datasets.load_dataset("nyu-mll/glue", "rte", split=...)` reads the hub's
# own parquet files from the shared data folder instead of the network.
HUB_STUB = textwrap.dedent('''
    import os
    import datasets

    _real = datasets.load_dataset

    def load_dataset(path, name=None, split=None, **kwargs):
        if (path, name) == ("nyu-mll/glue", "rte"):
            folder = os.path.join(os.environ["HUB_STUB_PARQUET"], "hf", "glue", "rte")
            files = sorted(f for f in os.listdir(folder) if f.startswith(split + "-"))
            return _real("parquet", data_files={split: [os.path.join(folder, f) for f in files]}, split=split)
        raise ConnectionError(f"Couldn't reach {path!r} on the Hub (stub: offline)")

    datasets.load_dataset = load_dataset
''')


def stub_hub(monkeypatch, data_root: Path) -> None:
    import datasets

    real = datasets.load_dataset

    def load_dataset(path, name=None, split=None, **kwargs):
        if (path, name) != ("nyu-mll/glue", "rte"):
            raise ConnectionError(f"Couldn't reach {path!r} on the Hub (stub: offline)")
        files = sorted(str(f) for f in (data_root / "hf" / "glue" / "rte").glob(f"{split}-*.parquet"))
        return real("parquet", data_files={split: files}, split=split)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr("mtsmart.data.readers.hub_unreachable", lambda: None)  # the stub is the hub


def test_auto_is_the_default_and_reads_local_files_first(data_root, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("the hub was asked for local data"))
    assert DataConfig().source == "auto"
    spec = load_task_spec("rte")
    auto = read_split(spec, "dev", DataConfig(root=str(data_root)))
    assert auto == read_split(spec, "dev", DataConfig(root=str(data_root), source="local"))
    assert len(auto) == 277


def test_auto_falls_back_to_the_hub(tmp_path, data_root, monkeypatch):
    stub_hub(monkeypatch, data_root)
    spec = load_task_spec("rte")
    from_hub = read_split(spec, "train", DataConfig(root=str(tmp_path)))  # nothing local under tmp_path
    local = read_split(spec, "train", DataConfig(root=str(data_root), source="local"))
    assert [(e.text_a, e.text_b, e.label) for e in from_hub] == [(e.text_a, e.text_b, e.label) for e in local]


def test_auto_with_neither_names_both_places(tmp_path, monkeypatch, data_root):
    stub_hub(monkeypatch, data_root)
    with pytest.raises(DataError) as error:
        read_split(load_task_spec("mrpc"), "train", DataConfig(root=str(tmp_path)))
    message = str(error.value)
    assert "\n" not in message
    assert str(tmp_path / "glue" / "MRPC" / "train.tsv") in message and "$MTSMART_DATA" in message
    assert "nyu-mll/glue/mrpc:train" in message and str(tmp_path / "hf" / "glue" / "mrpc") in message


def readme_main_command(tmp_path: Path, data_root: Path, *overrides: str, hub_stub: bool) -> subprocess.CompletedProcess:
    """`scripts/train_mt.sh` as the README gives it, with no data folder ($MTSMART_DATA empty)."""
    empty = tmp_path / "no_data"
    empty.mkdir()
    env = {**os.environ, "MTSMART_DATA": str(empty), "MTSMART_VENV": sys.prefix, "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if hub_stub:
        stub_dir = tmp_path / "stub"
        stub_dir.mkdir()
        (stub_dir / "sitecustomize.py").write_text(HUB_STUB, encoding="utf-8")
        env["PYTHONPATH"] = os.pathsep.join([str(stub_dir), env.get("PYTHONPATH", "")])
        env["HUB_STUB_PARQUET"] = str(data_root)
    return subprocess.run(["bash", "scripts/train_mt.sh", *overrides], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def test_readme_main_command_without_data_offline_says_so_in_one_line(tmp_path, data_root):
    result = readme_main_command(tmp_path, data_root, f"output_dir={tmp_path / 'run'}", hub_stub=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("mtsmart: error: task 'cola', split 'train': no local file ")  # the quickstart's first task
    assert "$MTSMART_DATA" in last and "Hugging Face hub" in last
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.slow
def test_readme_main_command_reads_the_hub_when_there_is_no_data_folder(tmp_path, data_root):
    out = tmp_path / "run"
    result = readme_main_command(
        tmp_path, data_root, "tasks=[rte]", "mix.loss_weights={}", "model.name_or_path=tiny", "train.max_steps=3",
        "eval.max_examples=32", f"output_dir={out}", hub_stub=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "results.json").is_file()
