"""`mtsmart export`: a standard BertForSequenceClassification folder whose outputs equal the run's."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer, pipeline

from mtsmart.cli import main
from mtsmart.recipes.commands.export import POOLER_INPUT_LIMIT, hidden_bound, pooler_scale
from mtsmart.components.run_dir import load_run

SAMPLE = 24  # dev examples compared


@pytest.fixture(scope="module")
def run(tmp_path_factory, train_tiny) -> Path:
    out = tmp_path_factory.mktemp("export") / "run"
    return train_tiny(out, "tasks=[rte,stsb]", "train.max_steps=6", "eval.max_examples=16")


@pytest.fixture(scope="module")
def loaded(run):
    return load_run(run)


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory) -> dict[str, Path]:
    folders = {}
    for task in ("rte", "stsb"):
        folders[task] = tmp_path_factory.mktemp(f"hf_{task}")
        assert main(["export", "--run", str(run), "--task", task, "--out", str(folders[task])]) == 0
    return folders


def dev_pairs(data_root: Path, folder: str) -> list[tuple[str, str]]:
    with open(data_root / "glue" / folder / "dev.tsv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[:SAMPLE]
    return [(row["sentence1"], row["sentence2"]) for row in rows]


def ours(loaded, task: str, pairs) -> torch.Tensor:
    enc = loaded.tokenizer([a for a, _ in pairs], [b for _, b in pairs], truncation="longest_first",
                           max_length=loaded.cfg.data.max_seq_len, padding=True, return_tensors="pt")
    with torch.no_grad():
        return loaded.model(task=task, **dict(enc)).float()


def theirs(folder: Path, pairs) -> torch.Tensor:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    enc = tokenizer([a for a, _ in pairs], [b for _, b in pairs], truncation=True, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits


@pytest.mark.parametrize("task, folder", [("rte", "RTE"), ("stsb", "STS-B")])
def test_logits_equal_on_the_dev_set(loaded, exported, data_root, task, folder):
    pairs = dev_pairs(data_root, folder)
    torch.testing.assert_close(theirs(exported[task], pairs), ours(loaded, task, pairs), atol=1e-5, rtol=0)


def test_pipeline_gives_the_same_labels(loaded, exported, data_root):
    pairs = dev_pairs(data_root, "RTE")
    classify = pipeline("text-classification", model=str(exported["rte"]), device="cpu")
    answers = classify([{"text": a, "text_pair": b} for a, b in pairs], truncation=True)  # cut as training did
    logits = ours(loaded, "rte", pairs)
    labels = loaded.specs["rte"].labels
    assert [a["label"] for a in answers] == [labels[i] for i in logits.argmax(-1).tolist()]
    probabilities = logits.softmax(-1).max(-1).values
    torch.testing.assert_close(torch.tensor([a["score"] for a in answers]), probabilities, atol=1e-5, rtol=0)


def test_pipeline_regression_returns_the_raw_score(loaded, exported, data_root):
    pairs = dev_pairs(data_root, "STS-B")
    regress = pipeline("text-classification", model=str(exported["stsb"]), device="cpu")
    answers = regress([{"text": a, "text_pair": b} for a, b in pairs], truncation=True)
    scores = ours(loaded, "stsb", pairs)[:, 0]
    torch.testing.assert_close(torch.tensor([a["score"] for a in answers]), scores, atol=1e-5, rtol=0)


def test_config_labels_and_problem_type(exported):
    rte = AutoModelForSequenceClassification.from_pretrained(exported["rte"]).config
    assert rte.num_labels == 2
    assert rte.id2label == {0: "entailment", 1: "not_entailment"}
    assert rte.label2id == {"entailment": 0, "not_entailment": 1}
    assert rte.problem_type == "single_label_classification"
    stsb = AutoModelForSequenceClassification.from_pretrained(exported["stsb"]).config
    assert stsb.num_labels == 1 and stsb.problem_type == "regression"
    assert AutoTokenizer.from_pretrained(exported["rte"]).model_max_length == 48


def test_the_pooler_is_an_exact_identity(loaded):
    """tanh(s·h) == s·h for every |h| ≤ the LayerNorm bound, and the bound holds on real states."""
    bound = hidden_bound(loaded.model.encoder)
    scale = pooler_scale(bound)
    assert math.log2(scale) == int(math.log2(scale))  # a power of two: scaling is exact
    assert scale * bound <= POOLER_INPUT_LIMIT < 2 * scale * bound
    h = torch.linspace(-bound, bound, 100_001)
    assert torch.equal(torch.tanh(h * scale), h * scale)
    ids = torch.randint(1000, 30000, (8, 20))
    with torch.no_grad():
        states = loaded.model.encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    assert states.abs().max() <= bound


def test_unknown_task_exits_2(run, tmp_path, capsys):
    assert main(["export", "--run", str(run), "--task", "mnli", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "no task 'mnli'" in err and "['rte', 'stsb']" in err


def test_all_exports_encoder_heads_and_task_files(run, loaded, tmp_path):
    out = tmp_path / "all"
    assert main(["export", "--run", str(run), "--all", "--out", str(out)]) == 0
    encoder = AutoModel.from_pretrained(out / "encoder", add_pooling_layer=False).eval()
    ids = torch.randint(1000, 30000, (2, 12))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = loaded.model(task="rte", input_ids=ids, attention_mask=mask)
        hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
    head = load_file(str(out / "heads" / "rte.safetensors"))
    torch.testing.assert_close(hidden @ head["weight"].T + head["bias"], expected, atol=1e-6, rtol=0)
    for task in ("rte", "stsb"):
        assert yaml.safe_load((out / "tasks" / f"{task}.yaml").read_text())["name"] == task
        assert (out / "heads" / f"{task}.safetensors").is_file()


def test_export_refuses_a_non_empty_folder_unless_forced(run, tmp_path, capsys):
    out = tmp_path / "model"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert main(["export", "--run", str(run), "--task", "rte", "--out", str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err and not (out / "config.json").exists()
    assert main(["export", "--run", str(run), "--task", "rte", "--out", str(out), "--force"]) == 0
    assert (out / "config.json").is_file() and (out / "mine.txt").read_text() == "keep me"


def test_the_export_says_how_to_read_inputs_as_training_did(run, exported, capsys, tmp_path):
    """Its README and the command's last line give the pipeline call with truncation=True: with it a
    long input is cut at data.max_seq_len (as trained) and no over-length warning is printed."""
    import logging

    card = (exported["rte"] / "README.md").read_text()
    assert f'model="{exported["rte"]}", truncation=True' in card and "['entailment', 'not_entailment']" in card
    assert "raw score" in (exported["stsb"] / "README.md").read_text()
    assert main(["export", "--run", str(run), "--task", "rte", "--out", str(tmp_path / "again")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith('use: transformers.pipeline("text-classification"')
    long_text = " ".join(["word"] * 300)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        classify = pipeline("text-classification", model=str(exported["rte"]), device="cpu", truncation=True)
        cut = classify({"text": long_text, "text_pair": "word"})
        whole = pipeline("text-classification", model=str(exported["rte"]), device="cpu")({"text": long_text, "text_pair": "word"})
    finally:
        logger.removeHandler(handler)
    warned = [r for r in records if "longer than the specified maximum" in r.getMessage()]
    assert len(warned) == 1  # the call without truncation=True only
    assert cut["score"] != whole["score"]  # 48 tokens read, not 300
