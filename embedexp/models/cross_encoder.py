"""The cross-encoder (reranker) model kind: (query, document) -> one relevance logit.

A Hugging Face sequence-classification model with ONE label (`AutoModelForSequenceClassification`,
`num_labels=1`) on any encoder folder. From a plain encoder folder (MiniLM, BERT) the classification head is
newly initialised, and a log line says so; a folder that already is a one-logit reranker keeps its head. The
query and the document are tokenised as one pair (`[CLS] query [SEP] document [SEP]` for BERT), truncated
to `max_length` tokens (longest part first, transformers' `truncation=True`).

`save` writes the format sentence-transformers' `CrossEncoder` loads (checked against ST 6.2's
`CrossEncoder._load_default_modules` / `get_default_activation_fn`): the plain Hugging Face folder
(`save_pretrained` of model and tokenizer, `config.json` with one label) plus
`config.json["sentence_transformers"]["activation_fn"] = "torch.nn.modules.linear.Identity"`, so
`CrossEncoder(path).predict(pairs)` returns the raw logit, the same number as `score` here, as
`embedexp.miners.cross_encoder.CrossEncoderScorer` and `eval.rerank` give. (ST's own default for one label
is a sigmoid; `predict(pairs, activation_fn=torch.nn.Sigmoid())` gives P(relevant) for a BCE-trained model.)
The tokenizer is saved with `model_max_length = max_length`, so ST truncates where embedexp trained.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from embedexp.errors import ConfigError, ModelError
from embedexp.io import replace_folder
from embedexp.models.encoder import _looks_like_path, check_model_folder
from embedexp.models.limits import check_max_seq_length, folder_limit
from embedexp.progress import progress_bar

log = logging.getLogger(__name__)
ST_ACTIVATION = "torch.nn.modules.linear.Identity"  # predict() == our logit


CROSS_ENCODER = "cross_encoder"


def model_kind(model_or_cfg) -> str:
    """ "cross_encoder" or "bi_encoder": the `kind` attribute of a model, or of a `model` preset's `_target_` class
    (read without building the model; an unknown target counts as bi_encoder and fails later with its own line)."""
    if hasattr(model_or_cfg, "get") and not isinstance(model_or_cfg, type):
        from hydra.utils import get_class

        try:
            model_or_cfg = get_class(str(model_or_cfg.get("_target_")))
        except Exception:
            return "bi_encoder"
    return CROSS_ENCODER if getattr(model_or_cfg, "kind", None) == CROSS_ENCODER else "bi_encoder"


def check_bi_encoder(model_cfg, command: str) -> None:
    """ConfigError (one line) if a command that embeds texts is given a cross-encoder preset."""
    if model_kind(model_cfg) == CROSS_ENCODER:
        name = model_cfg.get("name") or model_cfg.get("model_name_or_path")
        raise ConfigError(
            f"model={name} is a cross-encoder (reranker): {command} needs a bi-encoder model preset; evaluate a "
            "reranker folder as a second stage with eval.rerank.model=<folder>, or train one with embedexp-train"
        )


@contextmanager
def _quiet_transformers():
    """transformers 5 prints a LOAD REPORT table for a new head; we log one line of our own instead."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


