"""docs/configuration.md is generated from the config dataclasses and is current."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, Optional

import pytest

from mtsmart.options.doc import UndocumentedFieldError, field_comments, generate, section_rows, type_text

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_docs_configuration_md_is_current():
    assert DOC.read_text(encoding="utf-8") == generate(), "regenerate: python -m mtsmart.options.doc > docs/configuration.md"


@dataclasses.dataclass
class Sample:
    # the comment above a field without a trailing one
    # spans lines
    mode: Literal["a", "b"] = "a"
    rate: float = 0.5  # a | b trailing help
    # a comment block that is not help: the next field has its own
    name: Optional[str] = None  # the name
    items: list[str] = dataclasses.field(default_factory=lambda: ["x", "y"])  # the items


@dataclasses.dataclass
class Undocumented:
    size: int = 3


def test_help_from_trailing_comment_or_the_lines_above():
    assert field_comments(Sample) == {
        "mode": "the comment above a field without a trailing one spans lines",
        "rate": "a | b trailing help",
        "name": "the name",
        "items": "the items",
    }


def test_rows_give_key_type_default_and_escaped_help():
    rows, sections = section_rows(Sample, "s.")
    assert sections == []
    assert rows == [
        '| `s.mode` | `a` \\| `b` | `"a"` | the comment above a field without a trailing one spans lines |',
        "| `s.rate` | float | `0.5` | a \\| b trailing help |",
        "| `s.name` | str or null | null | the name |",
        "| `s.items` | list of str | `[x, y]` | the items |",
    ]


def test_a_field_without_help_is_an_error():
    with pytest.raises(UndocumentedFieldError, match="Undocumented.size"):
        section_rows(Undocumented, "")


def test_type_text():
    assert type_text(bool) == "bool"
    assert type_text(Optional[int]) == "int or null"
    assert type_text(list[str]) == "list of str"


def test_defaults_do_not_depend_on_the_environment(monkeypatch):
    monkeypatch.setenv("MTSMART_DATA", "/somewhere/else")
    assert "/somewhere/else" not in generate()
    assert "| `data.root` | str | `\"data\"` |" in generate()
