"""Training throughput of mtsmart's loop against the Hugging Face Trainer and smart-pytorch.

    python scripts/bench_throughput.py            # packaged MiniLM, GLUE RTE train set (about 15 min)
    python scripts/bench_throughput.py --quick    # tiny random BERT, a few steps: the test's smoke run
    python scripts/bench_throughput.py --unfused-adamw   # adds mtsmart with torch's per-tensor AdamW
    python scripts/bench_throughput.py --precision bf16  # every contender under bf16 autocast

Every contender trains the same encoder on the same RTE training set ($MTSMART_DATA, default
../shared/data) with the same max length, batch size, learning rate, warm-up, seed and number of
steps:

  mtsmart ...             mtsmart.train.Trainer(cfg).fit(), the real loop, via load_config(None, overrides),
                          with mtsmart's own optimizer (build_optimizer: fused AdamW)
  Trainer ...             transformers.Trainer, AutoModelForSequenceClassification (num_labels=2),
                          DataCollatorWithPadding (dynamic padding), default optimizer (fused AdamW)
  Trainer + mtsmart.hf    the same Trainer as mtsmart.hf.SmartTrainer: SMART's Rs (paper values, K = 1, no teacher)
                          by mtsmart's own training step (docs/hf_trainer.md)
  Trainer + SMARTLoss     the same, with smart-pytorch 0.0.4's SMARTLoss added in compute_loss as its
                          README wraps a BERT classifier, but fed the word-embedding output x as
                          inputs_embeds (the README feeds the full embedding output: SMART.md §4.2)

What is timed, the same for both frameworks: from the end of the warm-up optimizer step(s) to
the end of the last one, i.e. training steps only (batch collation, forward, backward,
clipping, optimizer and scheduler step, per-step logging). Model loading, tokenisation,
evaluation and checkpoints are outside the window (mtsmart's end-of-run evaluation and checkpoint
are cut out; the Trainer runs with eval and save off). The clock is the process's CPU time
with one intra-op thread (immune to other jobs on a shared machine; --wall for wall time; wall
figures are printed beside it). Each round runs every contender once, in
turn, with the round's seed, so a change in machine load hits all of them alike; medians over the
rounds are reported. Dynamic padding makes the cost of a step depend on the lengths in its batch,
so padded tokens per example and tokens/s are printed beside examples/s.

--unfused-adamw adds mtsmart plain and full SMART with the same AdamW groups in torch's per-tensor
loop (fused=False, foreach=False: build_optimizer before fused=True), interleaved with the
others, and the ratios that give what fusing alone is worth.

The second part times fixed full-length batches (no padding) through mtsmart's own step
(train_microbatch + clipping + AdamW) against sequence length and batch size.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from mtsmart.adversarial.base import build_adversary  # noqa: E402
from mtsmart.batch import Batch  # noqa: E402
from mtsmart.bregman import BregmanProximal  # noqa: E402
from mtsmart.config import Config, load_config  # noqa: E402
from mtsmart.data.loader import epoch_batches  # noqa: E402
from mtsmart.data.readers import read_split  # noqa: E402
from mtsmart.model import MultiTaskModel, load_encoder, load_tokenizer, resolve_pretrained_path, tiny_bert_config  # noqa: E402
from mtsmart.task_spec import load_task_spec  # noqa: E402
from mtsmart.train import Trainer, autocast_factory, build_optimizer, train_microbatch  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TASK = "rte"
NUM_LABELS = 2
TINY = {"hidden": 32, "layers": 2, "heads": 2}  # the --quick encoder, the same on both sides
# With one intra-op thread, a process's CPU time is its wall time on an idle machine, but unlike
# wall time it does not grow while other jobs hold the cores (the 2-core machine these figures
# come from was shared). --wall switches every figure to wall time.
CLOCK = {"cpu": True}
README_SMART_WEIGHT = 0.02  # the weight smart-pytorch's README-derived classifiers use (cost does not depend on it)


@dataclass(frozen=True)
class Setting:
    """What every contender shares."""

    model: str  # "minilm" or "tiny"
    data_root: Path
    max_len: int
    batch_size: int
    lr: float
    steps: int  # optimizer steps per run, warm-up included
    warmup: int  # untimed steps at the start of each run
    seed: int
    precision: str = "fp32"  # fp32 or bf16 autocast, the same for every contender


# --------------------------------------------------------------------------- timing


@dataclass
class StepClock:
    """Per-step batch sizes, padded tokens, and wall and CPU times at the end of each step of one run."""

    warmup: int
    examples: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)  # time.perf_counter()
    cpu_ends: list[float] = field(default_factory=list)  # time.process_time(): this process's CPU seconds

    def batch(self, input_ids: torch.Tensor) -> None:
        """A training batch (N, T) was drawn."""
        self.examples.append(int(input_ids.shape[0]))
        self.tokens.append(int(input_ids.numel()))

    def step_end(self) -> None:
        self.ends.append(time.perf_counter())
        self.cpu_ends.append(time.process_time())

    def measurement(self) -> "Measurement":
        """The steps after the warm-up: from the end of step `warmup` to the end of the last one."""
        if len(self.ends) <= self.warmup or len(self.examples) != len(self.ends):
            raise RuntimeError(f"clock saw {len(self.examples)} batches and {len(self.ends)} steps; need > {self.warmup}")
        timed, start = slice(self.warmup, None), self.warmup - 1
        return Measurement(len(self.ends) - self.warmup, sum(self.examples[timed]), sum(self.tokens[timed]),
                           self.ends[-1] - self.ends[start], self.cpu_ends[-1] - self.cpu_ends[start])


@dataclass(frozen=True)
class Measurement:
    steps: int
    examples: int
    tokens: int  # padded positions, N × T summed over the timed steps
    wall_seconds: float
    cpu_seconds: float  # CPU time of the process: what the steps cost, whatever else runs on the machine

    @property
    def seconds(self) -> float:
        """The clock the figures use: CPU time (see CLOCK)."""
        return self.cpu_seconds if CLOCK["cpu"] else self.wall_seconds

    @property
    def examples_per_s(self) -> float:
        return self.examples / self.seconds

    @property
    def wall_examples_per_s(self) -> float:
        return self.examples / self.wall_seconds

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def tokens_per_example(self) -> float:
        return self.tokens / self.examples

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / self.steps


# --------------------------------------------------------------------------- mtsmart


class TimedTrainer(Trainer):
    """mtsmart's Trainer with a clock on every optimizer step, its evaluation and checkpoints cut out.

    unfused_adamw: swap build_optimizer's fused AdamW for `unfused(...)` (the LR schedule sets the
    learning rate on `bregman.optimizer` each step, so it drives the swapped-in one)."""

    def __init__(self, cfg: Config, clock: StepClock, unfused_adamw: bool = False):
        super().__init__(cfg)
        self.clock = clock
        if unfused_adamw:
            self.bregman.optimizer = unfused(self.bregman.optimizer)
        for loader in self.loaders.values():
            loader.next_batch = self._counted(loader.next_batch)

    def _counted(self, next_batch: Callable[[], Batch]) -> Callable[[], Batch]:
        def counted() -> Batch:
            batch = next_batch()
            self.clock.batch(batch.input_ids)
            return batch

        return counted

    def optimizer_step(self, losses_finite: bool) -> Optional[float]:
        grad_norm = super().optimizer_step(losses_finite)
        if grad_norm is not None:  # a skipped step is retried with the next batch: not a step
            self.clock.step_end()
        return grad_norm

    def run_evaluation(self) -> dict[str, float]:
        return {"avg": math.nan}  # not training: outside what is compared

    def save_checkpoint(self, best: bool = False) -> None:
        pass  # not training either


def unfused(optimizer: torch.optim.AdamW) -> torch.optim.AdamW:
    """The same parameter groups and hyper-parameters in torch's per-tensor Python loop
    (`_single_tensor_adam`, its CPU default): mtsmart.train.build_optimizer before fused=True."""
    groups = [{"params": group["params"], "weight_decay": group["weight_decay"]} for group in optimizer.param_groups]
    d = optimizer.defaults
    return torch.optim.AdamW(groups, lr=d["lr"], betas=d["betas"], eps=d["eps"], fused=False, foreach=False)


def mtsmart_overrides(setting: Setting, seed: int, out: Path) -> list[str]:
    overrides = [
        f"tasks=[{TASK}]",
        f"output_dir={out}",
        f"data.root={setting.data_root}",
        f"data.max_seq_len={setting.max_len}",
        f"model.name_or_path={setting.model}",
        f"train.batch_size={setting.batch_size}",
        f"train.lr={setting.lr}",
        f"train.max_steps={setting.steps}",
        f"train.seed={seed}",
        "train.warmup_ratio=0.1",
        "eval.max_examples=1",  # the dev set is still encoded at setup: keep that short
        f"train.precision={setting.precision}",
    ]
    if setting.model == "tiny":
        overrides += [f"model.tiny_hidden_size={TINY['hidden']}", f"model.tiny_layers={TINY['layers']}",
                      f"model.tiny_heads={TINY['heads']}"]
    return overrides


def run_mtsmart(setting: Setting, seed: int, extra: list[str], unfused_adamw: bool = False) -> Measurement:
    with tempfile.TemporaryDirectory(prefix="bench_throughput_") as tmp:
        cfg = load_config(None, mtsmart_overrides(setting, seed, Path(tmp) / "run") + extra)
        clock = StepClock(setting.warmup)
        TimedTrainer(cfg, clock, unfused_adamw).fit()
        return clock.measurement()


# --------------------------------------------------------------------------- Hugging Face Trainer


def hf_dataset(setting: Setting, tokenizer) -> list[dict]:
    """RTE train as a list of tokenised examples (unpadded), read by mtsmart's own reader."""
    cfg = load_config(None, [f"data.root={setting.data_root}"])
    examples = read_split(load_task_spec(TASK), "train", cfg.data)
    encoded = tokenizer([e.text_a for e in examples], [e.text_b for e in examples], truncation=True,
                        max_length=setting.max_len)
    return [{**{key: encoded[key][i] for key in encoded}, "labels": e.label} for i, e in enumerate(examples)]


