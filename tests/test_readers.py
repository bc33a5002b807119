"""Readers: official row counts on the shared data, the formats missing there written in their
real layout, and one clear error per kind of bad input."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from mtsmart.options.data import DataConfig
from mtsmart.data.readers import DataError, read_split
from mtsmart.tasks.spec import load_task_spec, parse_task_spec


def local_cfg(root: Path) -> DataConfig:
    return DataConfig(root=str(root), source="local")


def spec_from(tmp_path: Path, **raw):
    """A TaskSpec from a dict, as if read from tmp_path/task.yaml."""
    raw = {"name": "t", "type": "classification", "metrics": ["accuracy"], "labels": ["a", "b"], **raw}
    return parse_task_spec(raw, tmp_path / "task.yaml")


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


# ------------------------------------------------------------------ the shared data

OFFICIAL_COUNTS = [
    ("rte", "train", 2490), ("rte", "dev", 277), ("rte", "test", 3000),
    ("cola", "train", 8551), ("cola", "dev", 1043), ("cola", "test", 1063),
    ("mrpc", "train", 3668), ("mrpc", "dev", 408), ("mrpc", "test", 1725),
    ("stsb", "train", 5749), ("stsb", "dev", 1500), ("stsb", "test", 1379),
    ("sst2", "train", 67349), ("sst2", "dev", 872), ("sst2", "test", 1821),
    ("wnli", "train", 635), ("wnli", "dev", 71), ("wnli", "test", 146),
    ("qnli", "dev", 5463), ("qnli", "test", 5463),
    ("snli", "dev", 9842), ("snli", "test", 9824),
    ("scitail", "test", 2126),
]


@pytest.mark.parametrize("task,split,count", OFFICIAL_COUNTS)
def test_official_row_counts(data_root, task, split, count):
    examples = read_split(load_task_spec(task), split, local_cfg(data_root))
    assert len(examples) == count
    labelled = split != "test" or task in ("snli", "scitail")
    assert all((ex.label is not None) == labelled for ex in examples)


def test_label_counts_match_an_independent_count(data_root):
    spec = load_task_spec("rte")
    examples = read_split(spec, "train", local_cfg(data_root))
    lines = (data_root / "glue/RTE/train.tsv").read_text(encoding="utf-8").splitlines()[1:]
    expected = Counter(line.split("\t")[-1] for line in lines)  # 1249 entailment, 1241 not
    got = Counter(spec.labels[ex.label] for ex in examples)
    assert got == expected
    cola = read_split(load_task_spec("cola"), "train", local_cfg(data_root))
    assert sum(ex.label for ex in cola) == 6023  # acceptable ("1") rows of CoLA train


def test_first_rows_and_header_handling(data_root):
    cfg = local_cfg(data_root)
    cola = read_split(load_task_spec("cola"), "train", cfg)  # no header: row 1 is data
    assert cola[0].text_a.startswith("Our friends won't buy this analysis") and cola[0].text_b is None
    assert cola[0].origin.endswith("CoLA/train.tsv:1")
    mrpc = read_split(load_task_spec("mrpc"), "train", cfg)  # BOM before the header
    assert mrpc[0].text_a.startswith("Amrozi accused his brother") and mrpc[0].label == 1
    assert mrpc[0].origin.endswith("MRPC/train.tsv:2")
    stsb = read_split(load_task_spec("stsb"), "dev", cfg)
    assert stsb[0].label == 5.0 and stsb[1].label == 4.75
    assert all(isinstance(ex.label, float) and 0.0 <= ex.label <= 5.0 for ex in stsb)
    qnli = read_split(load_task_spec("qnli"), "dev", cfg)  # bare quotes kept (QUOTE_NONE)
    assert any('"' in ex.text_b for ex in qnli)


def test_snli_both_formats_agree(data_root):
    spec = load_task_spec("snli")
    jsonl = read_split(spec, "dev", local_cfg(data_root))
    lines_spec = spec_from(
        data_root, labels=list(spec.labels),
        local={"format": "lines", "dir": "snli/esnli_tokenized",
               "files": {"dev": {"text_a": "s1.dev", "text_b": "s2.dev", "label": "labels.dev"}}},
    )
    lines = read_split(lines_spec, "dev", local_cfg(data_root))
    assert len(jsonl) == len(lines) == 9842
    assert [ex.label for ex in jsonl] == [ex.label for ex in lines]
    # e-SNLI is tokenised ("packages ."), the release is not ("packages."): compare words only.
    assert jsonl[0].text_a.replace(".", " .").split() == lines[0].text_a.split()


def test_rte_hub_parquet_matches_the_tsv(data_root):
    spec = load_task_spec("rte")
    for split, count in [("train", 2490), ("dev", 277), ("test", 3000)]:
        hub = read_split(spec, split, DataConfig(root=str(data_root), source="hub"))
        local = read_split(spec, split, local_cfg(data_root))
        assert len(hub) == count
        assert [(e.text_a, e.text_b, e.label) for e in hub] == [(e.text_a, e.text_b, e.label) for e in local]


def test_ranking_rows_carry_their_question(data_root):
    examples = read_split(load_task_spec("qnli_ranking"), "dev", local_cfg(data_root))
    assert len(examples) == 5463
    assert all(ex.group == ex.text_a for ex in examples)


# ------------------------------------------------------------------ formats absent from the shared data

MNLI_TRAIN_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                     "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label")
MNLI_DEV_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                   "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\t"
                   "label4\tlabel5\tgold_label")
MNLI_TEST_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                    "sentence1_parse\tsentence2_parse\tsentence1\tsentence2")


def mnli_row(i: int, premise: str, hypothesis: str, labels: list[str]) -> str:
    parses = ["( x )", "( y )", "(ROOT x)", "(ROOT y)"]
    return "\t".join([str(i), "31193", f"31193{i}n", "government", *parses, premise, hypothesis, *labels])


def test_mnli_glue_layout(tmp_path):
    folder = tmp_path / "glue/MNLI"
    write(folder / "train.tsv", "\n".join([
        MNLI_TRAIN_HEADER,
        mnli_row(0, 'He said "no".', "He agreed.", ["contradiction", "contradiction"]),
        mnli_row(1, "A cat sat.", "An animal sat.", ["entailment", "entailment"]),
    ]) + "\n")
    for name in ("dev_matched", "dev_mismatched"):
        write(folder / f"{name}.tsv", "\n".join([
            MNLI_DEV_HEADER,
            mnli_row(0, "It rained.", "The ground may be wet.", ["neutral"] * 5 + ["neutral"]),
        ]) + "\n")
    write(folder / "test_matched.tsv", MNLI_TEST_HEADER + "\n" + mnli_row(0, "a", "b", []) + "\n")
    spec = load_task_spec("mnli")
    train = read_split(spec, "train", local_cfg(tmp_path))
    assert [(e.text_a, e.text_b, spec.labels[e.label]) for e in train] == [
        ('He said "no".', "He agreed.", "contradiction"), ("A cat sat.", "An animal sat.", "entailment")]
    for split in ("dev_matched", "dev_mismatched"):
        dev = read_split(spec, split, local_cfg(tmp_path))
        assert len(dev) == 1 and spec.labels[dev[0].label] == "neutral"
    test = read_split(spec, "test_matched", local_cfg(tmp_path))
    assert test[0].label is None and test[0].text_b == "b"


def test_qqp_glue_layout(tmp_path):
    folder = tmp_path / "glue/QQP"
    write(folder / "train.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
          "0\t1\t2\tHow do I learn Python?\tWhat is the best way to learn Python?\t1\n"
          "1\t3\t4\tWhy is the sky blue?\tHow tall is Everest?\t0\n")
    write(folder / "test.tsv", "id\tquestion1\tquestion2\n0\tWhat?\tWhy?\n")
    spec = load_task_spec("qqp")
    train = read_split(spec, "train", local_cfg(tmp_path))
    assert [e.label for e in train] == [1, 0] and train[1].text_b == "How tall is Everest?"
    assert read_split(spec, "test", local_cfg(tmp_path))[0].label is None


def test_snli_jsonl_drops_only_dash_rows(tmp_path):
    rows = [("A man.", "A person.", "entailment"), ("A dog.", "A cat.", "-"), ("Kids.", "Adults.", "contradiction")]
    write(tmp_path / "snli/snli_1.0/snli_1.0_train.jsonl", "".join(
        json.dumps({"sentence1": a, "sentence2": b, "gold_label": y, "annotator_labels": [y]}) + "\n"
        for a, b, y in rows))
    spec = load_task_spec("snli")
    train = read_split(spec, "train", local_cfg(tmp_path))
    assert [(e.text_a, spec.labels[e.label]) for e in train] == [("A man.", "entailment"), ("Kids.", "contradiction")]
    assert train[1].origin.endswith("snli_1.0_train.jsonl:3")


def test_scitail_tsv_format_train_and_dev(tmp_path):
    for split, label in [("train", "entails"), ("dev", "neutral")]:
        write(tmp_path / f"scitail/tsv_format/scitail_1.0_{split}.tsv",
              f"Plants make food by photosynthesis.\tPhotosynthesis makes food.\t{label}\n"
              "Rocks are hard.\tWater boils at 100 C.\tneutral\n")
    spec = load_task_spec("scitail")
    train = read_split(spec, "train", local_cfg(tmp_path))
    dev = read_split(spec, "dev", local_cfg(tmp_path))
    assert [spec.labels[e.label] for e in train] == ["entails", "neutral"]
    assert [spec.labels[e.label] for e in dev] == ["neutral", "neutral"]
    assert train[0].origin.endswith("scitail_1.0_train.tsv:1")


# ------------------------------------------------------------------ bad input


def tsv_spec(tmp_path, **extra):
    local = {"format": "tsv", "dir": "d", "files": {"train": "train.tsv", "test": "test.tsv"},
             "text_a": "s1", "text_b": "s2", "label": "y", "unlabelled_splits": ["test"], **extra}
    return spec_from(tmp_path, local=local)


def read_train(tmp_path, text, **extra):
    path = write(tmp_path / "d/train.tsv", text)
    return path, lambda: read_split(tsv_spec(tmp_path, **extra), "train", local_cfg(tmp_path))


def test_missing_file_names_file_and_task(tmp_path):
    with pytest.raises(DataError, match=r"task 't', split 'train': file .*d/train.tsv not found"):
        read_split(tsv_spec(tmp_path), "train", local_cfg(tmp_path))


def test_unknown_split_names_the_splits(tmp_path):
    with pytest.raises(DataError, match=r"no split 'dev'.*\['test', 'train'\]"):
        read_split(tsv_spec(tmp_path), "dev", local_cfg(tmp_path))


def test_missing_column_names_file_column_and_header(tmp_path):
    path, read = read_train(tmp_path, "s1\tsentence_b\ty\nx\ty\ta\n")
    with pytest.raises(DataError, match=rf"{path}: missing column 's2'; header found: \['s1', 'sentence_b', 'y'\]"):
        read()


def test_missing_label_column_is_an_error_only_for_labelled_splits(tmp_path):
    write(tmp_path / "d/test.tsv", "s1\ts2\nx\ty\n")
    assert read_split(tsv_spec(tmp_path), "test", local_cfg(tmp_path))[0].label is None
    path, read = read_train(tmp_path, "s1\ts2\nx\ty\n")
    with pytest.raises(DataError, match=rf"{path}: missing column 'y'"):
        read()


def test_malformed_row_names_file_and_line(tmp_path):
    path, read = read_train(tmp_path, "s1\ts2\ty\nx\ty\ta\nonly two\tfields\n")
    with pytest.raises(DataError, match=rf"{path}:3: malformed row: 2 tab-separated fields, expected 3"):
        read()


def test_unknown_label_names_line_label_and_allowed(tmp_path):
    path, read = read_train(tmp_path, "s1\ts2\ty\nx\ty\ta\nx\ty\tc\n")
    with pytest.raises(DataError, match=rf"{path}:3: unknown label 'c'; allowed labels: \['a', 'b'\]"):
        read()


@pytest.mark.parametrize("score,message", [("high", "is not a number"), ("5.5", "outside score_range"),
                                            ("nan", "not finite")])
def test_bad_scores_name_the_line(tmp_path, score, message):
    path = write(tmp_path / "d/train.tsv", f"s1\ts2\ty\nx\ty\t4.0\nx\ty\t{score}\n")
    spec = parse_task_spec({"name": "r", "type": "regression", "metrics": ["pearson"], "score_range": [0, 5],
                            "local": {"format": "tsv", "dir": "d", "files": {"train": "train.tsv"},
                                      "text_a": "s1", "text_b": "s2", "label": "y"}}, tmp_path / "r.yaml")
    with pytest.raises(DataError, match=rf"{path}:3: score .*{message}"):
        read_split(spec, "train", local_cfg(tmp_path))


def test_empty_split_names_the_file(tmp_path):
    path, read = read_train(tmp_path, "s1\ts2\ty\n")
    with pytest.raises(DataError, match=rf"{path}: split 'train' of task 't' has no examples"):
        read()
    write(path, b"")
    with pytest.raises(DataError, match=rf"{path}: split 'train' of task 't' is empty"):
        read()


def test_undecodable_bytes_name_line_and_offset(tmp_path):
    path, read = read_train(tmp_path, b"s1\ts2\ty\nx\ty\ta\nx\tcaf\xe9\tb\n")
    # line 1 is 9 bytes, line 2 is 6: the bad byte is the 5th of line 3 -> offset 15 + 4.
    with pytest.raises(DataError, match=rf"{path}:3: bytes at byte offset 19 are not valid UTF-8"):
        read()


def test_headerless_columns_and_unknown_local_key(tmp_path):
    write(tmp_path / "d/train.tsv", "x\ty\tb\n")
    examples = read_split(tsv_spec(tmp_path, headerless={"splits": ["train"], "columns": ["s1", "s2", "y"]}),
                          "train", local_cfg(tmp_path))
    assert [(e.text_a, e.text_b, e.label) for e in examples] == [("x", "y", 1)]
    with pytest.raises(DataError, match=r"task.yaml: unknown key\(s\) \['colums'\] in 'local'"):
        read_split(tsv_spec(tmp_path, colums=["s1"]), "train", local_cfg(tmp_path))


def test_jsonl_errors_name_line(tmp_path):
    path = write(tmp_path / "d/train.jsonl", '{"s1": "x", "s2": "y", "y": "a"}\n{"s1": "x", "s2": \n')
    local = {"format": "jsonl", "dir": "d", "files": {"train": "train.jsonl"}, "text_a": "s1", "text_b": "s2",
             "label": "y"}
    with pytest.raises(DataError, match=rf"{path}:2: malformed row: not valid JSON"):
        read_split(spec_from(tmp_path, local=local), "train", local_cfg(tmp_path))
    write(path, '{"s1": "x", "y": "a"}\n')
    with pytest.raises(DataError, match=rf"{path}:1: missing column 's2'; keys found: \['s1', 'y'\]"):
        read_split(spec_from(tmp_path, local=local), "train", local_cfg(tmp_path))


def test_parallel_line_files_must_agree(tmp_path):
    write(tmp_path / "d/s1.train", "a\nb\n")
    write(tmp_path / "d/s2.train", "c\nd\n")
    write(tmp_path / "d/labels.train", "a\n")
    local = {"format": "lines", "dir": "d", "files": {"train": {"text_a": "s1.train", "text_b": "s2.train",
                                                                "label": "labels.train"}}}
    with pytest.raises(DataError, match=r"different line counts: .*labels.train': 1"):
        read_split(spec_from(tmp_path, local=local), "train", local_cfg(tmp_path))


# ------------------------------------------------------------------ hub source on local parquet


def hub_spec(tmp_path, **extra):
    hub = {"path": "someone/data", "splits": {"train": "train", "test": "test"}, "text_a": "s1", "text_b": "s2",
           "label": "label", "label_names": ["a", "b"], "local_dir": "hf/data", "unlabelled_splits": ["test"],
           **extra}
    return spec_from(tmp_path, hub=hub)


def write_parquet(tmp_path, split, columns):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "hf/data"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), folder / f"{split}-00000-of-00001.parquet")


def test_hub_label_ids_and_unlabelled_rows(tmp_path):
    write_parquet(tmp_path, "train", {"s1": ["x", "y"], "s2": ["u", "v"], "label": [1, 0]})
    write_parquet(tmp_path, "test", {"s1": ["x"], "s2": ["u"], "label": [-1]})
    cfg = DataConfig(root=str(tmp_path), source="hub")
    assert [e.label for e in read_split(hub_spec(tmp_path), "train", cfg)] == [1, 0]
    assert read_split(hub_spec(tmp_path), "test", cfg)[0].label is None
    write_parquet(tmp_path, "train", {"s1": ["x", "y"], "s2": ["u", "v"], "label": [1, -1]})
    with pytest.raises(DataError, match=r"train\[1\]: label -1 \(no label\) in a labelled split"):
        read_split(hub_spec(tmp_path), "train", cfg)
    assert len(read_split(hub_spec(tmp_path, drop_unlabelled=True), "train", cfg)) == 1


def test_hub_missing_column_and_bad_label_id(tmp_path):
    write_parquet(tmp_path, "train", {"premise": ["x"], "s2": ["u"], "label": [0]})
    cfg = DataConfig(root=str(tmp_path), source="hub")
    with pytest.raises(DataError, match=r"hf/data/train: missing column 's1'; columns found: \['premise', 's2', 'label'\]"):
        read_split(hub_spec(tmp_path), "train", cfg)
    write_parquet(tmp_path, "train", {"s1": ["x"], "s2": ["u"], "label": [7]})
    with pytest.raises(DataError, match=r"train\[0\]: unknown label id 7"):
        read_split(hub_spec(tmp_path), "train", cfg)


def test_hub_label_names_checked_against_class_count(data_root):
    spec = load_task_spec("rte")
    wrong = parse_task_spec({**_raw(spec), "labels": ["x", "y", "z"],
                             "hub": {**spec.hub, "label_names": ["x", "y", "z"]}}, Path("rte.yaml"))
    with pytest.raises(DataError, match=r"label_names .* has 3 entries but the dataset's label column has 2"):
        read_split(wrong, "dev", DataConfig(root=str(data_root), source="hub"))


def _raw(spec):
    return {"name": spec.name, "type": spec.type, "metrics": list(spec.metrics), "labels": list(spec.labels)}


def test_every_task_file_parses_and_names_a_known_format():
    for path in sorted(Path(__file__).resolve().parents[1].joinpath("tasks").glob("*.yaml")):
        spec = load_task_spec(path.stem)
        assert spec.local["format"] in ("tsv", "jsonl", "lines"), path
        assert set(spec.eval_splits.values()) <= set(spec.local["files"]), path
        assert "train" in spec.local["files"], path
        # A task whose splits are parts of local files (tasks/README.md) has no hub counterpart.
        derived = any(isinstance(entry, dict) and "part_of" in entry for entry in spec.local["files"].values())
        assert derived or (set(spec.eval_splits.values()) <= set(spec.hub["splits"]) and "train" in spec.hub["splits"]), path


def test_hub_download_failure_names_dataset_and_local_dir(tmp_path, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setattr("mtsmart.data.readers.hub_unreachable", lambda: None)  # reachable, and the download fails
    with pytest.raises(DataError, match=r"hub dataset nyu-mll/glue/rte:validation could not be loaded .*hf/glue/rte"):
        read_split(load_task_spec("rte"), "dev", DataConfig(root=str(tmp_path), source="hub"))
