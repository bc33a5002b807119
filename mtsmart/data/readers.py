"""Read a task's split into Examples, from local files or the Hugging Face hub.

`read_split(spec, split, cfg)` dispatches on `cfg.source` and, for local files, on the task
file's `local.format`:

- `tsv`: tab-separated, no quoting (csv.QUOTE_NONE: GLUE fields contain bare `"`), columns
  found by header name, or named by `local.headerless` for files without a header (CoLA
  train/dev, SciTail). A UTF-8 byte-order mark on the first line is dropped (MRPC).
- `jsonl`: one JSON object per line (SNLI 1.0), fields by key.
- `lines`: one sentence per line in parallel files (e-SNLI's s1.X / s2.X / labels.X).

The hub source reads `hub.local_dir` (parquet files as the hub serves them) when that folder
exists under data.root, else `datasets.load_dataset(hub.path, hub.name)`.

Every problem raises DataError naming the file and the line, column or label; no row is
skipped silently: only rows whose label is listed in `drop_labels` (SNLI's "-": no gold
label) or, on the hub, `drop_unlabelled` are dropped, and their count is logged.
Keys of the `local:` and `hub:` blocks are documented in tasks/README.md.
"""
from __future__ import annotations

import hashlib

import json
import logging
import math
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from mtsmart.options.data import DataConfig
from mtsmart.support.hub import hub_unreachable, quiet_retries
from mtsmart.data.examples import Example
from mtsmart.tasks.spec import TaskSpec
from mtsmart.tasks.types import task_type_of

log = logging.getLogger(__name__)

LOCAL_FORMATS = ("tsv", "jsonl", "lines")
_LOCAL_KEYS = {
    "format", "dir", "files", "text_a", "text_b", "label", "group", "headerless",
    "unlabelled_splits", "drop_labels", "parts",
}
# A split declared as part of other files: files: {<split>: {part_of: FILE or [FILE, ...], part: PART}}
PARTS = ("held_out", "rest")
_HUB_KEYS = {
    "path", "name", "splits", "text_a", "text_b", "label", "label_names", "group", "local_dir",
    "unlabelled_splits", "drop_unlabelled",
}
# The hub's GLUE/SNLI datasets store "no label" (test rows, SNLI's "-") as label id -1.
HUB_NO_LABEL = -1
_BOM = b"\xef\xbb\xbf"


class DataError(ValueError):
    """Data that cannot be read; the message names the file and the line, column or label."""


def read_split(spec: TaskSpec, split: str, cfg: DataConfig) -> list[Example]:
    """All examples of `split` (train, dev, test, dev_matched, ...) of a task, in file order."""
    if cfg.source == "local":
        return read_local(spec, split, Path(cfg.root))
    if cfg.source == "hub":
        return read_hub(spec, split, Path(cfg.root))
    if cfg.source == "auto":
        return read_auto(spec, split, Path(cfg.root))
    raise DataError(f"data.source: {cfg.source!r} is not one of ('auto', 'local', 'hub')")


def read_auto(spec: TaskSpec, split: str, root: Path) -> list[Example]:
    """The task's local files under `root` when they are there, else the Hugging Face hub (its
    parquet copy under root when present, else `datasets.load_dataset`, cached as datasets caches)."""
    local = local_split_file(spec, split, root)
    if local is not None and local.is_file():
        return read_local(spec, split, root)
    if not spec.hub:
        return read_local(spec, split, root)  # no hub source: the local reader names the missing file
    try:
        return read_hub(spec, split, root)
    except DataError as error:
        where = f"no local file {local}" if local is not None else "no local files declared"
        raise DataError(
            f"task {spec.name!r}, split {split!r}: {where} (set data.root or $MTSMART_DATA to the folder "
            f"holding {spec.local.get('dir', 'it')}/), and the Hugging Face hub did not provide it either: {error}"
        ) from None


