"""eval.precision / miner.precision: fp32 stays exact; bf16 only where the hardware makes it fast, else one warning."""

import logging

import numpy as np
import pytest
import torch

from embedexp.errors import ConfigError
from embedexp.eval.evaluator import Evaluator
from embedexp.trainer import inference

from conftest import write_beir

TEXTS = ["a short one", "a somewhat longer sentence about proteins and cells", "x", "heart attack risk factors"]


@pytest.fixture()
def native(monkeypatch):
    """Pretend the CPU has (True) or lacks (False) AVX512_BF16, and that an emulated bf16 matmul is `ratio`x slower."""

    def set_(has: bool, ratio: float = 20.0):
        monkeypatch.setattr(inference, "native_bf16_flags", lambda: ["avx512_bf16"] if has else [])
        monkeypatch.setattr(inference, "bf16_slowdown", lambda: ratio)

    return set_


def test_resolve_flags(native, caplog):
    caplog.set_level(logging.WARNING, logger="embedexp.trainer")
    assert inference.resolve_inference_precision("fp32", "cpu") == "fp32"
    native(True)
    assert inference.resolve_inference_precision("bf16", "cpu") == "bf16"
    assert inference.resolve_inference_precision("auto", "cpu") == "bf16"
    assert not caplog.records
    native(False, ratio=1.0)  # emulated but measured no slower: kept
    assert inference.resolve_inference_precision("bf16", "cpu") == "bf16"
    native(False, ratio=20.0)
    assert inference.resolve_inference_precision("auto", "cpu") == "fp32"
    assert not caplog.records  # auto falls back silently
    assert inference.resolve_inference_precision("bf16", torch.device("cpu"), key="miner.precision") == "fp32"
    assert len(caplog.records) == 1
    msg = caplog.records[0].getMessage()
    assert msg.startswith("miner.precision=bf16: this CPU has no native bf16") and "20.0x slower" in msg
    assert msg.endswith("encoding in fp32 instead") and "\n" not in msg


def test_resolve_gpu_without_bf16(monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="embedexp.trainer")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert inference.resolve_inference_precision("bf16", "cuda:0") == "fp32"
    assert "does not support bf16" in caplog.records[0].getMessage()
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert inference.resolve_inference_precision("bf16", "cuda:0") == "bf16"


def test_bad_value_is_one_config_line():
    with pytest.raises(ConfigError, match=r"^eval.precision='fp16'; expected one of fp32, bf16, auto$"):
        Evaluator({}, precision="fp16")
    with pytest.raises(ConfigError, match=r"^miner.precision='int4'; expected one of fp32, bf16, auto$"):
        inference.resolve_inference_precision("int4", "cpu", key="miner.precision")


def test_encode_fp32_unchanged_and_bf16_close(tiny_model_dir):
    from embedexp.models import Encoder

    enc = Encoder(str(tiny_model_dir))
    default = enc.encode(TEXTS, batch_size=2)
    fp32 = enc.encode(TEXTS, batch_size=2, precision="fp32")
    assert torch.equal(default, fp32)  # option off: bit for bit
    enc.eval()  # no dropout
    with torch.no_grad():  # an independent reference: the forward on each text alone, no autocast
        ref = torch.cat([enc(enc.tokenize([t], "document")) for t in TEXTS])
    torch.testing.assert_close(fp32, ref, rtol=1e-5, atol=1e-6)
    bf16 = enc.encode(TEXTS, batch_size=2, precision="bf16")
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    assert not torch.equal(bf16, fp32)  # autocast really ran
    cos = torch.nn.functional.cosine_similarity(bf16, fp32, dim=-1)
    assert cos.min() > 0.99
    with pytest.raises(ConfigError, match="expected fp32 or bf16"):
        enc.encode(TEXTS, precision="fp16")


class RecordingEncoder:
    """An encoder-like object whose encode() has no precision argument unless `accepts` (older/API encoders)."""

    device = torch.device("cpu")

    def __init__(self):
        self.calls = []

    def fingerprint(self):
        return "rec"

    def encode(self, texts, kind="document", batch_size=64, show_progress=False, desc=None, **kw):
        self.calls.append(kw)
        rng = np.random.default_rng(len(texts))
        return torch.from_numpy(rng.standard_normal((len(texts), 8)).astype(np.float32))


def _eval_set(tmp_path):
    root = write_beir(tmp_path / "set", {"d1": ("", "alpha"), "d2": ("", "beta")}, {"q1": "alpha?"}, {"q1": {"d1": 1}})
    return {"tiny": {"type": "retrieval", "root": str(root)}}


def test_evaluator_passes_precision_only_when_bf16(tmp_path, native, caplog):
    sets = _eval_set(tmp_path)
    enc = RecordingEncoder()
    fp32 = Evaluator(sets, show_progress=False).evaluate(enc)
    assert enc.calls == [{}, {}]  # fp32: no keyword at all, any encoder works, results as before
    native(False, ratio=20.0)
    caplog.set_level(logging.WARNING, logger="embedexp.trainer")
    enc = RecordingEncoder()
    slow = Evaluator(sets, show_progress=False, precision="bf16").evaluate(enc)
    assert enc.calls == [{}, {}] and slow == fp32
    assert any("eval.precision=bf16: this CPU has no native bf16" in r.getMessage() for r in caplog.records)
    native(True)
    enc = RecordingEncoder()
    ev = Evaluator(sets, show_progress=False, precision="bf16", cache_dir=str(tmp_path / "cache"))
    ev.evaluate(enc, use_cache=True)
    assert enc.calls == [{"precision": "bf16"}, {"precision": "bf16"}]
    bf16_key = ev._key("rec", "part")
    ev._encode_kw = {}
    assert ev._key("rec", "part") != bf16_key  # bf16 results never answer an fp32 cache lookup


def test_dense_miner_precision(native):
    from embedexp.miners.dense import DenseMiner

    with pytest.raises(ConfigError, match=r"^miner.precision='half'; expected one of fp32, bf16, auto$"):
        DenseMiner(model=RecordingEncoder(), precision="half", cache=False)
    enc = RecordingEncoder()
    fp32 = DenseMiner(model=enc, cache=False, show_progress=False)
    fp32._rank(["q"], ["a", "b", "c"], 2, np.empty((0, 2), np.int64))
    assert enc.calls == [{}, {}] and "precision" not in fp32.scorer_config()
    native(True)
    enc = RecordingEncoder()
    bf16 = DenseMiner(model=enc, precision="auto", cache=False, show_progress=False)
    bf16._rank(["q"], ["a", "b", "c"], 2, np.empty((0, 2), np.int64))
    assert enc.calls == [{"precision": "bf16"}, {"precision": "bf16"}]
    assert bf16.scorer_config()["precision"] == "auto"  # part of the mining cache key
