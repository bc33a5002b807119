"""The multi-task model over several encoder families; ids vs inputs_embeds; heads and shapes."""
import pytest
import torch
from transformers import AutoModel, BertConfig, DebertaV2Config, ElectraConfig, RobertaConfig

from mtsmart.tasks.batch import Batch
from mtsmart.arithmetic.divergence import MASKED_SCORE
from mtsmart.model.multitask import MultiTaskModel, task_output
from mtsmart.tasks.spec import TaskSpec

SMALL = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
CONFIGS = {
    "bert": BertConfig(**SMALL),
    "roberta": RobertaConfig(**SMALL, pad_token_id=1),
    "deberta-v2": DebertaV2Config(**SMALL, type_vocab_size=0, relative_attention=True, pos_att_type=["p2c", "c2p"]),
    "electra": ElectraConfig(**{**SMALL, "embedding_size": 16}),
}
SPECS = {
    "cls": TaskSpec(name="cls", type="classification", metrics=("accuracy",), labels=("a", "b", "c"), dropout=0.0),
    "reg": TaskSpec(name="reg", type="regression", metrics=("pearson",), dropout=0.0),
    "rank": TaskSpec(name="rank", type="ranking", metrics=("mrr",), labels=("p", "n"), positive_label="p", dropout=0.0),
}


def make_batch(task: str, n: int = 3, t: int = 7) -> Batch:
    torch.manual_seed(0)
    ids = torch.randint(5, 100, (n, t))
    mask = torch.ones(n, t, dtype=torch.long)
    mask[0, 5:] = 0
    return Batch(task=task, input_ids=ids, attention_mask=mask)


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_inputs_embeds_path_equals_ids_path(family):
    """Feeding the word-embedding output back gives the same outputs: position/type embeddings
    are added once (docs/method.md "What x is", the reference code's defect 2)."""
    torch.manual_seed(0)
    model = MultiTaskModel(AutoModel.from_config(CONFIGS[family]), {"cls": SPECS["cls"]}).eval()
    batch = make_batch("cls")
    from_ids = task_output(model, batch)
    from_embeds = task_output(model, batch, inputs_embeds=model.word_embeddings(batch.input_ids))
    assert from_ids.shape == (3, 3)
    torch.testing.assert_close(from_embeds, from_ids, rtol=0, atol=1e-6)


def test_heads_and_shapes_for_three_task_types():
    torch.manual_seed(0)
    model = MultiTaskModel(AutoModel.from_config(CONFIGS["bert"]), SPECS).eval()
    assert task_output(model, make_batch("cls")).shape == (3, 3)
    assert task_output(model, make_batch("reg")).shape == (3,)
    # Ranking: 3 sequences = group 0 with 2 candidates, group 1 with 1 → grid (2, 2).
    batch = make_batch("rank")
    batch.candidate_slots = torch.tensor([0, 1, 2])
    batch.candidate_mask = torch.tensor([[True, True], [True, False]])
    grid = task_output(model, batch)
    assert grid.shape == (2, 2) and grid[1, 1] == MASKED_SCORE
    scores = model(task="rank", input_ids=batch.input_ids, attention_mask=batch.attention_mask).squeeze(-1)
    torch.testing.assert_close(grid[0], scores[:2])
    torch.testing.assert_close(grid[1, 0], scores[2])


def test_forward_is_keyword_only_and_needs_exactly_one_input():
    model = MultiTaskModel(AutoModel.from_config(CONFIGS["bert"]), SPECS)
    batch = make_batch("cls")
    with pytest.raises(TypeError):
        model("cls", batch.attention_mask, batch.input_ids)  # noqa: the reference code's positional mode bug
    with pytest.raises(ValueError, match="exactly one"):
        model(task="cls", attention_mask=batch.attention_mask)
    with pytest.raises(ValueError, match="exactly one"):
        model(task="cls", attention_mask=batch.attention_mask, input_ids=batch.input_ids,
              inputs_embeds=model.word_embeddings(batch.input_ids))


@pytest.mark.parametrize("stored", [torch.float16, torch.bfloat16])
def test_an_encoder_stored_in_half_precision_trains_float32_weights(tmp_path, stored):
    """train.precision is the compute dtype; the weights AdamW updates are float32 whatever the
    checkpoint's dtype (transformers 5 would load them in the stored one)."""
    from transformers import BertModel

    from mtsmart.model.multitask import load_encoder, tiny_bert_config

    torch.manual_seed(0)
    saved = BertModel(tiny_bert_config(100, 32, 2, 2), add_pooling_layer=False).to(stored)
    saved.save_pretrained(tmp_path)
    encoder = load_encoder(str(tmp_path), 100)
    weights = dict(encoder.named_parameters())
    assert {p.dtype for p in weights.values()} == {torch.float32}
    for name, value in saved.named_parameters():
        assert torch.equal(weights[name], value.float()), name  # the stored values, cast exactly
