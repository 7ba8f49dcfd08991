"""LoRA (model.peft): checks, trainable parameters, exactness under GradCache/DDP/Matryoshka, export, resume, e2e.

Exactness cases run ONE real optimisation step through Lightning (tests/ddp_harness.py) with dropout ON
(BERT's hidden dropout and LoRA's own) and compare the gradients the optimiser sees with plain autograd on
the whole batch in this process, with the same weights and the same RNG state per micro-batch.
LoRA's B starts at zero, which would leave A without gradient; the harness model gets a random B (seeded,
the same in the reference) so both A and B are checked.
"""

from __future__ import annotations

import functools
import json

import pytest
import torch

from embedexp.distributed.grad_cache import chunk_rows, unsort
from embedexp.errors import ConfigError
from embedexp.losses import InfoNCELoss, MatryoshkaLoss
from embedexp.models import Encoder
from embedexp.models.lora import peft_settings

from ddp_harness import run_step

LORA = {"r": 4, "alpha": 8, "dropout": 0.1}
WORDS = "protein cell gene tumour virus brain heart drug dose trial mouse patient risk blood liver".split()


def _rows(n: int, n_neg: int = 1) -> list[tuple[str, ...]]:
    g = torch.Generator().manual_seed(1)

    def text(k):
        idx = torch.randint(len(WORDS), (3 + int(torch.randint(8, (1,), generator=g)),), generator=g)
        return f"{k} " + " ".join(WORDS[i] for i in idx)

    return [tuple(text(f"r{r}c{c}") for c in range(2 + n_neg)) for r in range(n)]


def lora_encoder(model_dir, max_seq_length: int = 32, peft=None, random_b: bool = True, **kwargs) -> Encoder:
    """A LoRA Encoder with seeded adapter weights (A from peft's init under seed 0, B ~ N(0, 0.05) under seed 1)."""
    torch.manual_seed(0)
    enc = Encoder(str(model_dir), max_seq_length=max_seq_length, peft=peft or LORA, **kwargs)
    if random_b:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in enc.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return enc


# ---------------------------------------------------------------- config checks (no model)
@pytest.mark.parametrize(
    "peft, key",
    [
        ({"r": 0}, "model.peft.r=0"),
        ({"r": 2.5}, "model.peft.r=2.5"),
        ({"r": 4, "alpha": 0}, "model.peft.alpha=0"),
        ({"r": None, "alpha": -1}, "model.peft.alpha=-1"),  # checked while off, too
        ({"r": 4, "dropout": 1.0}, "model.peft.dropout=1.0"),
        ({"r": 4, "bias": "all"}, "model.peft.bias='all'"),
        ({"r": 4, "method": "ia3"}, "model.peft.method='ia3'"),
        ({"r": 4, "target_modules": "all"}, "model.peft.target_modules='all'"),
        ({"r": 4, "target_modules": []}, "model.peft.target_modules=[]"),
        ({"r": 4, "rank": 4}, "model.peft.rank is not a LoRA setting"),
    ],
)
def test_bad_peft_settings_are_one_line(peft, key):
    with pytest.raises(ConfigError) as e:
        peft_settings("model.peft", peft)
    assert str(e.value).startswith(key) and "\n" not in str(e.value)


def test_peft_off_and_defaults():
    assert peft_settings("model.peft", None) is None
    assert peft_settings("model.peft", {"r": None, "alpha": 16}) is None
    assert peft_settings("model.peft", {"r": 8}) == {
        "method": "lora",
        "r": 8,
        "alpha": 32.0,
        "dropout": 0.1,
        "target_modules": "auto",
        "bias": "none",
    }


def test_model_config_checks(tiny_model_dir):
    """Unknown model keys, LoRA targets the folder lacks (on a weightless copy), torch_dtype: one line each."""
    from embedexp.models.config import check_model_config

    base = {"_target_": "embedexp.models.Encoder", "model_name_or_path": str(tiny_model_dir)}
    assert check_model_config("model", {**base, "peft": {"r": 4, "target_modules": ["query", "value"]}}) == 32
    cases = [
        ({"pooler_typo": 1}, "model.pooler_typo is not a model setting"),
        ({"peft": {"r": 4, "target_modules": ["q_proj"]}}, "model.peft.target_modules: 'q_proj' names no linear layer"),
        ({"torch_dtype": "bf16"}, "model.torch_dtype='bf16'; expected one of float32, bfloat16, float16"),
        ({"gradient_checkpointing": "yes"}, "model.gradient_checkpointing"),
    ]
    for extra, start in cases:
        with pytest.raises(ConfigError) as e:
            check_model_config("model", {**base, **extra})
        assert str(e.value).startswith(start), str(e.value)


