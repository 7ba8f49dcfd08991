"""scripts/bench.py's FLOP counter and report, and the speed settings it measures (fused AdamW, bf16 preset)."""

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir

from embedexp.config import config_dir, register_resolvers

from conftest import REPO, write_beir


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench", REPO / "scripts" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cfg(*overrides: str):
    register_resolvers()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def test_flop_formula_matches_torch_flop_counter(bench, tiny_model_dir):
    from torch.utils.flop_counter import FlopCounterMode

    from embedexp.losses import InfoNCELoss
    from embedexp.models import Encoder

    enc = Encoder(str(tiny_model_dir), max_seq_length=40)
    queries = ["short query", "a somewhat longer query about bone density", "q"]
    docs = ["vitamin d and fractures in older adults " * 6, "tiny doc", "a medium sized document about sleep"]
    feats = [enc.tokenize(queries, "query"), enc.tokenize(docs, "document")]
    shapes = [tuple(f["input_ids"].shape) for f in feats]
    assert shapes[0] != shapes[1]  # two different padded lengths, one of them truncated
    shape = bench.model_shape(enc.backbone)
    with FlopCounterMode(display=False) as fwd:
        embeddings = [enc(f) for f in feats]
    assert bench.forward_flops(shape, shapes)["total"] == fwd.get_total_flops()
    with FlopCounterMode(display=False) as step:
        InfoNCELoss()([enc(f) for f in feats]).backward()
    # the loss's own matmul (anchors x candidates) is not model FLOPs: the counter's total may exceed ours by it
    loss_mm = 2 * shapes[0][0] * shapes[1][0] * embeddings[0].shape[1] * 3
    assert 0 <= step.get_total_flops() - bench.train_step_flops(shape, shapes) <= loss_mm


def test_cpu_bf16_preset_is_cpu_with_bf16_autocast():
    cpu, bf16 = _cfg("trainer=cpu").trainer, _cfg("trainer=cpu_bf16").trainer
    assert bf16.precision == "bf16-mixed" and bf16.name == "cpu_bf16"
    assert bf16.allow_slow_bf16 is False  # on a CPU without native bf16 the run falls back to fp32 (precision.py)
    own = ("precision", "name", "allow_slow_bf16")
    assert {k: v for k, v in bf16.items() if k not in own} == {k: v for k, v in cpu.items() if k not in own}


def test_optimizer_is_fused_and_steps_like_plain_adamw(tiny_model_dir):
    from embedexp.losses import InfoNCELoss
    from embedexp.models import Encoder
    from embedexp.module import EmbeddingModule

    module = EmbeddingModule(Encoder(str(tiny_model_dir)), InfoNCELoss(), lr=1e-3, weight_decay=0.1, warmup_ratio=0.0)
    module._trainer = SimpleNamespace(estimated_stepping_batches=10)
    opt = module.configure_optimizers()["optimizer"]
    assert opt.defaults["fused"] is True and opt._step_supports_amp_scaling is False
    params = [p for g in opt.param_groups for p in g["params"]]
    ref_params = [p.detach().clone().requires_grad_(True) for p in params]
    ref = torch.optim.AdamW(
        [
            {"params": ref_params[: len(opt.param_groups[0]["params"])], "weight_decay": 0.1},
            {"params": ref_params[len(opt.param_groups[0]["params"]) :], "weight_decay": 0.0},
        ],
        lr=1e-3,
        foreach=False,
        fused=False,
    )
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p, r in zip(params, ref_params):
            p.grad = torch.randn(p.shape, generator=gen)
            r.grad = p.grad.clone()
        opt.step()
        ref.step()
    assert max((p - r).abs().max().item() for p, r in zip(params, ref_params)) < 1e-6
    assert any((p - q).abs().max().item() > 1e-4 for p, q in zip(params, Encoder(str(tiny_model_dir)).parameters()))


