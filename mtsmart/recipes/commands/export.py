"""`mtsmart export --run DIR --task T --out DIR2`: a standard Hugging Face classifier of one task.

mtsmart's head is dropout + linear on the first token's final hidden state h. Hugging Face's
BertForSequenceClassification puts BERT's pooler in between: logits = W_c · tanh(W_p h + b_p) + b_c.
The pooler is made the identity without approximation:

    W_p = s · I,  b_p = 0,  W_c = W / s,  b_c = b,   s = 2^-k

with s small enough that |s · h_i| < 2^-13 for every possible h: then tanh(s h_i) rounds to
s h_i in float32 (tanh(y) = y (1 − y²/3 + …), and y²/3 < 2^-27 is below half an ulp), and since
s is a power of two, (W/s)·(s h) has exactly the products W·h. h leaves BERT's final LayerNorm,
h_i = γ_i x̂_i + β_i with |x̂_i| ≤ √(H − 1), which bounds |h_i| from the weights alone, for
every input. (Exact in float32 and bfloat16, whose exponent range holds s·h; float16 would
flush s·h to zero: run the exported model in float32 or bfloat16.)

`--all` exports the shared encoder (save_pretrained), every head (safetensors) and copies of the
task files.
"""
from __future__ import annotations

import argparse
import copy
import math
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import BertForSequenceClassification, BertModel

from mtsmart.recipes.commands.common import add_force_argument, add_run_arguments, check_target, open_run
from mtsmart.components.run_dir import LoadedRun, RunDirError
from mtsmart.tasks.types import task_type_of
from mtsmart.tasks.spec import TaskSpec
from mtsmart.support.io import atomic_write_text, give_default_mode

# |s · h| stays below this, so that tanh(s · h) == s · h in float32 (see the module docstring).
POOLER_INPUT_LIMIT = 2.0**-13
SCORE_LABEL = "score"  # id2label of one-output heads (regression, ranking)


def add_parser(commands) -> None:
    parser = commands.add_parser("export", help="a task as a Hugging Face AutoModelForSequenceClassification folder")
    add_run_arguments(parser)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--task", help="the task to export")
    which.add_argument("--all", action="store_true", help="the shared encoder, every head and the task files")
    parser.add_argument("--out", required=True, help="output folder (new or empty, unless --force)")
    add_force_argument(parser)
    parser.set_defaults(handler=run)


def bert_encoder(loaded: LoadedRun) -> BertModel:
    encoder = loaded.model.encoder
    if not isinstance(encoder, BertModel):
        raise RunDirError(f"export supports BERT encoders (model_type bert); {loaded.cfg.model.name_or_path} is {encoder.config.model_type}")
    return encoder


def hidden_bound(encoder: BertModel) -> float:
    """max_i |h_i| over all inputs: h = γ x̂ + β leaves the last LayerNorm, |x̂_i| ≤ √(H − 1)."""
    norm = encoder.encoder.layer[-1].output.LayerNorm
    width = norm.weight.numel()
    return float((norm.weight.detach().abs() * math.sqrt(width - 1) + norm.bias.detach().abs()).max())


def pooler_scale(bound: float) -> float:
    """The largest power of two s with s · bound ≤ POOLER_INPUT_LIMIT."""
    return 2.0 ** math.floor(math.log2(POOLER_INPUT_LIMIT / max(bound, 1e-30)))


