"""Typed run configuration: dataclasses, loaded from YAML plus dotted `key=value` overrides.

    cfg = load_config("scripts/configs/quickstart.yaml", ["train.lr=3e-5", "tasks=[rte,stsb]"])

Unknown keys and values of the wrong type are errors that name the key. Each field's trailing
comment is its help text: `docs/configuration.md` is generated from it (mtsmart.options.doc).
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from mtsmart.support.yaml_files import DuplicateKeyError, load_yaml
from mtsmart.options.fields import check_field_types
from mtsmart.options.regularisers import (
    AdversarialConfig, FGMConfig, FGSMConfig, FreeLBConfig, GradientPenaltyConfig, PGDConfig, R3FConfig, RDropConfig,
    method_options_classes,
)
from mtsmart.options.bregman import BregmanConfig
from mtsmart.options.data import DataConfig
from mtsmart.options.mix import MixConfig
from mtsmart.options.smart import SmartConfig


# Keys renamed so that one concept has one name (docs/configuration.md): the old key is refused
# with the name(s) that replaced it.
# Where each old shared adversarial.* key went, per method (a saved config's values move to the
# section of the method it chose: renamed_to_current).
_MOVED_PER_METHOD = {
    "fgsm": {"epsilon": "epsilon", "weight": "weight", "scope": "scope"},
    "fgm": {"epsilon": "epsilon", "weight": "weight", "scope": "scope", "norm": "norm"},
    "pgd": {"epsilon": "epsilon", "step_size": "step_size", "steps": "steps", "norm": "norm", "weight": "weight", "scope": "scope"},
    "freelb": {"epsilon": "epsilon", "step_size": "step_size", "steps": "steps", "norm": "norm", "init": "init", "init_scale": "init_scale"},
    "gradient_penalty": {"epsilon": "epsilon", "weight": "weight"},
    "r3f": {"init": "init", "init_scale": "init_scale", "weight": "weight"},
    "rdrop": {"weight": "alpha"},
}


def _successors(old_key: str) -> tuple[str, ...]:
    """The per-method keys that replaced adversarial.<old_key>."""
    return tuple(f"{method}.{moved[old_key]}" for method, moved in _MOVED_PER_METHOD.items() if old_key in moved)


# Keys renamed so that one concept has one name (docs/configuration.md): the old key is refused
# with the name(s) that replaced it.
RENAMED_KEYS: dict[str, tuple[str, ...]] = {
    "smart.noise_std": ("smart.init_scale",),
    "data.sampling": ("mix.sampling",),  # task sampling moved beside the rest of task balancing
    "data.temperature": ("mix.temperature",),
    # The shared adversarial.* options became one section per method (each key one meaning).
    "adversarial.alpha": _successors("step_size"),
    **{f"adversarial.{key}": _successors(key)
       for key in ("step_size", "steps", "epsilon", "norm", "scope", "init", "init_scale", "weight")},
}
RENAMED_VALUES = {"smart.level": {"sentence": "example"}}
# Keys whose default changed after they were added: what a saved config without the key ran with
# (a checkpoint from before the key existed resumes as it ran).
EARLIER_DEFAULTS = {"model.dropout_masks": "torch"}

_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key."""


def check_range(section: str, obj: Any, rules: dict[str, tuple[str, Any]]) -> None:
    """Each field against its rule: (">=", x), (">", x), ("in [0, 1)", None), ("finite > 0", None).

    Raises ValueError naming `section.field`, the value and what is allowed (the config loader
    turns it into a one-line ConfigError before anything is loaded or written).
    """
    for name, (rule, bound) in rules.items():
        value = getattr(obj, name)
        finite = isinstance(value, int) or math.isfinite(value)
        ok = {
            ">=": lambda: finite and value >= bound,
            ">": lambda: finite and value > bound,
            "in [0, 1)": lambda: finite and 0 <= value < 1,
            "in [0, 1]": lambda: finite and 0 <= value <= 1,
        }[rule]()
        if not ok:
            allowed = f"{rule} {bound}" if bound is not None else rule
            raise ValueError(f"{section}.{name}: {value!r} is out of range; allowed: {allowed}")


