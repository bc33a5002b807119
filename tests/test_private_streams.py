"""Private random streams (docs/method.md): a regulariser's noise and the dropout of its extra
forwards come from a stream of its own, so a regulariser whose term is zero trains exactly as
plain fine-tuning does, and a resumed run continues every stream exactly."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import same_weights
from mtsmart.arithmetic.rng import PrivateStream

CPU = torch.device("cpu")


def test_a_block_draws_from_the_private_stream_and_leaves_the_global_one_alone():
    stream = PrivateStream(seed=123)
    torch.manual_seed(0)
    expected_global = torch.rand(3)
    torch.manual_seed(0)
    with stream.active(CPU):
        first = torch.rand(4)
    with stream.active(CPU):
        second = torch.rand(4)
    assert torch.equal(torch.rand(3), expected_global)  # as if the blocks had not run
    reference = torch.Generator().manual_seed(123)
    assert torch.equal(torch.cat([first, second]), torch.rand(8, generator=reference))  # one stream, continued


def test_the_stream_round_trips_through_its_state():
    stream = PrivateStream(seed=5)
    with stream.active(CPU):
        torch.rand(2)
    saved = stream.state_dict()
    with stream.active(CPU):
        expected = torch.rand(3)
    restored = PrivateStream(seed=999)
    restored.load_state_dict(saved)
    with restored.active(CPU):
        assert torch.equal(torch.rand(3), expected)


COMMON = ("tasks=[rte,stsb]", "train.max_steps=6", "eval.max_examples=16", "bregman.mu=0")


@pytest.fixture(scope="module")
def plain(tmp_path_factory, train_tiny) -> Path:
    return train_tiny(tmp_path_factory.mktemp("plain") / "run", *COMMON, "adversarial.method=none")


@pytest.mark.parametrize("method", [
    ["adversarial.method=r3f", "r3f.weight=0", "r3f.init_scale=1e-2"],  # noise + a forward with its own masks
    ["adversarial.method=fgm", "fgm.weight=0"],  # an input gradient + a perturbed forward
    ["adversarial.method=pgd", "pgd.weight=0", "pgd.steps=2"],
])
def test_a_regulariser_whose_term_is_zero_trains_bit_identically_to_plain(plain, tmp_path, train_tiny, method):
    assert same_weights(train_tiny(tmp_path / "run", *COMMON, *method), plain)


def test_a_regulariser_that_acts_still_changes_the_model(plain, tmp_path, train_tiny):
    assert not same_weights(train_tiny(tmp_path / "run", *COMMON, "adversarial.method=r3f", "r3f.init_scale=1e-2"), plain)


def test_a_resumed_run_continues_every_stream_exactly(tmp_path, train_tiny):
    method = ["adversarial.method=smart", "smart.update=release", "smart.input=embedding_output",
              "smart.dropout=independent", "bregman.mu=1", "bregman.teacher_dropout=true", "train.save_every_steps=1"]
    common = ["tasks=[rte,stsb]", "train.max_steps=6", "eval.max_examples=16"]
    straight = train_tiny(tmp_path / "straight", *common, *method)
    resumed = train_tiny(tmp_path / "resumed", *common, *method, "train.stop_after_steps=3")
    train_tiny(resumed, *common, *method, "train.resume=auto")
    assert same_weights(straight, resumed)
