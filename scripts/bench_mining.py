"""BM25 hard-negative scoring on SciFact train: the field guide's recipe vs embedexp's fast path.

    python scripts/bench_mining.py [--data ../shared/data/scifact] [--top-k 50] [--repeats 3]
                                   [--tokenization guide|default] [--out docs/benchmarks_mining.md]

Both paths run in this process on the same queries and documents and include everything a mining run does
for the ranking: tokenisation of queries and documents, building the index, scoring every query against the
whole corpus, and the top-k (plus the scores of the training positives).

* reference: the field guide's code: rank_bm25.BM25Okapi(...), then per query `get_scores` and
  `sorted(enumerate(scores), key=score, reverse=True)`. (The miner's `miner.backend=reference`, get_scores + a
  stable np.argsort, is timed too and reported in the notes.)
* fast: embedexp's posting-matrix BM25 (`miner.backend=fast`, the default).

Tokenisation is the same for both: `guide` = the field guide's `text.split()` (case kept, no stop words);
`default` = the miner's default (regex \\w+, lower-cased, English stop words).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from embedexp.data.train_sets import beir_pairs  # noqa: E402
from embedexp.miners.bm25 import BM25Miner  # noqa: E402
from embedexp.miners.tokenize import Tokenizer  # noqa: E402

TOKENIZATION = {
    "guide": dict(token_pattern="whitespace", lowercase=False, stopwords="none"),
    "default": dict(token_pattern="word", lowercase=True, stopwords="english"),
}
TOKENIZATION_TEXT = {
    "guide": "the guide's `text.split()`: case kept, no stop words",
    "default": "the miner's default: regex `\\w+`, lower-cased, English stop words",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", default=os.environ.get("EMBEDEXP_DATA", str(REPO.parent / "shared" / "data")) + "/scifact"
    )
    ap.add_argument("--split", default="train")
    ap.add_argument("--top-k", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5, help="runs of the fast path (the median is reported)")
    ap.add_argument("--tokenization", choices=sorted(TOKENIZATION), default="guide")
    ap.add_argument("--out", default=str(REPO / "docs" / "benchmarks_mining.md"))
    ap.add_argument("--json", default=None, help="also write the measured numbers as JSON to this file")
    args = ap.parse_args()

    ts = beir_pairs(args.data, args.split)
    docs = list(ts.corpus.values())
    doc_index = {d: i for i, d in enumerate(ts.corpus)}
    q_index: dict[str, int] = {}
    queries: list[str] = []
    pairs = []
    for qid, (qtext, _) in zip(ts.query_ids, ts.rows):
        if qid not in q_index:
            q_index[qid] = len(queries)
            queries.append(qtext)
    for qid, rels in ts.qrels.items():
        pairs += [(q_index[qid], doc_index[d]) for d, g in rels.items() if g > 0 and d in doc_index]
    pairs = np.array(sorted(set(pairs)), dtype=np.int64)
    tok = TOKENIZATION[args.tokenization]
    print(
        f"{args.data} {args.split}: {len(queries)} queries x {len(docs)} documents, top-{args.top_k}, "
        f"tokenization={args.tokenization}",
        flush=True,
    )

    def guide_recipe():
        """The field guide's code, with the miner's tokeniser: BM25Okapi, get_scores, sorted(enumerate(...))."""
        from rank_bm25 import BM25Okapi

        tokenize = Tokenizer(**{k.replace("token_pattern", "pattern"): v for k, v in tok.items()})
        t0 = time.perf_counter()
        bm25 = BM25Okapi([tokenize(d) for d in docs])
        idx = np.empty((len(queries), args.top_k), dtype=np.int64)
        sc = np.empty((len(queries), args.top_k), dtype=np.float64)
        pos = np.empty(len(pairs), dtype=np.float64)
        by_query: dict[int, list[int]] = {}
        for j, q in enumerate(pairs[:, 0].tolist()):
            by_query.setdefault(q, []).append(j)
        for qi, query in enumerate(queries):
            scores = bm25.get_scores(tokenize(query))
            ranked = sorted(enumerate(scores), key=lambda x: x[1], reverse=True)[: args.top_k]
            idx[qi] = [i for i, _ in ranked]
            sc[qi] = [s for _, s in ranked]
            for j in by_query.get(qi, ()):
                pos[j] = scores[pairs[j, 1]]
        return time.perf_counter() - t0, (idx, sc, pos)

    def run(backend: str):
        miner = BM25Miner(backend=backend, top_k=args.top_k, cache=False, show_progress=False, **tok)
        t0 = time.perf_counter()
        out = miner._rank(queries, docs, args.top_k, pairs)
        return time.perf_counter() - t0, out

    ref_s, (r_idx, r_sc, r_pos) = guide_recipe()
    print(f"reference (guide recipe): {ref_s:.2f} s", flush=True)
    fast_times, identical = [], True
    for _ in range(args.repeats):
        s, (f_idx, f_sc, f_pos) = run("fast")
        fast_times.append(s)
        identical &= bool(np.array_equal(f_idx, r_idx) and np.array_equal(f_sc, r_sc) and np.array_equal(f_pos, r_pos))
    fast_s = statistics.median(fast_times)
    print(f"fast: {', '.join(f'{t:.3f}' for t in fast_times)} s (median {fast_s:.3f})", flush=True)
    backend_s, (b_idx, b_sc, b_pos) = run("reference")
    backend_same = bool(np.array_equal(b_idx, r_idx) and np.array_equal(b_sc, r_sc) and np.array_equal(b_pos, r_pos))
    print(f"miner.backend=reference (get_scores + np.argsort): {backend_s:.2f} s", flush=True)

    n = len(queries)
    same = "yes" if identical else "NO"
    table = "\n".join(
        [
            "| path | seconds | queries/s | speed-up | identical top-k |",
            "| --- | ---: | ---: | ---: | --- |",
            f"| reference (guide: rank_bm25 get_scores + sorted) | {ref_s:.2f} | {n / ref_s:,.0f} | 1.0x | (baseline) |",
            f"| fast (embedexp posting matrix, default) | {fast_s:.3f} | {n / fast_s:,.0f} | {ref_s / fast_s:.0f}x | {same} |",
        ]
    )
    print("\n" + table)
    note = f"""# BM25 mining benchmark

