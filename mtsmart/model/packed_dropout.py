"""Dropout whose masks cost one random draw per two elements (`model.dropout_masks=packed`).

On a CPU, torch draws a dropout mask with `bernoulli_`: one call of its Mersenne-Twister generator
and one double-precision comparison per element, serially — 15% of a bf16 MiniLM step, most of it
in attention's 16 × 12 × 128 × 128 probabilities (docs/performance.md, "Where a bf16 step's time goes").
Here one 64-bit draw of the same generator (`random_()` on int64: 63 uniform bits) gives two masks:
each 32-bit half, its top bit cleared, is a uniform integer u in [0, 2³¹), and an element is kept
when u < round(q · 2³¹) for the keep rate q = 1 − p. The keep probability is round(q · 2³¹) / 2³¹,
within 2⁻³² of q (finer than a float32 uniform's 2⁻²⁴). Kept elements are scaled by 1/q computed in
float32 whatever the tensor's dtype (torch's CPU dropout scales a bf16 tensor by 1/q rounded to
bf16: 1.109375 instead of 1.1111 at p = 0.1, so E[dropout(x)] = 0.9984·x there).

The draws come from the global generator (or the private stream active around them), so
`mtsmart.arithmetic.rng.replay` repeats a forward's masks and checkpoints resume them exactly.
The masks differ from torch's for the same seed: a run with packed masks is another random
stream, not the same run faster (docs/performance.md has the speed and the dev-score check).

Attention's dropout acts inside the attention function, so packed masks there need an attention
function of their own: `packed_attention_<sdpa|eager>` runs P = softmax(QKᵀ·s + mask), then
((P ∘ M) V) / q, when dropout is on — in the precision the chosen implementation computes in
under dropout (sdpa: float32 for bf16/fp16 inputs, as torch's math kernel; eager: the inputs' dtype)
— and the chosen implementation unchanged when it is off (evaluation, or a model without
attention dropout): evaluation is bit-identical to torch masks. It returns P ∘ M, unscaled, as
its attention weights.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.bert.modeling_bert import eager_attention_forward

from mtsmart.options.config import EARLIER_DEFAULTS

KEEP_BITS = 31  # bits of a draw per mask element: two elements per 64-bit word


def resolve_dropout_masks(requested: str, device: torch.device, resumed: Optional[dict] = None) -> tuple[str, str]:
    """(the masks to train with, why) for `model.dropout_masks`; `resumed` is the config of the
    checkpoint a run resumes from. torch and packed are kept as given. auto: a resumed run's own
    masks (its random stream; torch for a checkpoint from before the option existed); else packed
    on a CPU, where they make bf16 steps 10-17% faster with the same dev scores (docs/performance.md,
    "Packed dropout masks"), and torch on CUDA, whose fused dropout and attention are faster."""
    if requested != "auto":
        return requested, "as configured"
    if resumed is not None:
        saved = resumed.get("model", {}).get("dropout_masks", EARLIER_DEFAULTS["model.dropout_masks"])
        return saved, "auto: the masks the resumed run started with"
    if device.type == "cpu":
        return "packed", "auto: a CPU"
    return "torch", f"auto: torch's fused kernels on {device.type}"


def keep_threshold(keep: float) -> int:
    """The integer T with P(u < T) = T / 2³¹ nearest to `keep` for u uniform on [0, 2³¹)."""
    return round(keep * 2**KEEP_BITS)


def uniform_halves(count: int, device: torch.device) -> torch.Tensor:
    """`count` independent uniform int32 values in [0, 2³¹), two from each 64-bit draw."""
    words = torch.empty((count + 1) // 2, dtype=torch.int64, device=device).random_()
    # Each int64 holds 63 uniform bits (random_() draws [0, 2⁶³)); either half with its sign bit
    # cleared is 31 of them, whichever half the platform's byte order puts first.
    return words.view(torch.int32)[:count].bitwise_and_(2**KEEP_BITS - 1)


def keep_mask(shape: torch.Size, keep: float, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """1 where an element is kept (probability keep_threshold(keep) / 2³¹), 0 elsewhere, in `dtype`.

    Built as clamp(T − u, 0, 1) in int32 (T − u ≥ 1 exactly when u < T) and converted: on a CPU a
    boolean mask costs several times more to multiply by, or to convert, than numbers do."""
    threshold = keep_threshold(keep)
    if threshold >= 2**KEEP_BITS:  # keep = 1: T − u would overflow int32; every element is kept
        return torch.ones(shape, dtype=dtype, device=device)
    u = uniform_halves(math.prod(shape), device)
    return torch.rsub(u, threshold).clamp_(0, 1).to(dtype).view(shape)


def packed_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout: x / (1 − p) where the mask keeps, 0 elsewhere (the identity out of training)."""
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return torch.zeros_like(x)
    keep = 1.0 - p
    # x · m is exact (m is 0 or 1); · (1/q) is computed in float32 and rounded once to x's dtype.
    return x * keep_mask(x.shape, keep, x.device, x.dtype) * (1.0 / keep)


