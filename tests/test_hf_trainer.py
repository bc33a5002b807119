"""mtsmart.recipes.hf.SmartTrainer: SMART and the Bregman teacher inside transformers.Trainer.

- one step's loss and gradients equal the objective written out by hand on the Hugging Face
  model (task loss + λs·Rs by a naive Algorithm 1 + μ·D_Breg), classification and regression;
- 4 steps, checkpoint, resume to 8 in a new process = 8 steps straight, teacher included;
- a short real run through Trainer.train() whose loss falls, with the regularisers in the logs.
"""
from __future__ import annotations

import copy
import math
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

from mtsmart.data.loader import derive_seed
from mtsmart.options.bregman import BregmanConfig
from mtsmart.arithmetic.divergence import squared_error, symmetric_kl
from mtsmart.recipes.hf import STATE_FILE, SmartTrainer
from mtsmart.arithmetic.perturbation import token_mask
from mtsmart.options.smart import SmartConfig

VOCAB = 50


def tiny_classifier(num_labels: int, dropout: float = 0.0) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=num_labels,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return BertForSequenceClassification(config)


def fixed_batch(num_labels: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    attention = (torch.arange(9)[None, :] < torch.tensor([9, 6, 8, 4])[:, None]).long()
    ids = torch.randint(1, VOCAB, (4, 9), generator=gen) * attention
    labels = torch.tensor([0, 2, 1, 2]) if num_labels > 1 else torch.tensor([0.5, 3.0, 1.5, 4.0])
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


def args(tmp_path: Path, **extra) -> TrainingArguments:
    options = dict(output_dir=str(tmp_path), use_cpu=True, report_to=[], per_device_train_batch_size=4,
                   learning_rate=1e-3, max_steps=10, disable_tqdm=True)
    return TrainingArguments(**{**options, **extra})


def by_hand(model, teacher, batch, smart: SmartConfig, mu: float, noise: torch.Tensor) -> torch.Tensor:
    """L + λs·Rs + μ·D_Breg written out: Algorithm 1 (inf norm, token level, K = 1) on the word embeddings."""
    regression = model.config.num_labels == 1

    def f(m, embeds):
        logits = m(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
        return logits.squeeze(-1) if regression else logits

    divergence = squared_error if regression else symmetric_kl
    x = model.get_input_embeddings()(batch["input_ids"])
    clean = f(model, x)
    loss = (torch.nn.functional.mse_loss(clean, batch["labels"].float()) if regression
            else torch.nn.functional.cross_entropy(clean, batch["labels"]))
    mask = token_mask(batch["attention_mask"], x.dtype)
    delta = (noise * mask).requires_grad_()
    (g,) = torch.autograd.grad(divergence(f(model, x.detach() + delta), clean.detach()), delta)
    g = g * mask
    step = delta.detach() + smart.step_size * g / (g.abs().amax(-1, keepdim=True) + 1e-12)
    delta = step.clamp(-smart.epsilon, smart.epsilon) * mask
    loss = loss + smart.weight * divergence(f(model, x + delta), clean)
    if mu:
        with torch.no_grad():
            target = f(teacher, teacher.get_input_embeddings()(batch["input_ids"]))
        loss = loss + mu * divergence(clean, target)
    return loss


@pytest.mark.parametrize("num_labels", [3, 1])
@pytest.mark.parametrize("mu", [0.0, 1.0])
def test_one_step_equals_the_objective_by_hand(tmp_path, num_labels, mu):
    smart = SmartConfig(weight=2.0, epsilon=1e-2, step_size=1e-2, init_scale=1e-3)
    model = tiny_classifier(num_labels)
    reference = copy.deepcopy(model)
    trainer = SmartTrainer(model=model, args=args(tmp_path), regulariser=smart, bregman=BregmanConfig(mu=mu))
    trainer.create_optimizer()
    trainer.state.max_steps = 10
    trainer._build_bregman()
    teacher = None
    if mu:  # a teacher away from the student, so D_Breg and its gradient are not zero
        torch.manual_seed(5)
        with torch.no_grad():
            for param in trainer.bregman.teacher.parameters():
                param.add_(0.05 * torch.randn_like(param))
        teacher = copy.deepcopy(trainer.bregman.teacher.hf)
    batch = fixed_batch(num_labels)

    # The ν SMART draws first, from the objective's private stream of the regulariser.
    stream = torch.Generator().manual_seed(derive_seed("regulariser", trainer.args.seed + trainer.args.process_index))
    noise = torch.randn(4, 9, 16, generator=stream) * smart.init_scale
    torch.manual_seed(11)
    returned = trainer.training_step(trainer.model, dict(batch))
    actual = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}

    expected_loss = by_hand(reference, teacher, batch, smart, mu, noise)
    expected_loss.backward()
    expected = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-7, msg=name)
    assert float(returned) > 0  # the task loss, which the Trainer logs