`python scripts/bench_mining.py --tokenization {args.tokenization} --top-k {args.top_k}` on SciFact {args.split}:
{n} queries x {len(docs):,} documents, top-{args.top_k}, {dt.date.today().isoformat()}, {platform.machine()},
{os.cpu_count()} CPU cores (shared), Python {platform.python_version()}, numpy {np.__version__}.

{table}

- Both rows time the whole ranking step of `miner=bm25` in the same process: tokenising queries and documents,
  building the index, scoring every query against every document, the top-{args.top_k} and the positives' scores.
- reference = the field guide's code: `BM25Okapi(tokenised docs)`, then per query `get_scores` and
  `sorted(enumerate(scores), key=score, reverse=True)[:{args.top_k}]`.
  fast = `miner.backend=fast` (default): median of {args.repeats} runs ({", ".join(f"{t:.3f}" for t in fast_times)} s).
- The miner's own reference path (`miner.backend=reference`: `get_scores` + a stable `np.argsort`, the same order)
  took {backend_s:.2f} s in this run ({backend_s / fast_s:.0f}x the fast path; identical top-k: {"yes" if backend_same else "NO"}).
- Tokenisation, the same for both: {args.tokenization} ({TOKENIZATION_TEXT[args.tokenization]}).
- identical top-k: the same document ids in the same order for every query, with bit-identical scores
  (also the positives' scores): the fast path adds each query token's BM25 weights in the order rank_bm25 does.
"""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(note)
    print(f"\nwritten: {out}")
    if args.json:
        numbers = {
            "split": args.split,
            "queries": n,
            "docs": len(docs),
            "top_k": args.top_k,
            "tokenization": args.tokenization,
            "repeats": args.repeats,
            "reference_s": ref_s,
            "fast_s": fast_s,
            "fast_times": fast_times,
            "backend_reference_s": backend_s,
            "identical": identical,
            "backend_identical": backend_same,
            "numpy": np.__version__,
        }
        Path(args.json).write_text(json.dumps(numbers))
    if not (identical and backend_same):
        sys.exit(1)


if __name__ == "__main__":
    main()
