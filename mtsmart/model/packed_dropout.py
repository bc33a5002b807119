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
function of their own: `packed_attention_<sdpa|eager>` runs softmax(QKᵀ·s + mask), packed dropout
and the product with V when dropout is on, and the chosen implementation unchanged when it is off
(evaluation, or a model without attention dropout) — evaluation is bit-identical to torch masks.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.bert.modeling_bert import eager_attention_forward

KEEP_BITS = 31  # bits of a draw per mask element: two elements per 64-bit word


def keep_threshold(keep: float) -> int:
    """The integer T with P(u < T) = T / 2³¹ nearest to `keep` for u uniform on [0, 2³¹)."""
    return round(keep * 2**KEEP_BITS)


def uniform_halves(count: int, device: torch.device) -> torch.Tensor:
    """`count` independent uniform int32 values in [0, 2³¹), two from each 64-bit draw."""
    words = torch.empty((count + 1) // 2, dtype=torch.int64, device=device).random_()
    # Each int64 holds 63 uniform bits (random_() draws [0, 2⁶³)); either half with its sign bit
    # cleared is 31 of them, whichever half the platform's byte order puts first.
    return words.view(torch.int32)[:count].bitwise_and_(2**KEEP_BITS - 1)


def keep_mask(shape: torch.Size, keep: float, device: torch.device) -> torch.Tensor:
    """A boolean mask, each element True with probability keep_threshold(keep) / 2³¹."""
    return (uniform_halves(math.prod(shape), device) < keep_threshold(keep)).view(shape)


def packed_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout: x / (1 − p) where the mask keeps, 0 elsewhere (the identity out of training)."""
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return torch.zeros_like(x)
    keep = 1.0 - p
    # x · (1/q) is computed in float32 and rounded once to x's dtype; where() saves only the
    # boolean mask for the backward (1 byte an element; torch's saves the scaled mask in x's dtype).
    return torch.where(keep_mask(x.shape, keep, x.device), x * (1.0 / keep), 0.0)


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


def _attention_with_packed_dropout(off_path):
    """An attention function (transformers' interface) that draws its dropout with packed masks and
    calls `off_path` (sdpa or eager) whenever no dropout applies."""

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        if dropout == 0.0 or not module.training:
            return off_path(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        if scaling is None:
            scaling = query.size(-1) ** -0.5
        weights = torch.matmul(query, key.transpose(2, 3)) * scaling
        if attention_mask is not None:
            weights = weights + attention_mask
        # Softmax in float32, then the probabilities in V's dtype (what the product with V reads
        # under autocast anyway): the mask and the scaling then touch half the bytes in bf16.
        probabilities = torch.softmax(weights, dim=-1, dtype=torch.float32).to(value.dtype)
        probabilities = packed_dropout(probabilities, dropout, True)
        output = torch.matmul(probabilities, value).transpose(1, 2).contiguous()
        return output, probabilities

    return attention


ATTENTION_FUNCTIONS = {
    "sdpa": ("packed_attention_sdpa", _attention_with_packed_dropout(sdpa_attention_forward)),
    "eager": ("packed_attention_eager", _attention_with_packed_dropout(eager_attention_forward)),
}
for _name, _function in ATTENTION_FUNCTIONS.values():
    AttentionInterface.register(_name, _function)


def use_packed_dropout(model: nn.Module, attn_implementation: str) -> int:
    """Replace every nn.Dropout in `model` by PackedDropout and route its attention through the packed
    attention function over `attn_implementation`; returns how many dropout modules were replaced."""
    if attn_implementation not in ATTENTION_FUNCTIONS:
        raise ValueError(f"packed dropout masks: attention implementation {attn_implementation!r} is not "
                         f"one of {sorted(ATTENTION_FUNCTIONS)}")
    replaced = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Dropout:
                setattr(module, child_name, PackedDropout(child.p))
                replaced += 1
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and getattr(config, "_attn_implementation", None) == attn_implementation:
            config._attn_implementation = ATTENTION_FUNCTIONS[attn_implementation][0]
    return replaced
