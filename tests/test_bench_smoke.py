"""scripts/bench.py's FLOP counter and report, and the speed settings it measures (fused AdamW, bf16 preset)."""

import importlib.util
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
