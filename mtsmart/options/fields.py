"""The types of an options object's plain fields, checked however it was made.

The YAML loader checks types already; an options object built in Python (the Trainer
integration's `SmartConfig(...)`) is checked here, so a NaN, an infinity, a string or a
fractional step count never reaches the arithmetic. Every options class calls it first.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any


def check_field_types(section: str, options: Any) -> None:
    """Each `int`, `float` and `bool` field of a dataclass holds one (a float: finite; an int is a
    float too; a bool is neither int nor float); ValueError naming `section.field` otherwise."""
    hints = typing.get_type_hints(type(options))
    for field in dataclasses.fields(options):
        kind, value = hints.get(field.name), getattr(options, field.name)
        if kind is bool and not isinstance(value, bool):
            raise ValueError(f"{section}.{field.name}: {value!r} must be true or false")
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{section}.{field.name}: {value!r} must be an integer")
        if kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{section}.{field.name}: {value!r} must be a number")
            if not math.isfinite(value):
                raise ValueError(f"{section}.{field.name}: {value!r} must be a finite number")
