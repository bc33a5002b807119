"""The configuration reference, generated from the config dataclasses: `python -m mtsmart.options.doc > docs/configuration.md`.

Each key's help text is the field's trailing comment in the source (read with ast + tokenize,
never by running anything but the class definitions already imported); a field without a
trailing comment takes the comment lines right above it. Defaults are computed with the
MTSMART_* environment variables unset, so the page does not depend on who generates it.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import os
import sys
import textwrap
import tokenize
import typing
from typing import Any, Literal

from mtsmart.options.config import RENAMED_KEYS, RENAMED_VALUES, Config

HEADER = """# Configuration reference

Generated from the config dataclasses by `python -m mtsmart.options.doc > docs/configuration.md`;
do not edit by hand (tests/test_config_doc.py checks it is current). Keys are set in a YAML file
or as dotted `key=value` overrides: `mtsmart train config.yaml train.lr=3e-5 tasks=[rte,stsb]`.
Defaults are shown with no `MTSMART_*` environment variable set (`MTSMART_DATA` becomes the
default of `data.root`).
"""


class UndocumentedFieldError(ValueError):
    pass


def field_comments(cls: type) -> dict[str, str]:
    """{field name: help text} from the comments of `cls`'s source."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments: dict[int, str] = {}  # line number → comment text
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    found: dict[str, str] = {}
    for node in ast.parse(source).body[0].body:
        target = getattr(node, "target", None)
        if target is None or not hasattr(target, "id"):
            continue
        trailing = comments.get(node.end_lineno)
        if trailing is not None and lines[node.end_lineno - 1].lstrip().startswith("#"):
            trailing = None  # a comment line of its own, not trailing
        found[target.id] = trailing or _comments_above(node.lineno, lines, comments)
    return found


def _comments_above(lineno: int, lines: list[str], comments: dict[int, str]) -> str:
    above = []
    line = lineno - 1
    while line >= 1 and lines[line - 1].lstrip().startswith("#"):
        above.insert(0, comments[line])
        line -= 1
    return " ".join(above)


def type_text(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is typing.Union or type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return f"{type_text(inner[0])} or null"
    if origin is list:
        return f"list of {type_text(args[0])}"
    if origin is dict:
        return f"mapping of {type_text(args[0])} → {type_text(args[1])}"
    return getattr(tp, "__name__", str(tp))


def default_text(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    else:
        value = field.default_factory()
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, list):
        return "`[" + ", ".join(str(v) for v in value) + "]`"
    return f"`{value}`"


def section_rows(cls: type, prefix: str) -> tuple[list[str], list[tuple[str, type]]]:
    """Table rows of `cls`'s plain fields, and its nested config sections (name, class)."""
    hints = typing.get_type_hints(cls)
    help_texts = field_comments(cls)
    rows, sections = [], []
    for field in dataclasses.fields(cls):
        tp = hints[field.name]
        if dataclasses.is_dataclass(tp):
            sections.append((prefix + field.name, tp))
            continue
        help_text = help_texts.get(field.name, "")
        if not help_text:
            raise UndocumentedFieldError(f"{cls.__module__}.{cls.__name__}.{field.name} has no help comment")
        cell = help_text.replace("|", "\\|")  # a bare | would split the table cell
        rows.append(f"| `{prefix}{field.name}` | {type_text(tp)} | {default_text(field)} | {cell} |")
    return rows, sections


def table(title: str, rows: list[str], source: str) -> str:
    head = ["| key | type | default | meaning |", "|---|---|---|---|"]
    return "\n".join([f"## {title}", "", f"From `{source}`.", "", *head, *rows, ""])


def renamed() -> str:
    """The old names a config may still hold: each is refused with a message naming the new one."""
    rows = [f"| `{old}` | {', '.join(f'`{name}`' for name in new)} |" for old, new in RENAMED_KEYS.items()]
    rows += [f"| `{key}: {old}` | `{key}: {new}` |" for key, values in RENAMED_VALUES.items() for old, new in values.items()]
    return "\n".join(["## Renamed", "",
                      "One name per concept: in a config you write these old names are refused with the new one; a run "
                      "mtsmart wrote before the rename (its config.yaml, its checkpoints) still loads and resumes, read "
                      "with the new names. An old `adversarial.*` key of a saved run goes to the section of the method "
                      "that run chose.", "",
                      "| old | new |", "|---|---|", *rows, ""])


def generate() -> str:
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("MTSMART_")}
    try:
        rows, sections = section_rows(Config, "")
        parts = [HEADER, table("Top level", rows, f"{Config.__module__}.{Config.__name__}")]
        for name, cls in sections:
            rows, nested = section_rows(cls, name + ".")
            if nested:
                raise ValueError(f"{cls.__name__}: sections nest one level only")
            parts.append(table(f"`{name}`", rows, f"{cls.__module__}.{cls.__name__}"))
        parts.append(renamed())
        return "\n".join(parts)
    finally:
        os.environ.update(saved)


if __name__ == "__main__":
    sys.stdout.write(generate())
