"""scripts/bench_big.py: its per-child peak-RSS measurement, one LoRA + checkpointing row through embedexp's
training path on a tiny decoder, the parameter count of the ~100M model, and the table's ratios."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _bench():
    spec = importlib.util.spec_from_file_location("bench_big", REPO / "scripts" / "bench_big.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_peak_rss_is_measured_per_child():
    """A child that touches 384 MiB peaks 256 MiB above one that touches 128 MiB; an empty child after them is
    small again (getrusage(RUSAGE_CHILDREN) alone would keep reporting the biggest child's peak); and the caller's
    own memory (512 MiB held here) is not counted, as it is in a vfork-started child's ru_maxrss."""
    bench = _bench()
    held = b"\x02" * (512 << 20)

    def touching(mib: int) -> list[str]:
        return [sys.executable, "-c", f"b = b'\\x01' * ({mib} << 20); print(len(b))"]

    rc0, out0, _, small = bench.peak_rss_of(touching(128))
    rc1, out1, _, big = bench.peak_rss_of(touching(384))
    rc2, _, _, empty = bench.peak_rss_of([sys.executable, "-c", "pass"])
    assert rc0 == rc1 == rc2 == 0 and out1.strip() == str(384 << 20)
    assert 246 <= big - small <= 266, (small, big)
    assert empty < 64 and 128 < small < 128 + 64, (empty, small, big)
    assert len(held) == 512 << 20


def _child_peak(code: str) -> tuple[float, float]:
    """(reported peak, ru_maxrss) of a child started directly from this (big) pytest process, in MiB."""
    prog = f"import resource, sys\n{code}\nprint(peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    out = subprocess.run([sys.executable, "-c", prog], cwd=REPO, capture_output=True, text=True, check=True).stdout
    peak, maxrss = map(float, out.split()[-2:])
    return peak, maxrss


@pytest.mark.parametrize(
    "code",
    [
        "sys.path.insert(0, 'scripts'); from _rss import own_peak_mib; peak = own_peak_mib()",
        "import runpy; peak = runpy.run_path('scripts/bench.py', run_name='b')['_process_info']()['peak_rss_mb']",
        "import runpy; peak = runpy.run_path('scripts/bench_scale.py', run_name='b')['_peak_mb']()",
    ],
    ids=["_rss", "bench.py", "bench_scale.py"],
)
def test_bench_children_report_their_own_peak_not_the_parents(code):
    """A child started from a process holding 512 MiB: its ru_maxrss has that floor (the kernel's hiwater of
    the image exec replaced), the peak the benches' children report does not."""
    held = b"\x03" * (512 << 20)
    peak, maxrss = _child_peak(code)
    assert maxrss >= 512, maxrss  # the floor is real here, so the test can fail
    assert peak < 200, (peak, maxrss)
    assert len(held) == 512 << 20


def test_full_size_model_has_about_100m_parameters(tmp_path):
    import torch
    from transformers import Qwen2Model

    from embedexp.models.tiny import build_tiny_decoder

    bench = _bench()
    folder = build_tiny_decoder(tmp_path / "tok", family="qwen2", hidden_size=32, layers=1)
    with torch.device("meta"):
        model = Qwen2Model(bench.decoder_config(folder, bench.FULL_SIZE))
    h, i, kv = 768, 3072, 2 * 64  # 2 key/value heads of 64 dims
    per_layer = h * h * 2 + h * kv * 2 + (h + kv * 2) + 3 * h * i + 2 * h  # q,o + k,v + q/k/v biases + MLP + 2 norms
    expected = 12 * per_layer + model.config.vocab_size * h + h  # + embeddings + final norm
    n = sum(p.numel() for p in model.parameters())
    assert n == expected
    assert 95e6 < n < 110e6


def test_lora_gc_row_trains_adapters_only_through_embedexp(tmp_path):
    """One bench row in this process: only the LoRA matrices train (counted by hand), checkpointing is on, every
    text is exactly seq_len tokens, and the loss is finite."""
    bench = _bench()
    size = bench.QUICK_SIZE
    model_dir = bench.build_decoder(tmp_path / "decoder", size)
    job = {
        "row": "lora_gc",
        "model_dir": str(model_dir),
        "batch": 4,
        "seq_len": 32,
        "steps": 1,
        "warmup": 1,
        "r": 4,
        "tmp": str(tmp_path / "run"),
        "phases": True,
    }
    r = bench.worker(job)
    h, i, kv = size["hidden_size"], size["intermediate_size"], size["kv_heads"] * size["hidden_size"] // size["heads"]
    shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]  # q k v o gate up down: (in, out)
    assert r["trainable"] == size["layers"] * sum(job["r"] * (a + b) for a, b in shapes)
    assert r["params"] > 10 * r["trainable"]
    assert r["gradient_checkpointing"] is True
    assert r["shapes"] == [[4, 32], [4, 32]]
    assert len(r["losses"]) == 2 and all(x == x and abs(x) < 100 for x in r["losses"])
    phases = {p["phase"]: p for p in r["phases"]}
    assert phases["step 1: forward"]["saved_mib"] > 0
    grads = 4 * r["trainable"] / 2**20  # fp32: only the adapters have gradients
    assert phases["step 1: backward"]["grads_mib"] == pytest.approx(grads)
    assert phases["step 2: optimizer step"]["optimizer_state_mib"] >= 2 * grads  # AdamW: exp_avg + exp_avg_sq
    assert r["phases_max_peak_mib"] >= max(p["peak"] for p in r["phases"])


