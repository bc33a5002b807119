"""Shared fixtures: the shared benchmark data, the tokenizer, and a tiny multi-task model."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Union

import pytest
import torch

from mtsmart.cli import main
from mtsmart.model.multitask import MultiTaskModel, load_encoder, load_tokenizer
from mtsmart.tasks.spec import TaskSpec

# Training subprocesses of the tests run tiny models: one intra-op thread each is several times
# faster than two threads contending for the same two cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# The read-only benchmark data beside the repo (../shared/data), or $MTSMART_DATA.
DATA_ROOT = Path(os.environ.get("MTSMART_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared data folder; tests that need it are skipped when it is absent."""
    if not DATA_ROOT.is_dir():
        pytest.skip(f"shared benchmark data not found at {DATA_ROOT} (set MTSMART_DATA)")
    return DATA_ROOT


TINY_TRAIN_ARGS = (
    "model.name_or_path=tiny", "model.tiny_hidden_size=32", "data.max_seq_len=48", "train.batch_size=8", "train.lr=1e-3",
)


@pytest.fixture(scope="session")
def train_tiny(data_root) -> Callable[..., Path]:
    """train_tiny(out, *overrides): `mtsmart train` of a tiny random BERT in-process into out;
    the caller names the tasks, steps and evaluation size."""

    def train(out: Path, *overrides: str) -> Path:
        assert main(["train", *TINY_TRAIN_ARGS, f"data.root={data_root}", f"output_dir={out}", *overrides]) == 0
        return out

    return train


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The tokenizer a `tiny` encoder borrows (the packaged MiniLM's WordPiece)."""
    return load_tokenizer("tiny", None)


@pytest.fixture
def tiny_model_factory(tiny_tokenizer) -> Callable[..., MultiTaskModel]:
    """make(specs, seed=0): a tiny random BERT (hidden 32, 2 layers, 2 heads) with one head per task."""

    def make(specs: Union[dict[str, TaskSpec], Iterable[TaskSpec]], seed: int = 0) -> MultiTaskModel:
        by_name = dict(specs) if isinstance(specs, dict) else {s.name: s for s in specs}
        torch.manual_seed(seed)
        encoder = load_encoder("tiny", tiny_tokenizer.vocab_size, tiny_hidden_size=32, tiny_layers=2, tiny_heads=2)
        return MultiTaskModel(encoder, by_name)

    return make


@pytest.fixture(scope="session", autouse=True)
def one_intra_op_thread():
    """Tiny models run several times faster on one thread than on two contended ones."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def last_step_checkpoint(run: Path) -> Path:
    """A run's latest step checkpoint folder."""
    return sorted((run / "checkpoints").glob("step_*"))[-1]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    """The weights of a run's latest step checkpoint."""
    from safetensors.torch import load_file

    return load_file(str(last_step_checkpoint(run) / "model.safetensors"))


def same_weights(a: Path, b: Path) -> bool:
    """Two runs ended with bit-identical weights."""
    first, second = final_weights(a), final_weights(b)
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