def hf_model(setting: Setting, vocab_size: int):
    from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

    if setting.model == "tiny":
        config = tiny_bert_config(vocab_size, TINY["hidden"], TINY["layers"], TINY["heads"])
        config.num_labels = NUM_LABELS
        return BertForSequenceClassification(config)
    return AutoModelForSequenceClassification.from_pretrained(resolve_pretrained_path(setting.model), num_labels=NUM_LABELS)


def hf_trainer_classes(clock_of: Callable[[], StepClock]):
    """({kind: Trainer class}: plain, with SMARTLoss, mtsmart.hf's SmartTrainer; the callback that stamps steps)."""
    import torch.nn.functional as F
    from transformers import Trainer as HFTrainer, TrainerCallback

    class CountingTrainer(HFTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            clock_of().batch(inputs["input_ids"])
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    class SmartLossTrainer(HFTrainer):
        """compute_loss = cross-entropy + weight · SMARTLoss, the smart-pytorch README's classifier."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            from smart_pytorch import SMARTLoss, kl_loss, sym_kl_loss

            clock_of().batch(inputs["input_ids"])
            encoder = model.base_model

            def eval_fn(embed: torch.Tensor) -> torch.Tensor:  # as the README: pooled output → classifier
                outputs = encoder(inputs_embeds=embed, attention_mask=inputs["attention_mask"],
                                  token_type_ids=inputs.get("token_type_ids"))
                return model.classifier(outputs[1])

            # x = word embeddings only, so position/type embeddings are not applied twice (SMART.md §4.2).
            embed = encoder.embeddings.word_embeddings(inputs["input_ids"])
            smart = SMARTLoss(eval_fn=eval_fn, loss_fn=kl_loss, loss_last_fn=sym_kl_loss, num_steps=1,
                              step_size=1e-3, epsilon=1e-5, noise_var=1e-5)
            # eval_fn calls the encoder and the classifier directly, not the model's forward, which
            # accelerate wraps in the bf16 autocast: wrap the whole loss, so the peer runs in the
            # same precision as the other contenders.
            with self.accelerator.autocast():
                state = eval_fn(embed)
                loss = F.cross_entropy(state.float(), inputs["labels"]) + README_SMART_WEIGHT * smart(embed, state)
            return (loss, state) if return_outputs else loss

    from mtsmart.bregman import BregmanConfig
    from mtsmart.hf import SmartTrainer
    from mtsmart.smart import SmartConfig

    class MtsmartHfTrainer(SmartTrainer):
        """mtsmart.hf.SmartTrainer with SMART's Rs at the paper's values, no teacher (as SMARTLoss)."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs, smart=SmartConfig(steps=1), bregman=BregmanConfig(mu=0.0))

        def training_step(self, model, inputs, num_items_in_batch=None):
            clock_of().batch(inputs["input_ids"])
            return super().training_step(model, inputs, num_items_in_batch)

    class StepStamps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock_of().step_end()

    return {"plain": CountingTrainer, "smartloss": SmartLossTrainer, "mtsmart.hf": MtsmartHfTrainer}, StepStamps


def run_hf(setting: Setting, seed: int, kind: str, group_by_length: bool, tokenizer, dataset: list[dict]) -> Measurement:
    """One Trainer run; kind: plain, smartloss (smart-pytorch) or mtsmart.hf (SmartTrainer)."""
    import transformers
    from transformers import DataCollatorWithPadding, PrinterCallback, TrainingArguments

    transformers.logging.set_verbosity_error()  # its load report of the new classifier head, each round
    clock = StepClock(setting.warmup)
    classes, stamps = hf_trainer_classes(lambda: clock)
    with tempfile.TemporaryDirectory(prefix="bench_throughput_hf_") as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=setting.batch_size,
            learning_rate=setting.lr,
            weight_decay=0.01,  # as mtsmart: none on biases and LayerNorm weights
            adam_epsilon=1e-6,
            max_grad_norm=1.0,
            max_steps=setting.steps,
            warmup_steps=0.1,  # a ratio of max_steps, as mtsmart's train.warmup_ratio
            lr_scheduler_type="linear",
            seed=seed,
            logging_steps=10,
            save_strategy="no",
            eval_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=True,
            dataloader_num_workers=0,
            train_sampling_strategy="group_by_length" if group_by_length else "random",
            bf16=setting.precision == "bf16",  # the Trainer's autocast, around SMARTLoss too
        )
        torch.manual_seed(seed)  # the classifier's initialisation, as mtsmart seeds its heads
        trainer = classes[kind](
            model=hf_model(setting, len(tokenizer)),
            args=args,
            train_dataset=dataset,
            data_collator=DataCollatorWithPadding(tokenizer),
            processing_class=tokenizer,
            callbacks=[stamps()],
        )
        trainer.remove_callback(PrinterCallback)  # its end-of-run summary line is not ours to print
        trainer.train()
    return clock.measurement()


