"""Combinations refused before anything is loaded."""
import pytest

from mtsmart.regularisers.registry import build_adversary
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