def test_cpu_training_uses_eager_attention_and_inference_sdpa(tiny_model_dir):
    from transformers import AutoModel

    from embedexp.models import Encoder
    from embedexp.models.pooling import pool

    enc = Encoder(str(tiny_model_dir))
    assert enc.backbone.config.attention_probs_dropout_prob > 0 and enc.backbone.config._attn_implementation == "sdpa"
    feats = enc.tokenize(["vitamin d and bone fractures in older adults", "sleep"], "document")
    enc.train()
    enc(feats).sum().backward()
    assert enc.backbone.config._attn_implementation == enc._train_attention  # eager math (cpu_dropout's on AMD)
    assert enc._train_attention in ("eager", "embedexp_cpu_train")
    got = enc.encode(["vitamin d and bone fractures in older adults", "sleep"])
    assert enc.backbone.config._attn_implementation == "sdpa" and enc.training
    ref = AutoModel.from_pretrained(str(tiny_model_dir)).eval()  # an untouched SDPA model as the reference
    with torch.no_grad():
        want = torch.nn.functional.normalize(
            pool(ref(**feats).last_hidden_state, feats["attention_mask"], "mean"), dim=-1
        )
    assert torch.allclose(got, want, atol=1e-6)
    enc.eval()
    with torch.no_grad():
        eager = enc.backbone.set_attn_implementation("eager") or enc.backbone(**feats).last_hidden_state
        sdpa = ref(**feats).last_hidden_state
    assert torch.allclose(eager, sdpa, atol=1e-5)  # the two kernels compute the same function


@pytest.mark.parametrize("extra", [[], ["trainer.grad_cache.chunk_size=4"]], ids=["plain", "grad_cache"])
def test_bf16_fit_with_clipping_runs_through_lightning(tmp_path, isolated_cache, extra):
    """Lightning refuses to clip gradients for optimisers that unscale in step() (fused AdamW) unless told otherwise."""
    from hydra.utils import instantiate

    from embedexp.train import _fit
    from embedexp.trainer.config import split_trainer_cfg

    cfg = _cfg(
        "experiment=demo_tiny",
        "trainer=cpu_bf16",
        "trainer.max_steps=2",
        "trainer.enable_progress_bar=false",
        "trainer.gradient_clip_val=0.5",
        f"paths.output_dir={tmp_path}",
        *extra,
    )
    assert cfg.trainer.deterministic is True
    optim_kwargs, trainer_kwargs = split_trainer_cfg(cfg.trainer)
    encoder = instantiate(cfg.model)
    before = [p.detach().clone() for p in encoder.parameters()]
    datamodule = instantiate(cfg.data, seed=0)
    fill = torch.utils.deterministic.fill_uninitialized_memory
    try:
        trainer = _fit(
            encoder,
            instantiate(cfg.loss),
            datamodule,
            trainer_kwargs,
            optim_kwargs,
            tmp_path,
            [],
            [],
            checkpoint={"enabled": False},
        )
        assert torch.utils.deterministic.fill_uninitialized_memory is False
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = fill
        torch.use_deterministic_algorithms(False)
    assert trainer.global_step == 2 and trainer.optimizers[0].defaults["fused"] is True
    assert all(torch.isfinite(p).all() for p in encoder.parameters())
    assert any(not torch.equal(p, b) for p, b in zip(encoder.parameters(), before))


def test_eval_subsample_keeps_every_relevant_document(bench, tmp_path):
    corpus = {f"d{i}": (f"title {i}", f"text {i}") for i in range(40)}
    queries = {"q1": "one", "q2": "two"}
    write_beir(tmp_path / "scifact", corpus, queries, {"q1": {"d3": 1, "d30": 2}, "q2": {"d17": 1}})
    full = bench.scifact_test(str(tmp_path), None)
    a, b = bench.scifact_test(str(tmp_path), 10), bench.scifact_test(str(tmp_path), 10)
    assert len(full.docs) == 40 and len(a.docs) == 10 and a.doc_ids == b.doc_ids
    assert {"d3", "d30", "d17"} <= set(a.doc_ids) and a.qrels == full.qrels
    assert all(full.docs[full.doc_ids.index(d)] == t for d, t in zip(a.doc_ids, a.docs))


