"""Fine-tune a Hugging Face classifier on a GLUE task with SMART as its authors released it, through the Trainer.

SMART as released (docs/method.md "Two readings"): Rs on the embedding module's output with
x + η·g/‖g‖∞, independent dropout masks, x̃ detached, and the mean teacher with dropout (μ = 0.1).
The paper's literal reading (ε = 1e-5 on the word embeddings, SmartConfig's defaults) gives a term
near 1e-8 on these encoders, too small to act (docs/results.md); this script does not use it.
docs/hf_trainer.md says what the logged terms look like.

    python examples/hf_trainer_glue.py --task rte --model bert-base-uncased --out runs/hf_rte
    python examples/hf_trainer_glue.py --task stsb --model roberta-base --out runs/hf_stsb --bf16
    python examples/hf_trainer_glue.py --task rte --model minilm --parquet-dir ../shared/data/hf/glue/rte  # offline

The data comes from the hub (`nyu-mll/glue`), or from a folder of the hub's parquet files
(--parquet-dir). The two SMART lines are marked below; everything else is a plain Trainer script.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from datasets import load_dataset
from scipy.stats import pearsonr
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, TrainingArguments

from mtsmart.options.bregman import BregmanConfig
from mtsmart.recipes.hf import SmartTrainer  # SMART line 1
from mtsmart.model.multitask import resolve_pretrained_path
from mtsmart.options.smart import SmartConfig

TEXT_KEYS = {"rte": ("sentence1", "sentence2"), "mrpc": ("sentence1", "sentence2"), "stsb": ("sentence1", "sentence2"),
             "sst2": ("sentence", None), "cola": ("sentence", None), "qnli": ("question", "sentence")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TEXT_KEYS), default="rte")
    parser.add_argument("--model", default="minilm", help="hub id or folder (minilm: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--parquet-dir", type=Path, default=None, help="the hub's parquet files of the task, offline")
    parser.add_argument("--out", default="runs/hf_trainer")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--lr", type=float, default=2e-5, help="2e-5 for BERT-base; 1e-4 suits the packaged MiniLM")
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()

    if args.parquet_dir is None:
        raw = load_dataset("nyu-mll/glue", args.task)
    else:
        files = {split: str(next(args.parquet_dir.glob(f"{split}-*.parquet"))) for split in ("train", "validation")}
        raw = load_dataset("parquet", data_files=files)
    regression = args.task == "stsb"
    model_path = resolve_pretrained_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    first, second = TEXT_KEYS[args.task]

    def encode(rows):
        texts = (rows[first],) if second is None else (rows[first], rows[second])
        return tokenizer(*texts, truncation=True, max_length=128)

    data = raw.map(encode, batched=True)
    if regression:
        data = data.map(lambda row: {"label": float(row["label"])})
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=1 if regression else raw["train"].features["label"].num_classes)

    def metrics(prediction):
        logits, labels = prediction
        if regression:
            return {"pearson": float(pearsonr(logits.squeeze(-1), labels)[0])}
        return {"accuracy": float((np.argmax(logits, -1) == labels).mean())}

    training = TrainingArguments(
        output_dir=args.out, num_train_epochs=args.epochs, max_steps=args.max_steps, learning_rate=args.lr,
        per_device_train_batch_size=32, per_device_eval_batch_size=64, warmup_steps=0.1, weight_decay=0.01,
        eval_strategy="epoch", save_strategy="epoch", logging_steps=20, bf16=args.bf16, report_to="tensorboard",
        use_cpu=args.bf16 and not torch.cuda.is_available(),  # the Trainer refuses CPU bf16 unless told to use the CPU
        train_sampling_strategy="group_by_length",
    )
    trainer = SmartTrainer(  # SMART line 2: the Trainer's arguments, plus SMART's and the teacher's
        model=model, args=training, train_dataset=data["train"], eval_dataset=data["validation"],
        data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer, compute_metrics=metrics,
        regulariser=SmartConfig(weight=1.0, input="embedding_output", update="release", outer_gradient="release",
                                guard=1e-6, dropout="independent"),
        bregman=BregmanConfig(mu=0.1, beta_schedule="two_phase", early_beta=0.9, early_fraction=0.1, beta=0.99,
                              teacher_dropout=True),
    )
    trainer.train()
    print(trainer.evaluate())


if __name__ == "__main__":
    main()