def peers_available() -> tuple[bool, bool]:
    """(transformers.Trainer usable: needs accelerate, smart-pytorch importable)."""
    try:
        import accelerate  # noqa: F401
        from transformers import Trainer as _  # noqa: F401
        has_trainer = True
    except ImportError:
        has_trainer = False
    try:
        import smart_pytorch  # noqa: F401
        has_smart = True
    except ImportError:
        has_smart = False
    return has_trainer, has_smart


# --------------------------------------------------------------------------- part 1: contenders


PLAIN = ["adversarial.method=none", "bregman.mu=0"]
SMART = ["adversarial.method=smart", "smart.steps=1", "bregman.mu=0"]
FULL = ["adversarial.method=smart", "smart.steps=1"]  # Rs + Bregman: the defaults
GROUPED = ["data.group_by_length=true"]
RANDOM = ["data.group_by_length=false"]


@dataclass(frozen=True)
class Contender:
    run: Callable[[int], Measurement]  # seed → measurement
    sampler: str  # which batches it draws: a key of SAMPLERS


# How each contender batches the data. The Trainer's group_by_length sampler serves each
# mega-batch of ~38 batches longest first (so an out-of-memory error comes early), so a short
# window of steps sees its longest batches: the epoch projection below corrects for that.
SAMPLERS = ("mtsmart grouped", "mtsmart random", "Trainer random", "Trainer grouped")


