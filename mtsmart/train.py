"""The training recipe: setup → one readable loop → results.

Per optimizer step (SMART Algorithm 1 with S inner steps inside the Bregman wrapper):
  task ← sampler;  x ← word embeddings;  f(x; θ) once (shared by L, Rs and D_Breg)
  loss = L(f(x), y) + μ·D_Breg(θ, θ̃) + [λs·Rs or another adversarial term]
  backward → clip → AdamW step → θ̃ update every S steps → log / evaluate / checkpoint.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from mtsmart import checkpoint as ckpt
from mtsmart.adversarial.base import AdversarialContext, build_adversary
from mtsmart.batch import Batch
from mtsmart.bregman import BregmanProximal
from mtsmart.config import Config, save_config
from mtsmart.data.encoding import encode_split
from mtsmart.data.loader import TaskLoader, eval_batches, subsample
from mtsmart.data.readers import read_split
from mtsmart.evaluate import EvalSet, evaluate
from mtsmart.io import atomic_write_json
from mtsmart.logger import MetricLogger
from mtsmart.model import MultiTaskModel, load_encoder, load_tokenizer, task_output
from mtsmart.perturbation import token_mask
from mtsmart.run_info import run_info, seed_everything
from mtsmart.sampler import TaskSampler
from mtsmart.schedule import linear_warmup_decay
from mtsmart.task_spec import DEFAULT_TASKS_DIR, TaskSpec, load_task_spec
from mtsmart.task_types import task_type_of


class NonFiniteLossError(FloatingPointError):
    pass


@dataclass
class TrainState:
    """The loop's own counters; all of it goes into every checkpoint."""

    step: int = 0  # optimizer steps done
    best_avg: float = -math.inf
    best_step: int = -1
    nonfinite_total: int = 0
    nonfinite_in_row: int = 0
    examples_seen: int = 0
    best_results: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- setup


def device_of() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_factory(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def load_specs(cfg: Config) -> dict[str, TaskSpec]:
    tasks_dir = Path(cfg.tasks_dir) if cfg.tasks_dir else DEFAULT_TASKS_DIR
    specs = [load_task_spec(name, tasks_dir) for name in cfg.tasks]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"tasks: a task is listed twice: {names}")
    return {s.name: s for s in specs}


def build_train_loaders(cfg: Config, specs: dict[str, TaskSpec], tokenizer) -> dict[str, TaskLoader]:
    loaders = {}
    for name, spec in specs.items():
        items = encode_split(spec, read_split(spec, "train", cfg.data), tokenizer, cfg.data.max_seq_len)
        items = subsample(items, cfg.data.train_fraction, cfg.train.seed)
        loaders[name] = TaskLoader(
            name,
            items,
            batch_size=cfg.train.batch_size // cfg.train.grad_accum,
            seed=cfg.train.seed,
            pad_token_id=tokenizer.pad_token_id,
            shuffle=True,
            group_by_length=cfg.data.group_by_length,
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


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay, none on biases and LayerNorm weights (1-dim tensors)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.train.lr, eps=cfg.train.adam_eps)


def total_steps(cfg: Config, loaders: dict[str, TaskLoader]) -> int:
    if cfg.train.max_steps > 0:
        return cfg.train.max_steps
    steps_per_epoch = sum(loader.steps_per_epoch for loader in loaders.values()) // cfg.train.grad_accum
    return max(1, int(cfg.train.epochs * steps_per_epoch))


def validate(cfg: Config) -> None:
    """Combinations that cannot work, refused before anything is loaded."""
    if cfg.train.batch_size % cfg.train.grad_accum:
        raise ValueError(f"train.batch_size {cfg.train.batch_size} must be a multiple of train.grad_accum {cfg.train.grad_accum}")
    if cfg.train.precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("train.precision=fp16 needs a CUDA device; use bf16 on the CPU")
    if not cfg.tasks:
        raise ValueError("tasks: give at least one task")


