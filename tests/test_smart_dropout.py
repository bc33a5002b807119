"""smart.dropout: the perturbed forwards replay the clean forward's dropout masks (shared) or not."""
import pytest
import torch

from mtsmart.arithmetic import rng
from mtsmart.tasks.batch import Batch
from mtsmart.model.multitask import task_output
from mtsmart.regularisers.smart_method import SmartRegularizer
from mtsmart.options.smart import SmartConfig
from mtsmart.tasks.types import TASK_TYPES
from mtsmart.tasks.spec import TaskSpec

SPEC = TaskSpec(name="a", type="classification", metrics=("accuracy",), labels=("x", "y"), dropout=0.3)


@pytest.fixture
def setup(tiny_model_factory, tiny_tokenizer):
    model = tiny_model_factory([SPEC]).train()
    encoded = tiny_tokenizer(["hello there friend", "a b c d e f g"], padding=True, return_tensors="pt")
    return model, Batch(task="a", **encoded)


def rs_of(model, batch, **options):
    regularizer = SmartRegularizer(SmartConfig(**options))
    embeds = model.word_embeddings(batch.input_ids)
    state = rng.snapshot(embeds.device)
    clean = task_output(model, batch, inputs_embeds=embeds)
    return regularizer.regularize(model, batch, embeds, clean, TASK_TYPES["classification"], clean_rng=state).rs


def test_shared_dropout_makes_rs_vanish_without_perturbation(setup):
    model, batch = setup
    # ε = 0 and σ = 0: x̃ = x. With the clean forward's masks replayed f(x̃) = f(x) exactly.
    assert rs_of(model, batch, epsilon=0.0, init_scale=0.0, dropout="shared") == 0.0
    # With fresh masks the "regulariser" is the divergence between two dropout draws.
    assert rs_of(model, batch, epsilon=0.0, init_scale=0.0, dropout="independent") > 1e-4


def test_shared_dropout_does_not_disturb_the_global_random_stream(setup):
    model, batch = setup
    torch.manual_seed(3)
    rs_of(model, batch, dropout="shared")
    after_shared = torch.rand(4)
    torch.manual_seed(3)
    regularizer = SmartRegularizer(SmartConfig(weight=0.0))  # no perturbed forwards at all
    embeds = model.word_embeddings(batch.input_ids)
    task_output(model, batch, inputs_embeds=embeds)
    torch.randn(embeds.shape)  # the initial noise ν that the SMART call above drew
    regularizer.regularize(model, batch, embeds, None, TASK_TYPES["classification"])
    assert torch.equal(after_shared, torch.rand(4))


def test_shared_needs_the_snapshot(setup):
    model, batch = setup
    embeds = model.word_embeddings(batch.input_ids)
    clean = task_output(model, batch, inputs_embeds=embeds)
    with pytest.raises(ValueError, match="clean_rng"):
        SmartRegularizer(SmartConfig()).regularize(model, batch, embeds, clean, TASK_TYPES["classification"])