def contenders(setting: Setting, like_for_like: bool, unfused_adamw: bool) -> dict[str, Contender]:
    """name → Contender. mtsmart rows use group_by_length (as scripts/configs/quickstart.yaml)."""
    runs = {
        "mtsmart plain": Contender(lambda seed: run_mtsmart(setting, seed, PLAIN + GROUPED), "mtsmart grouped"),
        "mtsmart plain, random batches": Contender(lambda seed: run_mtsmart(setting, seed, PLAIN + RANDOM),
                                                   "mtsmart random"),
    }
    has_trainer, has_smart = peers_available()
    tokenizer = dataset = None
    if has_trainer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained_path("minilm"))  # also the tiny model's
        dataset = hf_dataset(setting, tokenizer)
        runs["Trainer"] = Contender(lambda seed: run_hf(setting, seed, "plain", False, tokenizer, dataset), "Trainer random")
        runs["Trainer, group_by_length"] = Contender(
            lambda seed: run_hf(setting, seed, "plain", True, tokenizer, dataset), "Trainer grouped")
    runs["mtsmart SMART"] = Contender(lambda seed: run_mtsmart(setting, seed, SMART + GROUPED), "mtsmart grouped")
    if like_for_like:
        runs["mtsmart SMART, random batches"] = Contender(lambda seed: run_mtsmart(setting, seed, SMART + RANDOM),
                                                          "mtsmart random")
    if has_trainer and has_smart:
        runs["Trainer + SMARTLoss"] = Contender(
            lambda seed: run_hf(setting, seed, "smartloss", False, tokenizer, dataset), "Trainer random")
        if like_for_like:
            runs["Trainer + SMARTLoss, group_by_length"] = Contender(
                lambda seed: run_hf(setting, seed, "smartloss", True, tokenizer, dataset), "Trainer grouped")
    if has_trainer:
        runs["Trainer + mtsmart.hf"] = Contender(
            lambda seed: run_hf(setting, seed, "mtsmart.hf", False, tokenizer, dataset), "Trainer random")
    runs["mtsmart full SMART"] = Contender(lambda seed: run_mtsmart(setting, seed, FULL + GROUPED), "mtsmart grouped")
    if unfused_adamw:
        runs["mtsmart plain, unfused AdamW"] = Contender(
            lambda seed: run_mtsmart(setting, seed, PLAIN + GROUPED, unfused_adamw=True), "mtsmart grouped")
        runs["mtsmart full SMART, unfused AdamW"] = Contender(
            lambda seed: run_mtsmart(setting, seed, FULL + GROUPED, unfused_adamw=True), "mtsmart grouped")
    return runs