class ScalarMeter:
    """Means of scalars over a logging interval (each tag over the steps that reported it)."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, scalars: dict[str, float]) -> None:
        for tag, value in scalars.items():
            self.sums[tag] = self.sums.get(tag, 0.0) + value
            self.counts[tag] = self.counts.get(tag, 0) + 1

    def means(self) -> dict[str, float]:
        return {tag: self.sums[tag] / self.counts[tag] for tag in self.sums}


# --------------------------------------------------------------------------- one step


def train_microbatch(
    model: nn.Module,
    batch: Batch,
    adversary,
    bregman: BregmanProximal,
    backward: Callable[[torch.Tensor], None],
    autocast,
) -> dict[str, float]:
    """Forward, losses and backward of one micro-batch; returns the scalars to log."""
    task_type = task_type_of(model_core(model).specs[batch.task])
    stats: dict[str, float] = {}
    with autocast():
        embeds = model_core(model).word_embeddings(batch.input_ids)  # x (N, T, H)
        needs_clean = not adversary.replaces_task_loss or bregman.enabled
        clean = task_output(model, batch, inputs_embeds=embeds) if needs_clean else None
        task_loss = task_type.loss(clean, batch.labels) if clean is not None else None
        loss = None if adversary.replaces_task_loss else task_loss
        if bregman.enabled:
            term = bregman.term(model, batch, clean)
            loss = term.loss if loss is None else loss + term.loss
            stats["bregman/reg"] = term.divergence
        context = AdversarialContext(
            model=model,
            batch=batch,
            task_type=task_type,
            embeds=embeds,
            mask=token_mask(batch.attention_mask, embeds.dtype),
            clean_output=clean,
            task_loss=task_loss,
            loss=loss,
            backward=backward,
        )
        result = adversary(context)
    if result.loss is not None:
        backward(result.loss)
    if task_loss is not None:
        stats["loss"] = task_loss.item()
    stats["adv/loss"] = result.adv_loss
    stats["adv/delta_norm"] = result.delta_norm
    stats.update({f"adv/{k}": v for k, v in result.stats.items()})
    return stats


def model_core(model: nn.Module) -> MultiTaskModel:
    return model.module if hasattr(model, "module") else model


# --------------------------------------------------------------------------- the loop


class Trainer:
    """Holds the run's collaborators; `fit()` is the loop."""

    def __init__(self, cfg: Config, command_line: Optional[list[str]] = None):
        validate(cfg)
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.out / "config.yaml")
        atomic_write_json(self.out / "run_info.json", run_info(cfg, command_line))
        seed_everything(cfg.train.seed)
        self.device = device_of()
        self.autocast = autocast_factory(cfg.train.precision, self.device)

        self.specs = load_specs(cfg)
        self.tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.tokenizer)
        self.loaders = build_train_loaders(cfg, self.specs, self.tokenizer)
        self.eval_sets = build_eval_sets(cfg, self.specs, self.tokenizer)
        self.sampler = TaskSampler(
            list(self.specs),
            [len(loader.items) for loader in self.loaders.values()],
            cfg.data.sampling,
            cfg.data.temperature,
            cfg.train.seed,
        )
        encoder = load_encoder(
            cfg.model.name_or_path,
            len(self.tokenizer),
            cfg.model.attn_implementation,
            cfg.model.tiny_hidden_size,
            cfg.model.tiny_layers,
            cfg.model.tiny_heads,
        )
        self.model = MultiTaskModel(encoder, self.specs).to(self.device)
        self.total_steps = total_steps(cfg, self.loaders)
        self.warmup_steps = int(cfg.train.warmup_ratio * self.total_steps)
        self.bregman = BregmanProximal(build_optimizer(self.model, cfg), self.model, cfg.bregman, self.total_steps)
        self.adversary = build_adversary(cfg.adversarial, cfg.smart)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.train.precision == "fp16")
        self.state = TrainState()
        self.logger = MetricLogger(self.out / "tb")

    # ----------------------------------------------------------------- checkpoint glue

    def stateful(self) -> dict:
        """Everything that shapes the rest of the run, by name (see mtsmart.checkpoint)."""
        return {
            "model": self.model,
            "bregman": self.bregman,
            "adversary": self.adversary,
            "sampler": self.sampler,
            "loaders": self.loaders,
            "scaler": self.scaler,
            "train_state": self.state,
        }

    # ----------------------------------------------------------------- pieces of a step

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate one loss term of a micro-batch, scaled for accumulation and AMP."""
        self.scaler.scale(loss / self.cfg.train.grad_accum).backward()

    def set_lr(self) -> float:
        lr = self.cfg.train.lr * linear_warmup_decay(self.state.step, self.total_steps, self.warmup_steps)
        for group in self.bregman.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def optimizer_step(self) -> Optional[float]:
        """Clip, step, and update the teacher; None when the gradients were not finite."""
        self.scaler.unscale_(self.bregman.optimizer)
        max_norm = self.cfg.train.grad_clip if self.cfg.train.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm).item()
        if not math.isfinite(grad_norm) and not self.scaler.is_enabled():
            self.bregman.zero_grad()
            return None
        self.bregman.step_with(self.scaler)  # also updates the scaler; skips θ̃ on a skipped AMP step
        self.bregman.zero_grad()
        return grad_norm

    def note_nonfinite(self) -> None:
        self.state.nonfinite_total += 1
        self.state.nonfinite_in_row += 1
        self.logger.log("train/nonfinite_skipped", self.state.nonfinite_total, self.state.step)
        if self.cfg.train.nonfinite == "raise" or self.state.nonfinite_in_row >= self.cfg.train.max_nonfinite_in_row:
            raise NonFiniteLossError(
                f"non-finite loss or gradient at step {self.state.step} "
                f"({self.state.nonfinite_in_row} in a row, {self.state.nonfinite_total} in all); "
                f"the last good checkpoint in {self.out / 'checkpoints'} is kept"
            )

    def run_evaluation(self) -> dict[str, float]:
        results = evaluate(self.model, self.eval_sets, self.device, self.autocast)
        self.logger.log_dict({f"eval/{k}": v for k, v in results.items()}, self.state.step)
        if results["avg"] > self.state.best_avg:
            self.state.best_avg = results["avg"]
            self.state.best_step = self.state.step
            self.state.best_results = dict(results)
            ckpt.save_best(self.out, self.stateful(), self.cfg)
        return results

    def step_scalars(self, task: str, stats: list[dict[str, float]], grad_norm: float, lr: float) -> dict[str, float]:
        """This step's scalars under their TensorBoard tags (averaged over log intervals)."""
        merged = {k: sum(s[k] for s in stats) / len(stats) for k in stats[0]}
        scalars = {"train/lr": lr, "train/grad_norm": grad_norm}
        scalars.update({f"train/{key}": value for key, value in merged.items()})
        if "loss" in merged:
            scalars[f"train/{task}/loss"] = merged["loss"]
        method = self.cfg.adversarial.method
        if method != "none":
            scalars[f"train/adv/{task}/loss"] = merged["adv/loss"]
        if method == "smart":  # Rs under SMART's own names
            scalars["train/smart/reg"] = merged["adv/loss"]
            scalars[f"train/smart/{task}/reg"] = merged["adv/loss"]
            scalars["train/smart/delta_norm"] = merged["adv/delta_norm"]
        if self.bregman.enabled:
            scalars[f"train/bregman/{task}/reg"] = merged["bregman/reg"]
        return scalars

    def flush_logs(self, meter: "ScalarMeter", examples: int, seconds: float) -> None:
        scalars = meter.means()
        scalars["train/examples_per_s"] = examples / max(seconds, 1e-9)
        if self.cfg.adversarial.method == "smart":
            scalars["train/smart/skipped"] = float(self.adversary.regularizer.skipped_total)
        if self.bregman.enabled:
            scalars["train/bregman/beta"] = self.bregman.beta
            scalars["train/bregman/teacher_distance"] = self.bregman.teacher_student_distance()
        self.logger.log_dict(scalars, self.state.step)

    # ----------------------------------------------------------------- the loop

    def fit(self) -> dict:
        from tqdm.auto import tqdm

        cfg = self.cfg
        ckpt.maybe_resume(self.out, cfg, self.stateful())
        progress = tqdm(total=self.total_steps, initial=self.state.step, disable=None, desc="train", dynamic_ncols=True)
        final: dict[str, float] = {}
        meter, interval_examples, interval_start = ScalarMeter(), 0, time.perf_counter()
        self.model.train()
        while self.state.step < self.total_steps:
            lr = self.set_lr()
            task = self.sampler.next_task()
            stats, examples = [], 0
            for _ in range(cfg.train.grad_accum):
                batch = self.loaders[task].next_batch().to(self.device)
                stats.append(train_microbatch(self.model, batch, self.adversary, self.bregman, self.backward, self.autocast))
                examples += batch.num_examples
            grad_norm = self.optimizer_step()
            if grad_norm is None:
                self.note_nonfinite()
                continue  # the step is retried with the next batch; nothing was applied
            self.state.nonfinite_in_row = 0
            self.state.step += 1
            self.state.examples_seen += examples
            progress.update(1)
            meter.add(self.step_scalars(task, stats, grad_norm, lr))
            interval_examples += examples
            if self.state.step % cfg.train.log_every_steps == 0 or self.state.step == self.total_steps:
                self.flush_logs(meter, interval_examples, time.perf_counter() - interval_start)
                meter, interval_examples, interval_start = ScalarMeter(), 0, time.perf_counter()
            is_last = self.state.step == self.total_steps
            if is_last or (cfg.eval.every_steps > 0 and self.state.step % cfg.eval.every_steps == 0):
                final = self.run_evaluation()
                progress.set_postfix(avg=f"{final['avg']:.4f}")
            stopping = self.state.step == cfg.train.stop_after_steps
            if is_last or stopping or (cfg.train.save_every_steps > 0 and self.state.step % cfg.train.save_every_steps == 0):
                ckpt.save_latest(self.out, self.stateful(), cfg)
            if stopping and not is_last:
                progress.close()
                self.logger.close()
                return {"stopped_at_step": self.state.step}
        progress.close()
        if not final:  # resumed a finished run
            final = self.run_evaluation()
        results = {"final": final, "best": {**self.state.best_results, "step": self.state.best_step}}
        atomic_write_json(self.out / "results.json", results)
        self.logger.close()
        return results


def train(cfg: Config, command_line: Optional[list[str]] = None) -> dict:
    return Trainer(cfg, command_line).fit()
