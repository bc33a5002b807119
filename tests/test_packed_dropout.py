"""Packed dropout masks (`model.dropout_masks=packed`, mtsmart.model.packed_dropout) against their
formulas: the keep probability round(q·2³¹)/2³¹, uniform bits, the float32 scaling 1/q, the
backward, attention's dropout, evaluation unchanged, and runs that replay and resume exactly."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers import AttentionInterface
from transformers.models.bert.modeling_bert import eager_attention_forward

from conftest import same_weights
from mtsmart.arithmetic import rng
from mtsmart.model import packed_dropout as packed
from mtsmart.model.multitask import task_output
from mtsmart.tasks.batch import Batch
from mtsmart.tasks.spec import TaskSpec

CPU = torch.device("cpu")
SPECS = [TaskSpec(name="cls", type="classification", metrics=("accuracy",), labels=("a", "b", "c"), dropout=0.1)]


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.75, 1 / 3, 1e-6])
def test_the_keep_threshold_is_the_nearest_multiple_of_two_to_the_minus_31(keep):
    threshold = packed.keep_threshold(keep)
    assert abs(threshold / 2**31 - keep) <= 2**-32
    assert threshold == math.floor(keep * 2**31 + 0.5)  # by hand: the nearest integer


def test_the_halves_are_uniform_31_bit_integers():
    torch.manual_seed(0)
    n = 1 << 20
    halves = packed.uniform_halves(n, CPU)
    assert halves.dtype == torch.int32 and halves.numel() == n
    assert int(halves.min()) >= 0 and int(halves.max()) < 2**31
    bits = torch.stack([(halves >> b) & 1 for b in range(31)]).double().mean(dim=1)
    # each bit is a fair coin: 6 standard deviations of a Binomial(n, 1/2) mean
    assert torch.all((bits - 0.5).abs() < 6 * 0.5 / math.sqrt(n)), bits
    # the two halves of one draw are not tied to each other (their correlation is ~N(0, 1/n))
    pairs = halves.view(-1, 2).double()
    correlation = torch.corrcoef(pairs.T)[0, 1]
    assert abs(float(correlation)) < 6 / math.sqrt(n // 2)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_the_keep_rate_is_the_formula_within_binomial_noise(p):
    torch.manual_seed(1)
    n = 1 << 22
    kept = float(packed.keep_mask(torch.Size([n]), 1 - p, CPU).double().mean())
    q = packed.keep_threshold(1 - p) / 2**31
    assert abs(kept - q) < 6 * math.sqrt(q * (1 - q) / n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_mask_is_zeros_and_ones_in_any_shape_and_dtype(dtype):
    torch.manual_seed(2)
    mask = packed.keep_mask(torch.Size([3, 5, 7]), 0.9, CPU, dtype)
    assert mask.shape == (3, 5, 7) and mask.dtype == dtype
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    # u < T exactly: the mask is 1 where the same draws fall below the threshold
    state = rng.snapshot(CPU)
    mask = packed.keep_mask(torch.Size([1001]), 0.6, CPU)
    with rng.replay(state):
        u = packed.uniform_halves(1001, CPU)
    assert torch.equal(mask, (u < packed.keep_threshold(0.6)).float())


def test_a_keep_rate_that_rounds_to_one_keeps_everything():
    assert torch.equal(packed.keep_mask(torch.Size([4, 4]), 1 - 1e-12, CPU), torch.ones(4, 4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_keeps_x_over_q_in_float32_and_zeroes_the_rest(dtype):
    x = torch.randn(64, 33, dtype=torch.float32).to(dtype)
    state = rng.snapshot(CPU)
    out = packed.packed_dropout(x, 0.1, training=True)
    with rng.replay(state):
        mask = packed.keep_mask(x.shape, 0.9, CPU).bool()  # the same draws, by hand
    expected = torch.where(mask, (x.float() * torch.tensor(1 / 0.9, dtype=torch.float32)).to(dtype), torch.zeros((), dtype=dtype))
    assert out.dtype == dtype and torch.equal(out, expected)
    assert 0 < int((out == 0).sum()) < x.numel()


def test_kept_elements_are_scaled_by_1_over_q_where_torch_rounds_the_scale_to_bf16():
    # Over many different bf16 inputs the rounding of x/q averages out: kept elements come out
    # x/q on average. Torch's CPU dropout scales bf16 by 1/0.9 rounded to bf16 (1.109375): 0.16% low.
    torch.manual_seed(3)
    x = torch.exp2(4 * torch.rand(1 << 20)).to(torch.bfloat16)  # every bf16 value in [1, 16)
    out = packed.packed_dropout(x, 0.1, training=True)
    kept = out != 0
    assert abs(float((out[kept].double() / x[kept].double()).mean()) - 1 / 0.9) < 2e-4  # torch: 1.7e-3 off
    torch_out = torch.nn.functional.dropout(x, 0.1, training=True)
    torch_kept = torch_out != 0
    assert abs(float((torch_out[torch_kept].double() / x[torch_kept].double()).mean()) - 1.109375) < 2e-5


def test_the_backward_is_the_mask_times_the_scaling():
    x = torch.randn(50, 20, requires_grad=True)
    grad = torch.randn(50, 20)
    state = rng.snapshot(CPU)
    packed.packed_dropout(x, 0.25, training=True).backward(grad)
    with rng.replay(state):
        mask = packed.keep_mask(x.shape, 0.75, CPU).bool()
    assert torch.equal(x.grad, torch.where(mask, grad * torch.tensor(1 / 0.75), 0.0))


def test_evaluation_p_0_and_p_1():
    x = torch.randn(8, 4)
    assert packed.packed_dropout(x, 0.3, training=False) is x
    assert packed.packed_dropout(x, 0.0, training=True) is x
    assert torch.equal(packed.packed_dropout(x, 1.0, training=True), torch.zeros_like(x))
    with pytest.raises(ValueError, match="not in"):
        packed.PackedDropout(1.5)


class _Attention(nn.Module):
    """What an attention function reads of its module."""

    def __init__(self, training: bool):
        super().__init__()
        self.train(training)
        self.is_causal = False


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("mask_format", ["additive", "boolean"])
def test_attention_with_dropout_is_softmax_then_packed_dropout_then_v(implementation, mask_format):
    torch.manual_seed(4)
    q, k, v = (torch.randn(2, 3, 6, 8) for _ in range(3))
    additive = torch.zeros(2, 1, 6, 6)
    additive[1, :, :, 4:] = torch.finfo(torch.float32).min  # the second row's last two tokens are padding
    mask = additive if mask_format == "additive" else additive == 0  # eager's format, or sdpa's (True attends)
    function = AttentionInterface()[f"packed_attention_{implementation}"]
    state = rng.snapshot(CPU)
    output, _ = function(_Attention(training=True), q, k, v, mask, scaling=0.25, dropout=0.2)
    with rng.replay(state):  # by hand, the same draws
        probabilities = torch.softmax(q @ k.transpose(2, 3) * 0.25 + additive, dim=-1)
        keep = packed.keep_mask(probabilities.shape, 0.8, CPU).bool()
    expected = (torch.where(keep, probabilities / 0.8, 0.0) @ v).transpose(1, 2)
    torch.testing.assert_close(output, expected, rtol=1e-6, atol=1e-6)


def test_attention_without_dropout_is_the_implementation_itself():
    torch.manual_seed(5)
    q, k, v = (torch.randn(2, 3, 6, 8) for _ in range(3))
    out, _ = AttentionInterface()["packed_attention_eager"](_Attention(training=False), q, k, v, None, scaling=0.3, dropout=0.0)
    reference, _ = eager_attention_forward(_Attention(training=False), q, k, v, None, scaling=0.3, dropout=0.0)
    assert torch.equal(out, reference)


def batch_of(ids: torch.Tensor) -> Batch:
    return Batch(task="cls", input_ids=ids, attention_mask=torch.ones_like(ids),
                 token_type_ids=torch.zeros_like(ids), labels=torch.zeros(ids.shape[0], dtype=torch.long))


def padded_batch(ids: torch.Tensor, lengths: list[int]) -> Batch:
    mask = (torch.arange(ids.shape[1])[None, :] < torch.tensor(lengths)[:, None]).long()
    return Batch(task="cls", input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids),
                 labels=torch.zeros(ids.shape[0], dtype=torch.long))


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_a_model_gets_every_dropout_replaced_and_evaluates_bit_identically(tiny_model_factory, implementation):
    model, reference = tiny_model_factory(SPECS), tiny_model_factory(SPECS)
    for m in (model, reference):
        m.encoder.config._attn_implementation = implementation
    dropouts = sum(type(m) is nn.Dropout for m in model.modules())
    assert packed.use_packed_dropout(model, implementation) == dropouts > 0
    assert not any(type(m) is nn.Dropout for m in model.modules())
    assert model.encoder.config._attn_implementation == f"packed_attention_{implementation}"
    assert "packed" not in str(model.encoder.config.to_dict())  # nothing of it is saved with the model
    batch = padded_batch(torch.randint(1000, 2000, (3, 10)), [10, 7, 4])
    model.eval(), reference.eval()
    with torch.no_grad():
        assert torch.equal(task_output(model, batch), task_output(reference, batch))


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_training_forwards_ignore_padding(tiny_model_factory, implementation):
    # The attention mask reaches the packed attention function: other tokens in the padded places
    # leave every row's output unchanged under the same dropout masks.
    model = tiny_model_factory(SPECS)
    model.encoder.config._attn_implementation = implementation
    packed.use_packed_dropout(model, implementation)
    ids = torch.randint(1000, 2000, (3, 10))
    other = ids.clone()
    other[1, 7:], other[2, 4:] = 1500, 1600
    state = rng.snapshot(CPU)
    first = task_output(model, padded_batch(ids, [10, 7, 4]))
    with rng.replay(state):
        assert torch.equal(task_output(model, padded_batch(other, [10, 7, 4])), first)
    with rng.replay(state):  # the check can fail: without the mask the padded tokens count
        assert not torch.equal(task_output(model, padded_batch(other, [10, 10, 10])), first)


def test_training_forwards_replay_their_masks_and_differ_from_torch_masks(tiny_model_factory):
    model, reference = tiny_model_factory(SPECS), tiny_model_factory(SPECS)
    packed.use_packed_dropout(model, "sdpa")
    ids = torch.randint(1000, 2000, (3, 10))
    state = rng.snapshot(CPU)
    first = task_output(model, batch_of(ids))
    with rng.replay(state):  # SMART's shared masks: the same sub-network again
        assert torch.equal(task_output(model, batch_of(ids)), first)
    assert not torch.equal(task_output(model, batch_of(ids)), first)  # fresh draws, another sub-network
    with rng.replay(state):
        assert not torch.equal(task_output(reference, batch_of(ids)), first)  # torch's masks from the same state


def test_an_unknown_attention_implementation_is_refused(tiny_model_factory):
    with pytest.raises(ValueError, match="flash"):
        packed.use_packed_dropout(tiny_model_factory(SPECS), "flash")


# ------------------------------------------------------------------ runs

COMMON = ("tasks=[rte,stsb]", "train.max_steps=6", "eval.max_examples=16", "model.dropout_masks=packed")


def test_a_packed_run_with_smart_and_a_teacher_resumes_exactly(tmp_path, train_tiny):
    method = ["adversarial.method=smart", "smart.update=release", "bregman.mu=1", "bregman.teacher_dropout=true",
              "train.save_every_steps=1"]
    straight = train_tiny(tmp_path / "straight", *COMMON, *method)
    resumed = train_tiny(tmp_path / "resumed", *COMMON, *method, "train.stop_after_steps=3")
    train_tiny(resumed, *COMMON, *method, "train.resume=auto")
    assert same_weights(straight, resumed)
    assert "dropout_masks: packed" in (straight / "config.yaml").read_text()
    # The same run with torch's masks is another random stream.
    torch_masks = train_tiny(tmp_path / "torch", *COMMON[:-1], "model.dropout_masks=torch", *method)
    assert not same_weights(straight, torch_masks)


def test_packed_masks_keep_the_regulariser_private(tmp_path, train_tiny):
    plain = train_tiny(tmp_path / "plain", *COMMON, "adversarial.method=none", "bregman.mu=0")
    r3f = train_tiny(tmp_path / "r3f", *COMMON, "adversarial.method=r3f", "r3f.weight=0", "r3f.init_scale=1e-2", "bregman.mu=0")
    assert same_weights(plain, r3f)


def test_under_bf16_autocast_the_sdpa_variant_attends_in_float32_as_torchs_math_kernel_does():
    torch.manual_seed(6)
    q, k, v = (3 * torch.randn(2, 3, 16, 8)).bfloat16(), (3 * torch.randn(2, 3, 16, 8)).bfloat16(), torch.randn(2, 3, 16, 8).bfloat16()
    state = rng.snapshot(CPU)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output, _ = AttentionInterface()["packed_attention_sdpa"](_Attention(training=True), q, k, v, None, scaling=0.35, dropout=0.1)
    with rng.replay(state):  # by hand in float32, the same draws, rounded once at the end
        probabilities = torch.softmax(q.float() * 0.35 @ k.float().transpose(2, 3), dim=-1)
        keep = packed.keep_mask(probabilities.shape, 0.9, CPU)
    expected = ((probabilities * keep) @ v.float() * (1 / 0.9)).transpose(1, 2).bfloat16()
    assert output.dtype == torch.bfloat16 and torch.equal(output, expected)


def test_a_model_in_training_has_the_output_distribution_torchs_masks_give_it(tiny_model_factory):
    # The independent reference: torch's own dropout. Over many training forwards of one padded
    # batch (hidden, attention and head dropout, p = 0.1), each output's mean and spread with packed
    # masks match those with torch's masks within Monte-Carlo noise.
    reference = tiny_model_factory(SPECS)
    model = tiny_model_factory(SPECS)
    packed.use_packed_dropout(model, "sdpa")
    batch = padded_batch(torch.randint(1000, 2000, (4, 12)), [12, 12, 8, 5])
    n = 1500
    with torch.no_grad():
        ours = torch.stack([task_output(model, batch) for _ in range(n)]).flatten(1)
        theirs = torch.stack([task_output(reference, batch) for _ in range(n)]).flatten(1)
    standard_error = torch.sqrt((ours.var(0) + theirs.var(0)) / n)
    assert torch.all((ours.mean(0) - theirs.mean(0)).abs() < 5 * standard_error)
    variance_ratio = float(ours.var(0).mean() / theirs.var(0).mean())
    assert 0.85 < variance_ratio < 1.15, variance_ratio  # the ratio's own noise is about ±0.04 here
    assert float(theirs.var(0).mean()) > 0  # dropout acts: the check can see a change in spread