def test_report_ratios_and_results_round_trip(bench, tmp_path):
    run = lambda pps, gflops: {
        "pairs_per_s": pps,
        "step_s": 32 / pps,
        "achieved_gflops": gflops,  # noqa: E731
        "gflop_per_step": 100.0,
        "losses": [0.5, 0.4],
        "probe": [0.3, 0.1],
        "settings": {"optim": "adamw_torch_fused", "bf16": False},
    }
    res = {
        "machine": {"cpu": "Test CPU", "cores": 2, "flags": ["avx512_bf16"]},
        "train": {
            "settings": {
                "source": "x",
                "max_len": 128,
                "warmup": 1,
                "steps": 3,
                "lr": 5e-5,
                "batches": [32],
                "precisions": ["fp32"],
            },
            "runs": {"embedexp/fp32/32": run(8.0, 60.0), "st/fp32/32": run(4.0, 30.0)},
        },
        "mfu": {"matmul_gflops": {"fp32": 120.0, "bf16": 240.0}},
        "eval": {
            "settings": {"eval_docs": None, "max_len": 128, "batch": 64},
            "eval_embedexp": {
                "seconds": 50.0,
                "cached_seconds": 0.2,
                "ndcg_at_10": 0.6451,
                "docs": 5183,
                "queries": 300,
            },
            "eval_peer": {"seconds": 60.0, "ndcg_at_10": 0.6452, "docs": 5183, "queries": 300, "peer": "mteb"},
        },
    }
    text = bench.render(res)
    assert (
        "| train fp32, batch 32, max len 128 | 8.00 pairs/s (4.00 s/step) | 4.00 pairs/s (8.00 s/step) | 2.00x |"
        in text
    )
    assert "| 50% (60.0 GFLOP/s) | 25% (30.0 GFLOP/s) | 2.00x |" in text
    assert "| 50.0 s | 60.0 s | 1.20x |" in text and "agree within 1e-3" in text
    out = tmp_path / "benchmarks.md"
    out.write_text(text + f"\n<!-- {bench.RESULTS_MARK}\n{__import__('json').dumps(res)}\n-->\n")
    assert bench.load_previous(out) == res
    assert bench.load_previous(Path(tmp_path / "missing.md")) == {}


# ---------------------------------------------------------------- one report for every part, on the machine it ran on
AVX2 = {
    "cpu": "AMD EPYC",
    "cores": 2,
    "flags": ["avx2"],
    "cpu_capability": "AVX2",
    "cpu_summary": "AVX2, no native bf16",
    "date": "2026-11-30 11:00",
}
EPYC_BF16 = {  # stored by a run before per-part machines: no cpu_summary, the flags say it all
    "cpu": "AMD EPYC",
    "cores": 2,
    "flags": ["avx2", "avx512f", "avx512_bf16", "avx512_vnni"],
    "cpu_capability": "AVX512",
    "date": "2026-11-27 22:51",
}


def _train_run(pps: float, gflops: float, bf16: bool = False) -> dict:
    return {
        "pairs_per_s": pps,
        "step_s": 32 / pps,
        "achieved_gflops": gflops,
        "gflop_per_step": 100.0,
        "losses": [0.5, 0.4],
        "probe": [0.3, 0.1],
        "settings": {"optim": "adamw_torch_fused", "bf16": bf16},
    }