@dataclass
class ModelConfig:
    name_or_path: str = "minilm"  # hub id, local folder, `minilm` (packaged all-MiniLM-L6-v2) or `tiny` (random); its weights train in float32 whatever dtype they were saved in (`train.precision` sets the compute dtype)
    tokenizer: Optional[str] = None  # tokenizer source when it differs (default: the encoder's; `minilm` for tiny)
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"  # sdpa = PyTorch's fused attention
    dropout_masks: Literal["auto", "torch", "packed"] = "auto"  # packed: two masks per 64-bit random draw, bf16 steps 10-17% faster on a CPU, dev scores as torch's (a random stream of its own; docs/performance.md); auto: packed on a CPU, torch on CUDA (fused kernels there), and a resumed run keeps the masks it started with (torch if it was saved before this option existed)
    tiny_hidden_size: int = 64  # size of the `tiny` encoder
    tiny_layers: int = 2  # layers of the `tiny` encoder
    tiny_heads: int = 2  # attention heads of the `tiny` encoder
    init_from: str = ""  # a finished run (its latest checkpoint) or a checkpoint folder whose encoder this run starts from (MT-DNN's second stage)
    init_heads: Literal["new", "carry"] = "new"  # with init_from: fresh task heads, or the source's heads for the tasks it trained

    def __post_init__(self) -> None:
        check_field_types("model", self)
        check_range("model", self, {"tiny_hidden_size": (">=", 1), "tiny_layers": (">=", 1), "tiny_heads": (">=", 1)})
        if self.init_heads == "carry" and not self.init_from:
            raise ValueError("model.init_heads=carry needs model.init_from (the run whose heads to carry)")
        if self.tiny_hidden_size % self.tiny_heads:
            raise ValueError(f"model.tiny_hidden_size: {self.tiny_hidden_size} must be a multiple of model.tiny_heads {self.tiny_heads}")


@dataclass
class TrainConfig:
    batch_size: int = 32  # examples per optimizer step (all ranks and accumulation steps together)
    grad_accum: int = 1  # micro-batches per optimizer step (all from the step's task)
    lr: float = 5e-5  # peak learning rate of AdamW
    weight_decay: float = 0.01  # decoupled; not applied to biases and LayerNorm weights
    adam_eps: float = 1e-6  # AdamW ε
    epochs: float = 3.0  # passes over the sum of the training sets (ignored when max_steps > 0)
    max_steps: int = 0  # optimizer steps; 0 = derive from epochs
    warmup_ratio: float = 0.1  # fraction of steps of linear warm-up, then linear decay to 0
    grad_clip: float = 1.0  # max global gradient l2 norm; 0 = no clipping
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # autocast dtype; auto: bf16 where the GPU/CPU computes it natively, else fp32 (fp16 uses a GradScaler)
    seed: int = 42  # seeds weights of the heads, dropout, the task sampler and every loader
    log_every_steps: int = 10  # TensorBoard scalars every this many steps
    save_every_steps: int = 0  # write a checkpoint every this many steps (0 = only at the end)
    keep_checkpoints: int = 2  # most recent step checkpoints kept (the best one is kept apart)
    resume: str = ""  # "" = start fresh, "auto" = latest checkpoint in output_dir, or a checkpoint path
    stop_after_steps: int = 0  # end this process once the run reaches this optimizer step, with a checkpoint (0 = never)
    resume_force: bool = False  # resume even when the checkpoint's config, a task file or the encoder's weights differ
    nonfinite: Literal["skip", "raise"] = "skip"  # a non-finite loss/gradient: skip the step, or stop
    max_nonfinite_in_row: int = 10  # stop after this many skipped steps in a row
    task_gradients_every: int = 0  # every this many steps, log each task's encoder-gradient norm and its cosine with every task's recent gradient (docs/tensorboard.md; 0 = off)
    record_step_times: bool = False  # write step_times.tsv: each optimizer step's examples, padded tokens and end time, wall and CPU (benchmarks; mtsmart/components/step_times.py)
    threads: int = 0  # intra-op CPU threads of this process; 0 = OMP_NUM_THREADS if set, else the cores not busy at start (cores − busy cores measured over 0.25 s, at least 1; mtsmart/support/threads.py)
    keep_freed_memory: bool = True  # glibc/Linux: malloc keeps memory freed between steps instead of re-faulting it (CPU speed; mtsmart/support/allocator.py)

    def __post_init__(self) -> None:
        check_field_types("train", self)
        check_range("train", self, {
            "batch_size": (">=", 1), "grad_accum": (">=", 1), "lr": (">", 0), "weight_decay": (">=", 0),
            "adam_eps": (">", 0), "max_steps": (">=", 0), "warmup_ratio": ("in [0, 1)", None),
            "grad_clip": (">=", 0), "seed": (">=", 0), "log_every_steps": (">=", 1), "save_every_steps": (">=", 0), "task_gradients_every": (">=", 0),
            "keep_checkpoints": (">=", 1), "stop_after_steps": (">=", 0), "max_nonfinite_in_row": (">=", 1),
            "threads": (">=", 0),
        })
        if self.max_steps == 0:  # epochs decide the length only without max_steps
            check_range("train", self, {"epochs": (">", 0)})
        if self.batch_size % self.grad_accum:
            raise ValueError(f"train.batch_size: {self.batch_size} must be a multiple of train.grad_accum {self.grad_accum}")


