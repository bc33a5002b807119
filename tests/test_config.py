"""Config: YAML + dotted overrides, errors that name the key, round trip."""
from pathlib import Path

import pytest
import yaml

from mtsmart.options.config import Config, ConfigError, config_from_dict, config_to_dict, load_config, parse_override


def test_defaults_are_smart_with_bregman():
    cfg = Config()
    assert cfg.adversarial.method == "smart" and cfg.smart.weight > 0 and cfg.bregman.mu > 0


def test_overrides_parse_types():
    cfg = load_config(None, ["train.lr=3e-5", "tasks=[rte,stsb]", "smart.norm=l2", "train.max_steps=7",
                             "data.group_by_length=true", "model.tokenizer=null"])
    assert cfg.train.lr == pytest.approx(3e-5)
    assert cfg.tasks == ["rte", "stsb"]
    assert cfg.smart.norm == "l2"
    assert cfg.train.max_steps == 7
    assert cfg.data.group_by_length is True
    assert cfg.model.tokenizer is None


def test_int_accepted_for_float():
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0


@pytest.mark.parametrize(
    "override, names",
    [
        ("train.lrr=1", "train.lrr"),
        ("trian.lr=1", "trian"),
        ("train.lr=abc", "train.lr"),
        ("train.batch_size=1.5", "train.batch_size"),
        ("smart.norm=l3", "smart.norm"),
        ("data.group_by_length=3", "data.group_by_length"),
        ("data.train_fraction=2", "data.train_fraction"),
        ("tasks=rte", "tasks"),
        ("train=3", "train"),
    ],
)
def test_bad_override_names_the_key(override, names):
    with pytest.raises(ConfigError, match=names.replace(".", r"\.")):
        load_config(None, [override])


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"tasks": ["cola"], "train": {"lr": 1e-4, "epochs": 2}}))
    cfg = load_config(path, ["train.epochs=5"])
    assert cfg.tasks == ["cola"] and cfg.train.lr == 1e-4 and cfg.train.epochs == 5.0


def test_yaml_file_errors_name_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  nope: 1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*train\.nope"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_round_trip():
    cfg = load_config(None, ["smart.steps=2", "bregman.mu=0"])
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("train.lr")
    with pytest.raises(ConfigError, match="empty key"):
        parse_override("train..lr=1")


def test_data_root_defaults_to_env(monkeypatch):
    monkeypatch.setenv("MTSMART_DATA", "/some/where")
    assert Config().data.root == "/some/where"


def test_a_typo_on_the_command_line_is_named_as_an_override_not_as_the_files(tmp_path):
    path = tmp_path / "quick.yaml"
    path.write_text("tasks: [rte]\ntrain: {lr: 1.0e-4}\n")
    with pytest.raises(ConfigError, match=r"^override 'train\.lrr=1': unknown key train\.lrr"):
        load_config(path, ["train.lrr=1"])
    path.write_text("tasks: [rte]\ntrain: {lrr: 1.0e-4}\n")  # the same mistake in the file: the file is named
    with pytest.raises(ConfigError, match=rf"^{path}: unknown key train\.lrr"):
        load_config(path, ["train.lr=1e-3"])


SHIPPED_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "scripts" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda path: path.name)
def test_every_shipped_config_loads_and_names_tasks_that_exist(path):
    from mtsmart.tasks.spec import DEFAULT_TASKS_DIR, task_file

    cfg = load_config(str(path), [])
    assert cfg.tasks and all(task_file(task, DEFAULT_TASKS_DIR).is_file() for task in cfg.tasks)
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_the_quickstart_is_the_five_fair_glue_tasks_plain_and_balanced():
    """README's main job: CoLA back in the mix (issue 28), balanced as docs/results.md measured."""
    cfg = load_config(str(Path(__file__).resolve().parents[1] / "scripts" / "configs" / "quickstart.yaml"), [])
    assert sorted(cfg.tasks) == ["cola", "mrpc", "rte", "sst2", "stsb"]
    assert (cfg.mix.sampling, cfg.mix.cap, cfg.mix.regression_targets) == ("capped", 8551, "score_range")
    assert cfg.mix.loss_weights == {"stsb": 0.5}
