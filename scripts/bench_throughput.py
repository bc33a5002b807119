"""Training throughput of `mtsmart train` against the Hugging Face Trainer and smart-pytorch.

    python scripts/bench_throughput.py                    # packaged MiniLM, GLUE RTE train set
    python scripts/bench_throughput.py --quick            # tiny random BERT, a few steps: the tests' smoke run
    python scripts/bench_throughput.py --precision bf16   # every contender under bf16 autocast

Every contender trains the same encoder on the same RTE training set ($MTSMART_DATA, default
../shared/data) with the same max length, batch size, learning rate, warm-up, seed and number of
steps:

  mtsmart ...             `python -m mtsmart train` itself, in a process of its own with
                          train.record_step_times=true: the loop's own step clock (step_times.tsv)
  Trainer ...             transformers.Trainer, AutoModelForSequenceClassification (num_labels=2),
                          DataCollatorWithPadding (dynamic padding), default optimizer (fused AdamW)
  Trainer + mtsmart.recipes.hf    the same Trainer as mtsmart.recipes.hf.SmartTrainer: SMART's Rs (paper values, K = 1, no teacher)
                          by mtsmart's own training step (docs/hf_trainer.md)
  Trainer + SMARTLoss     the same, with smart-pytorch 0.0.4's SMARTLoss added in compute_loss as its
                          README wraps a BERT classifier, but fed the word-embedding output x as
                          inputs_embeds (the README feeds the full embedding output; docs/method.md "What x is")

What is timed is the same for all (scripts/bench_common.py): the steps after the warm-up. Each round
runs every contender once, in turn, with the round's seed, so a change in machine load hits all of
them alike; medians over the rounds are reported. Dynamic padding makes the cost of a step depend
on the lengths in its batch, so padded tokens per example and tokens/s are printed beside
examples/s, and examples/s are also projected to a whole epoch of each contender's sampler.

Step time against batch shape: scripts/bench_scaling.py; fused against per-tensor AdamW:
scripts/bench_adamw.py.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import NUM_LABELS, TASK, TINY, Measurement, Setting, StepClock, add_setting_arguments, setting_from  # noqa: E402
from mtsmart.options.config import load_config  # noqa: E402
from mtsmart.data.loader import epoch_batches  # noqa: E402
from mtsmart.data.readers import read_split  # noqa: E402
from mtsmart.model.multitask import load_tokenizer, resolve_pretrained_path, tiny_bert_config  # noqa: E402
from mtsmart.components.step_times import read_step_times  # noqa: E402
from mtsmart.tasks.spec import load_task_spec  # noqa: E402

README_SMART_WEIGHT = 0.02  # the weight smart-pytorch's README-derived classifiers use (cost does not depend on it)


# --------------------------------------------------------------------------- mtsmart


def run_mtsmart(setting: Setting, seed: int, extra: list[str]) -> Measurement:
    """`python -m mtsmart train` in its own process, timed by the loop's own step clock."""
    env = {**os.environ, "OMP_NUM_THREADS": str(setting.threads), "MKL_NUM_THREADS": str(setting.threads),
           "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory(prefix="bench_throughput_") as tmp:
        out = Path(tmp) / "run"
        command = [sys.executable, "-m", "mtsmart", "train", *setting.mtsmart_overrides(seed, out),
                   "train.record_step_times=true", *extra]
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        rows = read_step_times(out / "step_times.tsv")
    return StepClock.from_rows(rows, setting.warmup, setting.cpu_clock).measurement()


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
    """({kind: Trainer class}: plain, with SMARTLoss, mtsmart.recipes.hf's SmartTrainer; the callback that stamps steps)."""
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

            # x = word embeddings only, so position/type embeddings are not applied twice (docs/method.md "What x is").
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

    from mtsmart.options.bregman import BregmanConfig
    from mtsmart.recipes.hf import SmartTrainer
    from mtsmart.options.smart import SmartConfig

    class MtsmartHfTrainer(SmartTrainer):
        """mtsmart.recipes.hf.SmartTrainer with SMART's Rs at the paper's values, no teacher (as SMARTLoss)."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs, regulariser=SmartConfig(steps=1), bregman=BregmanConfig(mu=0.0))

        def training_step(self, model, inputs, num_items_in_batch=None):
            clock_of().batch(inputs["input_ids"])
            return super().training_step(model, inputs, num_items_in_batch)

    class StepStamps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock_of().step_end()

    return {"plain": CountingTrainer, "smartloss": SmartLossTrainer, "mtsmart.recipes.hf": MtsmartHfTrainer}, StepStamps


def run_hf(setting: Setting, seed: int, kind: str, group_by_length: bool, tokenizer, dataset: list[dict]) -> Measurement:
    """One Trainer run; kind: plain, smartloss (smart-pytorch) or mtsmart.recipes.hf (SmartTrainer)."""
    import transformers
    from transformers import DataCollatorWithPadding, PrinterCallback, TrainingArguments

    transformers.logging.set_verbosity_error()  # its load report of the new classifier head, each round
    clock = StepClock(setting.warmup, setting.cpu_clock)
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


# --------------------------------------------------------------------------- contenders


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


def contenders(setting: Setting, like_for_like: bool) -> dict[str, Contender]:
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
        runs["Trainer + mtsmart.recipes.hf"] = Contender(
            lambda seed: run_hf(setting, seed, "mtsmart.recipes.hf", False, tokenizer, dataset), "Trainer random")
    runs["mtsmart full SMART"] = Contender(lambda seed: run_mtsmart(setting, seed, FULL + GROUPED), "mtsmart grouped")
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
    ("Trainer + mtsmart.recipes.hf", "Trainer + SMARTLoss", "like for like: the same Trainer, batches and precision"),
    ("mtsmart plain", "mtsmart SMART", "= SMART step time / plain step time"),
    ("mtsmart plain", "mtsmart full SMART", "= full SMART step time / plain step time, target <= 3.2"),
)


def report_contenders(
    results: dict[str, list[Measurement]], runs: dict[str, Contender], epoch: dict[str, float], cpu_clock: bool
) -> None:
    """Medians, and examples/s projected to a whole epoch: tokens/s ÷ the sampler's epoch tokens/example."""
    projected = {name: median_of(ms, "tokens_per_s") / epoch[runs[name].sampler] for name, ms in results.items()}
    print(f"\nmedians over rounds, by {'CPU' if cpu_clock else 'wall'} time (wall ex/s: by wall clock; "
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



def parse_args() -> tuple[argparse.Namespace, Setting]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_setting_arguments(parser, steps=6)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported (round r: seed + r)")
    parser.add_argument("--like-for-like", action="store_true",
                        help="also SMART with random batches / group_by_length on both sides")
    args = parser.parse_args()
    if args.quick:
        args.max_len, args.batch_size, args.steps, args.rounds = 32, 4, 3, 1
    return args, setting_from(args, parser)


def main() -> None:
    args, setting = parse_args()
    has_trainer, has_smart = peers_available()
    print(f"torch {torch.__version__}, {setting.threads} thread(s), timed by {'CPU time' if setting.cpu_clock else 'wall clock'}; "
          f"load average before: {os.getloadavg()}")
    print(f"{setting}")
    if not has_trainer:
        print("transformers.Trainer not usable (pip install accelerate): its rows are skipped")
    if not has_smart:
        print("smart-pytorch not importable (pip install --no-deps smart-pytorch==0.0.4): its rows are skipped")
    started = time.perf_counter()
    runs = contenders(setting, args.like_for_like)
    print(f"\n{len(runs)} contenders × {args.rounds} rounds, {setting.steps - setting.warmup} timed steps each")
    results = run_rounds(runs, args.rounds, setting.seed)
    report_contenders(results, runs, epoch_padding(setting), setting.cpu_clock)
    print(f"\nwall time {time.perf_counter() - started:.0f} s; load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
