"""SMART, its Bregman teacher and the adversarial family inside a `transformers.Trainer`.

    from mtsmart.recipes.hf import SmartTrainer
    from mtsmart.options.smart import SmartConfig
    from mtsmart.options.bregman import BregmanConfig

    trainer = SmartTrainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
                           regulariser=SmartConfig(weight=1.0), bregman=BregmanConfig(mu=1.0))
    trainer.train()

`model` is any `AutoModelForSequenceClassification` (classification with any number of labels,
or regression with `num_labels=1`). Each micro-batch runs mtsmart's own `Objective` — the
same clean forward, regulariser, Bregman term and backward as `mtsmart train` — on a one-task
view of the Hugging Face model (`SequenceClassifierView`); the teacher θ̃ moves after every
optimizer step the Trainer takes, and its state goes into the Trainer's checkpoints, so
`trainer.train(resume_from_checkpoint=...)` continues exactly. The regularisers' values join the
Trainer's logs under mtsmart's names (`adv/loss`, `bregman/reg`, ...; TensorBoard shows them as
`train/adv/loss`, ...). docs/hf_trainer.md has a complete script and the limits.
"""
from __future__ import annotations

import math
import os
from typing import Any, Optional

import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from mtsmart.regularisers.registry import build_adversary
from mtsmart.tasks.batch import Batch
from mtsmart.regularisers.bregman import BregmanProximal
from mtsmart.options.bregman import BregmanConfig
from mtsmart.components.logger import ScalarMeter
from mtsmart.options.smart import SmartConfig
from mtsmart.step.objective import Objective
from mtsmart.tasks.spec import TaskSpec
from mtsmart.tasks.types import task_types_of

TASK = "task"  # the view's one task name
DEFAULT_REGULARISER = object()  # `regulariser` not given: SMART's Rs with SmartConfig()'s options
STATE_FILE = "mtsmart_state.pt"  # the teacher and the regulariser's counters, beside the Trainer's files


def task_spec_of(config) -> TaskSpec:
    """The mtsmart task type a sequence-classification config means: regression for one label."""
    problem = getattr(config, "problem_type", None)
    if problem == "multi_label_classification":
        raise ValueError("mtsmart.recipes.hf: problem_type multi_label_classification is not supported (single-label or regression)")
    if config.num_labels == 1 or problem == "regression":
        return TaskSpec(name=TASK, type="regression", metrics=("pearson",))
    labels = tuple(str(i) for i in range(config.num_labels))
    return TaskSpec(name=TASK, type="classification", metrics=("accuracy",), labels=labels)


