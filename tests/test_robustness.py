"""Robustness measurement: the attack stays in its ball and beats random noise of the same radius."""
from __future__ import annotations

import json
import math

import pytest
import torch

from mtsmart.cli import main
from mtsmart.data.encoding import collate, encode_split
from mtsmart.data.readers import read_split
from mtsmart.options.data import DataConfig
from mtsmart.arithmetic.divergence import squared_error, symmetric_kl
from mtsmart.components.evaluate import EvalSet
from mtsmart.model.multitask import output_fn
from mtsmart.arithmetic.perturbation import token_mask
from mtsmart.components.robustness import measure, per_row, pgd_attack, random_vertex, rows_of_sequences
from mtsmart.tasks.spec import load_task_spec

RADII = (1e-3, 1e-2, 5e-2)



@pytest.fixture(scope="module")
def specs():
    return {name: load_task_spec(name) for name in ("rte", "stsb")}


@pytest.fixture(scope="module")
def batches(specs, data_root, tiny_tokenizer):
    """One dev batch of 12 examples per task (sentence pairs of different lengths: padding)."""
    data = DataConfig(root=str(data_root))
    out = {}
    for name, spec in specs.items():
        items = encode_split(spec, read_split(spec, "dev", data)[:12], tiny_tokenizer, 48)
        out[name] = collate(name, items, tiny_tokenizer.pad_token_id)
    return out


@pytest.fixture
def model(tiny_model_factory, specs):
    return tiny_model_factory(specs, seed=3).eval()


def smoothness_objective(model, batch):
    f = output_fn(model, batch)
    x = model.word_embeddings(batch.input_ids).detach()
    with torch.no_grad():
        clean = f(x)
    div = symmetric_kl if batch.task == "rte" else squared_error
    return x, (lambda delta: per_row(div, f(x + delta), clean))


@pytest.mark.parametrize("task", ["rte", "stsb"])
def test_per_row_values_average_to_the_batch_divergence(model, batches, task):
    x, objective = smoothness_objective(model, batches[task])
    delta = 0.05 * torch.randn_like(x) * token_mask(batches[task].attention_mask, x.dtype)
    f = output_fn(model, batches[task])
    div = symmetric_kl if task == "rte" else squared_error
    with torch.no_grad():
        torch.testing.assert_close(objective(delta).mean(), div(f(x + delta), f(x)))


@pytest.mark.parametrize("task", ["rte", "stsb"])
@pytest.mark.parametrize("epsilon", RADII)
def test_attack_stays_in_the_ball_and_beats_random_noise(model, batches, task, epsilon):
    batch = batches[task]
    x, objective = smoothness_objective(model, batch)
    mask = token_mask(batch.attention_mask, x.dtype)
    generator = torch.Generator().manual_seed(0)
    delta, values = pgd_attack(objective, x, mask, rows_of_sequences(batch), epsilon, 8, generator)
    assert delta.abs().max() <= epsilon * (1 + 1e-6)  # ‖δ_token‖∞ ≤ ε
    assert torch.all(delta * (1 - mask) == 0)  # padding untouched
    with torch.no_grad():
        torch.testing.assert_close(objective(delta), values)  # the reported values are δ's
        random = torch.stack([objective(random_vertex(x, epsilon, mask, generator)) for _ in range(5)]).mean(0)
    assert values.mean() > 2 * random.mean()
    assert torch.all(values >= random * 0.999)


def test_the_loss_attack_raises_the_task_loss(model, batches):
    batch = batches["rte"]
    f = output_fn(model, batch)
    x = model.word_embeddings(batch.input_ids).detach()
    mask = token_mask(batch.attention_mask, x.dtype)

    def loss(delta):
        return per_row(torch.nn.functional.cross_entropy, f(x + delta), batch.labels)

    generator = torch.Generator().manual_seed(1)
    delta, values = pgd_attack(loss, x, mask, rows_of_sequences(batch), 5e-2, 8, generator)
    with torch.no_grad():
        clean = loss(torch.zeros_like(x))
    assert torch.all(values >= clean)
    assert values.mean() > clean.mean()


