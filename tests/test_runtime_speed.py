"""Speed paths that must not change results: bulk tokenise + pad (= per-batch tokenise), and the allocator tuning
(a real effect: freed large blocks stay in the process; checked through glibc's own accounting)."""

import os
import platform
import subprocess
import sys

import pytest
import torch

import embedexp.runtime as config
from embedexp.models import Encoder

TEXTS = ["a", "hello world, this is a longer text " * 5, "", "x y z", "medium text here", "é ü ß"] * 3


@pytest.mark.parametrize("side", ["right", "left"])
def test_bulk_tokenise_and_pad_equals_batch_tokenise(tiny_model_dir, side):
    enc = Encoder(str(tiny_model_dir), max_seq_length=16, query_prefix="query: ")
    enc.tokenizer.padding_side = side
    for texts in (TEXTS[:9], TEXTS[1:2], TEXTS[2:5]):
        ref = enc.tokenize(texts, "query")
        got = enc.pad(enc.tokenize_unpadded(texts, "query"))
        assert ref.keys() == got.keys()
        for key in ref:
            assert torch.equal(ref[key], got[key]), (side, key)


def test_encode_blocks_equal_one_text_at_a_time(tiny_model_dir, monkeypatch):
    import embedexp.models.encoder as encoder_module

    monkeypatch.setattr(encoder_module, "_ENCODE_BLOCK", 2)  # several tokenisation blocks of 2 batches
    enc = Encoder(str(tiny_model_dir), max_seq_length=16)
    texts = [f"text number {i} " + "word " * (i % 7) for i in range(23)]
    got = enc.encode(texts, "document", batch_size=3)
    assert enc.training  # encode() restores the mode it found
    enc.eval()
    with torch.no_grad():
        ref = torch.cat([enc(enc.tokenize([t], "document")) for t in texts])
    assert torch.allclose(got, ref, atol=1e-5)


def test_parallel_tokenising_obeys_user_and_restores_env(tiny_model_dir, monkeypatch):
    enc = Encoder(str(tiny_model_dir), max_seq_length=16)
    monkeypatch.setattr(config, "_TOKENIZERS_PARALLELISM_DEFAULTED", False)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    assert not config.parallel_tokenizing_allowed()  # the user's own "false" is obeyed
    monkeypatch.setattr(config, "_TOKENIZERS_PARALLELISM_DEFAULTED", True)
    assert config.parallel_tokenizing_allowed()  # our default "false" is lifted for bulk calls
    seen = []
    real = type(enc.tokenizer).__call__
    monkeypatch.setattr(
        type(enc.tokenizer),
        "__call__",
        lambda self, *a, **k: seen.append(os.environ.get("TOKENIZERS_PARALLELISM")) or real(self, *a, **k),
    )
    enc.tokenize_unpadded(["a b c"], "document")
    assert seen == ["true"] and os.environ["TOKENIZERS_PARALLELISM"] == "false"


_PROBE = """
import ctypes, sys, torch
sys.path.insert(0, {repo!r})
from embedexp.runtime import tune_cpu_allocator
applied = tune_cpu_allocator()
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
x = torch.empty(64 * 2**20, dtype=torch.uint8)  # 64 MiB, above glibc's largest dynamic mmap threshold
mapped = libc.mallinfo2().hblkhd
del x
print(applied, mapped >= 64 * 2**20, libc.mallinfo2().fordblks >= 64 * 2**20)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt/mallinfo2 are glibc's")
@pytest.mark.parametrize("setting, expected", [("1", "True False True"), ("0", "False True False")])
def test_allocator_tuning_keeps_freed_blocks(setting, expected):
    """Tuned: a 64 MiB tensor comes from the heap and stays there (free) after it is freed. Default: it is mmapped."""
    from conftest import REPO

    env = {**os.environ, "EMBEDEXP_MALLOC_TUNING": setting}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(repo=str(REPO))], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[-2] == expected