def _full_res(train_machine: dict, current: dict = AVX2, allow_slow: bool = False) -> dict:
    """Every part, as main() stores them; the train part from `train_machine`, the rest from `current`."""
    run = lambda machine: {
        "command": "python scripts/bench.py",
        "date": "2026-11-30 11:00",
        "load_avg": 0.5,
        "machine": machine,
    }  # noqa: E731
    runs = {}
    for precision in ("fp32", "bf16"):
        runs[f"embedexp/{precision}/32"] = _train_run(8.0, 60.0, precision == "bf16")
        runs[f"st/{precision}/32"] = _train_run(4.0, 30.0, precision == "bf16")
    settings = {"source": "x", "max_len": 128, "warmup": 1, "steps": 3, "lr": 5e-5, "batches": [32]}
    eval_side = {"seconds": 50.0, "cached_seconds": 0.2, "ndcg_at_10": 0.6451, "docs": 5183, "queries": 300}
    return {
        "machine": current,
        "train": {
            "settings": {**settings, "precisions": ["fp32", "bf16"], "allow_slow_bf16": allow_slow},
            "runs": runs,
            "run": run(train_machine),
        },
        "mfu": {
            "matmul_gflops": {"fp32": 120.0, "bf16": 7.0},
            "allow_slow_bf16": allow_slow,
            "run": run(train_machine),
        },
        "eval": {
            "settings": {"eval_docs": None, "max_len": 128, "batch": 64},
            "eval_embedexp": eval_side,
            "eval_peer": {**eval_side, "seconds": 60.0, "peer": "mteb"},
            "run": run(current),
        },
        "mining": {
            "split": "train",
            "queries": 809,
            "docs": 5183,
            "top_k": 50,
            "tokenization": "guide",
            "repeats": 5,
            "reference_s": 30.0,
            "fast_s": 0.5,
            "fast_times": [0.5],
            "backend_reference_s": 24.0,
            "identical": True,
            "backend_identical": True,
            "command": "python scripts/bench_mining.py --tokenization guide --top-k 50 --repeats 5",
            "run": run(current),
        },
        "gradcache": {
            "settings": {"batches": [32, 256], "chunk": 32, "max_len": 32, "steps": 3, "methods": []},
            "rows": [
                {"method": m, "batch": b, "step_s": s, "loss": 1.0, "peak_rss_mb": mb}
                for b, scale in ((32, 1.0), (256, 7.0))
                for m, s, mb in (
                    ("plain", 1.4 * scale, 1200),
                    ("embedexp_cached", 1.5 * scale, 1100),
                    ("st_cached", 1.5 * scale, 1210),
                )
            ],
            "command": "python scripts/bench_gradcache.py --batches 32 256 --max-len 32 --steps 3",
            "run": run(current),
        },
    }


def _tables(text: str) -> list[list[list[str]]]:
    """Every markdown table of a report as rows of cells (header first, separator dropped)."""
    tables, current = [], None
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip()[1:-1].split("|")]
            if current is None:
                current = []
                tables.append(current)
            if not all(set(c) <= set("-: ") for c in cells):
                current.append(cells)
        else:
            current = None
    return tables


def test_render_skips_bf16_rows_without_native_bf16_and_says_why(bench):
    text = bench.render(_full_res(AVX2))
    reason = (
        "bf16 rows skipped: this CPU has no native bf16 (AVX2, no native bf16; no avx512_bf16/amx_bf16 in "
        "/proc/cpuinfo), so bf16 is emulated (a MiniLM training step took over 16x the fp32 CPU time on an AVX2 CPU) and `trainer=cpu_bf16` falls back "
        "to fp32 here;"
    )
    assert text.count(reason) == 1
    rows = [r[0] for t in _tables(text) for r in t[1:]]
    assert "train fp32, batch 32, max len 128" in rows and "fp32, batch 32" in rows
    assert not [r for r in rows if "bf16" in r]  # no bf16 train, MFU, "bf16 vs fp32" or sanity rows
    assert "bf16 7.0 GFLOP/s" not in text and "bf16 not shown (emulated)" in text  # nor the emulated matmul rate
    # asked for explicitly (--allow-slow-bf16): the same rows are shown and say they are emulated
    slow = bench.render(_full_res(AVX2, allow_slow=True))
    assert "bf16 rows skipped" not in slow and "| train bf16, batch 32, max len 128 |" in slow
    assert "| MFU bf16, batch 32 (100 GFLOP/step) |" in slow and "emulated bf16" in slow
    # a native-bf16 machine: bf16 rows, no skip line
    native = bench.render(_full_res(EPYC_BF16, current=EPYC_BF16))
    assert "bf16 rows skipped" not in native and "| train bf16, batch 32, max len 128 |" in native


def test_every_table_row_carries_the_cpu_of_its_run(bench):
    text = bench.render(_full_res(AVX2))
    tables = _tables(text)
    assert len(tables) == 4  # the main table, training sanity, mining, GradCache
    for table in tables:
        assert table[0][-1] == "CPU", table[0]
        for row in table[1:]:
            assert len(row) == len(table[0]), row  # no stray "|" inside a cell
            assert row[-1] == "AVX2, no native bf16", row
    assert "## BM25 hard-negative mining" in text and "## GradCache" in text
    assert (
        "| fast (embedexp posting matrix, `miner.backend=fast`, default; median of 5) | 0.500 | 1,618 | 60x | yes |"
        in text
    )
    assert "| 256 | 9.80 | 10.50 | 1.07x | 10.50 | 1.07x | 1200 | 1100 | 1210 |" in text
    only_scripts = {k: v for k, v in _full_res(AVX2).items() if k in ("machine", "mining", "gradcache")}
    assert [t[0][0] for t in _tables(bench.render(only_scripts))] == ["path", "batch"]  # no empty main table
    runs = [line for line in text.splitlines() if line.startswith("- ") and "`python scripts/bench.py" in line]
    assert len(runs) == 5 and "which ran `python scripts/bench_mining.py --tokenization guide --top-k 50" in text