def run_rounds(runs: dict[str, Contender], rounds: int, seed: int) -> dict[str, list[Measurement]]:
    results: dict[str, list[Measurement]] = {name: [] for name in runs}
    for r in range(rounds):
        for name, contender in runs.items():  # interleaved: every round sees every contender once
            m = contender.run(seed + r)
            results[name].append(m)
            print(f"  round {r + 1}/{rounds} {name:42s} {m.examples_per_s:7.2f} ex/s ({m.wall_examples_per_s:6.2f} by wall "
                  f"clock)  {m.tokens_per_example:6.1f} tok/ex", flush=True)
    return results


def median_of(ms: list[Measurement], key: str) -> float:
    return statistics.median(getattr(m, key) for m in ms)


RATIOS = (  # (faster, slower, note): examples/s of the first over the second
    ("mtsmart plain", "Trainer", "target >= 1.2"),
    ("mtsmart plain, random batches", "Trainer", "like for like: both random batches"),
    ("mtsmart plain", "Trainer, group_by_length", "like for like: both grouped"),
    ("mtsmart SMART", "Trainer + SMARTLoss", "target >= 1.2"),
    ("mtsmart SMART, random batches", "Trainer + SMARTLoss", "like for like: both random batches"),
    ("mtsmart SMART", "Trainer + SMARTLoss, group_by_length", "like for like: both grouped"),
    ("Trainer + mtsmart.hf", "Trainer + SMARTLoss", "like for like: the same Trainer, batches and precision"),
    ("mtsmart plain", "mtsmart SMART", "= SMART step time / plain step time"),
    ("mtsmart plain", "mtsmart full SMART", "= full SMART step time / plain step time, target <= 3.2"),
    ("mtsmart plain", "mtsmart plain, unfused AdamW", "fused AdamW alone"),
    ("mtsmart full SMART", "mtsmart full SMART, unfused AdamW", "fused AdamW alone"),
)