def classifier_config(encoder: BertModel, spec: TaskSpec):
    config = copy.deepcopy(encoder.config)
    scores = spec.num_outputs == 1  # regression and ranking heads give one raw score
    labels = [SCORE_LABEL] if scores else list(spec.labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    # regression / ranking: raw scores (the pipeline applies no sigmoid), MSE if fine-tuned further.
    config.problem_type = "regression" if scores else "single_label_classification"
    config.classifier_dropout = spec.dropout
    config.architectures = ["BertForSequenceClassification"]
    return config


@torch.no_grad()
def to_sequence_classifier(loaded: LoadedRun, task: str) -> BertForSequenceClassification:
    """The run's encoder and `task`'s head as a BertForSequenceClassification with equal outputs."""
    if task not in loaded.specs:
        raise RunDirError(f"--task {task}: the run has no task {task!r}; its tasks: {sorted(loaded.specs)}")
    encoder = bert_encoder(loaded)
    model = BertForSequenceClassification(classifier_config(encoder, loaded.specs[task]))
    scale = pooler_scale(hidden_bound(encoder))
    width = encoder.config.hidden_size
    head = loaded.model.heads[task].proj
    state = {f"bert.{key}": value for key, value in encoder.state_dict().items()}
    state["bert.pooler.dense.weight"] = torch.eye(width) * scale  # W_p = s·I
    state["bert.pooler.dense.bias"] = torch.zeros(width)  # b_p = 0
    # A regression head trained on standardised targets (y − c)/t: fold c + t·f into the classifier,
    # so the exported model scores in the task's units (t = 1, c = 0 otherwise: unchanged).
    spec = loaded.specs[task]
    center, spread = spec.target_center, spec.target_scale
    state["classifier.weight"] = head.weight * spread / scale  # W_c = t·W / s (s a power of two)
    state["classifier.bias"] = head.bias * spread + center
    model.load_state_dict({k: v.detach().float().cpu() for k, v in state.items()}, strict=True)
    return model.eval()


@torch.no_grad()
def check_equal_outputs(loaded: LoadedRun, task: str, model: BertForSequenceClassification, tolerance: float = 1e-5) -> float:
    """Max |difference| of the two models' head outputs on random token ids; raises above tolerance."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, len(loaded.tokenizer), (4, 16), generator=generator).to(loaded.device)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # one padded row
    spec = loaded.specs[task]
    ours = task_type_of(spec).to_task_units(loaded.model(task=task, input_ids=ids, attention_mask=mask).float(), spec)
    theirs = model.to(loaded.device)(input_ids=ids, attention_mask=mask).logits.float()
    model.cpu()
    difference = float((ours - theirs).abs().max())
    if difference > tolerance:
        raise RunDirError(f"export of {task}: outputs differ by {difference:.3g} (> {tolerance}) from the run's model")
    return difference


def save_tokenizer(loaded: LoadedRun, out: Path) -> None:
    # model_max_length = data.max_seq_len: `truncation=True` then cuts as training did.
    tokenizer = copy.deepcopy(loaded.tokenizer)
    tokenizer.model_max_length = loaded.cfg.data.max_seq_len
    tokenizer.save_pretrained(out)


def usage(out: Path, max_seq_len: int) -> str:
    """The pipeline call that reads inputs as training did: without `truncation=True` a pipeline
    feeds a longer input whole (and warns that it exceeds the tokenizer's maximum)."""
    return f'transformers.pipeline("text-classification", model="{out}", truncation=True)  # cut at {max_seq_len} tokens, as trained'


def model_card(loaded: LoadedRun, task: str, out: Path) -> str:
    spec = loaded.specs[task]
    outputs = (f"labels {list(spec.labels)}" if spec.num_outputs > 1 else
               "one raw score per input (`score`): the pipeline applies no sigmoid")
    return "\n".join([
        f"# {task}, exported by mtsmart",
        "",
        f"BertForSequenceClassification of task `{task}` from the run `{loaded.directory}`, checkpoint",
        f"`{loaded.checkpoint.name}` (step {loaded.step}); {outputs}. Outputs equal the run's model",
        "(`mtsmart export` checks them); run it in float32 or bfloat16.",
        "",
        "    " + usage(out, loaded.cfg.data.max_seq_len),
        "",
    ])


def export_task(loaded: LoadedRun, task: str, out: Path) -> float:
    model = to_sequence_classifier(loaded, task)
    difference = check_equal_outputs(loaded, task, model)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    save_tokenizer(loaded, out)
    atomic_write_text(out / "README.md", model_card(loaded, task, out))
    return difference


def export_all(loaded: LoadedRun, out: Path) -> None:
    """out/encoder (save_pretrained + tokenizer), out/heads/<task>.safetensors, out/tasks/<task>.yaml."""
    encoder = bert_encoder(loaded)
    encoder.save_pretrained(out / "encoder")
    save_tokenizer(loaded, out / "encoder")
    (out / "heads").mkdir(parents=True, exist_ok=True)
    (out / "tasks").mkdir(parents=True, exist_ok=True)
    for task, spec in loaded.specs.items():
        proj = loaded.model.heads[task].proj
        save_file({"weight": proj.weight.detach().cpu().contiguous(), "bias": proj.bias.detach().cpu().contiguous()},
                  str(out / "heads" / f"{task}.safetensors"))
        give_default_mode(out / "heads" / f"{task}.safetensors")  # safetensors writes 0600
        shutil.copyfile(spec.source_file, out / "tasks" / f"{task}.yaml")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    check_target(out, args.force, "--out")
    loaded = open_run(args)
    if args.all:
        export_all(loaded, out)
        print(f"wrote the encoder, {len(loaded.specs)} heads and task files to {out}")
        return 0
    difference = export_task(loaded, args.task, out)
    print(f"wrote {out} (BertForSequenceClassification of task {args.task}; max |Δ output| on a check batch {difference:.2g})")
    print(f"use: {usage(out, loaded.cfg.data.max_seq_len)}")
    return 0
