"""Combinations refused before anything is loaded."""
import pytest

from mtsmart.regularisers.registry import build_adversary
from mtsmart.cli import main
from mtsmart.options.config import load_config
from mtsmart.tasks.spec import load_task_spec
from mtsmart.tasks.types import task_types_of


def refuse_up_front(cfg, specs):
    """What the trainer does first with a config: build its regulariser for the tasks' types."""
    return build_adversary(cfg.regulariser_options(), task_types_of(specs))


def test_kl_divergence_for_a_regression_task_is_refused_up_front():
    specs = {"rte": load_task_spec("rte"), "stsb": load_task_spec("stsb")}
    with pytest.raises(ValueError, match="smart.inner_div=kl does not fit regression"):
        refuse_up_front(load_config(None, ["smart.inner_div=kl"]), specs)
    refuse_up_front(load_config(None, ["smart.inner_div=kl", "tasks=[rte]"]), {"rte": specs["rte"]})
    refuse_up_front(load_config(None, ["smart.inner_div=kl", "smart.weight=0"]), specs)  # Rs off: nothing to check


def test_a_max_seq_len_beyond_the_encoders_positions_is_refused_before_training(train_tiny, tmp_path, data_root, capsys):
    """The tiny BERT has 512 positions: 2,048 tokens used to fail only in the first forward or the evaluation."""
    out = tmp_path / "run"
    assert main(["train", "model.name_or_path=tiny", "model.tiny_hidden_size=32", f"data.root={data_root}",
                 "tasks=[rte]", "data.max_seq_len=2048", "train.max_steps=2", f"output_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data.max_seq_len: 2048 is beyond the 512 positions" in err
    assert not (out / "checkpoints").exists()


def test_usable_positions_of_the_encoder_families():
    from types import SimpleNamespace

    from mtsmart.components.build import usable_positions

    assert usable_positions(SimpleNamespace(max_position_embeddings=512, model_type="bert")) == 512
    assert usable_positions(SimpleNamespace(max_position_embeddings=514, model_type="roberta", pad_token_id=1)) == 512
    assert usable_positions(SimpleNamespace(max_position_embeddings=512, model_type="deberta-v2",
                                            position_biased_input=False)) is None