# --------------------------------------------------------------------------- resume in a new process

SCRIPT = textwrap.dedent('''
    import sys, torch
    from transformers import BertConfig, BertForSequenceClassification, TrainingArguments
    from mtsmart.options.bregman import BregmanConfig
    from mtsmart.recipes.hf import SmartTrainer
    from mtsmart.options.smart import SmartConfig

    out, resume = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=2)
    model = BertForSequenceClassification(config)  # dropout 0.1: the Trainer restores the RNG on resume
    gen = torch.Generator().manual_seed(3)
    data = [{"input_ids": torch.randint(1, 50, (8,), generator=gen), "attention_mask": torch.ones(8, dtype=torch.long),
             "labels": int(i % 2)} for i in range(64)]
    args = TrainingArguments(output_dir=out, use_cpu=True, report_to=[], per_device_train_batch_size=4, max_steps=8,
                             save_steps=4, save_strategy="steps", learning_rate=1e-3, seed=7, disable_tqdm=True,
                             gradient_accumulation_steps=2, logging_steps=2)
    trainer = SmartTrainer(model=model, args=args, train_dataset=data,
                           regulariser=SmartConfig(epsilon=1e-2, step_size=1e-2, init_scale=1e-3),
                           bregman=BregmanConfig(mu=1.0, beta=0.9, early_beta=0.5, early_fraction=0.25, teacher_dropout=True))
    trainer.train(resume_from_checkpoint=resume)
''')


def run_script(tmp_path: Path, *argv: str) -> None:
    script = tmp_path / "train_hf.py"
    script.write_text(SCRIPT, encoding="utf-8")
    result = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, timeout=600,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]


def checkpoint_state(folder: Path) -> tuple[dict, dict]:
    return load_file(str(folder / "model.safetensors")), torch.load(folder / STATE_FILE, weights_only=True)


