"""Cross-encoder hard negatives: re-score the bm25 or dense top `n_candidates` of every query with a local
sequence-classification model (transformers AutoModelForSequenceClassification: one label -> its logit; two
labels -> logit[1] - logit[0]), re-rank by that score (ties: corpus order) and keep the top `top_k` for the
filters. The positive is scored by the same model, so margins compare like with like.

Only candidates that the first stage retrieved (its own `_retrieved`: BM25 score > 0, a finite dense score)
are re-scored; the others get -inf (not retrieved), as does a NaN cross-encoder score.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from embedexp.errors import ConfigError, ModelError
from embedexp.miners.base import HardNegativeMiner, check_choice, check_int
from embedexp.miners.cache import folder_fingerprint, hash_json

CANDIDATES = ("bm25", "dense")


class CrossEncoderScorer:
    """(query, document) -> relevance score with a local sequence-classification model folder."""

    def __init__(self, path: str | Path, max_length: int = 256, device: str | None = None) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = Path(path).expanduser()
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"miner.model_path={str(path)!r}: not a model folder (no config.json); expected a local "
                "sequence-classification model folder"
            )
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path))
            self.model = AutoModelForSequenceClassification.from_pretrained(str(path))
        except (OSError, ValueError, RuntimeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ModelError(f"cannot load cross-encoder {str(path)!r} (miner.model_path): {first}") from e
        n_labels = int(self.model.config.num_labels)
        if n_labels not in (1, 2):
            raise ConfigError(
                f"miner.model_path={str(path)!r}: the model has {n_labels} labels; expected a "
                "relevance model with 1 (a score) or 2 (irrelevant/relevant) labels"
            )
        self.n_labels = n_labels
        self.max_length = max_length
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device).eval()

    def score(
        self,
        queries: list[str],
        docs: list[str],
        batch_size: int = 32,
        show_progress: bool = False,
        desc: str = "cross-encoder scoring",
    ) -> np.ndarray:
        import torch

        out = np.empty(len(queries), dtype=np.float64)
        order = sorted(range(len(queries)), key=lambda i: -(len(queries[i]) + len(docs[i])))  # less padding
        with torch.inference_mode():
            for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=not show_progress):
                sel = order[start : start + batch_size]
                feats = self.tokenizer(
                    [queries[i] for i in sel],
                    [docs[i] for i in sel],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                logits = self.model(**{k: v.to(self.device) for k, v in feats.items()}).logits.float()
                s = logits[:, 0] if self.n_labels == 1 else logits[:, 1] - logits[:, 0]
                out[sel] = s.cpu().numpy()
        return out


class CrossEncoderMiner(HardNegativeMiner):
    """Hard negatives re-ranked by a cross-encoder. See embedexp/miners/base.py for the filters."""

    kind = "cross_encoder"

    def __init__(
        self,
        model_path: str | None = None,
        candidates: str = "bm25",
        n_candidates: int = 100,
        candidate_options: dict | None = None,
        max_length: int = 256,
        batch_size: int = 32,
        device: str | None = None,
        **common,
    ) -> None:
        common.setdefault("name", "cross_encoder")
        super().__init__(**common)
        if not model_path or not isinstance(model_path, (str, Path)):
            shown = "null" if model_path is None else repr(model_path)
            raise ConfigError(f"miner.model_path={shown}; expected a local sequence-classification model folder")
        if not Path(model_path).expanduser().is_dir():
            raise ConfigError(f"miner.model_path={str(model_path)!r}: the folder does not exist")
        if not (Path(model_path).expanduser() / "config.json").is_file():
            raise ConfigError(
                f"miner.model_path={str(model_path)!r}: not a model folder (no config.json); expected a "
                "local sequence-classification model folder"
            )
        self.model_path = str(Path(model_path).expanduser())
        self.candidates = check_choice("miner.candidates", candidates, CANDIDATES)
        self.n_candidates = check_int("miner.n_candidates", n_candidates, 1)
        if self.n_candidates < self.top_k:
            raise ConfigError(f"miner.n_candidates={n_candidates!r}; expected an integer >= miner.top_k={self.top_k}")
        self.max_length = check_int("miner.max_length", max_length, 1)
        self.batch_size = check_int("miner.batch_size", batch_size, 1)
        self.device = device
        options = dict(candidate_options or {})
        try:
            self.inner = _candidate_miner(self.candidates, self.n_candidates, options, self.show_progress)
        except ConfigError as e:
            raise ConfigError(str(e).replace("miner.", "miner.candidate_options.", 1)) from None
        except TypeError as e:
            raise ConfigError(
                f"miner.candidate_options={options!r}: {e} (options of miner={self.candidates})"
            ) from None
        self._scorer: CrossEncoderScorer | None = None

    @property
    def needs_encoder(self) -> bool:
        return self.inner.needs_encoder

    def scorer(self) -> CrossEncoderScorer:
        if self._scorer is None:
            self._scorer = CrossEncoderScorer(self.model_path, self.max_length, self.device)
        return self._scorer

    def scorer_config(self) -> dict:
        return {
            **super().scorer_config(),
            "n_candidates": self.n_candidates,
            "max_length": self.max_length,
            "candidates": self.inner.scorer_config(),
        }

    def model_fingerprint(self, encoder=None) -> str | None:
        return hash_json(
            {"cross_encoder": folder_fingerprint(self.model_path), "candidates": self.inner.model_fingerprint(encoder)}
        )

    def _rank(self, queries, docs, depth, pos_pairs, encoder=None):
        n_cand = min(self.n_candidates, len(docs))
        cand, inner_scores, _ = self.inner._rank(queries, docs, n_cand, np.empty((0, 2), np.int64), encoder)
        cand = np.asarray(cand, dtype=np.int64)
        ok = self.inner._retrieved(cand, inner_scores, len(docs))  # only what the first stage retrieved
        pos_pairs = np.asarray(pos_pairs, dtype=np.int64).reshape(-1, 2)
        qi, ci = np.nonzero(ok)
        all_q = qi.tolist() + pos_pairs[:, 0].tolist()
        all_d = cand[qi, ci].tolist() + pos_pairs[:, 1].tolist()
        s = self.scorer().score(
            [queries[i] for i in all_q], [docs[i] for i in all_d], self.batch_size, self.show_progress
        )
        ce = np.full(cand.shape, -np.inf)
        ce[qi, ci] = s[: len(qi)]
        ce[np.isnan(ce)] = -np.inf  # a NaN score is no score: not retrieved, ranked last
        order = np.lexsort((cand, -ce), axis=1)[:, :depth]  # cross-encoder score desc, then corpus order
        return np.take_along_axis(cand, order, axis=1), np.take_along_axis(ce, order, axis=1), s[len(qi) :]

    def _release(self) -> None:
        self._scorer = None
        self.inner._release()

    def _score_texts(self, queries, pairs, encoder=None):
        return self.scorer().score([queries[q] for q, _ in pairs], [t for _, t in pairs], self.batch_size)


def _candidate_miner(kind: str, n_candidates: int, options: dict[str, Any], show_progress: bool) -> HardNegativeMiner:
    common = {
        "name": f"{kind} candidates",
        "top_k": n_candidates,
        "n_negatives": 1,
        "cache": False,
        "show_progress": show_progress,
    }
    if kind == "bm25":
        from embedexp.miners.bm25 import BM25Miner

        return BM25Miner(**options, **common)
    from embedexp.miners.dense import DenseMiner

    return DenseMiner(**options, **common)