class CrossEncoderModel(nn.Module):
    """(query, document) pairs -> relevance logits, trainable (embedexp's reranker model kind).

    Args:
        model_name_or_path: a local Hugging Face folder: a plain encoder (the one-logit head is newly
            initialised) or a sequence-classification model with one label.
        name: the preset's name (for titles and logs).
        max_length: truncation length of a (query, document) pair in tokens.
        trust_remote_code: passed to transformers.

    Raises:
        ConfigError: max_length not a positive integer or above the model's position limit.
        ModelError: the folder cannot be loaded, or is a classifier with more than one label.
    """

    kind = "cross_encoder"  # train.py picks the LightningModule and the allowed losses by this

    def __init__(
        self,
        model_name_or_path: str,
        name: str | None = None,
        max_length: int = 256,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ConfigError(f"model.max_length={max_length!r}; expected a positive integer")
        self.model_name_or_path = str(model_name_or_path)
        self.name = name or Path(self.model_name_or_path).name
        self.max_length = max_length
        self.trust_remote_code = bool(trust_remote_code)
        self.tokenizer, self.model = self._load(self.model_name_or_path)
        self.model.train()  # from_pretrained gives eval mode; score() switches to eval itself

    def _load(self, name: str):
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        path = Path(name).expanduser()
        if path.exists() or _looks_like_path(name):
            check_model_folder(path)
            name = str(path)
            check_max_seq_length("model.max_length", self.max_length, folder_limit(path))
        kwargs = {"trust_remote_code": self.trust_remote_code}
        try:
            config = AutoConfig.from_pretrained(name, **kwargs)
            is_classifier = any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
            if is_classifier and int(config.num_labels) != 1:
                raise ModelError(
                    f"model {name!r} is a classifier with {config.num_labels} labels; expected a plain encoder "
                    "folder (a new one-logit head is added) or a one-logit reranker"
                )
            config.num_labels = 1
            tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
            with _quiet_transformers():
                model, info = AutoModelForSequenceClassification.from_pretrained(
                    name, config=config, output_loading_info=True, **kwargs
                )
        except (OSError, RuntimeError, ValueError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ModelError(f"cannot load cross-encoder {name!r}: {first}") from e
        new = sorted(info.get("missing_keys") or [])
        if new:
            log.info(
                "cross-encoder %s: the relevance head is newly initialised (%s not in the folder); "
                "its base scores are those of an untrained head",
                self.name,
                ", ".join(new),
            )
        return tokenizer, model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def trainable_parameters(self) -> tuple[int, int]:
        """(trainable, total) parameter counts of the model, in elements (the shape of Encoder's)."""
        params = list(self.model.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    def tokenize_pairs(self, queries: Sequence[str], docs: Sequence[str]) -> dict[str, torch.Tensor]:
        """(query, document) pairs -> padded tensors (n, seq) on CPU, each pair truncated to max_length tokens."""
        return dict(
            self.tokenizer(
                list(queries),
                list(docs),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
        )

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Differentiable: tokenised pairs -> (n,) logits (float32 where the model runs in lower precision)."""
        inputs = {k: v for k, v in features.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        return self.model(**inputs, return_dict=True).logits[:, 0].float()

    @torch.inference_mode()
    def score(
        self,
        queries: Sequence[str],
        docs: Sequence[str],
        batch_size: int = 32,
        show_progress: bool = False,
        desc: str = "cross-encoder scoring",
    ) -> np.ndarray:
        """Inference: (n,) float64 logits of the pairs (queries[i], docs[i]), in eval mode, batched by length.

        The same interface as `embedexp.miners.cross_encoder.CrossEncoderScorer.score`, so
        `embedexp.eval.rerank.Reranker(scorer=model)` reranks with this model.
        """
        was_training = self.training
        self.eval()
        out = np.empty(len(queries), dtype=np.float64)
        order = sorted(range(len(queries)), key=lambda i: -(len(queries[i]) + len(docs[i])))  # less padding
        device = self.device
        try:
            with progress_bar(-(-len(order) // batch_size), desc, not show_progress) as bar:
                for start in range(0, len(order), batch_size):
                    sel = order[start : start + batch_size]
                    feats = self.tokenize_pairs([queries[i] for i in sel], [docs[i] for i in sel])
                    out[sel] = self({k: v.to(device) for k, v in feats.items()}).cpu().numpy()
                    bar.update(1)
        finally:
            self.train(was_training)
        return out

    def settings(self) -> dict:
        return {"kind": self.kind, "max_length": self.max_length}

    def fingerprint(self) -> str:
        """Hash of the weights and the truncation: keys caches of base-model results."""
        h = hashlib.blake2b(digest_size=16)
        h.update(json.dumps(self.settings(), sort_keys=True).encode())
        for k, v in sorted(self.model.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def save(self, path: str | Path) -> Path:
        """Write a folder that `sentence_transformers.CrossEncoder`, `AutoModelForSequenceClassification` and
        embedexp's `eval.rerank` / `miner=cross_encoder` load (see the module doc); atomic (temp sibling + rename).

        Returns:
            `path`.
        """
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.model.save_pretrained(tmp, safe_serialization=True)
        previous = self.tokenizer.model_max_length
        self.tokenizer.model_max_length = self.max_length
        try:
            self.tokenizer.save_pretrained(tmp)
        finally:
            self.tokenizer.model_max_length = previous
        cfg_file = tmp / "config.json"
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        cfg["sentence_transformers"] = {"activation_fn": ST_ACTIVATION}
        cfg["embedexp"] = self.settings()
        cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return replace_folder(tmp, path)

    @classmethod
    def from_exported(cls, path: str | Path, **overrides) -> "CrossEncoderModel":
        """Load a folder written by `save` with its max_length (or any one-logit reranker folder)."""
        path = Path(path)
        settings: dict = {}
        cfg_file = path / "config.json"
        if cfg_file.is_file():
            stored = json.loads(cfg_file.read_text(encoding="utf-8")).get("embedexp") or {}
            if "max_length" in stored:
                settings["max_length"] = int(stored["max_length"])
        settings.update(overrides)
        return cls(str(path), **settings)
