"""The run's components, built from a `Config`: the one way the training recipe, the commands
that load a run (`mtsmart.components.run_dir`), the Trainer integration and the benchmarks assemble them.

    specs = load_specs(cfg); tokenizer = build_tokenizer(cfg)
    model = build_model(cfg, specs, tokenizer, device)   # MultiTaskModel on its device
    bregman = build_bregman(model, cfg, total_steps)     # AdamW inside the Bregman wrapper
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, AutoModel

from mtsmart.components import distributed
from mtsmart.regularisers.bregman import BregmanProximal
from mtsmart.options.config import Config, ConfigError
from mtsmart.options.mix import MixConfig
from mtsmart.data.encoding import encode_split
from mtsmart.data.loader import TaskLoader, eval_batches, subsample
from mtsmart.data.readers import read_split
from mtsmart.components.evaluate import EvalSet
from mtsmart.support.io import atomic_write_text
from mtsmart.model.multitask import TINY, MultiTaskModel, load_encoder, load_tokenizer, resolve_pretrained_path
from mtsmart.tasks.spec import DEFAULT_TASKS_DIR, TaskSpec, load_task_spec
from mtsmart.tasks.types import task_type_of

RUN_TASKS_DIR = "tasks"  # a run's copies of its task files: evaluation reads these, not today's tasks/


# --------------------------------------------------------------------------- device and precision


def device_of() -> torch.device:
    """The device of a one-process run (under torchrun: mtsmart.components.distributed.setup)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_factory(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A context-manager factory for the forward passes of a resolved precision (fp32, bf16, fp16)."""
    if precision == "fp32":
        return contextlib.nullcontext
    if precision not in ("bf16", "fp16"):
        raise ValueError(f"autocast_factory: precision {precision!r} is not fp32, bf16 or fp16 (resolve auto first)")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


# --------------------------------------------------------------------------- tasks and data


def load_specs(cfg: Config) -> dict[str, TaskSpec]:
    tasks_dir = Path(cfg.tasks_dir) if cfg.tasks_dir else DEFAULT_TASKS_DIR
    specs = [load_task_spec(name, tasks_dir) for name in cfg.tasks]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"tasks: a task is listed twice: {names}")
    return {s.name: s for s in specs}


def save_task_files(specs: dict[str, TaskSpec], folder: Path) -> None:
    """The run's copies of its task files, with the target scaling the run resolved appended."""
    for name, spec in specs.items():
        text = Path(spec.source_file).read_text(encoding="utf-8")
        if (spec.target_center, spec.target_scale) != (0.0, 1.0):
            text = (text.rstrip("\n") + "\n# resolved by mix.regression_targets for this run:\n"
                    f"target_center: {spec.target_center!r}\ntarget_scale: {spec.target_scale!r}\n")
        atomic_write_text(folder / f"{name}.yaml", text)


def task_loss_weights(specs: dict[str, TaskSpec], mix: MixConfig) -> dict[str, float]:
    """w_task per task: `mix.loss_weights` or the task file's `loss_weight`, × 1/log C under
    `mix.loss_scale=log_classes` for a C-way classification (Muppet; other types × 1)."""
    weights = {}
    for name, spec in specs.items():
        weight = mix.loss_weights.get(name, spec.loss_weight)
        classes = task_type_of(spec).classes(spec)
        if mix.loss_scale == "log_classes" and classes is not None:
            weight /= math.log(classes)
        weights[name] = weight
    return weights


def resolve_target_scaling(spec: TaskSpec, mode: str, train_labels: np.ndarray) -> TaskSpec:
    """A regression task's (target_center, target_scale) by `mix.regression_targets`: the midpoint
    and half-width of its score_range (the range maps to [−1, 1]), or its training labels' mean
    and standard deviation; other tasks and `raw` are returned as they are."""
    if mode == "raw" or not task_type_of(spec).scores:
        return spec
    if mode == "score_range":
        if spec.score_range is None:
            raise ValueError(f"mix.regression_targets=score_range: task {spec.name!r} has no score_range in {spec.source_file}")
        low, high = spec.score_range
        return dataclasses.replace(spec, target_center=(low + high) / 2, target_scale=(high - low) / 2)
    center, spread = float(np.mean(train_labels)), float(np.std(train_labels))
    if not spread > 0:
        raise ValueError(f"mix.regression_targets=train_stats: task {spec.name!r}'s training labels have no spread")
    return dataclasses.replace(spec, target_center=center, target_scale=spread)


def training_items(cfg: Config, specs: dict[str, TaskSpec], tokenizer) -> dict[str, list]:
    """Each task's encoded training examples, subsampled as `data.train_fraction` / `train_examples` say."""
    items = {}
    for name, spec in specs.items():
        encoded = encode_split(spec, read_split(spec, "train", cfg.data), tokenizer, cfg.data.max_seq_len)
        items[name] = subsample(encoded, cfg.data.train_fraction, cfg.train.seed, cfg.data.train_examples)
    return items


def resolve_target_scalings(cfg: Config, specs: dict[str, TaskSpec], items: dict[str, list]) -> dict[str, TaskSpec]:
    """The specs with each regression task's target scaling resolved from its training items."""
    return {name: resolve_target_scaling(spec, cfg.mix.regression_targets,
                                         np.asarray([item.label for item in items[name] if item.label is not None], dtype=float))
            for name, spec in specs.items()}


def in_loss_units(spec: TaskSpec, items: list) -> list:
    """Training items with their labels as the loss reads them (standardised regression scores)."""
    if (spec.target_center, spec.target_scale) == (0.0, 1.0):
        return items
    kind = task_type_of(spec)
    return [dataclasses.replace(item, label=float(kind.loss_target(np.float64(item.label), spec)))
            if item.label is not None else item for item in items]


def load_run_specs(run: Path, cfg: Config) -> dict[str, TaskSpec]:
    """The task definitions a run was trained with (its own copies; older runs: cfg's files)."""
    folder = run / RUN_TASKS_DIR
    if not folder.is_dir():
        return load_specs(cfg)
    return {p.stem: load_task_spec(str(p)) for p in sorted(folder.glob("*.yaml"))}


def build_train_loaders(
    cfg: Config, specs: dict[str, TaskSpec], items: dict[str, list], tokenizer,
    world: distributed.World = distributed.ONE_PROCESS,
) -> dict[str, TaskLoader]:
    """One loader per task over its `training_items`, labels in the loss's units; each rank takes
    its shard of every global micro-batch."""
    loaders = {}
    for name, spec in specs.items():
        loaders[name] = TaskLoader(
            name,
            in_loss_units(spec, items[name]),
            batch_size=cfg.train.batch_size // cfg.train.grad_accum,
            seed=cfg.train.seed,
            pad_token_id=tokenizer.pad_token_id,
            shuffle=True,
            group_by_length=cfg.data.group_by_length,
            rank=world.rank,
            world_size=world.world_size,
        )
    return loaders


def build_eval_sets(cfg: Config, specs: dict[str, TaskSpec], tokenizer) -> list[EvalSet]:
    sets = []
    for spec in specs.values():
        for eval_name, split in spec.eval_splits.items():
            items = encode_split(spec, read_split(spec, split, cfg.data), tokenizer, cfg.data.max_seq_len)
            if cfg.eval.max_examples > 0:
                items = items[: cfg.eval.max_examples]
            batches = list(eval_batches(spec.name, items, cfg.eval.batch_size, tokenizer.pad_token_id))
            sets.append(EvalSet(name=eval_name, spec=spec, batches=batches))
    return sets


def total_steps(cfg: Config, loaders: dict[str, TaskLoader]) -> int:
    if cfg.train.max_steps > 0:
        return cfg.train.max_steps
    steps_per_epoch = sum(loader.steps_per_epoch for loader in loaders.values()) // cfg.train.grad_accum
    return max(1, int(cfg.train.epochs * steps_per_epoch))


# --------------------------------------------------------------------------- model


def build_tokenizer(cfg: Config):
    return load_tokenizer(cfg.model.name_or_path, cfg.model.tokenizer)


def build_encoder(cfg: Config, vocab_size: int) -> nn.Module:
    """The pretrained encoder `model.name_or_path` names (or a random `tiny` one)."""
    model = cfg.model
    return load_encoder(
        model.name_or_path, vocab_size, model.attn_implementation, model.tiny_hidden_size, model.tiny_layers, model.tiny_heads
    )


def build_untrained_encoder(cfg: Config, vocab_size: int) -> nn.Module:
    """The encoder's architecture with untrained weights (a checkpoint supplies them)."""
    model = cfg.model
    if model.name_or_path == TINY:
        return build_encoder(cfg, vocab_size)
    config = AutoConfig.from_pretrained(resolve_pretrained_path(model.name_or_path))
    encoder = AutoModel.from_config(config, attn_implementation=model.attn_implementation)
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None  # as load_encoder: the heads read the first token
    return encoder


def build_model(cfg: Config, specs: dict[str, TaskSpec], tokenizer, device: torch.device) -> MultiTaskModel:
    """The encoder and one head per task, on `device` (heads drawn from the global RNG); refuses a
    data.max_seq_len beyond the encoder's positions before anything trains."""
    encoder = build_encoder(cfg, len(tokenizer))
    positions = usable_positions(encoder.config)
    if positions is not None and cfg.data.max_seq_len > positions:
        raise ConfigError(f"data.max_seq_len: {cfg.data.max_seq_len} is beyond the {positions} positions of "
                          f"encoder {cfg.model.name_or_path!r}; give at most {positions}")
    return MultiTaskModel(encoder, specs).to(device)


def encoder_digest(encoder: nn.Module) -> str:
    """sha256 of the encoder's weights as loaded (names, dtypes, shapes, bytes): what a resume checks
    it starts from, whatever folder, hub revision or package the weights came from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def usable_positions(config) -> int | None:
    """How many tokens an encoder with absolute positions can read (None: no such limit). RoBERTa-style
    encoders number positions from pad_token_id + 1, so two of their rows are never used."""
    total = getattr(config, "max_position_embeddings", None)
    if total is None or not getattr(config, "position_biased_input", True):
        return None  # DeBERTa with relative positions only
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert", "longformer"):
        return total - (getattr(config, "pad_token_id", 1) or 0) - 1
    return total


# --------------------------------------------------------------------------- optimisation


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay, none on biases and LayerNorm weights (1-dim tensors)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # fused=True: one kernel per step; on CPU tensors torch otherwise loops over them in Python
    # (docs/performance.md). Same update to float rounding (tests/test_throughput.py).
    return torch.optim.AdamW(groups, lr=cfg.train.lr, eps=cfg.train.adam_eps, fused=True)


def build_bregman(model: nn.Module, cfg: Config, total_updates: int) -> BregmanProximal:
    """AdamW inside the Bregman proximal wrapper (which keeps no teacher when μ = 0).
    Build it after the model is on its device (and, under DDP, wrapped)."""
    return BregmanProximal(build_optimizer(model, cfg), model, cfg.bregman, total_updates)