def test_rows_kept_from_another_machine_are_marked(bench, tmp_path):
    res = _full_res(EPYC_BF16)  # train + mfu kept by --only from the AVX-512 BF16 machine
    text = bench.render(res)
    main, sanity, mining, gradcache = _tables(text)
    other = "AVX512, avx512_bf16 (other machine: AMD EPYC, 2 cores)"
    train_rows = [r for r in main[1:] if r[0].startswith(("train", "MFU", "matmul"))]
    assert len(train_rows) == 6 and all(r[-1] == other for r in train_rows)  # bf16 rows kept: native there
    assert all(r[-1] == other for r in sanity[1:])
    assert all(r[-1] == "AVX2, no native bf16" for r in main[1:] if r[0].startswith("eval"))
    assert all("other machine" not in r[-1] for r in mining[1:] + gradcache[1:])
    assert "Not from this machine:" in text and "train (AMD EPYC, 2 cores, flags avx2, avx512f, avx512_bf16" in text
    # a report written before parts recorded their machine: load, adopt the stored machine, rerun a part elsewhere
    old = {k: v for k, v in _full_res(EPYC_BF16, current=EPYC_BF16).items() if k in ("machine", "train", "mfu")}
    for part in ("train", "mfu"):
        del old[part]["run"]["machine"]
    out = tmp_path / "benchmarks.md"
    out.write_text(bench.render(old) + f"\n<!-- {bench.RESULTS_MARK}\n{json.dumps(old)}\n-->\n")
    res = bench.adopt_machine(bench.load_previous(out))
    res["machine"] = AVX2
    rows = [r for r in _tables(bench.render(res))[0][1:]]
    assert rows and all(r[-1] == other for r in rows)
    # train and matmul rate from different machines: no MFU computed across them
    res["mfu"]["run"]["machine"] = AVX2
    text = bench.render(res)
    assert "| MFU | n/a | n/a | | the training rows and the matmul rate come from different machines" in text
    assert not [line for line in text.splitlines() if line.startswith("| MFU fp32")]


def test_scale_link_follows_the_scale_reports_cpu_column(bench, tmp_path):
    scale = tmp_path / "benchmarks_scale.md"
    scale.write_text(
        "# scale\n\n| docs | seconds | CPU |\n|---:|---:|---|\n| 10 | 1.0 | 2 cores, AVX2, no native bf16 |\n"
        "\ntext | with a pipe\n\n| mode | CPU |\n|---|---|\n| bf16 | AVX2, no native bf16 |\n"
    )
    cpus = bench.scale_doc_cpus(scale)
    assert cpus == ["2 cores, AVX2, no native bf16", "AVX2, no native bf16"]
    assert "measured on the same kind of CPU as this run (AVX2, no native bf16" in bench.scale_link(cpus, AVX2)
    other = bench.scale_link(cpus, EPYC_BF16)
    assert "measured on a different machine (AVX2, no native bf16) than this run (AVX512, avx512_bf16)" in other
    assert "machine is unknown" in bench.scale_link(bench.scale_doc_cpus(tmp_path / "missing.md"), AVX2)
    assert "measured on a different machine (AVX2" not in bench.render(
        _full_res(AVX2) | {"linked": {"scale_cpus": cpus}}
    )