def test_missing_peft_is_one_line(tiny_model_dir, monkeypatch):
    import embedexp.extras

    monkeypatch.setattr(embedexp.extras, "has_package", lambda m: m != "peft")
    from embedexp.models.config import check_model_config

    with pytest.raises(ConfigError, match=r"^model.peft.r=4 needs the peft package: pip install 'embedexp\[lora\]'$"):
        check_model_config("model", {"model_name_or_path": str(tiny_model_dir), "peft": {"r": 4}})


# ---------------------------------------------------------------- trainable parameters, fingerprint
def test_only_adapters_train_and_change(tiny_model_dir, tmp_path, monkeypatch):
    """Three real optimiser steps: the optimiser holds exactly the adapter weights; every base weight is
    bit-identical afterwards, every adapter weight moved; the fingerprint follows the adapter."""
    import lightning as L

    from embedexp.data import EmbeddingDataModule
    from embedexp.data.train_sets import TrainSet
    from embedexp.module import EmbeddingModule

    enc = lora_encoder(tiny_model_dir, random_b=False)
    before = {n: p.detach().clone() for n, p in enc.named_parameters()}
    fp_before = enc.fingerprint()
    # a fresh adapter (B = 0) is the base model: the same fingerprint, so cached base results are reused
    assert fp_before == Encoder(str(tiny_model_dir), max_seq_length=32).fingerprint()
    trainable, total = enc.trainable_parameters()
    adapters = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert adapters and all(".lora_A." in n or ".lora_B." in n for n in adapters)
    assert trainable == sum(before[n].numel() for n in adapters) < total / 10
    # peft's own count agrees
    assert (trainable, total) == tuple(enc.backbone.get_nb_trainable_parameters())

    dm = EmbeddingDataModule(train={"format": "beir", "root": "unused"}, batch_size=4, shuffle=False)
    dm.set_train_set(TrainSet(("anchor", "positive"), ("query", "document"), [r[:2] for r in _rows(12)]))
    dm.set_tokenizer(enc.tokenize)
    module = EmbeddingModule(enc, InfoNCELoss(), lr=1e-2, warmup_ratio=0.0)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, datamodule=dm)
    in_optimiser = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert in_optimiser == {id(p) for n, p in enc.named_parameters() if n in adapters}
    for n, p in enc.named_parameters():
        if n in adapters:
            assert not torch.equal(p, before[n]), f"adapter weight {n} did not train"
        else:
            assert torch.equal(p, before[n]), f"base weight {n} changed"
    assert enc.fingerprint() != fp_before