@pytest.mark.slow
def test_resume_in_a_new_process_equals_training_straight(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_script(tmp_path, str(straight))
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-4", resumed / "checkpoint-4")
    run_script(tmp_path, str(resumed), str(resumed / "checkpoint-4"))

    weights_8, state_8 = checkpoint_state(straight / "checkpoint-8")
    weights_r, state_r = checkpoint_state(resumed / "checkpoint-8")
    weights_4, state_4 = checkpoint_state(straight / "checkpoint-4")
    for name in weights_8:
        torch.testing.assert_close(weights_r[name], weights_8[name], rtol=0, atol=1e-6, msg=name)
    teacher_8, teacher_r, teacher_4 = (s["bregman"]["teacher"] for s in (state_8, state_r, state_4))
    for name in teacher_8:
        torch.testing.assert_close(teacher_r[name], teacher_8[name], rtol=0, atol=1e-6, msg=name)
    assert state_r["bregman"]["updates"] == state_8["bregman"]["updates"] == 8
    assert state_4["bregman"]["updates"] == 4
    # The two states differ: training moved both the student and the teacher between steps 4 and 8.
    assert any(not torch.equal(weights_4[n], weights_8[n]) for n in weights_8)
    assert any(not torch.equal(teacher_4[n], teacher_8[n]) for n in teacher_8)


# --------------------------------------------------------------------------- a real run


@pytest.mark.slow
def test_a_short_run_learns_and_logs_the_regularisers(tmp_path):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(3)
    data = []
    for i in range(256):  # the first token says the label: learnable by a tiny model in a few dozen steps
        ids = torch.randint(8, VOCAB, (10,), generator=gen)
        ids[0] = 5 + i % 2
        data.append({"input_ids": ids, "attention_mask": torch.ones(10, dtype=torch.long), "labels": i % 2})
    trainer = SmartTrainer(
        model=tiny_classifier(2, dropout=0.1), train_dataset=data,
        args=args(tmp_path, max_steps=60, logging_steps=10, learning_rate=3e-3, warmup_steps=5),
        regulariser=SmartConfig(epsilon=1e-2, step_size=1e-2, init_scale=1e-3), bregman=BregmanConfig(mu=0.1, beta=0.9),
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logs[-1]["loss"] < 0.6 * logs[0]["loss"], json.dumps(logs)
    assert {"adv/loss", "adv/delta_norm", "bregman/reg", "bregman/beta"} <= logs[-1].keys()
    assert all(entry["adv/loss"] >= 0 for entry in logs)


@pytest.mark.slow
def test_two_processes_under_torchrun_keep_students_and_teachers_equal(tmp_path):
    """Gloo on the CPU: the regularisers' extra forwards run through DDP; after 8 steps both
    ranks hold the same student and the same teacher, which moved 8 times."""
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT.replace("logging_steps=2)", "logging_steps=2, ddp_find_unused_parameters=True)") + textwrap.dedent('''
        import torch.distributed as dist
        flat = lambda module: torch.cat([p.detach().flatten() for p in module.parameters()])
        for name, module in (("student", trainer.model), ("teacher", trainer.bregman.teacher)):
            mine, gathered = flat(module), [torch.zeros_like(flat(module)) for _ in range(2)]
            dist.all_gather(gathered, mine)
            assert torch.equal(gathered[0], gathered[1]), name
        assert dist.get_world_size() == 2 and trainer.bregman.updates == 8
        print("ranks agree", flush=True)
        dist.destroy_process_group()
        # After a Trainer has run under torchrun on gloo, the interpreter's exit sometimes aborts
        # ("terminate called without an active exception"): 1 run in 8 with transformers' own
        # Trainer, none in 10 with a bare DDP loop (docs/hf_trainer.md, Limits). It happens after
        # everything above has passed, so the check ends here, without the exit's C++ destructors.
        import os
        os._exit(0)
    '''), encoding="utf-8")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", str(script), str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("ranks agree") == 2


@pytest.mark.slow
def test_the_documented_example_script_runs(tmp_path, data_root, tiny_tokenizer):
    """examples/hf_trainer_glue.py (docs/hf_trainer.md) on RTE from the hub's parquet files, with a
    tiny classifier saved as a model folder."""
    folder = tmp_path / "tiny_model"
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(
        vocab_size=tiny_tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=128, num_labels=2)).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, str(repo / "examples" / "hf_trainer_glue.py"), "--task", "rte", "--model", str(folder),
         "--parquet-dir", str(data_root / "hf" / "glue" / "rte"), "--max-steps", "2", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'eval_accuracy'" in result.stdout
    assert (tmp_path / "run" / "checkpoint-2" / STATE_FILE).is_file()


@pytest.mark.slow
def test_bf16_and_gradient_accumulation_through_the_trainer(tmp_path):
    """bf16=True (the Trainer's autocast), 2 accumulation steps, regression, SMART as released with
    the teacher: the run completes with finite losses and the regularisers in its logs."""
    gen = torch.Generator().manual_seed(3)
    data = [{"input_ids": torch.randint(1, VOCAB, (8,), generator=gen), "attention_mask": torch.ones(8, dtype=torch.long),
             "labels": float(i % 5)} for i in range(48)]
    trainer = SmartTrainer(
        model=tiny_classifier(1, dropout=0.1), train_dataset=data,
        args=args(tmp_path, max_steps=4, logging_steps=2, bf16=True, gradient_accumulation_steps=2),
        regulariser=SmartConfig(input="embedding_output", update="release", dropout="independent", guard=1e-6),
        bregman=BregmanConfig(mu=0.1, teacher_dropout=True),
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2 and all(math.isfinite(entry["loss"]) and entry["adv/loss"] > 0 for entry in logs)
    assert trainer.bregman.updates == 4
