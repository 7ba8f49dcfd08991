"""Quantized and truncated embeddings: retrieval quality vs bytes per vector vs search time.

For each Matryoshka dim (truncate to the first `dim` values, then L2-normalise again) and each precision,
the corpus and queries of one retrieval set are searched exhaustively and scored with embedexp's own
metrics (`embedexp.eval.metrics.ir_metrics`, trec_eval's definitions), so the float32 row equals the
evaluator's number for that set and dim.

Precisions (the sentence-transformers / Hugging Face "embedding quantization" recipe, Shakir, Aarsen & Lee 2024,
https://huggingface.co/blog/embedding-quantization):

- ``float32``: cosine similarity, exact top-k (`embedexp.eval.metrics.top_k`, torch matmul); 4 bytes a value.
- ``int8``: scalar quantization with per-dimension ranges calibrated on the corpus embeddings, 256 buckets,
  values outside the range clipped (`quantize_int8`, equal to ``sentence_transformers.quantization
  .quantize_embeddings(..., "int8", ranges=...)`` of sentence-transformers 6.x, checked in tests; older versions
  wrap out-of-range values around instead of clipping them, one reason it is not called here, the other that
  sentence-transformers is no dependency of embedexp's core); queries and
  documents are both quantized and scored by the dot product of the int8 codes (what usearch's int8 ``ip``
  index computes); 1 byte a value. Scored with a float32 matmul, which is exact for dims below 1024
  (|code| <= 128, so every sum stays below 2**24).
- ``binary``: one bit a value (value > 0), packed with ``numpy.packbits`` (= ``quantize_embeddings(...,
  "ubinary")``), searched by Hamming distance with ``faiss.IndexBinaryFlat``; score = -distance.
- ``binary+rescore``: the binary search keeps the top ``k * rescore_multiplier`` documents, which are then
  re-ranked by the float32 query times the document's unpacked bits (0/1), as in
  ``sentence_transformers.quantization.semantic_search_faiss(..., rescore=True)`` (checked in tests). Only the
  binary corpus is needed; the query stays float.

Search time is the wall time of the search step for all queries (query quantization, scoring, top-k and
rescoring; not the corpus quantization or index build), best of `repeats`, divided by the number of queries.
On a CPU without int8 kernels int8 is no faster than float32 here: its gain is memory.

Ties: the run lists are ranked by trec_eval's rule (score descending, then document id descending) before
scoring; with Hamming distances many documents tie, and which tied documents make the top-k cut is faiss's choice.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from embedexp.errors import ConfigError
from embedexp.eval.metrics import ir_metrics, top_k
from embedexp.io import atomic_write

log = logging.getLogger(__name__)

PRECISIONS = ("float32", "int8", "binary", "binary+rescore")
_BYTES_PER_VALUE = {"float32": 4.0, "int8": 1.0}


@dataclass
class QuantRow:
    """One table row: a precision at a dim, its quality, size and speed."""

    precision: str
    dim: int
    bytes_per_vector: int
    metrics: dict[str, float]
    ms_per_query: float
    retention: dict[str, float] | None = None  # metric / the float32 value at the full dim


def truncate(emb: np.ndarray, dim: int) -> np.ndarray:
    """The first `dim` values of each row, L2-normalised again (Matryoshka truncation). (n, d) -> (n, dim) float32.

    Raises ConfigError when dim is not in 1..d.
    """
    if not 1 <= dim <= emb.shape[1]:
        raise ConfigError(f"quantization dim={dim}; expected 1..{emb.shape[1]} (the embedding size)")
    x = np.ascontiguousarray(emb[:, :dim], dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def bytes_per_vector(precision: str, dim: int) -> int:
    """Storage of one vector: 4*dim (float32), dim (int8), ceil(dim/8) (binary, packed bits)."""
    check_precision(precision)
    if precision.startswith("binary"):
        return -(-dim // 8)
    return int(_BYTES_PER_VALUE[precision] * dim)


def check_precision(precision: str) -> None:
    """Raises ConfigError naming the value and the known precisions."""
    if precision not in PRECISIONS:
        raise ConfigError(f"quantization precision={precision!r}; expected one of {', '.join(PRECISIONS)}")


def int8_ranges(calibration: np.ndarray) -> np.ndarray:
    """(2, dim) per-dimension [min; max] of the calibration embeddings (n, dim): the int8 buckets' range."""
    return np.vstack((calibration.min(axis=0), calibration.max(axis=0))).astype(np.float32)