# ---------------------------------------------------------------- export: merged folder + adapter/
def test_export_merged_and_adapter_load_in_sentence_transformers(tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    texts = ["what causes tides", "the moon pulls the sea", "knead the dough then let it rest"]
    enc = lora_encoder(tiny_model_dir, query_prefix="query: ", document_prefix="passage: ")
    enc.eval()
    ours_q, ours_d = enc.encode(texts, "query"), enc.encode(texts, "document")
    base = Encoder(str(tiny_model_dir), max_seq_length=32, query_prefix="query: ", document_prefix="passage: ")
    assert (ours_q - base.encode(texts, "query")).abs().max() > 1e-3  # the adapter changes the embeddings
    train_state = {k: v.clone() for k, v in enc.state_dict().items()}
    out = enc.save(tmp_path / "model")
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in train_state.items())  # export left training alone
    assert sorted(p.name for p in (out / "adapter").iterdir() if p.suffix in (".json", ".safetensors")) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    merged = SentenceTransformer(str(out), device="cpu")
    torch.testing.assert_close(torch.as_tensor(merged.encode(texts, prompt_name="query")), ours_q, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.as_tensor(merged.encode(texts, prompt_name="document")), ours_d, atol=1e-5, rtol=0)
    # the adapter alone, onto the base model's folder, through sentence-transformers' PEFT support
    st = SentenceTransformer(str(base.save(tmp_path / "base")), device="cpu")
    st.load_adapter(str(out / "adapter"))
    torch.testing.assert_close(torch.as_tensor(st.encode(texts, prompt_name="query")), ours_q, atol=1e-5, rtol=0)
    # and embedexp reads its own export back without LoRA (merged weights)
    again = Encoder.from_exported(out)
    assert again.peft is None
    torch.testing.assert_close(again.encode(texts, "query"), ours_q, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- exactness: GradCache, DDP, Matryoshka
def _reference_grads(model_dir, captures, loss, chunk, enc_kwargs):
    """Plain autograd: per micro-batch every rank's rows concatenated (GradCache: its chunks), one loss, one backward."""
    encoder = lora_encoder(model_dir, **enc_kwargs)
    encoder.train()
    total = 0.0
    micro = [cap["micro"] for cap in captures]
    for m in range(len(micro[0])):
        columns = None
        for rank_micro in micro:
            torch.set_rng_state(rank_micro[m]["rng"])
            cols = []
            for features in rank_micro[m]["features"]:
                chunks, order = chunk_rows(features, chunk) if chunk else ([features], None)
                cols.append(unsort(torch.cat([encoder(part) for part in chunks]), order))
            columns = cols if columns is None else [torch.cat([a, b]) for a, b in zip(columns, cols)]
        total = total + loss(columns) / len(micro[0])
    total.backward()
    return {n: p.grad for n, p in encoder.named_parameters() if p.grad is not None}


def _rel_err(got: dict, ref: dict) -> float:
    assert got.keys() == ref.keys()
    diff = torch.cat([(got[k] - ref[k]).flatten() for k in ref]).norm()
    return float(diff / torch.cat([ref[k].flatten() for k in ref]).norm())


EXACT_CASES = {
    # name: (devices, per-rank batch, GradCache chunk, Matryoshka, Encoder kwargs)
    "gradcache": (1, 8, 3, False, {}),
    "gradcache_matryoshka": (1, 8, 3, True, {}),
    "gradcache_checkpointing": (1, 8, 3, False, {"gradient_checkpointing": True}),
    "ddp_gather_gradcache": (2, 4, 3, False, {}),
}
# default run: Matryoshka and checkpointing cases (each also covers plain GradCache); the rest behind `-m slow`
SLOW_EXACT = {"gradcache", "ddp_gather_gradcache"}  # DDP: two spawned processes, ~200 s on the loaded 2-core box


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_EXACT else c for c in EXACT_CASES]
)
def test_lora_step_gradient_equals_single_process_big_batch(case, tiny_model_dir, tmp_path, monkeypatch):
    devices, batch, chunk, matryoshka, enc_kwargs = EXACT_CASES[case]
    loss = InfoNCELoss(symmetric=True)
    if matryoshka:
        loss = MatryoshkaLoss(InfoNCELoss(symmetric=True), dims=[32, 16, 8], weights=[1.0, 0.5, 0.25])
    # run_step builds `Encoder(model_dir, max_seq_length=32)`: here, the seeded LoRA one (pickled to DDP ranks)
    monkeypatch.setattr("embedexp.models.Encoder", functools.partial(lora_encoder, **enc_kwargs))
    run_step(str(tiny_model_dir), _rows(devices * batch), str(tmp_path), devices, loss, batch, chunk)
    monkeypatch.undo()
    captures = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(devices)]
    assert captures[0]["grads"] and all(".lora_" in n for n in captures[0]["grads"])
    assert any(".lora_A." in n for n in captures[0]["grads"]) and any(".lora_B." in n for n in captures[0]["grads"])
    ref = _reference_grads(tiny_model_dir, captures, loss, chunk, enc_kwargs)
    for cap in captures:
        err = _rel_err(cap["grads"], ref)
        assert err < 1e-5, f"{case}: relative gradient error {err:.2e}"
    other = [{**c, "micro": [{**m, "rng": torch.manual_seed(12345).get_state()} for m in c["micro"]]} for c in captures]
    assert _rel_err(_reference_grads(tiny_model_dir, other, loss, chunk, enc_kwargs), ref) > 1e-3  # dropout was on