class SequenceClassifierView(nn.Module):
    """An `AutoModelForSequenceClassification` seen as mtsmart's one-task `MultiTaskModel`:
    `specs`, `encoder` (the base model, whose `.embeddings` SMART may perturb), `word_embeddings`
    and `forward(task=..., ...) -> logits`. It owns no parameters of its own.

    `runner` is the module forwards go through: the Trainer's wrapper of the same model
    (DistributedDataParallel under torchrun, so its gradient hooks see every forward), or the
    model itself when None. The Bregman teacher is copied while it is None, so the copy runs its
    own weights.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.hf = model
        self.specs = {TASK: task_spec_of(model.config)}
        self.runner: Optional[nn.Module] = None

    @property
    def encoder(self) -> nn.Module:
        return self.hf.base_model

    def word_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.hf.get_input_embeddings()(input_ids)

    def forward(self, *, task: str, attention_mask, input_ids=None, inputs_embeds=None, token_type_ids=None):
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        runner = self.hf if self.runner is None else self.runner
        return runner(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask, **extra).logits


class _TeacherSchedule(TrainerCallback):
    """θ̃ moves after every optimizer step the Trainer takes (Algorithm 1 line 14)."""

    def __init__(self, trainer: "SmartTrainer"):
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.trainer.bregman is not None and not self.trainer.accelerator.optimizer_step_was_skipped:
            self.trainer.bregman.after_optimizer_step()


class SmartTrainer(Trainer):
    """`transformers.Trainer` whose training step is mtsmart's: L + λs·Rs (or another method of
    the regulariser's family) + μ·D_Breg, with the mean teacher updated after each optimizer step.

    regulariser: the options of one method, the same dataclasses as `mtsmart train`'s sections —
    `SmartConfig` (SMART's Rs, `smart.*`; the default, at the paper's values), `FGMConfig`,
    `PGDConfig`, `FreeLBConfig`, `RDropConfig`, ... (mtsmart.options.regularisers) — or None for
    none. bregman: `BregmanConfig` (default μ = 1; `BregmanConfig(mu=0)` turns the teacher off).
    """

    def __init__(self, *args, regulariser: Any = DEFAULT_REGULARISER, bregman: Optional[BregmanConfig] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.regulariser_config = SmartConfig() if regulariser is DEFAULT_REGULARISER else regulariser
        self.bregman_config = bregman or BregmanConfig()
        self.view = SequenceClassifierView(self.model)
        self.adversary = build_adversary(self.regulariser_config, task_types_of(self.view.specs))
        self.bregman: Optional[BregmanProximal] = None  # built at the first step, when max_steps is known
        self._resume_state: Optional[str] = None
        self._meter = ScalarMeter()
        if self.args.world_size > 1 and not self.args.ddp_find_unused_parameters:
            raise ValueError(
                "mtsmart.recipes.hf.SmartTrainer under torchrun needs TrainingArguments(ddp_find_unused_parameters=True): "
                "the regularisers' extra forwards run through DistributedDataParallel before one backward"
            )
        self.add_callback(_TeacherSchedule(self))

    # ---------------------------------------------------------------- the step

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch=None) -> torch.Tensor:
        model.train()
        if self.bregman is None:
            self._build_bregman()
        self.view.runner = model  # the Trainer's wrapper of self.model (DDP under torchrun)
        inputs = self._prepare_inputs(inputs)
        batch = Batch(task=TASK, input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                      token_type_ids=inputs.get("token_type_ids"), labels=inputs["labels"])
        # Set by the Trainer's loop for each optimizer step (the last one of an epoch may be shorter).
        accumulation = getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        self._accumulation = accumulation
        stats = self.objective.train_microbatch(self.view, batch)
        self._meter.add({key: value for key, value in stats.items() if key != "loss"})
        # The Trainer logs what this returns: the task loss, or for a method that replaces it
        # (FreeLB, the gradient penalty) the loss that trained θ.
        task_loss = stats.get("loss", stats.get("adv/loss", math.nan))
        return torch.tensor(task_loss / accumulation, device=self.args.device)

    def _build_bregman(self) -> None:
        # The teacher is a copy of the view taken before `runner` is set: it runs its own weights.
        self.view.runner = None
        self.bregman = BregmanProximal(self.optimizer, self.view, self.bregman_config, max(1, self.state.max_steps))
        # One objective for the run: its private random streams (the regulariser's noise and extra
        # dropout masks, the teacher's) continue from step to step and are checkpointed.
        self.objective = Objective(self.adversary, self.bregman,
                                   backward=lambda loss: self.accelerator.backward(loss / self._accumulation),
                                   autocast=self.accelerator.autocast, seed=self.args.seed + self.args.process_index)
        if self._resume_state is not None:
            self._load_mtsmart_state(self._resume_state)

    # ---------------------------------------------------------------- logs

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """Training logs gain the regularisers' means since the last log, under mtsmart's names."""
        if "loss" in logs and self._meter.sums:
            logs = {**logs, **self._meter.means()}
            if self.bregman is not None and self.bregman.enabled:
                logs["bregman/beta"] = self.bregman.beta
            self._meter = ScalarMeter()
        super().log(logs, *args, **kwargs)

    # ---------------------------------------------------------------- checkpoints

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save and self.bregman is not None:
            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            state = {"bregman": self.bregman.teacher_state_dict(), "adversary": self.adversary.state_dict(),
                     "objective": self.objective.state_dict()}
            torch.save(state, os.path.join(folder, STATE_FILE))

    def _load_optimizer_and_scheduler(self, checkpoint: Optional[str]) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self._resume_state = os.path.join(checkpoint, STATE_FILE)
            if not os.path.isfile(self._resume_state):
                raise FileNotFoundError(f"{self._resume_state}: the checkpoint has no mtsmart state (teacher, counters); "
                                        "it was not written by mtsmart.recipes.hf.SmartTrainer")

    def _load_mtsmart_state(self, path: str) -> None:
        state = torch.load(path, map_location=self.args.device, weights_only=True)
        try:
            self.bregman.load_teacher_state_dict(state["bregman"])  # the Trainer restores the optimizer itself
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        self.adversary.load_state_dict(state["adversary"])
        self.objective.load_state_dict(state.get("objective", {}))  # absent: written before private streams