def test_measure_reports_every_radius(model, batches, specs):
    eval_sets = [EvalSet(name, specs[name], [batch]) for name, batch in batches.items()]
    results = measure(model, eval_sets, radii=(1e-3, 5e-2), steps=4, device=torch.device("cpu"))
    for name, result in results.items():
        assert result.examples == 12
        assert set(result.radii) == {1e-3, 5e-2}
        for eps, r in result.radii.items():
            assert r.attack > r.random > 0
            assert r.attack_delta_max <= eps * (1 + 1e-6)
        assert result.radii[5e-2].attack > result.radii[1e-3].attack  # a larger ball, a larger worst case
    assert all(p.requires_grad for p in model.parameters())  # restored after measuring


def test_confidence_is_the_mean_probability_of_the_prediction_by_hand(model, batches, specs):
    """Classification: the mean over examples of max_c softmax(logits)_c on the clean input,
    computed here from the logits by hand; regression has no distribution, so None."""
    eval_sets = [EvalSet(name, specs[name], [batch]) for name, batch in batches.items()]
    results = measure(model, eval_sets, radii=(1e-3,), steps=1, device=torch.device("cpu"))
    batch = batches["rte"]
    with torch.no_grad():
        logits = output_fn(model, batch)(model.word_embeddings(batch.input_ids))
    exp = [[math.exp(v) for v in row] for row in logits.tolist()]
    by_hand = sum(max(row) / sum(row) for row in exp) / len(exp)
    assert results["rte"].confidence == pytest.approx(by_hand, rel=1e-5)
    assert 1 / logits.shape[1] <= results["rte"].confidence <= 1
    assert results["stsb"].confidence is None


def test_command_writes_robustness_json(tmp_path, data_root, capsys):
    run = tmp_path / "run"
    args = ["model.name_or_path=tiny", "model.tiny_hidden_size=32", "data.max_seq_len=48", "train.batch_size=8",
            f"data.root={data_root}", "tasks=[rte]", "train.max_steps=2", "eval.max_examples=8", "train.precision=fp32", f"output_dir={run}"]
    assert main(["train", *args]) == 0
    capsys.readouterr()
    assert main(["robustness", "--run", str(run), "--radii", "1e-3,2e-2", "--attack-steps", "3"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((run / "robustness.json").read_text())
    assert report["attack_steps"] == 3 and report["norm"] == "inf"
    rte = report["results"]["rte"]
    assert rte["examples"] == 8 and set(rte["radii"]) == {"0.001", "0.02"}
    for eps, r in rte["radii"].items():
        assert r["attack"] > r["random"] and r["attack_delta_max"] <= float(eps) * (1 + 1e-6)
        assert set(r["robust"]) == {"accuracy"}
    assert "ℓs attack" in printed and "rte" in printed
    assert 0.5 <= rte["confidence"] <= 1 and f"mean confidence {rte['confidence']:.4f}" in printed
    assert report["precision"] == "fp32"  # by default the run's own
    # --precision: the same checkpoint measured in bf16 and in fp32 differ, and fp32 equals measure()
    # called by hand without autocast (the reference).
    from mtsmart.components.robustness import measure
    from mtsmart.components.run_dir import load_run, run_eval_sets
    for precision in ("bf16", "fp32"):
        assert main(["robustness", "--run", str(run), "--radii", "2e-2", "--attack-steps", "3", "--precision", precision]) == 0
        measured = json.loads((run / "robustness.json").read_text())
        assert measured["precision"] == precision and f"3 steps; {precision}" in capsys.readouterr().out
        if precision == "bf16":
            in_bf16 = measured["results"]["rte"]["radii"]["0.02"]["attack"]
    loaded = load_run(run)
    by_hand = measure(loaded.model, run_eval_sets(loaded, "dev", None)[0], [2e-2], 3, loaded.device, seed=0)["rte"]
    assert measured["results"]["rte"]["radii"]["0.02"]["attack"] == pytest.approx(by_hand.radii[2e-2].attack, rel=1e-6)
    assert in_bf16 != pytest.approx(by_hand.radii[2e-2].attack, rel=1e-6)
    if not torch.cuda.is_available():
        capsys.readouterr()
        assert main(["robustness", "--run", str(run), "--precision", "fp16"]) == 2
        assert "--precision fp16 needs a CUDA device" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:  # argparse rejects it: exit status 2
        main(["robustness", "--run", str(run), "--radii", "-1"])
    assert exited.value.code == 2
    assert "give positive numbers" in capsys.readouterr().err