def report_contenders(results: dict[str, list[Measurement]], runs: dict[str, Contender], epoch: dict[str, float]) -> None:
    """Medians, and examples/s projected to a whole epoch: tokens/s ÷ the sampler's epoch tokens/example."""
    projected = {name: median_of(ms, "tokens_per_s") / epoch[runs[name].sampler] for name, ms in results.items()}
    print(f"\nmedians over rounds, by {'CPU' if CLOCK['cpu'] else 'wall'} time (wall ex/s: by wall clock; "
          "epoch ex/s = tokens/s ÷ the sampler's padded tokens/example over a whole epoch):")
    print(f"  {'contender':42s} {'examples/s':>10s} {'tokens/s':>9s} {'tok/example':>11s} {'s/step':>7s} "
          f"{'epoch ex/s':>10s} {'wall ex/s':>9s}")
    for name, ms in results.items():
        print(f"  {name:42s} {median_of(ms, 'examples_per_s'):10.2f} {median_of(ms, 'tokens_per_s'):9.0f} "
              f"{median_of(ms, 'tokens_per_example'):11.1f} {median_of(ms, 'seconds_per_step'):7.2f} {projected[name]:10.2f} "
              f"{median_of(ms, 'wall_examples_per_s'):9.2f}")
    print("\nratios of examples/s, median over rounds of each round's ratio (measured window | projected to an epoch):")
    for fast, slow, note in RATIOS:
        if fast in results and slow in results:
            pairs = list(zip(results[fast], results[slow]))  # the same round: the same seed and nearby load
            measured = statistics.median(a.examples_per_s / b.examples_per_s for a, b in pairs)
            scale = epoch[runs[slow].sampler] / epoch[runs[fast].sampler]
            epoch_ratio = statistics.median(a.tokens_per_s / b.tokens_per_s * scale for a, b in pairs)
            print(f"  {fast + ' / ' + slow:88s} {measured:5.2f}x | {epoch_ratio:5.2f}x  ({note})")


