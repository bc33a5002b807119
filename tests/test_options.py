"""Each option key has one meaning: the chooser only chooses, each method's section configures
that method alone, and every key of a section changes the method it builds."""
from __future__ import annotations

import dataclasses
import re
import typing

import pytest

from mtsmart.options.regularisers import METHODS, AdversarialConfig, method_options_classes
from mtsmart.regularisers.registry import build_adversary
from mtsmart.options.config import Config, ConfigError, load_config
from mtsmart.options.doc import field_comments
from mtsmart.options.smart import SmartConfig
from mtsmart.tasks.types import TASK_TYPES

SECTIONS = {name: cls for name, cls in method_options_classes().items() if cls is not None}
# How a method's name is written in prose (its paper's spelling too).
SPELLINGS = {"smart": ["smart", "rs"], "fgsm": ["fgsm"], "fgm": ["fgm"], "pgd": ["pgd"], "freelb": ["freelb"],
             "gradient_penalty": ["gradient_penalty", "gradient penalty"], "r3f": ["r3f"], "rdrop": ["rdrop", "r-drop"]}


def test_the_chooser_only_chooses():
    assert [f.name for f in dataclasses.fields(AdversarialConfig)] == ["method"]


def test_every_method_has_a_section_of_its_name_in_the_config():
    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    hints = typing.get_type_hints(Config)
    for name, cls in SECTIONS.items():
        assert name in sections and hints[name] is cls
    assert set(SPELLINGS) == set(METHODS) - {"none"}


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_a_section_s_help_names_no_other_method(section):
    """A key whose help names another method is a key shared between methods."""
    others = [spelling for name, spellings in SPELLINGS.items() if name != section for spelling in spellings]
    for key, text in field_comments(SECTIONS[section]).items():
        for spelling in others:
            assert not re.search(rf"(?<![\w-]){re.escape(spelling)}(?![\w-])", text, re.IGNORECASE), \
                f"{section}.{key}'s help names {spelling!r}: {text}"


def changed(value, annotation):
    """Another valid value of a field: a different choice, twice a number, the other boolean."""
    if typing.get_origin(annotation) is typing.Literal:
        return next(choice for choice in typing.get_args(annotation) if choice != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    return value * 2 if value else 0.5


@pytest.mark.parametrize("section", sorted(set(SECTIONS) - {"smart"}))
def test_every_key_of_a_section_changes_the_method_it_builds(section):
    """No key is parsed and ignored: each one, changed alone, changes the built method's state."""
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)

    def built(options):
        method = build_adversary(options, TASK_TYPES.values())
        return type(method), {k: v for k, v in vars(method).items() if k != "generator"}

    default = built(cls())
    for field in dataclasses.fields(cls):
        value = changed(getattr(cls(), field.name), hints[field.name])
        assert built(cls(**{field.name: value})) != default, f"{section}.{field.name}={value!r} changes nothing"


def test_smart_radius_and_guard_are_two_keys_each_refused_where_it_has_no_meaning():
    with pytest.raises(ConfigError, match=r"smart\.epsilon is the projection radius of smart\.update=paper.*smart\.guard"):
        load_config(None, ["smart.update=release", "smart.epsilon=1e-6"])
    with pytest.raises(ConfigError, match=r"smart\.guard is the division guard.*smart\.epsilon"):
        load_config(None, ["smart.update=paper", "smart.guard=1e-6"])
    assert load_config(None, ["smart.update=release", "smart.guard=1e-6"]).smart.guard == 1e-6
    assert SmartConfig(epsilon=1e-3).epsilon == 1e-3


@pytest.mark.parametrize("override, key", [
    ("fgm.epsilon=-1", "fgm.epsilon"), ("pgd.steps=0", "pgd.steps"), ("freelb.init=laplace", "freelb.init"),
    ("rdrop.alpha=.nan", "rdrop.alpha"), ("r3f.weight=-2", "r3f.weight"), ("fgsm.scope=row", "fgsm.scope"),
    ("pgd.steps=1.5", "pgd.steps"), ("gradient_penalty.epsilon=0", "gradient_penalty.epsilon"),
])
def test_a_bad_value_is_refused_in_one_line_naming_its_key(override, key):
    with pytest.raises(ConfigError, match=re.escape(key)) as caught:
        load_config(None, [override])
    assert "\n" not in str(caught.value)
