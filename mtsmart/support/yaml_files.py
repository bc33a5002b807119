"""YAML as mtsmart reads it: safe, and a key given twice in one mapping is an error.

PyYAML keeps the last of two equal keys silently, so a second `train:` block replaces the first
(and a study's variant listed twice disappears). Every config, task and study file is read here.
"""
from __future__ import annotations

from typing import Any, IO

import yaml


class DuplicateKeyError(yaml.YAMLError):
    """A mapping with a key given twice; the message names the key and both lines (one line)."""


class _StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` merges; its keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise DuplicateKeyError(f"key {key!r} is given twice in one mapping, at lines {seen[key]} and {line}")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(source: str | IO[str]) -> Any:
    """yaml.safe_load, refusing a key given twice in one mapping (DuplicateKeyError)."""
    return yaml.load(source, Loader=_StrictLoader)