@dataclass
class EvalConfig:
    every_steps: int = 0  # evaluate every this many steps (0 = only at the end)
    batch_size: int = 64  # evaluation batch size
    max_examples: int = 0  # evaluate on the first N examples of each dev set (0 = all)

    def __post_init__(self) -> None:
        check_field_types("eval", self)
        check_range("eval", self, {"every_steps": (">=", 0), "batch_size": (">=", 1), "max_examples": (">=", 0)})


PACKAGE_DIR = Path(__file__).resolve().parents[1]  # mtsmart/
CHECKOUT_DIR = PACKAGE_DIR.parent
# A checkout's own folders: a run written into one overwrites the project's files (a task file, a test).
SOURCE_FOLDERS = ("mtsmart", "tasks", "scripts", "tests", "docs", "examples", ".git")


def check_output_dir(value: str) -> None:
    """Refuse an output_dir that would write a run over other things: empty (`output_dir=$OUT` with OUT
    unset), the current folder, the checkout itself, or a folder inside its source tree."""
    if not value.strip():
        raise ValueError("output_dir: empty; give the run's own folder, e.g. output_dir=runs/my_run")
    path = Path(value).expanduser().resolve()
    if path == Path.cwd().resolve():
        raise ValueError(f"output_dir: {value!r} is the current folder; give the run a folder of its own, e.g. runs/my_run")
    protected = [PACKAGE_DIR]
    if (CHECKOUT_DIR / "pyproject.toml").is_file():
        protected += [CHECKOUT_DIR / name for name in SOURCE_FOLDERS]
        if path == CHECKOUT_DIR:
            raise ValueError(f"output_dir: {value!r} is the mtsmart checkout itself; use a folder such as runs/my_run")
    for folder in protected:
        if path == folder or folder in path.parents:
            raise ValueError(f"output_dir: {value!r} is inside the source folder {folder}; "
                             "a run there would overwrite the project's files (use runs/...)")