# ---------------------------------------------------------------- end to end (done-when 1)
@pytest.fixture(scope="module")
def qwen2_lora_run(tmp_path_factory):
    from embedexp.train import train

    from conftest import FAST_STATS, compose_demo_tiny

    root = tmp_path_factory.mktemp("lora_run")
    cfg = compose_demo_tiny(
        root / "out",
        root / "cache",
        "model=tiny_qwen2",
        "model.peft.r=8",
        "model.gradient_checkpointing=true",
        "logger=none",
        "trainer.max_steps=5",  # a few LoRA steps are enough to move the embeddings; keeps the default run short
        FAST_STATS,  # the test reads base/tuned numbers and the export, not the bootstrap's precision
    )
    with pytest.MonkeyPatch.context() as mp:  # the no_plots fixture, for a module-scoped run: no PNGs drawn
        mp.setattr("embedexp.eval.results.write_plots", lambda *args, **kwargs: [])
        train(cfg)
    return root / "out", cfg


def test_tiny_decoder_lora_run_reports_and_exports(qwen2_lora_run, tmp_path):
    """`embedexp-train experiment=demo_tiny model=tiny_qwen2 model.peft.r=8 model.gradient_checkpointing=true`:
    base vs tuned for every metric, an export that sentence-transformers loads (merged, and base + adapter) with
    embedexp's embeddings, instruction on queries only."""
    from hydra.utils import instantiate
    from sentence_transformers import SentenceTransformer

    out, cfg = qwen2_lora_run
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"] and all({"base", "tuned"} <= set(v) for v in results["metrics"].values())
    assert any(v["tuned"] != v["base"] for v in results["metrics"].values())
    model_dir = out / "model"
    assert (model_dir / "adapter" / "adapter_model.safetensors").is_file()
    adapter_cfg = json.loads((model_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 8 and set(adapter_cfg["target_modules"]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    texts = ["what causes tides", "the moon pulls the sea and the sea follows"]
    ours = Encoder.from_exported(model_dir)
    st = SentenceTransformer(str(model_dir), device="cpu")
    for kind in ("query", "document"):
        torch.testing.assert_close(
            torch.as_tensor(st.encode(texts, prompt_name=kind)), ours.encode(texts, kind), atol=1e-5, rtol=0
        )
    assert ours.prefixes == {"query": "Instruct: " + cfg.model.task + "\nQuery: ", "document": ""}
    base = instantiate({**cfg.model, "peft": None, "gradient_checkpointing": False})
    st_adapter = SentenceTransformer(str(base.save(tmp_path / "base")), device="cpu")
    st_adapter.load_adapter(str(model_dir / "adapter"))
    torch.testing.assert_close(
        torch.as_tensor(st_adapter.encode(texts, prompt_name="query")), ours.encode(texts, "query"), atol=1e-5, rtol=0
    )
    assert (ours.encode(texts, "query") - base.encode(texts, "query")).abs().max() > 1e-4  # it trained


# ---------------------------------------------------------------- resume (done-when 2)
@pytest.mark.slow
def test_lora_sigkill_then_resume_matches_uninterrupted_run(tmp_path, isolated_cache):
    """test_resume's kill-at-step-17 / resume-from-step-15 run, with LoRA on: merged export, adapter and metrics
    bit-identical to the uninterrupted run."""
    import os
    import signal

    from safetensors.torch import load_file
    from test_resume import BASE_ARGS, _run

    args = [*BASE_ARGS, "model.peft.r=4", "model.peft.dropout=0.1"]
    env = dict(os.environ, EMBEDEXP_CACHE=str(isolated_cache))
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
    full = _run([*args, f"hydra.run.dir={full_dir}"], env)
    assert full.returncode == 0, full.stderr[-3000:]
    assert "trainable parameters:" in full.stderr + full.stdout
    killed = _run([*args, f"hydra.run.dir={killed_dir}"], env, kill_at=17)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = _run([*args, f"hydra.run.dir={killed_dir}", "ckpt_path=last"], env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = json.loads((full_dir / "results.json").read_text()), json.loads((killed_dir / "results.json").read_text())
    assert a["steps"] == b["steps"] == 28 and b["resumed_from"].endswith("last.ckpt")
    assert {k: v["tuned"] for k, v in a["metrics"].items()} == {k: v["tuned"] for k, v in b["metrics"].items()}
    for rel in ("model/model.safetensors", "model/adapter/adapter_model.safetensors"):
        wa, wb = load_file(str(full_dir / rel)), load_file(str(killed_dir / rel))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), rel
