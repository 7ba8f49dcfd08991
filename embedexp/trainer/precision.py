"""Precision that knows the hardware: bf16 on a CPU without native bf16 matmuls falls back to fp32, measured.

On x86 CPUs, bf16 matrix products are fast only with AVX512_BF16 or AMX (`avx512_bf16` / `amx_bf16` in
/proc/cpuinfo); elsewhere oneDNN emulates them and a bf16 training step can be 10-20x slower than fp32 (measured on
an AVX2 EPYC: one MiniLM step of batch 32 took over a minute in bf16 against 3.7 s in fp32). So before a CPU run
uses a bf16 precision we look at the flags, and without native support we time one bf16-autocast matmul against
fp32: if bf16 is slower, training runs in `32-true` with one warning line saying why. `trainer.allow_slow_bf16=true`
keeps bf16 anyway (e.g. to reproduce a bf16 result on a slow machine).
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

log = logging.getLogger("embedexp.trainer")

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
SLOWER = 1.2  # bf16 counts as slower than fp32 above this time ratio (timer noise on a busy machine stays below)


@functools.lru_cache(maxsize=1)
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags the kernel reports (Linux `/proc/cpuinfo` `flags` line); empty where unavailable."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bf16_flags(flags: frozenset[str] | None = None) -> list[str]:
    """The flags among AVX512_BF16 / AMX_BF16 this CPU has (an empty list: bf16 is emulated)."""
    flags = cpu_flags() if flags is None else flags
    return [f for f in NATIVE_BF16_FLAGS if f in flags]


def cpu_summary() -> str:
    """One line for benchmark tables: torch's CPU capability and the bf16-relevant flags, e.g. `AVX2, no native bf16`."""
    import torch

    native = native_bf16_flags()
    return f"{torch.backends.cpu.get_cpu_capability()}, " + ("+".join(native) if native else "no native bf16")


@functools.lru_cache(maxsize=1)
def bf16_slowdown(n: int = 384, repeats: int = 3) -> float:
    """Time ratio bf16-autocast / fp32 of an (n, n) @ (n, n) matmul on this CPU: >1 means bf16 is slower.

    Best of `repeats` after one warm-up call each; takes about 0.1 s with native bf16 and up to ~2 s without.
    """
    import torch

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)

    def best(bf16: bool) -> float:
        times = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                a @ b
            times.append(time.perf_counter() - start)
        return min(times[1:])

    return best(True) / max(best(False), 1e-9)


def _on_cpu(trainer: dict) -> bool:
    accelerator = str(trainer.get("accelerator", "auto")).lower()
    if accelerator == "cpu":
        return True
    if accelerator in ("auto", "none"):
        import torch

        return not torch.cuda.is_available()
    return False


def resolve_cpu_precision(trainer: dict, allow_slow_bf16: bool = False) -> dict:
    """Lightning Trainer kwargs with a bf16 `precision` replaced by `32-true` where bf16 would be slower on this CPU.

    Args:
        trainer: `lightning.Trainer` keyword arguments (`precision`, `accelerator`, ...); not modified.
        allow_slow_bf16: keep bf16 even without native support (the warning still says it is slower).
    Returns:
        The kwargs to use. GPU runs and non-bf16 precisions pass through unchanged; so does a CPU whose bf16
        matmul measures no slower than fp32 (by `bf16_slowdown`).
    """
    precision = str(trainer.get("precision", "32-true"))
    if not precision.startswith("bf16") or not _on_cpu(trainer) or native_bf16_flags():
        return trainer
    ratio = bf16_slowdown()
    if ratio <= SLOWER:
        return trainer
    why = (
        f"trainer.precision={precision}: this CPU has no native bf16 (no {'/'.join(NATIVE_BF16_FLAGS)} in "
        f"/proc/cpuinfo; {cpu_summary()}) and a bf16 matmul measured {ratio:.1f}x slower than fp32 here"
    )
    if allow_slow_bf16:
        log.warning("%s; keeping bf16 because trainer.allow_slow_bf16=true", why)
        return trainer
    log.warning("%s: training in 32-true instead (trainer.allow_slow_bf16=true keeps bf16)", why)
    return {**trainer, "precision": "32-true"}
