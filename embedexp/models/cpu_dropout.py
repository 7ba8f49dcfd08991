"""Dropout for CPU training that does not go through torch's serial Bernoulli sampler.

On CPUs that are not Intel's, torch samples a dropout mask (`bernoulli_`) one element at a time on one core
(its parallel MKL sampler is used only on Intel CPUs). In a MiniLM training step at batch 32 x 128 tokens that
was ~24% of the CPU time of a bf16 step (profile in docs/benchmarks.md), most of it in the attention-probability
dropout (batch x heads x seq x seq elements per layer).

Here the mask comes from numpy's SFC64 generator (raw 32-bit draws, ~6x faster per element than torch's sampler
here), seeded from torch's default CPU generator, so `seed_everything` and the RNG state saved in a checkpoint still
decide every mask. The function is `F.dropout`'s: each element is kept with probability 1 - p and scaled by
1 / (1 - p); the mask is saved as bool (1 byte per element instead of the input's 2 or 4) for backward.

Used for the hidden-state dropouts (`CPUDropout` replaces `nn.Dropout` modules) and the attention dropout (the
"embedexp_cpu_train" attention function: transformers' eager attention with this dropout). Tensors on other
devices take `F.dropout`. EMBEDEXP_FAST_DROPOUT=1/0 forces it on/off; the default is on for non-Intel CPUs.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_NAME = "embedexp_cpu_train"


@lru_cache(maxsize=1)
def wanted() -> bool:
    """Whether to use this dropout: EMBEDEXP_FAST_DROPOUT, else on unless the CPU is Intel's (torch's MKL path)."""
    forced = os.environ.get("EMBEDEXP_FAST_DROPOUT", "auto").strip().lower()
    if forced in ("1", "true", "on"):
        return True
    if forced in ("0", "false", "off"):
        return False
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False  # unknown CPU: keep torch's kernel
    return "GenuineIntel" not in text and "vendor_id" in text


def keep_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """Bool mask, each element True with probability 1 - p (to 1e-10: 32-bit draws against round(p * 2^32)).

    The bits come from numpy's SFC64 generator, seeded by one draw from torch's default CPU generator.
    """
    n = int(np.prod(shape, dtype=np.int64))
    seed = int(torch.randint(0, 2**62, (1,), dtype=torch.int64))
    bits = np.random.SFC64(seed).random_raw((n + 1) // 2).view(np.uint32)[:n]
    return torch.from_numpy(bits >= np.uint32(min(round(p * 2**32), 2**32 - 1))).view(shape)


class _ScaleKept(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x * scale, 0.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad * ctx.scale, 0.0), None, None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`F.dropout(x, p, training)` with the mask drawn as above for CPU tensors."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0 or not x.is_floating_point():
        return F.dropout(x, p, training)
    return _ScaleKept.apply(x, keep_mask(x.shape, p), 1.0 / (1.0 - p))


_dropout = dropout  # `attention` takes an argument named dropout (transformers' signature)


class CPUDropout(nn.Dropout):
    """nn.Dropout whose CPU path is `dropout` above (same p, same train/eval behaviour)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def attention(module, query, key, value, attention_mask, scaling=None, dropout: float = 0.0, **kwargs):
    """transformers' eager attention (BERT family) with the dropout above on the attention probabilities."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:  # True = attend (sdpa-style masks)
            attention_mask = torch.zeros_like(attention_mask, dtype=weights.dtype).masked_fill_(
                ~attention_mask, torch.finfo(weights.dtype).min
            )
        weights = weights + attention_mask
    weights = F.softmax(weights, dim=-1)
    weights = _dropout(weights, dropout, module.training)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, weights


def register_attention() -> None:
    """Make ATTENTION_NAME a transformers attention implementation, with eager's additive float mask."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(ATTENTION_NAME, attention)
    AttentionMaskInterface.register(ATTENTION_NAME, ALL_MASK_ATTENTION_FUNCTIONS["eager"])


def replace_dropout_modules(model: nn.Module) -> int:
    """Swap every plain nn.Dropout in `model` for a CPUDropout with the same p; returns how many."""
    swapped = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, CPUDropout(child.p, child.inplace).train(child.training))
                swapped += 1
    return swapped
