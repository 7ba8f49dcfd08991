"""BM25 backends side by side: bm25s vs embedexp's posting matrix ("fast") vs rank_bm25 ("reference").

    python scripts/bench_bm25.py [--data-root ../shared/data] [--datasets scifact nfcorpus] [--top-k 100]

For each dataset and backend, one fresh subprocess (so peak RSS is that backend's alone) measures:
  index s   tokenising the corpus + building the index
  query s   tokenising all TRAIN queries (the mining workload) + scoring them against the whole corpus + top-k
            (best of 3; rank_bm25 once); wall seconds and, as the machine is shared, CPU seconds of the process
  peak RSS  the process' own peak (VmHWM, scripts/_rss.py), and its growth over the RSS after the data was loaded (the index's cost)
  nDCG@10   on the TEST queries (embedexp.eval.metrics, trec_eval's definitions), top-100 retrieved
Tokens: embedexp's miner default (regex \\w+, lower-cased, English stop words) for the first three rows, and a
fourth row with bm25s' own default tokenizer (`bm25s.tokenize`: \\w\\w+, lower-cased, English stop words).
Prints a markdown table (with the CPU summary of embedexp.trainer.precision) to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _rss import own_peak_mib  # noqa: E402  (VmHWM: not the parent's peak, as ru_maxrss would be)

BACKENDS = ("bm25s", "fast", "reference", "bm25s-own-tokenizer")


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _load(root: Path):
    from embedexp.eval.sets import load_eval_set

    test = load_eval_set("test", {"type": "retrieval", "root": str(root), "split": "test"})
    train = load_eval_set("train", {"type": "retrieval", "root": str(root), "split": "train"})
    return test, train.queries


def run_one(root: Path, backend: str, top_k: int, repeats: int = 3) -> dict:
    """Measure one backend in this process; returns the row as a dict."""
    import numpy as np

    from embedexp.eval.metrics import ir_metrics
    from embedexp.miners.base import topk_desc
    from embedexp.miners.tokenize import Tokenizer

    test, train_queries = _load(root)
    docs = test.docs
    tok = Tokenizer()
    if backend.startswith("bm25s"):
        import bm25s  # imported before the baseline: the library's import is not the index's cost

    if backend == "reference":
        import rank_bm25
    rss0 = _rss_mb()

    def tokens(texts):
        if backend == "bm25s-own-tokenizer":
            return bm25s.tokenize(texts, return_ids=False, show_progress=False)
        return tok.many(texts)

    t0, c0 = time.perf_counter(), time.process_time()
    d_tok = tokens(docs)
    if backend.startswith("bm25s"):
        index = bm25s.BM25()  # bm25s' defaults: Lucene BM25, k1=1.5, b=0.75 (as mteb's BM25 baseline)
        index.index(d_tok, show_progress=False)

        def search(q_tok, k):
            res = index.retrieve(q_tok, k=k, show_progress=False)
            return np.asarray(res.documents), np.asarray(res.scores)

    elif backend == "fast":
        from embedexp.miners.bm25 import BM25Index

        index = BM25Index(d_tok)

        def search(q_tok, k):
            ids = [index.token_ids(q) for q in q_tok]
            block = max(1, min(256, (1 << 24) // index.n_docs))
            out_i, out_s = [], []
            for s in range(0, len(ids), block):
                i, sc = topk_desc(index.score_block(ids[s : s + block]), k)
                out_i.append(i)
                out_s.append(sc)
            return np.concatenate(out_i), np.concatenate(out_s)

    else:
        index = rank_bm25.BM25Okapi(d_tok)

        def search(q_tok, k):
            out_i, out_s = [], []
            for q in q_tok:
                s = index.get_scores(q)
                order = np.argsort(-s, kind="stable")[:k]
                out_i.append(order)
                out_s.append(s[order])
            return np.stack(out_i), np.stack(out_s)

    t_index, c_index = time.perf_counter() - t0, time.process_time() - c0
    t_query = c_query = float("inf")
    for _ in range(repeats if backend != "reference" else 1):  # best of `repeats` (the machine is shared)
        t0, c0 = time.perf_counter(), time.process_time()
        search(tokens(train_queries), top_k)
        t_query, c_query = min(t_query, time.perf_counter() - t0), min(c_query, time.process_time() - c0)
    peak = own_peak_mib()
    idx, sc = search(tokens(test.queries), top_k)
    run = {
        qid: [(test.doc_ids[j], float(s)) for j, s in zip(row_i.tolist(), row_s.tolist()) if s > 0]
        for qid, row_i, row_s in zip(test.query_ids, idx, sc)
    }
    m = ir_metrics(run, test.qrels, ndcg_at=[10], recall_at=[100], mrr_at=[10], map_at=[10])
    return {
        "backend": backend,
        "docs": len(docs),
        "train_queries": len(train_queries),
        "test_queries": len(test.queries),
        "index_s": t_index,
        "query_s": t_query,
        "index_cpu_s": c_index,
        "query_cpu_s": c_query,
        "peak_rss_mb": peak,
        "rss_growth_mb": peak - rss0,
        "ndcg@10": m["ndcg@10"],
        "recall@100": m["recall@100"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=os.environ.get("EMBEDEXP_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--datasets", nargs="+", default=["scifact", "nfcorpus"])
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    ap.add_argument("--top-k", type=int, default=100)
    ap.add_argument("--one", nargs=2, metavar=("DATASET", "BACKEND"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        row = run_one(Path(args.data_root) / args.one[0], args.one[1], args.top_k)
        print(json.dumps(row))
        return

    from embedexp.trainer.precision import cpu_summary

    cpu = cpu_summary()
    print(
        f"<!-- bench_bm25.py {time.strftime('%Y-%m-%d')} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, {cpu}; top-{args.top_k} -->"
    )
    print(
        "| dataset | backend | tokens | docs | train queries | index s (CPU s) | query s (CPU s), all train | peak RSS MB "
        "| RSS growth MB | nDCG@10 (test) | recall@100 | CPU |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for ds in args.datasets:
        for backend in args.backends:
            cmd = [
                sys.executable,
                __file__,
                "--data-root",
                args.data_root,
                "--top-k",
                str(args.top_k),
                "--one",
                ds,
                backend,
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"| {ds} | {backend} | failed: {proc.stderr.strip().splitlines()[-1]} |", flush=True)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            tokens = "bm25s.tokenize" if backend == "bm25s-own-tokenizer" else "embedexp"
            name = "bm25s" if backend.startswith("bm25s") else backend
            print(
                f"| {ds} | {name} | {tokens} | {r['docs']} | {r['train_queries']} | {r['index_s']:.2f} ({r['index_cpu_s']:.2f}) "
                f"| {r['query_s']:.2f} ({r['query_cpu_s']:.2f}) | {r['peak_rss_mb']:.0f} | {r['rss_growth_mb']:.0f} | {r['ndcg@10']:.4f} "
                f"| {r['recall@100']:.4f} | {cpu} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