def local_split_file(spec: TaskSpec, split: str, root: Path) -> Optional[Path]:
    """The file that holds a split locally (the text_a file of the `lines` format), or None."""
    files = spec.local.get("files", {}) if spec.local else {}
    if split not in files or "dir" not in spec.local:
        return None
    entry = files[split]
    if isinstance(entry, dict) and "part_of" in entry:
        sources = entry["part_of"] if isinstance(entry["part_of"], list) else [entry["part_of"]]
        name = sources[0] if sources else None
    else:
        name = entry.get("text_a") if isinstance(entry, dict) else entry
    return root / spec.local["dir"] / name if name else None


# ---------------------------------------------------------------- labels


def convert_label(spec: TaskSpec, raw: Any, origin: str) -> Union[int, float]:
    """A label as the model needs it: class index into spec.labels, or a float score."""
    if task_type_of(spec).scores:
        try:
            score = float(raw)
        except (TypeError, ValueError):
            raise DataError(f"{origin}: score {raw!r} is not a number") from None
        if not math.isfinite(score):
            raise DataError(f"{origin}: score {raw!r} is not finite")
        if spec.score_range is not None and not spec.score_range[0] <= score <= spec.score_range[1]:
            raise DataError(f"{origin}: score {score} is outside score_range {list(spec.score_range)}")
        return score
    name = str(raw)
    if name not in spec.labels:
        raise DataError(f"{origin}: unknown label {name!r}; allowed labels: {list(spec.labels)}")
    return spec.labels.index(name)


# ---------------------------------------------------------------- local files


def read_local(spec: TaskSpec, split: str, root: Path) -> list[Example]:
    local = _checked_block(spec, "local", _LOCAL_KEYS, required=("format", "dir", "files"))
    fmt = local["format"]
    if fmt not in LOCAL_FORMATS:
        raise DataError(f"{spec.source_file}: local.format {fmt!r} is not one of {LOCAL_FORMATS}")
    for key in ("text_a", "label") if fmt != "lines" else ():
        if key not in local:
            raise DataError(f"{spec.source_file}: 'local' needs the key {key!r} for format {fmt!r}")
    files = local["files"]
    if split not in files:
        raise DataError(f"task {spec.name!r} has no split {split!r} in local.files; splits: {sorted(files)}")
    folder = root / local["dir"]
    labelled = split not in local.get("unlabelled_splits", [])
    if isinstance(files[split], dict) and "part_of" in files[split]:
        examples = _read_part(spec, local, folder, split, labelled)
        where = f"{spec.source_file}: local.files.{split}"
    elif fmt == "lines":
        examples = _read_lines_split(spec, local, folder, split, labelled)
        where = str(folder / files[split]["text_a"])
    else:
        path = folder / files[split]
        _require_file(spec, split, path)
        reader = _read_tsv if fmt == "tsv" else _read_jsonl
        examples = reader(spec, local, path, split, labelled)
        where = str(path)
    if not examples:
        raise DataError(f"{where}: split {split!r} of task {spec.name!r} has no examples")
    return examples


def held_out_rows(count: int, held_out: int, seed: int) -> set[int]:
    """The row positions (0 … count − 1) of the held-out part: the `held_out` rows that come first
    when rows are ordered by sha256("<seed>:<row>") — fixed by the seed, whatever the library versions."""
    order = sorted(range(count), key=lambda row: hashlib.sha256(f"{seed}:{row}".encode()).digest())
    return set(order[:held_out])


def _read_part(spec: TaskSpec, local: dict, folder: Path, split: str, labelled: bool) -> list[Example]:
    """A split that is a seed-fixed, disjoint part of other files (docs in tasks/README.md): the
    files' rows in order, then `held_out` (local.parts.held_out of them, local.parts.seed) or
    `rest` (every other row), each kept in file order."""
    entry = local["files"][split]
    parts = local.get("parts")
    if not isinstance(parts, dict) or not isinstance(parts.get("held_out"), int) or not isinstance(parts.get("seed"), int):
        raise DataError(f"{spec.source_file}: local.files.{split} is part of other files, which needs "
                        "local.parts: {held_out: N, seed: S} (integers)")
    if entry.get("part") not in PARTS or set(entry) - {"part_of", "part"}:
        raise DataError(f"{spec.source_file}: local.files.{split} must be {{part_of: FILE or [FILES], part: held_out or rest}}")
    sources = entry["part_of"] if isinstance(entry["part_of"], list) else [entry["part_of"]]
    reader = _read_tsv if local["format"] == "tsv" else _read_jsonl
    rows: list[Example] = []
    for name in sources:
        _require_file(spec, split, folder / name)
        rows += reader(spec, local, folder / name, split, labelled)
    if not 0 < parts["held_out"] < len(rows):
        raise DataError(f"{spec.source_file}: local.parts.held_out {parts['held_out']} must be between 1 and "
                        f"{len(rows) - 1} (the {len(rows)} rows of {', '.join(sources)})")
    held = held_out_rows(len(rows), parts["held_out"], parts["seed"])
    keep = (lambda row: row in held) if entry["part"] == "held_out" else (lambda row: row not in held)
    return [example for row, example in enumerate(rows) if keep(row)]