def epoch_padding(setting: Setting) -> dict[str, float]:
    """Padded tokens per example over one epoch of each sampler (SAMPLERS), at the run's seed."""
    from mtsmart.data.encoding import encode_split

    tokenizer = load_tokenizer(setting.model, None)
    cfg = load_config(None, [f"data.root={setting.data_root}"])
    spec = load_task_spec(TASK)
    lengths = [item.length for item in encode_split(spec, read_split(spec, "train", cfg.data), tokenizer, setting.max_len)]
    orders = {
        "mtsmart grouped": epoch_batches(lengths, setting.batch_size, setting.seed, group_by_length=True),
        "mtsmart random": epoch_batches(lengths, setting.batch_size, setting.seed, group_by_length=False),
        "Trainer random": _chunks(torch.randperm(len(lengths), generator=torch.Generator().manual_seed(setting.seed)).tolist(),
                                  setting.batch_size),
    }
    try:
        from transformers.trainer_pt_utils import LengthGroupedSampler

        sampler = LengthGroupedSampler(setting.batch_size, lengths=lengths, generator=torch.Generator().manual_seed(setting.seed))
        orders["Trainer grouped"] = _chunks(list(sampler), setting.batch_size)
    except ImportError:
        orders["Trainer grouped"] = orders["mtsmart grouped"]  # no Trainer rows to project then
    padding = {name: sum(len(b) * max(lengths[i] for i in b) for b in batches) / len(lengths) for name, batches in orders.items()}
    print(f"\npadded tokens per example over one epoch of {TASK} train ({len(lengths)} examples, "
          f"mean length {statistics.mean(lengths):.1f}, batch {setting.batch_size}):")
    for name, value in padding.items():
        print(f"  {name:16s} {value:6.1f}")
    return padding


def _chunks(order: list[int], size: int) -> list[list[int]]:
    return [order[s:s + size] for s in range(0, len(order), size)]


# --------------------------------------------------------------------------- part 2: cost scaling


def scaling_step(setting: Setting, overrides: list[str], batch: Batch) -> Callable[[], None]:
    """One optimizer step of mtsmart on a fixed batch, with the collaborators the Trainer builds."""
    cfg = load_config(None, mtsmart_overrides(setting, setting.seed, Path("unused")) + overrides)
    torch.manual_seed(setting.seed)
    tokenizer_size = len(load_tokenizer(setting.model, None))
    encoder = load_encoder(setting.model, tokenizer_size, cfg.model.attn_implementation, cfg.model.tiny_hidden_size,
                           cfg.model.tiny_layers, cfg.model.tiny_heads)
    model = MultiTaskModel(encoder, {TASK: load_task_spec(TASK)}).train()
    bregman = BregmanProximal(build_optimizer(model, cfg), model, cfg.bregman, total_updates=1000)
    adversary = build_adversary(cfg.adversarial, cfg.smart)
    autocast = autocast_factory(setting.precision, torch.device("cpu"))

    def step() -> None:
        train_microbatch(model, batch, adversary, bregman, lambda loss: loss.backward(), autocast)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        bregman.step()
        bregman.zero_grad()

    return step


def full_length_batch(batch_size: int, seq_len: int, vocab_size: int) -> Batch:
    ids = torch.randint(1000, vocab_size, (batch_size, seq_len))
    return Batch(task=TASK, input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids),
                 labels=torch.randint(0, NUM_LABELS, (batch_size,)))