@pytest.mark.parametrize(
    "argv", [["--precisions", "bf16"], ["--precisions", "fp32", "bf16", "--only", "train"], ["--quality"]]
)
def test_bf16_without_native_bf16_is_refused_in_one_line(bench, monkeypatch, capsys, tmp_path, argv):
    from embedexp.trainer import precision

    monkeypatch.setattr(precision, "native_bf16_flags", lambda flags=None: [])
    monkeypatch.setattr("sys.argv", ["bench.py", *argv, "--out", str(tmp_path / "b.md")])
    with pytest.raises(SystemExit) as exit_:
        bench.main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bench.py: error: --")
    assert "no native bf16" in err[0] and "--allow-slow-bf16" in err[0]
    assert not (tmp_path / "b.md").exists()
    assert bench.resolve_precisions(None, False) == ["fp32"]  # the default drops bf16 here
    assert bench.resolve_precisions(["fp32", "bf16"], True) == ["fp32", "bf16"]
    monkeypatch.setattr(precision, "native_bf16_flags", lambda flags=None: ["avx512_bf16"])
    assert bench.resolve_precisions(None, False) == ["fp32", "bf16"]
    assert bench.resolve_precisions(["bf16"], False, quality=True) == ["bf16"]


def test_script_parts_write_their_docs_only_into_the_temp_dir(bench, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(bench, "run_script", lambda argv, shown, path: seen.append((argv, shown)) or {})
    args = SimpleNamespace(
        data_root="/data", mining_repeats=1, gc_batches=[8, 16], gc_max_len=16, gc_steps=1, script_docs=False
    )
    bench.part_mining(args, tmp_path)
    bench.part_gradcache(args, tmp_path)
    (mining, mining_shown), (gc, gc_shown) = seen
    assert mining[mining.index("--out") + 1] == str(tmp_path / "benchmarks_mining.md")
    assert gc[gc.index("--out") + 1] == str(tmp_path / "benchmarks_gradcache.md")
    assert mining[mining.index("--data") + 1] == str(Path("/data") / "scifact")
    assert gc_shown == ["scripts/bench_gradcache.py", "--batches", "8", "16", "--max-len", "16", "--steps", "1"]
    assert " ".join(mining_shown) == "scripts/bench_mining.py --tokenization guide --top-k 50 --repeats 1"
    bench.part_mining(SimpleNamespace(**{**vars(args), "script_docs": True}), tmp_path)
    assert seen[-1][0][seen[-1][0].index("--out") + 1] == str(REPO / "docs" / "benchmarks_mining.md")


def test_run_script_keeps_numbers_of_a_failing_check_and_reports_a_crash(bench, tmp_path):
    script = tmp_path / "fake.py"
    script.write_text(
        "import json, sys\nargs = sys.argv[1:]\n"
        "if 'crash' in args: sys.exit(3)\n"
        "open(args[args.index('--json') + 1], 'w').write(json.dumps({'fast_s': 0.5}))\nsys.exit(1)\n"
    )
    got = bench.run_script([str(script)], ["fake.py"], tmp_path / "a.json")
    assert got == {"fast_s": 0.5, "exit": 1, "command": "python fake.py"}
    crashed = bench.run_script([str(script), "crash"], ["fake.py", "crash"], tmp_path / "b.json")
    assert crashed == {"failed": "exit 3, no results", "command": "python fake.py crash"}


def test_bench_mining_json_on_a_tiny_corpus(tmp_path):
    """scripts/bench_mining.py --json: the numbers bench.py renders, from a real (tiny) run."""
    import subprocess
    import sys

    corpus = {f"d{i}": ("", f"doc {i} about topic {i % 3} and words {i * 7}") for i in range(30)}
    queries = {f"q{i}": f"topic {i % 3} words {i * 7}" for i in range(6)}
    write_beir(tmp_path / "scifact", corpus, queries, {f"q{i}": {f"d{i}": 1} for i in range(6)}, split="train")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "bench_mining.py"),
            "--data",
            str(tmp_path / "scifact"),
            "--top-k",
            "5",
            "--repeats",
            "1",
            "--out",
            str(tmp_path / "m.md"),
            "--json",
            str(tmp_path / "m.json"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads((tmp_path / "m.json").read_text())
    assert (got["queries"], got["docs"], got["top_k"], got["repeats"]) == (6, 30, 5, 1)
    assert got["identical"] is True and got["backend_identical"] is True and got["fast_s"] > 0
    assert (tmp_path / "m.md").is_file()
