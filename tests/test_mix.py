"""Multi-task balancing (docs/method.md "Balancing tasks"), each option against its formula by hand:
sampling with a cap and annealed sampling, task loss weights (task file, per run, Muppet's
1/log C), regression targets standardised for the loss with predictions in the task's units."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtsmart.components.build import resolve_target_scaling, task_loss_weights
from mtsmart.components.sampler import TaskSampler, task_probabilities
from mtsmart.options.config import ConfigError, load_config
from mtsmart.options.mix import MixConfig
from mtsmart.tasks.spec import TaskSpec, TaskSpecError, parse_task_spec
from mtsmart.tasks.types import task_type_of

CLS2 = TaskSpec(name="rte", type="classification", metrics=("accuracy",), labels=("a", "b"))
CLS3 = TaskSpec(name="mnli", type="classification", metrics=("accuracy",), labels=("a", "b", "c"), loss_weight=2.0)
REG = TaskSpec(name="stsb", type="regression", metrics=("pearson",), score_range=(0.0, 5.0))


# --------------------------------------------------------------------------- sampling


def normalised(weights):
    return [w / sum(weights) for w in weights]


def test_capped_is_examples_proportional_up_to_the_cap_then_a_temperature():
    sizes = [500, 3000, 67000]
    mix = MixConfig(sampling="capped", cap=4000, temperature=1.0)
    assert task_probabilities(sizes, mix) == pytest.approx(normalised([500, 3000, 4000]))
    mix = MixConfig(sampling="capped", cap=4000, temperature=2.0)
    assert task_probabilities(sizes, mix) == pytest.approx(normalised([500 ** 0.5, 3000 ** 0.5, 4000 ** 0.5]))


def test_annealed_moves_the_exponent_from_one_to_anneal_to():
    sizes = [100, 900]
    mix = MixConfig(sampling="annealed", anneal_to=0.2)
    assert task_probabilities(sizes, mix, progress=0.0) == pytest.approx(normalised([100, 900]))
    assert task_probabilities(sizes, mix, progress=1.0) == pytest.approx(normalised([100 ** 0.2, 900 ** 0.2]))
    alpha = 1 - 0.8 * 0.25
    assert task_probabilities(sizes, mix, progress=0.25) == pytest.approx(normalised([100 ** alpha, 900 ** alpha]))
    assert task_probabilities(sizes, MixConfig(sampling="annealed", anneal_to=0.0), progress=1.0) == pytest.approx([0.5, 0.5])


def test_the_earlier_samplings_keep_their_formulas():
    assert task_probabilities([100, 300], MixConfig()) == pytest.approx([0.25, 0.75])
    assert task_probabilities([100, 400], MixConfig(sampling="temperature", temperature=2.0)) == pytest.approx([1 / 3, 2 / 3])
    assert task_probabilities([1, 1000], MixConfig(sampling="uniform")) == pytest.approx([0.5, 0.5])


def test_the_annealed_sampler_follows_the_step_and_resumes_exactly():
    mix = MixConfig(sampling="annealed", anneal_to=0.0)
    straight = TaskSampler(["a", "b"], [10, 990], mix, total_steps=2001, seed=5)
    draws = [straight.next_task(step) for step in range(2001)]
    early, late = draws[:400], draws[-400:]
    assert early.count("a") / 400 < 0.05  # p_a = 1% at first
    assert late.count("a") / 400 == pytest.approx(0.5, abs=0.1)  # uniform at the end
    part = TaskSampler(["a", "b"], [10, 990], mix, total_steps=2001, seed=5)
    head = [part.next_task(step) for step in range(700)]
    resumed = TaskSampler(["a", "b"], [10, 990], mix, total_steps=2001, seed=99)
    resumed.load_state_dict(part.state_dict())
    assert head + [resumed.next_task(step) for step in range(700, 2001)] == draws


@pytest.mark.parametrize("override, key", [
    ("mix.sampling=mixed", "mix.sampling"), ("mix.cap=0", "mix.cap"), ("mix.cap=-5", "mix.cap"),
    ("mix.temperature=0", "mix.temperature"), ("mix.anneal_to=1.5", "mix.anneal_to"),
    ("mix.loss_weights={rte: -1}", "mix.loss_weights.rte"), ("mix.loss_weights={rte: .nan}", "mix.loss_weights.rte"),
    ("mix.loss_weights={rte: 0}", "mix.loss_weights.rte"), ("mix.loss_weights={cola: 2}", "mix.loss_weights"),
    ("mix.loss_scale=log", "mix.loss_scale"), ("mix.regression_targets=zscore", "mix.regression_targets"),
    ("mix.loss_weights=[rte]", "mix.loss_weights"),
])
def test_bad_balancing_values_are_refused_in_one_line_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as caught:
        load_config(None, ["tasks=[rte,stsb]", override])
    assert "\n" not in str(caught.value)


def test_the_old_sampling_keys_name_their_new_place():
    with pytest.raises(ConfigError, match=r"data\.sampling is now called mix\.sampling"):
        load_config(None, ["data.sampling=uniform"])
    with pytest.raises(ConfigError, match=r"data\.temperature is now called mix\.temperature"):
        load_config(None, ["data.temperature=3"])


# --------------------------------------------------------------------------- loss weights


def test_task_weights_by_hand():
    specs = {"rte": CLS2, "mnli": CLS3, "stsb": REG}
    assert task_loss_weights(specs, MixConfig()) == {"rte": 1.0, "mnli": 2.0, "stsb": 1.0}
    assert task_loss_weights(specs, MixConfig(loss_weights={"stsb": 0.25, "mnli": 0.5})) == {"rte": 1.0, "mnli": 0.5, "stsb": 0.25}
    scaled = task_loss_weights(specs, MixConfig(loss_scale="log_classes"))
    assert scaled == pytest.approx({"rte": 1 / math.log(2), "mnli": 2.0 / math.log(3), "stsb": 1.0})


def test_a_task_file_weight_is_a_positive_number(tmp_path):
    base = {"name": "t", "type": "classification", "metrics": ["accuracy"], "labels": ["0", "1"]}
    assert parse_task_spec({**base, "loss_weight": 0.5}, tmp_path / "t.yaml").loss_weight == 0.5
    for bad in (0, -1, "heavy", float("inf")):
        with pytest.raises(TaskSpecError, match="loss_weight"):
            parse_task_spec({**base, "loss_weight": bad}, tmp_path / "t.yaml")


def test_the_task_weight_scales_every_term_of_the_objective():
    """w_task · (L + μ·D_Breg + term): the gradient of a weighted task is w × the unweighted one."""
    from mtsmart.regularisers.base import Terms
    from mtsmart.step.objective import Objective

    seen = []
    objective = Objective(regulariser=None, bregman=None, backward=seen.append, autocast=None, task_weights={"rte": 0.5})
    a, b, c = (torch.tensor(v, requires_grad=True) for v in (1.0, 2.0, 4.0))
    objective.backward(Terms(task_loss=a, bregman=b, regulariser=c), "rte")
    objective.backward(Terms(task_loss=a, bregman=b, regulariser=c), "stsb")
    objective.backward(Terms(), "rte")  # nothing to back-propagate: no call
    assert [float(t.detach()) for t in seen] == [3.5, 7.0]
    seen[0].backward()
    assert (a.grad, b.grad, c.grad) == (0.5, 0.5, 0.5)


# --------------------------------------------------------------------------- regression targets


def test_score_range_standardisation_by_hand():
    spec = resolve_target_scaling(REG, "score_range", np.array([1.0, 2.0]))
    assert (spec.target_center, spec.target_scale) == (2.5, 2.5)
    kind = task_type_of(spec)
    assert kind.loss_target(np.array([0.0, 2.5, 5.0]), spec) == pytest.approx([-1.0, 0.0, 1.0])
    assert kind.to_task_units(np.array([-1.0, 0.0, 1.0]), spec) == pytest.approx([0.0, 2.5, 5.0])


def test_train_stats_standardisation_by_hand():
    labels = np.array([0.0, 1.0, 2.0, 5.0])
    spec = resolve_target_scaling(REG, "train_stats", labels)
    assert spec.target_center == pytest.approx(2.0) and spec.target_scale == pytest.approx(math.sqrt(3.5))
    standardised = task_type_of(spec).loss_target(labels, spec)
    assert standardised.mean() == pytest.approx(0.0) and standardised.std() == pytest.approx(1.0)


def test_raw_targets_and_classification_tasks_are_left_alone():
    assert resolve_target_scaling(REG, "raw", np.array([1.0, 2.0])) is REG
    assert resolve_target_scaling(CLS2, "score_range", np.array([0, 1])) is CLS2
    no_range = TaskSpec(name="r", type="regression", metrics=("pearson",))
    with pytest.raises(ValueError, match="score_range"):
        resolve_target_scaling(no_range, "score_range", np.array([1.0]))
    with pytest.raises(ValueError, match="spread"):
        resolve_target_scaling(REG, "train_stats", np.array([3.0, 3.0]))


# --------------------------------------------------------------------------- end to end


def test_a_balanced_run_trains_evaluates_predicts_and_exports_in_the_task_s_units(tmp_path, train_tiny, capsys):
    import json

    from transformers import AutoModelForSequenceClassification

    from mtsmart.cli import main
    from mtsmart.tasks.spec import load_task_spec

    out = train_tiny(tmp_path / "run", "tasks=[rte,stsb]", "train.max_steps=4", "eval.max_examples=16",
                     "mix.regression_targets=score_range", "mix.sampling=capped", "mix.cap=1000",
                     "mix.loss_scale=log_classes", "mix.loss_weights={stsb: 0.5}")
    saved = load_task_spec(str(out / "tasks" / "stsb.yaml"))
    assert (saved.target_center, saved.target_scale) == (2.5, 2.5)
    info = json.loads((out / "run_info.json").read_text())
    assert info["task_loss_weights"] == pytest.approx({"rte": 1 / math.log(2), "stsb": 0.5})
    assert info["task_probabilities_at_start"]["rte"] == pytest.approx(0.5)  # both capped at 1,000
    capsys.readouterr()
    assert main(["evaluate", "--run", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"] == json.loads((out / "results.json").read_text())["final"]
    assert main(["export", "--run", str(out), "--task", "stsb", "--out", str(tmp_path / "stsb")]) == 0
    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "stsb")
    # A head that outputs f ≈ 0 in the loss's units scores ≈ 2.5, the middle of [0, 5], in the task's.
    ids = torch.randint(1000, 2000, (3, 12))
    with torch.no_grad():
        scores = exported(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.squeeze(-1)
    assert bool(((scores > 0.5) & (scores < 4.5)).all())
