"""The training recipe: setup → one readable loop → results.

Per optimizer step (SMART Algorithm 1 with S inner steps inside the Bregman wrapper):
  task ← sampler;  micro-batches → `mtsmart.step.objective.Objective` (forward, L + μ·D_Breg + the
  regulariser's term, backward);  clip → AdamW step → θ̃ update every S steps → log / evaluate /
  checkpoint.

The components come from `mtsmart.components.build`; this module is the recipe only, and only the CLI
imports it. Under torchrun (docs/distributed.md) every rank draws the same task and trains on
its shard of the global batch; gradients are averaged over ranks (mtsmart.components.distributed); rank 0
alone logs and writes files.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from mtsmart.components import build
from mtsmart.components import checkpoint as ckpt
from mtsmart.components import distributed
from mtsmart.components import warm_start
from mtsmart.regularisers.registry import build_adversary
from mtsmart.support.allocator import keep_freed_memory
from mtsmart.options.config import Config, ConfigError, renamed_to_current, save_config
from mtsmart.support.io import atomic_write_json, check_writable_dir
from mtsmart.components.logger import MetricLogger, ScalarMeter
from mtsmart.model.multitask import unwrap
from mtsmart.model.packed_dropout import resolve_dropout_masks, use_packed_dropout
from mtsmart.support.precision import resolve_precision
from mtsmart.support.run_lock import FolderLock
from mtsmart.support.threads import choose_threads
from mtsmart.components.progress import evaluation_line, progress_line
from mtsmart.components.run_info import run_info, seed_everything
from mtsmart.arithmetic.metrics import glue_average
from mtsmart.components.sampler import TaskSampler
from mtsmart.components.task_gradients import TaskGradientMonitor
from mtsmart.arithmetic.schedule import linear_warmup_decay
from mtsmart.data.loader import derive_seed
from mtsmart.step.objective import Objective
from mtsmart.components.step_times import StepTimes
from mtsmart.tasks.types import task_types_of


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
    # A multi-task run's best per task by its own dev score: {task: {"step", "score", "results"}}.
    best_per_task: dict = field(default_factory=dict)


def validate(cfg: Config, world_size: int) -> None:
    """Combinations that cannot work, refused before anything is loaded."""
    if (cfg.train.batch_size // cfg.train.grad_accum) % world_size:
        raise ConfigError(
            f"train.batch_size {cfg.train.batch_size} / train.grad_accum {cfg.train.grad_accum} must be a multiple "
            f"of the {world_size} processes (train.batch_size is the global batch, split evenly over the ranks)"
        )
    if cfg.train.precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.precision=fp16 needs a CUDA device; use bf16 on the CPU")


# --------------------------------------------------------------------------- the loop


class Trainer:
    """Holds the run's collaborators; `fit()` is the loop."""

    def __init__(self, cfg: Config, command_line: Optional[list[str]] = None):
        self.world, self.device = distributed.setup()
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.resolve_settings()
        self.check_destination()
        # Process-wide and for the process's lifetime: glibc keeps the memory a step frees.
        self.keeps_freed_memory = cfg.train.keep_freed_memory and keep_freed_memory()
        seed_everything(cfg.train.seed)  # the same weights on every rank (DDP also broadcasts rank 0's)
        self.autocast = build.autocast_factory(cfg.train.precision, self.device)
        self.set_up_tasks()
        self.set_up_model()
        self.set_up_optimisation()
        self.set_up_records(command_line)
        distributed.barrier()

    def resolve_settings(self) -> None:
        """Precision and threads resolved before anything is compared or written (config.yaml records
        what ran); the whole config checked."""
        cfg = self.cfg
        cfg.train.precision, why = resolve_precision(cfg.train.precision, self.device)
        threads, threads_why = choose_threads(cfg.train.threads)
        torch.set_num_threads(threads)
        if self.world.is_main:
            print(f"precision: {cfg.train.precision} ({why})", flush=True)
            print(f"threads: {threads} ({threads_why})", flush=True)
        validate(cfg, self.world.world_size)

    def check_destination(self) -> None:
        """The output folder, a resume and a warm start checked before anything is loaded or written:
        a refusal loses nothing already in the folder."""
        if self.world.is_main:
            check_writable_dir(self.out)  # a file, or nowhere to write: said now, not after loading
        self.resume_from = self.find_resume()
        # A fresh run's warm start (model.init_from) is checked now too; a resumed one has its weights.
        self.warm = warm_start.source_of(self.cfg) if self.cfg.model.init_from and self.resume_from is None else None

    def set_up_tasks(self) -> None:
        """Task specs, the regulariser (its options checked against the task types before anything
        is loaded), tokenised data, loaders, the task sampler and the task weights."""
        cfg = self.cfg
        self.specs = build.load_specs(cfg)
        self.adversary = build_adversary(cfg.regulariser_options(), task_types_of(self.specs))
        self.tokenizer = build.build_tokenizer(cfg)
        items = build.training_items(cfg, self.specs, self.tokenizer)
        # Regression targets standardised for the loss (mix.regression_targets) are resolved into the specs.
        self.specs = build.resolve_target_scalings(cfg, self.specs, items)
        self.loaders = build.build_train_loaders(cfg, self.specs, items, self.tokenizer, self.world)
        self.eval_sets = build.build_eval_sets(cfg, self.specs, self.tokenizer)
        self.total_steps = build.total_steps(cfg, self.loaders)
        # The same seed on every rank: all ranks draw the same task at every step.
        self.sampler = TaskSampler(list(self.specs), [len(loader.items) for loader in self.loaders.values()],
                                   cfg.mix, self.total_steps, cfg.train.seed)
        self.task_weights = build.task_loss_weights(self.specs, cfg.mix)
        if self.world.is_main and len(self.specs) > 1:
            print("tasks: " + ", ".join(f"{task} p={p:.3f} w={self.task_weights[task]:.3g}" for task, p in
                                        zip(self.sampler.tasks, self.sampler.probabilities(0).tolist())), flush=True)

    def set_up_model(self) -> None:
        """The encoder and heads (fresh, or warm-started from model.init_from), checked against a
        resume's encoder, wrapped for DDP; the negative-transfer diagnostics on rank 0."""
        cfg = self.cfg
        model = build.build_model(cfg, self.specs, self.tokenizer, self.device)
        if cfg.model.dropout_masks == "packed":  # training's masks only: evaluation is the same either way
            use_packed_dropout(model, cfg.model.attn_implementation)
            if self.device.type == "cuda" and self.world.is_main:
                print("note: model.dropout_masks=packed is for CPUs; on cuda torch's fused dropout and attention "
                      "are faster (docs/performance.md, \"Packed dropout masks\")", flush=True)
        # The pretrained weights the run starts from; a resume refuses others (issue 31).
        self.encoder_digest = build.encoder_digest(model.encoder)
        if self.resume_from is not None:
            ckpt.check_encoder(self.resume_from, self.encoder_digest, cfg)
        self.head_origins = {} if self.warm is None else warm_start.warm_start(model, cfg, self.warm)
        if self.head_origins and self.world.is_main:
            print(f"init_from: {self.warm.checkpoint} (step {self.warm.step}); heads: "
                  + ", ".join(f"{task} {origin}" for task, origin in self.head_origins.items()), flush=True)
        self.model = distributed.wrap(model, self.device)
        # Gradients are equal on every rank after averaging: rank 0 alone diagnoses and logs them.
        self.task_gradients = (TaskGradientMonitor(self.specs, cfg.train.task_gradients_every, model.encoder)
                               if cfg.train.task_gradients_every > 0 and self.world.is_main else None)

    def set_up_optimisation(self) -> None:
        """Random streams per rank, the teacher and optimizer, the objective, the train state — and
        all of it from the checkpoint when resuming."""
        cfg = self.cfg
        # Dropout and SMART's noise: an independent stream per rank (rank 0's is the one-process one).
        seed_everything(cfg.train.seed + self.world.rank)
        self.warmup_steps = int(cfg.train.warmup_ratio * self.total_steps)
        # θ̃ is copied from the (broadcast) parameters, so it is identical on every rank.
        self.bregman = build.build_bregman(self.model, cfg, self.total_steps)
        # DDP's hooks average the gradients in a backward only when it is the micro-batch's only one.
        self.ddp_reduces = not self.adversary.extra_backward
        self.backward_calls = 0
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.train.precision == "fp16")
        # Private streams per rank, as the global one is (rank 0's is the one-process one).
        self.objective = Objective(self.adversary, self.bregman, self.backward, self.autocast, self.task_weights,
                                   seed=derive_seed(cfg.train.seed, self.world.rank))
        self.state = TrainState()
        if self.resume_from is not None:
            ckpt.load(self.resume_from, self.stateful(), cfg, self.world.rank, self.world.world_size)

    def set_up_records(self, command_line: Optional[list[str]]) -> None:
        """TensorBoard, the step clock and the run's files (a resumed run writes its own config,
        run_info and step times beside the first ones)."""
        self.files_suffix = "" if self.resume_from is None else f".resumed_step_{self.state.step}"
        self.logger = MetricLogger(self.out / "tb" if self.world.is_main else None)
        self.step_times = StepTimes() if self.cfg.train.record_step_times and self.world.is_main else None
        if self.world.is_main:
            self.write_run_files(command_line)

    def find_resume(self) -> Optional[Path]:
        """The checkpoint to continue (checked against this run, model.dropout_masks=auto resolved
        against it first), or None for a fresh run."""
        directory, notes = ckpt.resume_directory(self.out, self.cfg) if self.world.is_main else (None, [])
        directory = distributed.broadcast_object(directory)  # rank 0 alone cleans up and chooses
        seen = distributed.gather_objects(str(directory))
        if len(set(seen)) > 1:
            raise ckpt.CheckpointError(
                f"ranks see different checkpoints to resume {seen}: output_dir must be on a filesystem shared by all machines"
            )
        self.resolve_dropout_masks(directory)
        if directory is None:
            ckpt.refuse_overwrite(self.out)
        else:
            ckpt.check_compatible(directory, self.cfg, self.world.world_size)
        if self.world.is_main:
            for note in notes:
                print(f"resume: {note}", flush=True)
            if self.cfg.train.resume:
                print(f"resume: from {directory}" if directory is not None
                      else f"resume: no checkpoint in {self.out / 'checkpoints'}, starting fresh", flush=True)
        return directory

    def resolve_dropout_masks(self, resume_from: Optional[Path]) -> None:
        """model.dropout_masks=auto resolved before the checkpoint is compared (config.yaml records what ran)."""
        resumed = None if resume_from is None else renamed_to_current(ckpt.read_state(resume_from)["config"])
        self.cfg.model.dropout_masks, why = resolve_dropout_masks(self.cfg.model.dropout_masks, self.device, resumed)
        if self.world.is_main:
            print(f"dropout masks: {self.cfg.model.dropout_masks} ({why})", flush=True)

    def write_run_files(self, command_line: Optional[list[str]]) -> None:
        """config.yaml and run_info.json; a resumed run adds its own copies beside the first ones."""
        self.out.mkdir(parents=True, exist_ok=True)
        suffix = self.files_suffix
        save_config(self.cfg, self.out / f"config{suffix}.yaml")
        info = {**run_info(self.cfg, command_line), "world_size": self.world.world_size,
                "precision": self.cfg.train.precision,
                "malloc_keeps_freed_memory": self.keeps_freed_memory,
                "task_loss_weights": self.task_weights,
                "init_from": None if self.warm is None else {"checkpoint": str(self.warm.checkpoint), "step": self.warm.step,
                                                             "heads": self.head_origins},
                "task_probabilities_at_start": dict(zip(self.sampler.tasks, self.sampler.probabilities(0).tolist()))}
        if self.resume_from is not None:
            info["resumed_from"] = str(self.resume_from)
        atomic_write_json(self.out / f"run_info{suffix}.json", info)
        if self.resume_from is None:
            build.save_task_files(self.specs, self.out / build.RUN_TASKS_DIR)

    # ----------------------------------------------------------------- checkpoint glue

    def stateful(self) -> dict:
        """Everything that shapes the rest of the run, by name (see mtsmart.components.checkpoint)."""
        return {
            "model": unwrap(self.model),
            "bregman": self.bregman,
            "adversary": self.adversary,
            "sampler": self.sampler,
            "loaders": self.loaders,
            "scaler": self.scaler,
            "train_state": self.state,
            "task_gradients": self.task_gradients,
            "objective": self.objective,
            "encoder_digest": self.encoder_digest,
        }

    def save_checkpoint(self, best: bool = False) -> None:
        """Every rank's RNG and adversary state gathered; rank 0 writes; all wait until it is done."""
        stateful = {**self.stateful(), "ranks": distributed.gather_objects(ckpt.rank_state(self.adversary, self.objective))}
        if self.world.is_main:
            (ckpt.save_best if best else ckpt.save_latest)(self.out, stateful, self.cfg)
        distributed.barrier()

    def save_task_bests(self) -> None:
        """This step's weights for the tasks whose best it is (checkpoints/best_per_task)."""
        stateful = {**self.stateful(), "ranks": distributed.gather_objects(ckpt.rank_state(self.adversary, self.objective))}
        if self.world.is_main:
            steps = {task: best["step"] for task, best in self.state.best_per_task.items()}
            ckpt.save_task_bests(self.out, stateful, self.cfg, steps)
        distributed.barrier()

    def update_task_bests(self, results: dict[str, float]) -> None:
        """Each task's best step by that task's own dev score (the GLUE-style mean of its evaluations)."""
        if len(self.specs) < 2:
            return  # one task: `best` is its best
        improved = False
        for task, spec in self.specs.items():
            evaluations = {e.name: list(e.spec.metrics) for e in self.eval_sets if e.spec.name == task}
            score = glue_average(results, evaluations)
            if score > self.state.best_per_task.get(task, {}).get("score", -math.inf):
                keys = {f"{name}/{metric}" for name, metrics in evaluations.items() for metric in metrics}
                self.state.best_per_task[task] = {"step": self.state.step, "score": score,
                                                  "results": {k: v for k, v in results.items() if k in keys}}
                improved = True
        if improved:
            self.save_task_bests()

    # ----------------------------------------------------------------- pieces of a step

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate one loss term of a micro-batch, scaled for accumulation and AMP."""
        self.backward_calls += 1
        self.scaler.scale(loss / self.cfg.train.grad_accum).backward()

    def set_lr(self) -> float:
        lr = self.cfg.train.lr * linear_warmup_decay(self.state.step, self.total_steps, self.warmup_steps)
        for group in self.bregman.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def accumulate_gradients(self, task: str) -> tuple[list[dict[str, float]], int, int]:
        """Forward/backward of the step's micro-batches; gradients averaged over ranks at the end.

        Returns each micro-batch's scalars, and the examples and padded tokens of the step over all ranks.
        """
        stats, examples, tokens = [], 0, 0
        for micro in range(self.cfg.train.grad_accum):
            batch = self.loaders[task].next_batch().to(self.device)
            sync = self.ddp_reduces and micro == self.cfg.train.grad_accum - 1  # DDP reduces in this backward
            self.backward_calls = 0
            with distributed.gradient_sync(self.model, sync):
                stats.append(self.objective.train_microbatch(self.model, batch))
            if sync and self.world.enabled and self.backward_calls > 1:
                raise RuntimeError(
                    f"{type(self.adversary).__name__} back-propagated {self.backward_calls} times in one micro-batch "
                    "but does not declare extra_backward = True, which DDP needs to average its gradients"
                )
            examples += batch.num_examples
            tokens += batch.input_ids.numel()
        if not self.ddp_reduces:
            distributed.average_gradients(self.model)
        return stats, examples * self.world.world_size, tokens * self.world.world_size  # equal shards on every rank

    def optimizer_step(self, task: str, losses_finite: bool) -> Optional[float]:
        """Clip, step, and update the teacher; None (nothing applied) when a loss or gradient was not finite.

        All ranks decide together, so they skip the same steps and their parameters stay equal.
        """
        self.scaler.unscale_(self.bregman.optimizer)
        if self.task_gradients is not None and losses_finite and self.task_gradients.due(self.state.step + 1):
            self.logger.log_dict(self.task_gradients.observe(task), self.state.step + 1)  # before clipping
        max_norm = self.cfg.train.grad_clip if self.cfg.train.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm).item()
        finite = distributed.all_true(losses_finite and math.isfinite(grad_norm), self.device)
        if not finite and not self.scaler.is_enabled():  # with fp16 the GradScaler skips and backs off
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
            kept = ckpt.step_checkpoints(self.out)
            raise NonFiniteLossError(
                f"non-finite loss or gradient at step {self.state.step} "
                f"({self.state.nonfinite_in_row} in a row, {self.state.nonfinite_total} in all; "
                f"train.nonfinite={self.cfg.train.nonfinite}, train.max_nonfinite_in_row={self.cfg.train.max_nonfinite_in_row}); "
                f"the last good checkpoint is kept: {kept[-1] if kept else 'none was written yet'}"
            )

    def run_evaluation(self) -> dict[str, float]:
        results = distributed.evaluate_sharded(unwrap(self.model), self.eval_sets, self.device, self.autocast, self.world)
        self.logger.log_dict({f"eval/{k}": v for k, v in results.items()}, self.state.step)
        if results["avg"] > self.state.best_avg:
            self.state.best_avg = results["avg"]
            self.state.best_step = self.state.step
            self.state.best_results = dict(results)
            self.save_checkpoint(best=True)
        self.update_task_bests(results)
        return results

    def step_scalars(self, task: str, stats: list[dict[str, float]], grad_norm: float, lr: float) -> dict[str, float]:
        """This step's scalars under their TensorBoard tags (averaged over log intervals)."""
        merged = {k: sum(s[k] for s in stats) / len(stats) for k in stats[0]}
        scalars = {"train/lr": lr, "train/grad_norm": grad_norm}
        # The regulariser's and the teacher's terms keep their own sections (adv/, bregman/): under
        # train/ they sorted before train/loss and pushed it to TensorBoard's second page.
        scalars.update({(key if "/" in key else f"train/{key}"): value for key, value in merged.items()})
        if "loss" in merged:
            scalars[f"train/{task}/loss"] = merged["loss"]
        if "adv/loss" in merged:
            scalars[f"adv/{task}/loss"] = merged["adv/loss"]
        if self.bregman.enabled:
            scalars[f"bregman/{task}/reg"] = merged["bregman/reg"]
        return scalars

    def flush_logs(self, meter: "ScalarMeter", examples: int, seconds: float) -> None:
        scalars = meter.means()
        scalars["train/examples_per_s"] = examples / max(seconds, 1e-9)
        if self.bregman.enabled:
            scalars["bregman/beta"] = self.bregman.beta
            scalars["bregman/teacher_distance"] = self.bregman.teacher_student_distance()
        self.logger.log_dict(scalars, self.state.step)
        if self.plain_progress:
            print(progress_line(self.state.step, self.total_steps, scalars.get("train/loss"),
                                scalars["train/examples_per_s"], time.perf_counter() - self.fit_started,
                                self.state.step - self.fit_start_step), flush=True)

    def write_step_times(self) -> None:
        """step_times.tsv of this process's steps (a resumed run writes its own file beside it)."""
        if self.step_times is not None:
            self.step_times.write(self.out / f"step_times{self.files_suffix}.tsv")

    # ----------------------------------------------------------------- the loop

    def fit(self) -> dict:
        from tqdm.auto import tqdm

        # tqdm draws a bar on a terminal only; elsewhere (a file, a cluster log) plain lines.
        self.plain_progress = self.world.is_main and not sys.stdout.isatty()
        self.fit_started, self.fit_start_step = time.perf_counter(), self.state.step

        progress = tqdm(
            total=self.total_steps, initial=self.state.step, disable=None if self.world.is_main else True,
            desc="train", dynamic_ncols=True,
        )
        try:
            return self.loop(progress)
        finally:
            progress.close()
            self.logger.close()

    def loop(self, progress) -> dict:
        cfg = self.cfg
        final: dict[str, float] = {}
        meter, interval_examples, interval_start = ScalarMeter(), 0, time.perf_counter()
        self.model.train()
        while self.state.step < self.total_steps:
            lr = self.set_lr()
            task = self.sampler.next_task(self.state.step)
            stats, examples, tokens = self.accumulate_gradients(task)
            grad_norm = self.optimizer_step(task, all(math.isfinite(v) for s in stats for v in s.values()))
            if grad_norm is None:
                self.note_nonfinite()
                continue  # the step is retried with the next batch; nothing was applied
            self.state.nonfinite_in_row = 0
            self.state.step += 1
            self.state.examples_seen += examples
            if self.step_times is not None:
                self.step_times.record(self.state.step, examples, tokens)
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
                if self.world.is_main:  # tqdm.write keeps a terminal's bar intact
                    progress.write(evaluation_line(self.state.step, self.total_steps, final,
                                                   self.state.best_avg, self.state.best_step))
                    sys.stdout.flush()  # a log piped to a file shows the scores now, not at exit
            stopping = self.state.step == cfg.train.stop_after_steps
            if is_last or stopping or (cfg.train.save_every_steps > 0 and self.state.step % cfg.train.save_every_steps == 0):
                self.save_checkpoint()
            if stopping and not is_last:
                self.write_step_times()
                return {"stopped_at_step": self.state.step}
        if not final:  # resumed a finished run
            final = self.run_evaluation()
        results = {"final": final, "best": {**self.state.best_results, "step": self.state.best_step}}
        if self.state.best_per_task:
            results["best_per_task"] = {task: {**best["results"], "step": best["step"]}
                                        for task, best in self.state.best_per_task.items()}
        if self.world.is_main:
            atomic_write_json(self.out / "results.json", results)
        self.write_step_times()
        return results


def train(cfg: Config, command_line: Optional[list[str]] = None) -> dict:
    """A run, with its output_dir locked by the main process for its whole length (one writer per
    run folder: a second process meets the lock and stops with one line; support/run_lock.py)."""
    out = Path(cfg.output_dir)
    main_process = os.environ.get("RANK", "0") == "0"
    lock = contextlib.nullcontext()
    if main_process:
        check_writable_dir(out)  # a file, or nowhere to write: said before the lock makes the folder
        lock = FolderLock(out, "output_dir")
    try:
        with lock:
            return Trainer(cfg, command_line).fit()
    finally:
        distributed.teardown()
