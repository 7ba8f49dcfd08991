"""bf16 on a CPU without native bf16 falls back to fp32 with one warning that says why (issue 21, item 0)."""

from __future__ import annotations

import logging

import pytest

from embedexp.errors import ConfigError
from embedexp.trainer import precision
from embedexp.trainer.config import split_trainer_cfg

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu vme sse2 avx avx2 fma {extra}
bogomips\t: 4890.80
"""


def _cpuinfo(tmp_path, extra: str) -> str:
    p = tmp_path / "cpuinfo"
    p.write_text(CPUINFO.format(extra=extra))
    return str(p)


def test_flags_are_read_from_cpuinfo(tmp_path):
    avx2 = precision.cpu_flags.__wrapped__(_cpuinfo(tmp_path, ""))
    sapphire = precision.cpu_flags.__wrapped__(_cpuinfo(tmp_path, "avx512f avx512_bf16 amx_tile amx_bf16"))
    assert "avx2" in avx2 and precision.native_bf16_flags(avx2) == []
    assert precision.native_bf16_flags(sapphire) == ["avx512_bf16", "amx_bf16"]
    assert precision.cpu_flags.__wrapped__(str(tmp_path / "missing")) == frozenset()


@pytest.fixture
def emulated_bf16(monkeypatch):
    """A CPU without avx512_bf16/amx_bf16 whose bf16 matmul measures 9x slower than fp32."""
    monkeypatch.setattr(precision, "native_bf16_flags", lambda flags=None: [])
    monkeypatch.setattr(precision, "bf16_slowdown", lambda: 9.0)


def test_bf16_on_emulating_cpu_falls_back_to_fp32_with_one_line(emulated_bf16, caplog):
    with caplog.at_level(logging.WARNING, logger="embedexp.trainer"):
        out = precision.resolve_cpu_precision({"accelerator": "cpu", "precision": "bf16-mixed", "devices": 1})
    assert out == {"accelerator": "cpu", "precision": "32-true", "devices": 1}
    (line,) = [r.getMessage() for r in caplog.records]
    assert "trainer.precision=bf16-mixed" in line and "9.0x slower than fp32" in line and "32-true" in line
    assert "allow_slow_bf16" in line


def test_allow_slow_bf16_keeps_bf16_but_still_says_so(emulated_bf16, caplog):
    with caplog.at_level(logging.WARNING, logger="embedexp.trainer"):
        out = precision.resolve_cpu_precision({"accelerator": "cpu", "precision": "bf16-true"}, allow_slow_bf16=True)
    assert out["precision"] == "bf16-true"
    assert "9.0x slower" in caplog.records[0].getMessage()


def test_native_bf16_gpu_and_fp32_pass_through_without_measuring(monkeypatch):
    def boom():
        raise AssertionError("measured although the answer was known")

    monkeypatch.setattr(precision, "bf16_slowdown", boom)
    monkeypatch.setattr(precision, "native_bf16_flags", lambda flags=None: ["amx_bf16"])
    assert precision.resolve_cpu_precision({"accelerator": "cpu", "precision": "bf16-mixed"})["precision"] == (
        "bf16-mixed"
    )
    monkeypatch.setattr(precision, "native_bf16_flags", lambda flags=None: [])
    assert precision.resolve_cpu_precision({"accelerator": "gpu", "precision": "bf16-mixed"})["precision"] == (
        "bf16-mixed"
    )
    assert precision.resolve_cpu_precision({"accelerator": "cpu", "precision": "32-true"})["precision"] == "32-true"


def test_fast_emulation_is_kept(monkeypatch):
    """Measured, not assumed: a CPU whose bf16 matmul is no slower keeps bf16 even without the flags."""
    monkeypatch.setattr(precision, "native_bf16_flags", lambda flags=None: [])
    monkeypatch.setattr(precision, "bf16_slowdown", lambda: 0.8)
    assert precision.resolve_cpu_precision({"accelerator": "cpu", "precision": "bf16-mixed"})["precision"] == (
        "bf16-mixed"
    )


def test_trainer_preset_is_resolved_by_split(emulated_bf16):
    optim, trainer = split_trainer_cfg({"accelerator": "cpu", "precision": "bf16-mixed", "lr": 1e-5})
    assert trainer["precision"] == "32-true" and "allow_slow_bf16" not in trainer and optim == {"lr": 1e-5}
    with pytest.raises(ConfigError, match="allow_slow_bf16"):
        split_trainer_cfg({"accelerator": "cpu", "precision": "bf16-mixed", "allow_slow_bf16": "yes"})


def test_the_measurement_runs_here():
    ratio = precision.bf16_slowdown.__wrapped__(n=64, repeats=1)
    assert ratio > 0
    assert precision.cpu_summary().count(",") == 1
