"""Inference precision (`eval.precision`, `miner.precision`): exact fp32 by default, bf16 autocast where it is fast.

`fp32` (the default) is the exact path every published-number comparison uses. `bf16` runs the encoder's forward
under `torch.autocast(dtype=torch.bfloat16)` (embeddings come back as float32): on a GPU that supports bf16, and on
a CPU with native bf16 matmuls (AVX512_BF16 / AMX, `embedexp.trainer.precision.native_bf16_flags`). On a CPU
without them bf16 is emulated and measured slower (`bf16_slowdown`): the run falls back to fp32 with one warning
line saying why. `auto` picks bf16 where it is native and fp32 elsewhere, without a warning.
"""

from __future__ import annotations

import logging

from embedexp.errors import ConfigError
from embedexp.trainer.precision import NATIVE_BF16_FLAGS, SLOWER, bf16_slowdown, cpu_summary, native_bf16_flags

log = logging.getLogger("embedexp.trainer")

PRECISIONS = ("fp32", "bf16", "auto")


def check_precision(key: str, value) -> str:
    """`value` if it is one of PRECISIONS, else a one-line ConfigError naming `key` (e.g. `eval.precision`)."""
    if value not in PRECISIONS:
        raise ConfigError(f"{key}={value!r}; expected one of {', '.join(PRECISIONS)}")
    return value


def resolve_inference_precision(value: str, device: str = "cpu", key: str = "eval.precision") -> str:
    """The precision to encode with on `device` ("cpu", "cuda", "cuda:0", ...): "fp32" or "bf16".

    Args:
        value: the configured option, one of PRECISIONS.
        device: where the encoder runs (its `.device` or `.device.type`).
        key: the config key, for messages.
    Returns:
        "bf16" where bf16 is native (a bf16-capable GPU; a CPU with AVX512_BF16/AMX, or whose bf16 matmul measures no
        slower than fp32 by `bf16_slowdown`); otherwise "fp32" (for value="bf16" with one warning line saying why).
    Raises:
        ConfigError: value is not one of PRECISIONS.
    """
    check_precision(key, value)
    if value == "fp32":
        return "fp32"
    kind = str(getattr(device, "type", device)).split(":")[0]
    if kind == "cuda":
        import torch

        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16"
        why = f"{key}={value}: this GPU does not support bf16 (torch.cuda.is_bf16_supported() is False)"
    elif kind == "cpu":
        if native_bf16_flags():
            return "bf16"
        if value == "auto":
            return "fp32"
        ratio = bf16_slowdown()
        if ratio <= SLOWER:
            return "bf16"
        why = (
            f"{key}={value}: this CPU has no native bf16 (no {'/'.join(NATIVE_BF16_FLAGS)} in /proc/cpuinfo; "
            f"{cpu_summary()}) and a bf16 matmul measured {ratio:.1f}x slower than fp32 here"
        )
    else:
        why = f"{key}={value}: bf16 inference is only set up for CPU and CUDA devices, not {kind}"
    if value == "bf16":
        log.warning("%s: encoding in fp32 instead", why)
    return "fp32"
