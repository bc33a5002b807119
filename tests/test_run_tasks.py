"""A run keeps copies of its task files; evaluation reads those, not the task files of today."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from mtsmart.components.run_dir import load_run
from mtsmart.tasks.spec import DEFAULT_TASKS_DIR

REPO = Path(__file__).resolve().parents[1]


def test_run_reads_its_own_task_files(tmp_path, data_root):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    shutil.copy(DEFAULT_TASKS_DIR / "rte.yaml", tasks / "rte.yaml")
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "mtsmart", "train", "model.name_or_path=tiny", "model.tiny_hidden_size=32",
         "tasks=[rte]", f"tasks_dir={tasks}", "train.max_steps=2", "train.batch_size=4", "data.max_seq_len=32",
         "eval.max_examples=8", f"output_dir={out}"],
        cwd=REPO, env={**os.environ, "MTSMART_DATA": str(data_root)}, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "tasks" / "rte.yaml").read_text() == (tasks / "rte.yaml").read_text()
    # Later the user's task file changes its label order: the run still knows what it trained.
    text = (tasks / "rte.yaml").read_text()
    (tasks / "rte.yaml").write_text(text.replace("[entailment, not_entailment]", "[not_entailment, entailment]"))
    loaded = load_run(out, data_root=str(data_root))
    assert loaded.specs["rte"].labels == ("entailment", "not_entailment")


def test_task_gradient_norms_script_runs(tmp_path, train_tiny):
    run = train_tiny(tmp_path / "run", "tasks=[rte,stsb]", "train.max_steps=2", "eval.max_examples=8")
    script = Path(__file__).resolve().parents[1] / "scripts" / "task_gradient_norms.py"
    result = subprocess.run([sys.executable, str(script), "--run", str(run), "--batches", "1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "fresh encoder: rte " in result.stdout and "step_00000002" in result.stdout