def test_table_reports_ratios_and_the_target():
    bench = _bench()
    row = {"params": 100, "threads": 2}
    res = {
        "command": "python scripts/bench_big.py",
        "date": "today",
        "machine": {"cpu": "cpu", "cores": 2, "load_avg": "0"},
        "settings": {
            "size": bench.FULL_SIZE,
            "batch": 8,
            "seq_len": 256,
            "steps": 3,
            "warmup": 1,
            "labels": {"full": "full", "lora": "lora", "lora_gc": "lora+gc"},
        },
        "rows": {
            "load": {**row, "trainable": 100, "peak_rss_mib": 1000.0, "torch": "2"},
            "full": {**row, "trainable": 100, "peak_rss_mib": 5000.0, "step_s": 10.0},
            "lora": {**row, "trainable": 2, "peak_rss_mib": 3000.0, "step_s": 8.0},
            "lora_gc": {**row, "trainable": 2, "peak_rss_mib": 2000.0, "step_s": 12.0},
        },
    }
    text = bench.render(res)
    assert "| lora+gc | 2 (2.00%) | 2000 | 0.40 | 1000 | 0.25 | 12.00 | 1.20 |" in text
    assert "0.40x the peak RSS (meets the <= 0.5x target), 0.25x the training increment" in text
    res["rows"]["lora_gc"]["peak_rss_mib"] = 2600.0
    assert "0.52x the peak RSS (misses the <= 0.5x target)" in bench.render(res)


def test_results_replace_their_block_and_keep_the_page(tmp_path):
    bench = _bench()
    page = tmp_path / "big.md"
    page.write_text("# Title\n\nintro\n")
    bench.write_results(page, "TABLE 1", {"a": 1})
    bench.write_results(page, "TABLE 2", {"a": 2})
    text = page.read_text()
    assert text.startswith("# Title\n\nintro\n") and "TABLE 2" in text and "TABLE 1" not in text


@pytest.mark.slow
def test_quick_bench_end_to_end(tmp_path):
    out = tmp_path / "quick.md"
    subprocess.run([sys.executable, "scripts/bench_big.py", "--quick", "--out", str(out)], cwd=REPO, check=True)
    text = out.read_text()
    for label in ("full fine-tuning", "LoRA r=16", "LoRA r=16 + gradient checkpointing"):
        assert f"| {label} |" in text
