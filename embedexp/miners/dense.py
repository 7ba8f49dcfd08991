"""Dense hard negatives: exact inner-product top-k over the whole corpus with an embedding model.

The model is the one being trained, before training (miner.model=null: train.py passes its encoder), or any
other: a `model` preset (`+model@miner.model=minilm`), an exported/Hugging Face folder path, or an Encoder.
Queries are encoded with kind="query" and documents with kind="document", so the model's prefixes apply.
Scores are computed by chunked matrix products (numpy; faiss IndexFlatIP when miner.use_faiss=true and faiss
is installed); ties are broken by corpus order.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from embedexp.errors import ConfigError
from embedexp.miners.base import HardNegativeMiner, check_bool, check_int, topk_desc

log = logging.getLogger("embedexp.miners")

SCORE_BLOCK_ELEMENTS = 1 << 26  # float32 query x document block, 256 MB


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
        return {**super().scorer_config(), "faiss": self.use_faiss}

    def model_fingerprint(self, encoder=None) -> str | None:
        return self.encoder(encoder).fingerprint()

    def _embed(self, enc, texts: list[str], kind: str) -> np.ndarray:
        emb = enc.encode(
            texts,
            kind=kind,
            batch_size=self.batch_size,
            show_progress=self.show_progress,
            desc=f"dense miner: encode {kind}s",
        )
        return np.ascontiguousarray(np.asarray(emb.numpy() if hasattr(emb, "numpy") else emb, dtype=np.float32))

    def _rank(self, queries, docs, depth, pos_pairs, encoder=None):
        enc = self.encoder(encoder)
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
    chunk = max(1, min(query_chunk, SCORE_BLOCK_ELEMENTS // max(1, nd)))
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
                s = q[start:stop] @ d.T
                idx[start:stop], scores[start:stop] = topk_desc(s, depth)
                pos_scores[sel] = s[pos_pairs[sel, 0] - start, pos_pairs[sel, 1]]
            bar.update(stop - start)
    return idx, scores, pos_scores
