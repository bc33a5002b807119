"""Options built in Python (the Trainer integration's SmartConfig(...), BregmanConfig(...)) are
checked like YAML: a NaN, an infinity, a string or a fractional count is refused naming the key."""
from __future__ import annotations

import math

import pytest

from mtsmart.options.bregman import BregmanConfig
from mtsmart.options.config import EvalConfig, TrainConfig
from mtsmart.options.data import DataConfig
from mtsmart.options.mix import MixConfig
from mtsmart.options.regularisers import FGMConfig, PGDConfig, R3FConfig, RDropConfig
from mtsmart.options.smart import SmartConfig

CASES = [
    (SmartConfig, {"steps": 1.5}, "smart.steps: 1.5 must be an integer"),
    (SmartConfig, {"steps": True}, "smart.steps: True must be an integer"),
    (SmartConfig, {"weight": math.inf}, "smart.weight: inf must be a finite number"),
    (SmartConfig, {"step_size": "1e-3"}, "smart.step_size: '1e-3' must be a number"),
    (SmartConfig, {"strict": 1}, "smart.strict: 1 must be true or false"),
    (BregmanConfig, {"mu": math.inf}, "bregman.mu: inf must be a finite number"),
    (BregmanConfig, {"mu": math.nan}, "bregman.mu: nan must be a finite number"),
    (BregmanConfig, {"inner_steps": 2.0}, "bregman.inner_steps: 2.0 must be an integer"),
    (FGMConfig, {"epsilon": math.nan}, "fgm.epsilon: nan must be a finite number"),
    (PGDConfig, {"steps": 2.5}, "pgd.steps: 2.5 must be an integer"),
    (R3FConfig, {"weight": -math.inf}, "r3f.weight: -inf must be a finite number"),
    (RDropConfig, {"alpha": math.nan}, "rdrop.alpha: nan must be a finite number"),
    (MixConfig, {"temperature": math.inf}, "mix.temperature: inf must be a finite number"),
    (DataConfig, {"max_seq_len": 64.0}, "data.max_seq_len: 64.0 must be an integer"),
    (TrainConfig, {"lr": math.nan}, "train.lr: nan must be a finite number"),
    (TrainConfig, {"batch_size": 16.5}, "train.batch_size: 16.5 must be an integer"),
    (EvalConfig, {"every_steps": "10"}, "eval.every_steps: '10' must be an integer"),
]


@pytest.mark.parametrize("options,values,message", CASES, ids=[c[2].split(":")[0] + "=" + repr(list(c[1].values())[0]) for c in CASES])
def test_a_value_of_the_wrong_type_is_refused_naming_the_key(options, values, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        options(**values)


def test_an_integer_is_a_number_and_defaults_pass():
    assert SmartConfig(weight=3).weight == 3 and TrainConfig(epochs=2).epochs == 2
    for options in (SmartConfig, BregmanConfig, FGMConfig, PGDConfig, R3FConfig, RDropConfig, MixConfig, DataConfig,
                    TrainConfig, EvalConfig):
        options()
