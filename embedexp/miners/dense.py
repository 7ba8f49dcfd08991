"""Dense hard negatives: exact inner-product top-k over the whole corpus with an embedding model.

The model is the one being trained, before training (miner.model=null: train.py passes its encoder), or any
other: a `model` preset (`+model@miner.model=minilm`), an exported/Hugging Face folder path, or an Encoder.
Queries are encoded with kind="query" and documents with kind="document", so the model's prefixes apply.
Scores are computed tile by tile, (query chunk) x (corpus block), each tile's top-k merged into a running top-k, so
memory stays ~SCORE_BLOCK_ELEMENTS floats whatever the corpus size (numpy; faiss IndexFlatIP when miner.use_faiss=true
and faiss is installed); ties are broken by corpus order. `miner.precision=bf16|auto` encodes under bf16 autocast
where that is native (embedexp/trainer/inference.py); fp32 (exact) is the default.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from embedexp.errors import ConfigError
from embedexp.miners.base import HardNegativeMiner, check_bool, check_int, topk_desc
from embedexp.trainer.inference import check_precision, resolve_inference_precision

log = logging.getLogger("embedexp.miners")

SCORE_BLOCK_ELEMENTS = 1 << 24  # float32 (query chunk x corpus block) tile, 64 MB
QUERY_CHUNK_MIN = 256  # queries per tile at least: the corpus is read once per query chunk


def load_encoder(spec: Any, key: str = "miner.model"):
    """An Encoder from a config dict (with _target_), a folder path, or an Encoder-like object."""
    if hasattr(spec, "encode") and hasattr(spec, "fingerprint"):
        return spec
    if isinstance(spec, (str, Path)):
        from embedexp.models import Encoder

        path = Path(spec).expanduser()
        if (path / "modules.json").is_file():
            return Encoder.from_exported(path)
        return Encoder(str(spec))
    try:
        from omegaconf import DictConfig

        is_cfg = isinstance(spec, (dict, DictConfig)) and "_target_" in spec
    except ImportError:  # pragma: no cover
        is_cfg = isinstance(spec, dict) and "_target_" in spec
    if is_cfg:
        from hydra.utils import instantiate

        return instantiate(spec)
    raise ConfigError(
        f"{key}={spec!r}; expected null (the model being trained), a model folder path or a model preset "
        "(+model@miner.model=NAME)"
    )


def _faiss():
    try:
        import faiss

        return faiss
    except ImportError:
        return None


class DenseMiner(HardNegativeMiner):
    """Hard negatives by embedding similarity. See embedexp/miners/base.py for the filters."""

    kind = "dense"

    def __init__(
        self,
        model: Any = None,
        batch_size: int = 64,
        use_faiss: bool = False,
        query_chunk: int = 1024,
        precision: str = "fp32",
        **common,
    ) -> None:
        common.setdefault("name", "dense")
        super().__init__(**common)
        if model is not None and not (
            isinstance(model, (str, Path, dict)) or hasattr(model, "encode") or hasattr(model, "keys")
        ):
            raise ConfigError(f"miner.model={model!r}; expected null, a model folder path or a model preset")
        if isinstance(model, str) and not model.strip():
            raise ConfigError("miner.model is an empty string; expected null, a model folder path or a model preset")
        self.model = model
        self.batch_size = check_int("miner.batch_size", batch_size, 1)
        self.use_faiss = check_bool("miner.use_faiss", use_faiss)
        self.query_chunk = check_int("miner.query_chunk", query_chunk, 1)
        self.precision = check_precision("miner.precision", precision)
        self._encode_kw: dict = {}
        if self.use_faiss and _faiss() is None:
            log.warning("miner.use_faiss=true but faiss is not installed (pip install faiss-cpu); using numpy")
            self.use_faiss = False
        self._own_encoder = None
        self._queries_emb: np.ndarray | None = None

    @property
    def needs_encoder(self) -> bool:
        return self.model is None

    def encoder(self, encoder=None):
        if self.model is None:
            if encoder is None:
                raise ConfigError(
                    f"miner={self.name} with miner.model=null mines with the model being trained; "
                    "pass the encoder to mine() or set miner.model"
                )
            return encoder
        if self._own_encoder is None:
            self._own_encoder = load_encoder(self.model)
        return self._own_encoder

    def scorer_config(self) -> dict:
        # the model's identity is its fingerprint (weights + prefixes/pooling), part of the cache key
        cfg = {**super().scorer_config(), "faiss": self.use_faiss}
        if self.precision != "fp32":  # bf16 embeddings rank differently (fp32 keys stay as they were)
            cfg["precision"] = self.precision
        return cfg

    def model_fingerprint(self, encoder=None) -> str | None:
        return self.encoder(encoder).fingerprint()

    def _embed(self, enc, texts: list[str], kind: str) -> np.ndarray:
        emb = enc.encode(
            texts,
            kind=kind,
            batch_size=self.batch_size,
            show_progress=self.show_progress,
            desc=f"dense miner: encode {kind}s",
            **self._encode_kw,
        )
        return np.ascontiguousarray(np.asarray(emb.numpy() if hasattr(emb, "numpy") else emb, dtype=np.float32))

    def _rank(self, queries, docs, depth, pos_pairs, encoder=None):
        enc = self.encoder(encoder)
        if self.precision != "fp32":
            p = resolve_inference_precision(self.precision, getattr(enc, "device", "cpu"), "miner.precision")
            self._encode_kw = {} if p == "fp32" else {"precision": p}
        q = self._embed(enc, queries, "query")
        d = self._embed(enc, docs, "document")
        self._queries_emb = q
        return rank_dense(q, d, depth, pos_pairs, self.use_faiss, self.query_chunk, self.show_progress)

    def _release(self) -> None:
        self._queries_emb = None
        self._own_encoder = None

    def _score_texts(self, queries, pairs, encoder=None):
        enc = self.encoder(encoder)
        emb = self._embed(enc, [t for _, t in pairs], "document")
        q = self._queries_emb[[qi for qi, _ in pairs]]
        return (q * emb).sum(axis=1, dtype=np.float32).astype(np.float64)


def rank_dense(
    q: np.ndarray,
    d: np.ndarray,
    depth: int,
    pos_pairs: np.ndarray,
    use_faiss: bool = False,
    query_chunk: int = 1024,
    show_progress: bool = False,
):
    """Exact top-`depth` documents by inner product for every query: (indices, scores, scores of pos_pairs).

    q: (nq, dim) and d: (nd, dim) float32; returns indices (nq, depth) int64, scores (nq, depth) float64 (score
    descending, ties by corpus order) and the scores of the (query, document) pairs `pos_pairs` (n, 2).
    A NaN score (e.g. a NaN embedding) ranks last as -inf; a faiss "no result" keeps index -1 with score -inf.
    The miner's `_retrieved` treats both as not retrieved.
    """
    nq, nd = len(q), len(d)
    pos_pairs = np.asarray(pos_pairs, dtype=np.int64).reshape(-1, 2)
    idx = np.empty((nq, depth), dtype=np.int64)
    scores = np.empty((nq, depth), dtype=np.float64)
    pos_scores = np.empty(len(pos_pairs), dtype=np.float64)
    chunk = max(1, min(query_chunk, max(QUERY_CHUNK_MIN, SCORE_BLOCK_ELEMENTS // max(1, nd))))
    block = max(depth, SCORE_BLOCK_ELEMENTS // chunk)  # corpus rows per tile
    index = None
    if use_faiss:
        faiss = _faiss()
        index = faiss.IndexFlatIP(d.shape[1])
        index.add(d)
    with tqdm(total=nq, desc="dense scoring", unit="query", disable=not show_progress) as bar:
        for start in range(0, nq, chunk):
            stop = min(nq, start + chunk)
            sel = (pos_pairs[:, 0] >= start) & (pos_pairs[:, 0] < stop)
            if index is not None:
                sv, si = index.search(q[start:stop], depth)
                # faiss' "no result" (label -1, score -FLT_MAX; e.g. NaN embeddings): not retrieved (-inf), last
                sv = np.where(si < 0, -np.inf, sv)
                order = np.lexsort((si, -sv), axis=1)  # score desc, then corpus order
                idx[start:stop] = np.take_along_axis(si, order, axis=1)
                scores[start:stop] = np.take_along_axis(sv, order, axis=1)
                pq, pd = pos_pairs[sel, 0], pos_pairs[sel, 1]
                pos_scores[sel] = (q[pq] * d[pd]).sum(axis=1, dtype=np.float32)
            else:
                i, v, pos_scores[sel] = tiled_topk(q[start:stop], d, depth, block, pos_pairs[sel], start)
                idx[start:stop], scores[start:stop] = i, v
            bar.update(stop - start)
    return idx, scores, pos_scores


def tiled_topk(q: np.ndarray, d: np.ndarray, depth: int, block: int, pairs: np.ndarray, q_offset: int = 0):
    """Top-`depth` of q @ d.T (score descending, ties by corpus order), one (len(q), block) tile at a time.

    q: (nq, dim), d: (nd, dim) float32; depth <= block and depth <= nd. Returns (indices (nq, depth) int64,
    scores (nq, depth), scores of `pairs` (n,) float64).

    Each tile's top-k (`topk_desc`) is merged with the running top-k by (score descending, document index
    ascending): a total order, so the result equals `topk_desc(q @ d.T, depth)`. The scores of `pairs` (rows
    (query index + q_offset, document index)) are read from their tiles.
    Memory: one tile plus O(len(q) * depth), whatever len(d).
    """
    nq, nd = len(q), len(d)
    pos = np.empty(len(pairs), dtype=np.float64)
    best_i = best_s = None
    for lo in range(0, nd, block):
        hi = min(nd, lo + block)
        s = q @ d[lo:hi].T
        i, v = topk_desc(s, depth)
        here = (pairs[:, 1] >= lo) & (pairs[:, 1] < hi)
        pos[here] = s[pairs[here, 0] - q_offset, pairs[here, 1] - lo]
        del s  # else this tile is still alive while the next product is computed: 2 tiles at the peak
        i = i + lo
        if best_i is None:
            best_i, best_s = i, v
            continue
        cat_i, cat_s = np.concatenate([best_i, i], axis=1), np.concatenate([best_s, v], axis=1)
        order = np.lexsort((cat_i, -cat_s), axis=1)[:, :depth]
        best_i, best_s = np.take_along_axis(cat_i, order, 1), np.take_along_axis(cat_s, order, 1)
    if best_i is None:  # an empty corpus: nothing to rank
        return np.empty((nq, 0), np.int64), np.empty((nq, 0), np.float64), pos
    return best_i, best_s, pos
