"""MT-DNN's two stages: `model.init_from` starts a run from a finished run's encoder (heads new or
carried, mismatches refused in one line), and `mtsmart finetune` fine-tunes each task of a
multi-task run from it, resumably, ending with one table."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mtsmart.cli import main
from mtsmart.components.build import build_model, build_tokenizer, load_specs
from mtsmart.components.warm_start import source_of, warm_start
from mtsmart.options.config import ConfigError, load_config
from conftest import TINY_TRAIN_ARGS, final_weights, last_step_checkpoint


@pytest.fixture(scope="module")
def source(tmp_path_factory, train_tiny) -> Path:
    out = tmp_path_factory.mktemp("stage1") / "mt"
    return train_tiny(out, "tasks=[rte,stsb]", "train.max_steps=3", "eval.max_examples=16")


def config(*overrides: str):
    return load_config(None, [*TINY_TRAIN_ARGS, *overrides])


@pytest.mark.parametrize("heads", ["new", "carry"])
def test_the_encoder_is_the_source_s_and_the_heads_new_or_carried(source, heads):
    cfg = config("tasks=[rte]", f"model.init_from={source}", f"model.init_heads={heads}")
    specs = load_specs(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, specs, build_tokenizer(cfg), torch.device("cpu"))
    fresh_head = {k: v.clone() for k, v in model.heads["rte"].state_dict().items()}
    origins = warm_start(model, cfg, source_of(cfg))
    saved = final_weights(source)
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, saved[f"encoder.{key}"]), key
    expected = {k: saved[f"heads.rte.{k}"] for k in fresh_head} if heads == "carry" else fresh_head
    assert all(torch.equal(model.heads["rte"].state_dict()[k], expected[k]) for k in expected)
    assert origins == {"rte": "carried" if heads == "carry" else "new"}


def test_a_task_the_source_did_not_train_gets_a_new_head(source):
    cfg = config("tasks=[rte,mrpc]", f"model.init_from={source}", "model.init_heads=carry")
    model = build_model(cfg, load_specs(cfg), build_tokenizer(cfg), torch.device("cpu"))
    assert warm_start(model, cfg, source_of(cfg)) == {"rte": "carried", "mrpc": "new"}


def test_a_checkpoint_folder_can_be_named_directly(source):
    checkpoint = last_step_checkpoint(source)
    assert source_of(config(f"model.init_from={checkpoint}")).checkpoint == checkpoint
    task_best = next((source / "checkpoints" / "best_per_task").glob("step_*"))  # two folders below the run
    assert source_of(config(f"model.init_from={task_best}")).run.resolve() == source.resolve()


@pytest.mark.parametrize("make, overrides, message", [
    (lambda tmp, src: tmp / "nothing", [], "is no finished run"),
    (lambda tmp, src: src, ["model.tiny_hidden_size=48", "model.tiny_heads=2"], "model.tiny_hidden_size=32"),
    (lambda tmp, src: src, ["model.name_or_path=minilm"], "model.name_or_path='tiny'"),
])
def test_a_source_that_does_not_fit_is_refused_in_one_line(source, tmp_path, make, overrides, message):
    with pytest.raises(ConfigError, match=message) as caught:
        source_of(config(f"model.init_from={make(tmp_path, source)}", *overrides))
    assert "\n" not in str(caught.value)


def test_a_carried_head_of_another_shape_is_refused(source, tmp_path):
    tasks = tmp_path / "tasks"
    shutil.copytree(Path(__file__).resolve().parents[1] / "tasks", tasks)
    text = (tasks / "rte.yaml").read_text().replace("labels: [entailment, not_entailment]", "labels: [entailment, not_entailment, neutral]")
    (tasks / "rte.yaml").write_text(text)
    cfg = config("tasks=[rte]", f"tasks_dir={tasks}", f"model.init_from={source}", "model.init_heads=carry")
    model = build_model(cfg, load_specs(cfg), build_tokenizer(cfg), torch.device("cpu"))
    with pytest.raises(ConfigError, match="task rte's head"):
        warm_start(model, cfg, source_of(cfg))


def test_carry_without_a_source_is_refused():
    with pytest.raises(ConfigError, match="model.init_heads=carry needs model.init_from"):
        config("model.init_heads=carry")


def test_a_bad_source_stops_training_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY_TRAIN_ARGS, f"output_dir={out}", f"model.init_from={tmp_path / 'nothing'}"]) == 2
    assert "model.init_from" in capsys.readouterr().err and not out.exists()


def test_finetune_runs_every_task_resumably_and_ends_with_one_table(source, tmp_path, capsys, data_root):
    out = tmp_path / "stage2"
    args = ["finetune", "--from", str(source), "--out", str(out), f"data.root={data_root}", "train.max_steps=2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "finetune_results.json").read_text())
    assert set(report["tasks"]) == {"rte", "stsb"}
    for task in ("rte", "stsb"):
        info = json.loads((out / task / "run_info.json").read_text())
        assert info["init_from"]["heads"] == {task: "carried"}
        final = json.loads((out / task / "results.json").read_text())["final"]
        assert report["tasks"][task]["fine_tuned"] == {k.split("/")[1]: 100 * v for k, v in final.items() if k.startswith(task)}
    assert "multi-task" in printed and "fine-tuned" in printed
    assert main(args) == 0  # a second call trains nothing
    assert "rte: done already" in capsys.readouterr().out


def test_finetune_refuses_an_unknown_task_and_an_unfinished_run_in_one_line(source, tmp_path, capsys):
    assert main(["finetune", "--from", str(source), "--out", str(tmp_path / "o"), "--tasks", "cola"]) == 2
    err = capsys.readouterr().err
    assert "--tasks: 'cola'" in err and err.count("\n") == 1
    unfinished = tmp_path / "unfinished"
    shutil.copytree(source, unfinished)
    (unfinished / "results.json").unlink()
    assert main(["finetune", "--from", str(unfinished), "--out", str(tmp_path / "o2")]) == 2
    assert "has not finished" in capsys.readouterr().err