@dataclass
class Config:
    tasks: list[str] = field(default_factory=lambda: ["rte"])  # task names (tasks/<name>.yaml) or YAML paths
    output_dir: str = "runs/default"  # run directory: config, logs, checkpoints, results
    tasks_dir: str = ""  # folder of task files; empty = the tasks/ folder of this checkout
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    smart: SmartConfig = field(default_factory=SmartConfig)
    bregman: BregmanConfig = field(default_factory=BregmanConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    fgsm: FGSMConfig = field(default_factory=FGSMConfig)
    fgm: FGMConfig = field(default_factory=FGMConfig)
    pgd: PGDConfig = field(default_factory=PGDConfig)
    freelb: FreeLBConfig = field(default_factory=FreeLBConfig)
    gradient_penalty: GradientPenaltyConfig = field(default_factory=GradientPenaltyConfig)
    r3f: R3FConfig = field(default_factory=R3FConfig)
    rdrop: RDropConfig = field(default_factory=RDropConfig)
    mix: MixConfig = field(default_factory=MixConfig)

    def __post_init__(self) -> None:
        check_output_dir(self.output_dir)
        if not self.tasks:
            raise ValueError("tasks: give at least one task")
        repeated = sorted({name for name in self.tasks if self.tasks.count(name) > 1})
        if repeated:
            raise ValueError(f"tasks: {repeated[0]!r} is listed twice in {self.tasks}")
        names = {Path(task).stem for task in self.tasks}
        unknown = sorted(set(self.mix.loss_weights) - names)
        if unknown:
            raise ValueError(f"mix.loss_weights: {unknown[0]!r} is not one of this run's tasks {sorted(names)} "
                             "(with fewer tasks than the config's, give mix.loss_weights={} or the weights of the tasks kept)")

    def regulariser_options(self) -> Any:
        """The section of the method `adversarial.method` chooses (None for plain fine-tuning)."""
        return None if self.adversarial.method == "none" else getattr(self, self.adversarial.method)


# --------------------------------------------------------------------------- building from data


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """`value` checked against the annotation `tp`; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping such as {{name: value}}, got {value!r}")
        return {_coerce(k, args[0], f"{key} (a name)"): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)}")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    renamed = [prefix + key for key in unknown if prefix + key in RENAMED_KEYS]
    if renamed:
        raise ConfigError(renamed_message(renamed[0]))
    if unknown:
        raise ConfigError(f"unknown key {prefix}{unknown[0]}; known keys of {prefix.rstrip('.') or 'config'}: {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        key = prefix + name
        if isinstance(value, str) and value in RENAMED_VALUES.get(key, {}):
            raise ConfigError(f"{key}: {value!r} is now called {RENAMED_VALUES[key][value]!r} (same meaning)")
        kwargs[name] = _build(tp, value, key + ".") if dataclasses.is_dataclass(tp) else _coerce(value, tp, key)
    try:
        return cls(**kwargs)
    except ValueError as error:  # __post_init__ validation names its key
        raise ConfigError(str(error)) from None


def config_from_dict(data: dict[str, Any]) -> Config:
    return _build(Config, data, "")


def renamed_message(old: str) -> str:
    new = RENAMED_KEYS[old]
    if len(new) == 1:
        return f"{old} is now called {new[0]} (same meaning)"
    return f"{old} is now one key per method: {', '.join(new)} (docs/configuration.md)"


def renamed_to_current(data: dict[str, Any]) -> dict[str, Any]:
    """A config mtsmart itself wrote before a rename (a run's config.yaml, a checkpoint's state),
    with its old names replaced by the current ones: the meaning is the same, so such runs still
    load and resume. A config a person writes keeps getting the refusal that names the new key."""
    current = {section: dict(value) if isinstance(value, dict) else value for section, value in data.items()}
    smart, adversarial = current.get("smart"), current.get("adversarial")
    for old, new in RENAMED_KEYS.items():
        if len(new) == 1:
            _move_key(current, old, new[0])
    if isinstance(smart, dict) and "guard" not in smart and smart.get("update", "paper") != "paper" and "epsilon" in smart:
        smart["guard"] = smart.pop("epsilon")  # ε was only the division guard of these rules
    if isinstance(adversarial, dict):
        _move_adversarial_options(current, adversarial)
    for key, values in RENAMED_VALUES.items():
        section, name = key.split(".")
        block = current.get(section)
        if isinstance(block, dict) and block.get(name) in values:
            block[name] = values[block[name]]
    return current


def _move_key(current: dict[str, Any], old: str, new: str) -> None:
    """`section.key` to its new `section.key` (another section, too) in a saved config, if there."""
    old_section, old_key = old.split(".")
    new_section, new_key = new.split(".")
    block = current.get(old_section)
    if isinstance(block, dict) and old_key in block:
        target = current.setdefault(new_section, {})
        if isinstance(target, dict):
            target[new_key] = block.pop(old_key)


def _move_adversarial_options(current: dict[str, Any], adversarial: dict[str, Any]) -> None:
    """The shared adversarial.* options of a saved config into the section of the method it chose;
    the others were unused by that run and are dropped. norm `auto` was the method's default."""
    if "alpha" in adversarial:
        adversarial["step_size"] = adversarial.pop("alpha")
    method = adversarial.get("method", "smart")
    moved = {key: adversarial.pop(key) for key in list(adversarial) if key != "method"}
    if moved.get("norm") == "auto":
        del moved["norm"]
    destination = _MOVED_PER_METHOD.get(method, {})
    section = current.setdefault(method, {}) if destination else None
    for old_key, value in moved.items():
        if old_key in destination:
            section[destination[old_key]] = value


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# --------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` → (["a", "b"], value parsed as YAML: 3e-5, true, [rte,stsb], null)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = load_yaml(raw) if raw != "" else ""
    except DuplicateKeyError as error:
        raise ConfigError(f"override {text!r}: {error}") from None
    except yaml.YAMLError:
        value = raw
    # YAML 1.1 reads 3e-5 as a string (it wants 3.0e-5): accept the usual float spellings.
    if isinstance(value, str) and _FLOAT.match(value):
        value = float(value)
    return key.split("."), value


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for depth, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(path)}: {'.'.join(path[:depth + 1])} is not a section")
        node = child
    node[path[-1]] = value


def load_config(path: Optional[str | Path] = None, overrides: list[str] = (), written_by_mtsmart: bool = False) -> Config:
    """Defaults, then the YAML file (if any), then each override in order.

    written_by_mtsmart: the file is a run's own config.yaml, whose names from before a rename are
    read as the current ones (`renamed_to_current`)."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        with open(path, encoding="utf-8") as handle:
            try:
                data = load_yaml(handle) or {}
            except yaml.YAMLError as error:
                raise ConfigError(f"{path}: not valid YAML: {error}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a config file must hold a mapping")
        if written_by_mtsmart:
            data = renamed_to_current(data)
    for text in overrides:
        apply_override(data, *parse_override(text))
    try:
        return config_from_dict(data)
    except ConfigError as error:
        raise ConfigError(f"{_source_of(error, path, overrides)}{error}") from None


def _source_of(error: ConfigError, path: Optional[Path], overrides: list[str]) -> str:
    """Where the key an error names came from: the command-line override that set it, else the file
    (a typo on the command line is not an error of quickstart.yaml)."""
    for text in reversed(overrides):  # the last override of a key is the one that counts
        key = text.split("=", 1)[0]
        if re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", str(error)):
            return f"override {text!r}: "
    return f"{path}: " if path is not None else ""


def save_config(cfg: Config, path: Path) -> None:
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    from mtsmart.support.io import atomic_write_text

    atomic_write_text(path, text)