def quantize_int8(emb: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """(n, dim) float -> (n, dim) int8: 256 equal buckets per dimension over `ranges` (see `int8_ranges`),
    out-of-range values clipped to the end buckets. Equals sentence-transformers' ``quantize_embeddings(emb,
    "int8", ranges=ranges)`` (6.x; older versions wrap around instead of clipping)."""
    ranges = ranges.astype(np.float32, copy=False)
    starts = ranges[0]
    steps = (ranges[1] - starts) / 255
    steps = np.where(steps == 0, 1, steps)
    return (np.clip(np.floor((emb - starts) / steps), 0, 255) - 128).astype(np.int8)


def quantize_binary(emb: np.ndarray) -> np.ndarray:
    """(n, dim) float -> (n, ceil(dim/8)) uint8: bit = value > 0, packed big-endian per byte (numpy.packbits),
    = sentence-transformers' ``quantize_embeddings(emb, "ubinary")``."""
    return np.packbits(emb > 0, axis=-1)


def search_float32(
    q: np.ndarray, d: np.ndarray, k: int, doc_ids: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k, (scores, indices) each (n_q, k), via `embedexp.eval.metrics.top_k` (with doc_ids:
    trec_eval's tie rule at the cut, as the evaluator)."""
    scores, idx = top_k(torch.from_numpy(q), torch.from_numpy(d), k, doc_ids=doc_ids)
    return scores.numpy(), idx.numpy()


def search_int8(q8: np.ndarray, d8: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by the dot product of int8 codes, (scores, indices) each (n_q, k); exact for dim < 1024."""
    dtype = torch.float32 if q8.shape[1] < 1024 else torch.float64
    sim = torch.from_numpy(q8).to(dtype) @ torch.from_numpy(d8).to(dtype).T
    v, i = sim.topk(min(k, d8.shape[0]), dim=1)
    return v.numpy(), i.numpy()


def hamming_index(d_bits: np.ndarray):
    """A faiss.IndexBinaryFlat holding the packed corpus (n, n_bytes) uint8."""
    import faiss

    index = faiss.IndexBinaryFlat(d_bits.shape[1] * 8)
    index.add(np.ascontiguousarray(d_bits))
    return index


def search_hamming(index, q_bits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exhaustive Hamming top-k from a `hamming_index`: (-distance as float, indices) each (n_q, k)."""
    dist, idx = index.search(np.ascontiguousarray(q_bits), min(k, index.ntotal))
    return -dist.astype(np.float32), idx


def rescore(
    q: np.ndarray, d_bits: np.ndarray, candidates: np.ndarray, k: int, dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank binary-search candidates by float query x unpacked document bits (the ST rescoring recipe).

    Args:
        q: (n_q, dim) float32 queries; d_bits: (n_docs, ceil(dim/8)) packed corpus; candidates: (n_q, m)
            corpus row indices (-1 = none); k: rows kept (<= m); dim: bits that are real (the packing pads).
    Returns:
        (scores, indices), each (n_q, min(k, m)), by rescored score descending.
    """
    valid = candidates >= 0
    bits = np.unpackbits(d_bits[np.where(valid, candidates, 0)], axis=-1)[..., :dim].astype(np.float32)
    scores = np.einsum("ij,ikj->ik", q.astype(np.float32), bits)
    scores[~valid] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(candidates, order, 1)


def _run(query_ids, doc_ids, scores: np.ndarray, idx: np.ndarray) -> dict[str, list[tuple[str, float]]]:
    return {
        qid: [(doc_ids[j], float(s)) for j, s in zip(idx[qi].tolist(), scores[qi].tolist()) if j >= 0]
        for qi, qid in enumerate(query_ids)
    }


def _timed(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def evaluate_quantized(
    query_ids: Sequence[str],
    q: np.ndarray,
    doc_ids: Sequence[str],
    d: np.ndarray,
    qrels: dict[str, dict[str, int]],
    dims: Sequence[int] | None = None,
    precisions: Sequence[str] = PRECISIONS,
    k: int = 100,
    rescore_multiplier: int = 4,
    ndcg_at: Sequence[int] = (10,),
    recall_at: Sequence[int] = (100,),
    repeats: int = 3,
) -> list[QuantRow]:
    """Every (dim, precision) of one retrieval set from its embeddings, encoded once.

    Args:
        query_ids, q: (n_q, d) query embeddings, row i = query_ids[i]; doc_ids, d: (n_docs, d) corpus embeddings.
        qrels: {query id: {doc id: grade}}; dims: Matryoshka dims (default: the full size only), each 1..d.
        precisions: subset of PRECISIONS; k: documents retrieved per query (>= the largest metric cut-off).
        rescore_multiplier: binary+rescore keeps k * this many Hamming candidates before rescoring.
        ndcg_at, recall_at: metric cut-offs (embedexp's `ir_metrics`); repeats: timing runs, best kept.
    Returns:
        rows in dim-descending, then `precisions` order; `retention` relative to float32 at the largest dim.
    Raises:
        ConfigError: an unknown precision, a dim out of range, k or rescore_multiplier below 1.
    """
    for p in precisions:
        check_precision(p)
    cutoff = max([1, *ndcg_at, *recall_at])
    if k < cutoff:
        raise ConfigError(f"quantization k={k}; expected at least the largest metric cut-off {cutoff}")
    if rescore_multiplier < 1:
        raise ConfigError(f"quantization rescore_multiplier={rescore_multiplier}; expected an integer >= 1")
    dims = sorted(set(dims or [q.shape[1]]), reverse=True)
    rows: list[QuantRow] = []
    for dim in dims:
        qt, dt = truncate(q, dim), truncate(d, dim)
        prepared = {}
        if "int8" in precisions:
            ranges = int8_ranges(dt)  # calibrated on the corpus, as the recipe recommends
            prepared["int8"] = (quantize_int8(dt, ranges), ranges)
        if any(p.startswith("binary") for p in precisions):
            d_bits = quantize_binary(dt)
            prepared["binary"] = (d_bits, hamming_index(d_bits))
        for p in precisions:
            if p == "float32":
                fn = lambda: search_float32(qt, dt, k, doc_ids)  # noqa: B023 (called in this iteration)
            elif p == "int8":
                d8, ranges = prepared["int8"]
                fn = lambda: search_int8(quantize_int8(qt, ranges), d8, k)  # noqa: B023
            elif p == "binary":
                _, index = prepared["binary"]
                fn = lambda: search_hamming(index, quantize_binary(qt), k)  # noqa: B023
            else:
                d_bits, index = prepared["binary"]

                def fn(d_bits=d_bits, index=index, qt=qt, dim=dim):
                    _, cand = search_hamming(index, quantize_binary(qt), k * rescore_multiplier)
                    return rescore(qt, d_bits, cand, k, dim)

            (scores, idx), seconds = _timed(fn, repeats)
            metrics = ir_metrics(_run(query_ids, doc_ids, scores, idx), qrels, ndcg_at, recall_at, mrr_at=(), map_at=())
            rows.append(QuantRow(p, dim, bytes_per_vector(p, dim), metrics, 1000.0 * seconds / max(1, len(query_ids))))
            log.info("dim %d %s: %s, %.3f ms/query", dim, p, metrics, rows[-1].ms_per_query)
    ref = next((r for r in rows if r.precision == "float32" and r.dim == dims[0]), None)
    for r in rows:
        if ref is not None:
            r.retention = {m: (v / ref.metrics[m] if ref.metrics[m] else float("nan")) for m, v in r.metrics.items()}
    return rows


def markdown(rows: Sequence[QuantRow]) -> str:
    """The table: precision, dim, bytes/vector, each metric, its retention vs float32 at the full dim, ms/query."""
    names = list(rows[0].metrics) if rows else []
    head = "| precision | dim | bytes/vector | " + " | ".join(names)
    head += "".join(f" | {n} retention" for n in names) + " | ms/query |"
    rule = "|---|---:|---:|" + "---:|" * (2 * len(names)) + "---:|"
    lines = [head, rule]
    for r in rows:
        ret = "".join(
            f" | {100 * r.retention[n]:.1f}%" if r.retention and np.isfinite(r.retention[n]) else " | " for n in names
        )
        lines.append(
            f"| {r.precision} | {r.dim} | {r.bytes_per_vector} | "
            + " | ".join(f"{r.metrics[n]:.4f}" for n in names)
            + ret
            + f" | {r.ms_per_query:.3f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[QuantRow], metric: str, path: str | Path, title: str = "") -> Path:
    """PNG: `metric` vs bytes per vector (log x), one line per precision, points labelled with their dim."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(7.5, 4.8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    styles = {"float32": ("o", "-"), "int8": ("s", "-"), "binary": ("v", "--"), "binary+rescore": ("^", "-")}
    for p in dict.fromkeys(r.precision for r in rows):
        pts = sorted((r.bytes_per_vector, r.metrics[metric], r.dim) for r in rows if r.precision == p)
        marker, line = styles.get(p, ("o", "-"))
        ax.plot(
            [x for x, _, _ in pts],
            [y for _, y, _ in pts],
            marker=marker,
            linestyle=line,
            label=p,
            zorder=3 if p == "binary" else 2,  # dashed on top: binary and binary+rescore share their x values
        )
        for x, y, dim in pts:
            ax.annotate(str(dim), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ref = max((r for r in rows if r.precision == "float32"), key=lambda r: r.dim, default=None)
    if ref is not None:
        ax.axhline(ref.metrics[metric], color="grey", linewidth=0.8, linestyle=":", label=f"float32 @ {ref.dim}")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.set_xlabel("bytes per vector (log scale); point labels: dim")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} vs storage per vector", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    path = Path(path)
    atomic_write(path, lambda f: fig.savefig(f, format="png"), binary=True)
    return path


def write_report(rows: Sequence[QuantRow], out_dir: str | Path, meta: dict, metric: str = "ndcg@10") -> Path:
    """quantization.md (+ the table), quantization.png and, last, quantization.json (marks a finished run)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = plot(rows, metric, out_dir / "quantization.png", meta.get("title", ""))
    md = f"# {meta.get('title', 'quantized embeddings')}\n\n" + markdown(rows) + "\n"
    md += "".join(f"- {k}: {v}\n" for k, v in meta.items() if k != "title") + f"\n![{metric}]({png.name})\n"
    atomic_write(out_dir / "quantization.md", md)
    return atomic_write(
        out_dir / "quantization.json", json.dumps({"rows": [asdict(r) for r in rows], **meta}, indent=2) + "\n"
    )