class PackedDropout(nn.Module):
    """A drop-in for nn.Dropout with packed masks."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability {p} is not in [0, 1]")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return packed_dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _attend(query, key, value, attention_mask, scaling: float, dropout: float):
    """softmax(Q·s Kᵀ + mask) with packed dropout, times V, in the inputs' dtype (or autocast's)."""
    # Q·s first: the scaling on the (…, T, d) queries instead of the (…, T, T) scores.
    scores = torch.matmul(query * scaling, key.transpose(2, 3))
    if attention_mask is not None and attention_mask.dtype == torch.bool:  # sdpa's mask: True attends
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    elif attention_mask is not None:  # eager's additive mask (0 or the dtype's minimum)
        scores = scores + attention_mask.to(scores.dtype)
    probabilities = torch.softmax(scores, dim=-1)
    kept = probabilities * keep_mask(probabilities.shape, 1.0 - dropout, probabilities.device, probabilities.dtype)
    # (P ∘ M / q) V = ((P ∘ M) V) / q: the scaling on the 4× smaller output, not on P.
    output = torch.matmul(kept, value) * (1.0 / (1.0 - dropout))
    return output.transpose(1, 2).contiguous(), kept


def _attention_with_packed_dropout(off_path, in_float32: bool):
    """An attention function (transformers' interface) that draws its dropout with packed masks and
    calls `off_path` (sdpa or eager) whenever no dropout applies. `in_float32`: bf16/fp16 inputs are
    attended in float32 and the output cast back, as torch's sdpa does on the path it takes while
    dropout is on; otherwise in the inputs' dtype (under autocast, bf16 products), as transformers'
    eager attention does."""

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        if dropout == 0.0 or not module.training:
            return off_path(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        scaling = query.size(-1) ** -0.5 if scaling is None else scaling
        if not in_float32 or query.dtype == torch.float32:
            return _attend(query, key, value, attention_mask, scaling, dropout)
        with torch.autocast(device_type=query.device.type, enabled=False):
            output, kept = _attend(query.float(), key.float(), value.float(), attention_mask, scaling, dropout)
        return output.to(query.dtype), kept

    return attention


ATTENTION_FUNCTIONS = {  # name given to transformers, the attention function, the mask format it reads
    "sdpa": ("packed_attention_sdpa", _attention_with_packed_dropout(sdpa_attention_forward, True), sdpa_mask),
    "eager": ("packed_attention_eager", _attention_with_packed_dropout(eager_attention_forward, False), eager_mask),
}
for _name, _function, _mask in ATTENTION_FUNCTIONS.values():
    AttentionInterface.register(_name, _function)
    # Without a mask function of its own, transformers gives a custom attention no mask at all.
    AttentionMaskInterface.register(_name, _mask)


def use_packed_dropout(model: nn.Module, attn_implementation: str) -> int:
    """Replace every nn.Dropout in `model` by PackedDropout and route its attention through the packed
    attention function over `attn_implementation`; returns how many dropout modules were replaced."""
    if attn_implementation not in ATTENTION_FUNCTIONS:
        raise ValueError(f"packed dropout masks: attention implementation {attn_implementation!r} is not "
                         f"one of {sorted(ATTENTION_FUNCTIONS)}")
    replaced = 0
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Dropout:
                setattr(module, child_name, PackedDropout(child.p))
                replaced += 1
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and getattr(config, "_attn_implementation", None) == attn_implementation:
            config._attn_implementation = ATTENTION_FUNCTIONS[attn_implementation][0]
    return replaced
