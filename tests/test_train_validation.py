"""Combinations refused before anything is loaded."""
import pytest

from mtsmart.build import build_adversary
from mtsmart.config import load_config
from mtsmart.task_spec import load_task_spec


def test_kl_divergence_for_a_regression_task_is_refused_up_front():
    specs = {"rte": load_task_spec("rte"), "stsb": load_task_spec("stsb")}
    with pytest.raises(ValueError, match="smart.inner_div=kl does not fit regression"):
        build_adversary(load_config(None, ["smart.inner_div=kl"]), specs)
    build_adversary(load_config(None, ["smart.inner_div=kl", "tasks=[rte]"]), {"rte": specs["rte"]})
    build_adversary(load_config(None, ["smart.inner_div=kl", "smart.weight=0"]), specs)  # Rs off: nothing to check