def _checked_block(spec: TaskSpec, block: str, allowed: set[str], required: tuple[str, ...]) -> dict:
    values = getattr(spec, block)
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise DataError(f"{spec.source_file}: unknown key(s) {unknown} in '{block}'; allowed: {sorted(allowed)}")
    for key in required:
        if key not in values:
            raise DataError(f"{spec.source_file}: '{block}' needs the key {key!r}")
    return values


def _require_file(spec: TaskSpec, split: str, path: Path) -> None:
    if not path.is_file():
        raise DataError(
            f"task {spec.name!r}, split {split!r}: file {path} not found "
            f"(set data.root or $MTSMART_DATA to the folder holding it, or use data.source=hub)"
        )


def _decoded_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text without its line ending); strict UTF-8, first-line BOM dropped."""
    offset = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            body = raw[len(_BOM):] if number == 1 and raw.startswith(_BOM) else raw
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as error:
                at = offset + (len(raw) - len(body)) + error.start
                raise DataError(
                    f"{path}:{number}: bytes at byte offset {at} are not valid UTF-8 ({error.reason})"
                ) from None
            offset += len(raw)
            yield number, text.rstrip("\n").removesuffix("\r")


def _label_or_none(
    spec: TaskSpec, raw: Any, origin: str, drop: list[str]
) -> tuple[bool, Union[int, float, None]]:
    """(keep the row?, label). Rows whose raw label is in `drop` are not kept."""
    if str(raw) in drop:
        return False, None
    return True, convert_label(spec, raw, origin)


def _log_dropped(path: Any, dropped: int, drop: list[str]) -> None:
    if dropped:
        log.info("%s: dropped %d rows with label in %s (documented in the task file)", path, dropped, drop)


def _read_tsv(spec: TaskSpec, local: dict, path: Path, split: str, labelled: bool) -> list[Example]:
    lines = _decoded_lines(path)
    headerless = local.get("headerless") or {}
    if headerless and set(headerless) != {"splits", "columns"}:
        raise DataError(f"{spec.source_file}: local.headerless needs exactly the keys 'splits' and 'columns'")
    if split in headerless.get("splits", []):
        header = list(headerless["columns"])
    else:
        first = next(lines, None)
        if first is None:
            raise DataError(f"{path}: split {split!r} of task {spec.name!r} is empty (no header)")
        header = first[1].split("\t")
    column = _column_finder(path, header)
    a = column(local["text_a"])
    b = column(local["text_b"]) if local.get("text_b") else None
    g = column(local["group"]) if local.get("group") else None
    y = _label_column(local, header, column, labelled)
    drop = [str(v) for v in local.get("drop_labels", [])]
    examples, dropped = [], 0
    for number, text in lines:
        fields = text.split("\t")
        if len(fields) != len(header):
            raise DataError(
                f"{path}:{number}: malformed row: {len(fields)} tab-separated fields, expected "
                f"{len(header)} ({header})"
            )
        origin = f"{path}:{number}"
        keep, label = (True, None) if y is None else _label_or_none(spec, fields[y], origin, drop)
        if not keep:
            dropped += 1
            continue
        examples.append(Example(
            text_a=fields[a],
            text_b=None if b is None else fields[b],
            label=label,
            origin=origin,
            group=None if g is None else fields[g],
        ))
    _log_dropped(path, dropped, drop)
    return examples


def _column_finder(path: Path, header: list[str]):
    def find(name: str) -> int:
        if name not in header:
            raise DataError(f"{path}: missing column {name!r}; header found: {header}")
        return header.index(name)

    return find


def _label_column(local: dict, header: list[str], column, labelled: bool) -> Optional[int]:
    """Index of the label column; None for an unlabelled split whose file has no label column."""
    if not labelled and local["label"] not in header:
        return None
    return column(local["label"])


def _read_jsonl(spec: TaskSpec, local: dict, path: Path, split: str, labelled: bool) -> list[Example]:
    drop = [str(v) for v in local.get("drop_labels", [])]
    keys = [local["text_a"]] + [local[k] for k in ("text_b", "group") if local.get(k)]
    examples, dropped = [], 0
    for number, text in _decoded_lines(path):
        origin = f"{path}:{number}"
        try:
            row = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"{origin}: malformed row: not valid JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{origin}: malformed row: expected a JSON object")
        needed = keys + ([local["label"]] if labelled or local["label"] in row else [])
        for key in needed:
            if key not in row:
                raise DataError(f"{origin}: missing column {key!r}; keys found: {sorted(row)}")
        keep, label = (True, None)
        if local["label"] in row:
            keep, label = _label_or_none(spec, row[local["label"]], origin, drop)
        if not keep:
            dropped += 1
            continue
        examples.append(Example(
            text_a=str(row[local["text_a"]]),
            text_b=str(row[local["text_b"]]) if local.get("text_b") else None,
            label=label,
            origin=origin,
            group=str(row[local["group"]]) if local.get("group") else None,
        ))
    _log_dropped(path, dropped, drop)
    return examples


def _read_lines_split(spec: TaskSpec, local: dict, folder: Path, split: str, labelled: bool) -> list[Example]:
    """Parallel one-per-line files {text_a: file, text_b: file, label: file}; counts must agree."""
    files = local["files"][split]
    if not isinstance(files, dict) or "text_a" not in files:
        raise DataError(f"{spec.source_file}: format 'lines' needs files per split as {{text_a:, text_b:, label:}}")
    if labelled and "label" not in files:
        raise DataError(f"{spec.source_file}: format 'lines' needs a 'label' file for labelled splits")
    columns: dict[str, list[str]] = {}
    paths: dict[str, Path] = {}
    for role in ("text_a", "text_b", "label"):
        if role in files:
            paths[role] = folder / files[role]
            _require_file(spec, split, paths[role])
            columns[role] = [text for _, text in _decoded_lines(paths[role])]
    counts = {str(paths[role]): len(lines) for role, lines in columns.items()}
    if len(set(counts.values())) > 1:
        raise DataError(f"parallel files of task {spec.name!r} have different line counts: {counts}")
    drop = [str(v) for v in local.get("drop_labels", [])]
    examples, dropped = [], 0
    for i, text_a in enumerate(columns["text_a"]):
        origin = f"{paths.get('label', paths['text_a'])}:{i + 1}"
        keep, label = (True, None)
        if "label" in columns:
            keep, label = _label_or_none(spec, columns["label"][i], origin, drop)
        if not keep:
            dropped += 1
            continue
        text_b = columns["text_b"][i] if "text_b" in columns else None
        examples.append(Example(text_a=text_a, text_b=text_b, label=label, origin=origin))
    _log_dropped(paths["text_a"], dropped, drop)
    return examples


# ---------------------------------------------------------------- hub


def read_hub(spec: TaskSpec, split: str, root: Path) -> list[Example]:
    hub = _checked_block(spec, "hub", _HUB_KEYS, required=("path", "splits", "text_a", "label"))
    if split not in hub["splits"]:
        raise DataError(f"task {spec.name!r} has no split {split!r} in hub.splits; splits: {sorted(hub['splits'])}")
    hub_split = hub["splits"][split]
    dataset, where = _load_hub_split(hub, hub_split, root)
    return _examples_from_dataset(spec, hub, dataset, where, labelled=split not in hub.get("unlabelled_splits", []))


def _load_hub_split(hub: dict, hub_split: str, root: Path):
    import datasets  # imported here: reading local files must not pay for it

    local_dir = root / hub["local_dir"] if hub.get("local_dir") else None
    if local_dir is not None and local_dir.is_dir():
        # A copy of the hub's own parquet files, named `<split>-NNNNN-of-NNNNN.parquet`.
        files = sorted(local_dir.glob(f"{hub_split}-*.parquet"))
        if not files:
            raise DataError(f"{local_dir}: no file {hub_split}-*.parquet for hub split {hub_split!r}")
        dataset = datasets.load_dataset("parquet", data_files={hub_split: [str(f) for f in files]}, split=hub_split)
        return dataset, f"{local_dir}/{hub_split}"
    where = f"{hub['path']}/{hub.get('name') or ''}:{hub_split}"
    unreachable = hub_unreachable()
    if unreachable:  # not asked: offline its retries took half a minute and a dozen log lines
        hint = f", or put its parquet files in {local_dir}" if local_dir is not None else ""
        raise DataError(f"hub dataset {where} was not asked: the hub cannot be reached ({unreachable}); "
                        f"with HF_HUB_OFFLINE=1 a copy in the datasets cache is read{hint}")
    try:
        with quiet_retries():
            dataset = datasets.load_dataset(hub["path"], hub.get("name"), split=hub_split)
    except OSError as error:  # ConnectionError and missing files alike
        hint = f" or put its parquet files in {local_dir}" if local_dir is not None else ""
        raise DataError(f"hub dataset {where} could not be loaded ({error}); check the network{hint}") from error
    return dataset, where


def _examples_from_dataset(spec: TaskSpec, hub: dict, dataset, where: str, labelled: bool) -> list[Example]:
    names = list(dataset.column_names)
    for key in ("text_a", "text_b", "label", "group"):
        if hub.get(key) and hub[key] not in names:
            raise DataError(f"{where}: missing column {hub[key]!r}; columns found: {names}")
    label_names = _hub_label_names(spec, hub, dataset, where)
    text_a = dataset[hub["text_a"]]
    text_b = dataset[hub["text_b"]] if hub.get("text_b") else None
    groups = dataset[hub["group"]] if hub.get("group") else None
    examples, dropped = [], 0
    for i, raw in enumerate(dataset[hub["label"]]):
        origin = f"{where}[{i}]"
        if raw is not None and not isinstance(raw, str) and raw == HUB_NO_LABEL:
            if hub.get("drop_unlabelled"):
                dropped += 1
                continue
            if labelled:
                raise DataError(f"{origin}: label {raw} (no label) in a labelled split")
            label = None
        elif isinstance(raw, str) or task_type_of(spec).scores:
            label = convert_label(spec, raw, origin)
        else:
            if not 0 <= raw < len(label_names):
                raise DataError(f"{origin}: unknown label id {raw}; hub.label_names: {label_names}")
            label = convert_label(spec, label_names[raw], origin)
        examples.append(Example(
            text_a=str(text_a[i]),
            text_b=None if text_b is None else str(text_b[i]),
            label=label,
            origin=origin,
            group=None if groups is None else str(groups[i]),
        ))
    if dropped:
        log.info("%s: dropped %d rows without a gold label (hub.drop_unlabelled)", where, dropped)
    if not examples:
        raise DataError(f"{where}: split of task {spec.name!r} has no examples")
    return examples


def _hub_label_names(spec: TaskSpec, hub: dict, dataset, where: str) -> list[str]:
    """hub.label_names: label id i means this task's label label_names[i].

    The task's labels follow the local files (CoLA's "0"/"1"), which may differ from the
    hub's ClassLabel names ("unacceptable"/"acceptable"), so only the class count is checked.
    """
    names = [str(n) for n in hub.get("label_names", [])]
    declared = getattr(dataset.features.get(hub["label"]), "names", None)
    if declared is not None and len(declared) != len(names):
        raise DataError(
            f"{where}: hub.label_names {names} has {len(names)} entries but the dataset's label "
            f"column has {len(declared)} classes {list(declared)}"
        )
    return names
