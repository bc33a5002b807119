"""A key given twice in any YAML mtsmart reads (config, task, study files, overrides) is refused in one
line naming the file, the key and both lines; anchors and merge keys still work."""
from __future__ import annotations

import pytest

from mtsmart.cli import main
from mtsmart.options.config import ConfigError, load_config
from mtsmart.recipes.study.spec import StudyError, load_study
from mtsmart.support.yaml_files import DuplicateKeyError, load_yaml
from mtsmart.tasks.spec import TaskSpecError, load_task_spec


def test_a_key_given_twice_names_both_lines():
    with pytest.raises(DuplicateKeyError, match=r"key 'train' is given twice in one mapping, at lines 1 and 3"):
        load_yaml("train: {max_steps: 4}\ntasks: [rte]\ntrain: {max_steps: 774}\n")
    with pytest.raises(DuplicateKeyError, match="'lr'.*lines 2 and 3"):
        load_yaml("train:\n  lr: 1.0\n  lr: 2.0\n")


def test_equal_keys_in_different_mappings_and_merge_keys_are_fine():
    data = load_yaml("a: &base {x: 1, y: 2}\nb: {<<: *base, y: 3}\nc: {x: 1}\n")
    assert data == {"a": {"x": 1, "y": 2}, "b": {"x": 1, "y": 3}, "c": {"x": 1}}


def test_a_config_file_with_two_train_blocks_is_refused_in_one_line(tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text("train: {max_steps: 4}\ntasks: [rte]\ntrain: {max_steps: 774}\n")
    with pytest.raises(ConfigError, match=f"{path}: not valid YAML: key 'train' is given twice"):
        load_config(path)
    assert main(["train", str(path), f"output_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lines 1 and 3" in err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_an_override_with_a_key_twice_is_refused():
    with pytest.raises(ConfigError, match=r"override .*mix.loss_weights.*'stsb' is given twice"):
        load_config(overrides=["mix.loss_weights={stsb: 0.5, stsb: 2}"])


def test_a_task_file_with_a_key_twice_is_refused(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text("name: toy\ntype: classification\nlabels: [a, b]\ntype: regression\n")
    with pytest.raises(TaskSpecError, match="key 'type' is given twice.*lines 2 and 4"):
        load_task_spec(str(path))


def test_a_study_with_a_variant_listed_twice_is_refused(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("name: s\nmetric: avg\nbaseline: plain\nseeds: {report: [1]}\nsettings: {rte: {tasks: [rte]}}\n"
                    "variants:\n  plain: {}\n  rdrop: {adversarial: {method: rdrop}}\n  rdrop: {adversarial: {method: r3f}}\n")
    with pytest.raises(StudyError, match="key 'rdrop' is given twice.*lines 8 and 9"):
        load_study(path)
