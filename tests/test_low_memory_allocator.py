"""Memory-first allocator setting for LoRA / gradient-checkpointing runs (embedexp.runtime.prefer_low_memory).

The speed setting (`tune_cpu_allocator`) keeps freed blocks in the heap; in a LoRA process that held ~1.6 GB of
freed activation memory and made its peak RSS equal full fine-tuning's (docs/big_models.md). After
`prefer_low_memory`, a 1 MiB block (above 256 KiB) is mmapped and unmapped on free: nothing stays in the heap.
"""

import os
import platform
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

_PROBE = """
import ctypes, sys, torch
sys.path.insert(0, {repo!r})
from embedexp.runtime import tune_cpu_allocator, prefer_low_memory
tune_cpu_allocator()
low = prefer_low_memory("test")
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
before = libc.mallinfo2().fordblks
xs = [torch.ones(2**20, dtype=torch.uint8) for _ in range(64)]  # 64 blocks of 1 MiB
mapped = libc.mallinfo2().hblkhd
del xs
kept = libc.mallinfo2().fordblks - before
print(low, mapped >= 64 * 2**20, kept >= 32 * 2**20)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt/mallinfo2 are glibc's")
@pytest.mark.parametrize(
    "setting, expected",
    [("1", "True True False"), ("memory", "True True False"), ("speed", "False False True")],
)
def test_low_memory_setting_returns_freed_blocks(setting, expected):
    """Default and `memory`: 1 MiB blocks are mmapped, none kept after free. `speed`: they stay in the heap."""
    from conftest import REPO

    env = {**os.environ, "EMBEDEXP_MALLOC_TUNING": setting}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(repo=str(REPO))], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[-2] == expected


@pytest.mark.parametrize(
    "model, called",
    [
        ({"peft": {"r": 8}, "gradient_checkpointing": False}, True),
        ({"peft": {"r": None}, "gradient_checkpointing": True}, True),
        ({"peft": {"r": None}, "gradient_checkpointing": False}, False),
        ({"peft": None}, False),
    ],
)
def test_lora_and_checkpointing_runs_ask_for_low_memory(monkeypatch, model, called):
    import embedexp.runtime as runtime
    from embedexp.train import _memory_first

    seen = []
    monkeypatch.setattr(runtime, "prefer_low_memory", lambda reason: seen.append(reason) or True)
    _memory_first(OmegaConf.create(model))
    assert bool(seen) == called