def cost_scaling(setting: Setting, shapes: list[tuple[int, int]], repeats: int) -> None:
    vocab_size = len(load_tokenizer(setting.model, None))
    first = True
    now = time.process_time if CLOCK["cpu"] else time.perf_counter
    print(f"\nstep time ({'CPU' if CLOCK['cpu'] else 'wall'} s) against shape (fixed full-length batches, no padding; "
          f"median of {repeats}, after one warm-up step on the first shape):")
    print(f"  {'batch x length':>15s} {'plain s':>8s} {'SMART s':>8s} {'SMART/plain':>11s} {'plain ms/token':>14s}")
    for batch_size, seq_len in shapes:
        torch.manual_seed(setting.seed)
        batch = full_length_batch(batch_size, seq_len, vocab_size)
        steps = {"plain": scaling_step(setting, PLAIN, batch), "SMART": scaling_step(setting, SMART, batch)}
        times: dict[str, list[float]] = {name: [] for name in steps}
        for r in range(repeats + int(first)):
            for name, step in steps.items():  # interleaved
                start = now()
                step()
                if r or not first:  # the very first run (allocator, lazy init) is a warm-up
                    times[name].append(now() - start)
        first = False
        plain, smart = statistics.median(times["plain"]), statistics.median(times["SMART"])
        print(f"  {f'{batch_size} x {seq_len}':>15s} {plain:8.3f} {smart:8.3f} {smart / plain:11.2f} "
              f"{1000 * plain / (batch_size * seq_len):14.3f}", flush=True)


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny random BERT, few steps (the test's smoke run)")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("MTSMART_DATA", DEFAULT_DATA)))
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run, warm-up included")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of each run (>= 1)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--seed", type=int, default=42, help="round r uses seed + r")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (1: see docs/performance.md)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="every contender in this precision: mtsmart train.precision, the Trainer's bf16=True")
    parser.add_argument("--like-for-like", action="store_true",
                        help="also SMART with random batches / group_by_length on both sides")
    parser.add_argument("--unfused-adamw", action="store_true", help="also mtsmart plain and full SMART with torch's "
                        "per-tensor AdamW (build_optimizer before fused=True): what fusing is worth")
    parser.add_argument("--wall", action="store_true", help="time by wall clock instead of CPU time (needs --threads 1 "
                        "for CPU time to be meaningful; use it on an idle machine with more threads)")
    parser.add_argument("--skip-scaling", action="store_true", help="skip part 2 (step time against shape)")
    parser.add_argument("--scaling-repeats", type=int, default=2)
    args = parser.parse_args()
    if args.quick:
        args.max_len, args.batch_size, args.steps, args.rounds, args.scaling_repeats = 32, 4, 3, 1, 1
    if args.threads > 1 and not args.wall:
        parser.error("CPU time sums the threads' time: with --threads > 1 pass --wall (on an idle machine)")
    if not 1 <= args.warmup < args.steps:
        parser.error("need 1 <= --warmup < --steps")
    if not (args.data / "glue" / "RTE" / "train.tsv").is_file():
        parser.error(f"no glue/RTE/train.tsv under {args.data} (set MTSMART_DATA or --data)")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    CLOCK["cpu"] = not args.wall
    setting = Setting(model="tiny" if args.quick else "minilm", data_root=args.data.resolve(), max_len=args.max_len,
                      batch_size=args.batch_size, lr=args.lr, steps=args.steps, warmup=args.warmup, seed=args.seed,
                      precision=args.precision)
    has_trainer, has_smart = peers_available()
    print(f"torch {torch.__version__}, {args.threads} thread(s), timed by {'wall clock' if args.wall else 'CPU time'}; "
          f"load average before: {os.getloadavg()}")
    print(f"{setting}")
    if not has_trainer:
        print("transformers.Trainer not usable (pip install accelerate): its rows are skipped")
    if not has_smart:
        print("smart-pytorch not importable (pip install --no-deps smart-pytorch==0.0.4): its rows are skipped")
    started = time.perf_counter()
    runs = contenders(setting, args.like_for_like, args.unfused_adamw)
    print(f"\npart 1: {len(runs)} contenders × {args.rounds} rounds, {setting.steps - setting.warmup} timed steps each")
    results = run_rounds(runs, args.rounds, args.seed)
    report_contenders(results, runs, epoch_padding(setting))
    if not args.skip_scaling:
        shapes = [(2, 16), (2, 32)] if args.quick else [(16, 64), (16, 128), (16, 256), (8, 128), (32, 128)]
        cost_scaling(setting, shapes, args.scaling_repeats)
    print(f"\nwall time {time.perf_counter() - started:.0f} s; load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
