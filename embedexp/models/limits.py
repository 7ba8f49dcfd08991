"""How many tokens a model can take: the sequence-length limit of a Hugging Face model folder.

A text longer than the model's position table does not fail at tokenisation; it fails deep inside the
model's forward (a tensor-size error), possibly after hours of work. The limit is known from two JSON
files, so it is checked before any weights load (`folder_limit`, used by `embedexp.validate`) and again
from the loaded config and tokenizer when an Encoder is built from Python (`config_limit`).

Rules (the smallest applies):
- ``config.json`` ``max_position_embeddings`` (``n_positions`` for GPT-2/NomicBert-style configs). RoBERTa-like
  models number positions from ``pad_token_id + 1`` (fairseq's convention), so ``pad_token_id + 1`` of
  their positions are never usable: XLM-R's 514 positions hold 512 tokens (transformers'
  ``create_position_ids_from_input_ids``; sentence-transformers and the model cards say 512).
- the tokenizer's ``model_max_length`` (``tokenizer_config.json``) where it is a real number, not
  transformers' "no limit" placeholder ``int(1e30)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from embedexp.errors import ConfigError

# model_type values whose position ids start at padding_idx + 1 (RobertaEmbeddings and its copies)
PADDING_OFFSET_MODEL_TYPES = frozenset(
    {
        "roberta",
        "xlm-roberta",
        "xlm-roberta-xl",
        "camembert",
        "longformer",
        "data2vec-text",
        "mpnet",
        "ibert",
        "roberta-prelayernorm",
        "xmod",
        "luke",
        "markuplm",
        "esm",
        "lilt",
        "layoutlmv3",
    }
)
_NO_LIMIT = 10**12  # tokenizers without a stated limit store int(1e30); anything this large is no limit
_POSITION_KEYS = ("max_position_embeddings", "n_positions")


class Limit(NamedTuple):
    """A model's sequence-length limit in tokens and where it comes from (for the error message)."""

    tokens: int
    source: str


def config_limit(config: dict, tokenizer_max_length: Any = None, where: str = "config.json") -> Limit | None:
    """The smallest sequence-length limit stated by a model config dict and its tokenizer's model_max_length.

    Args:
        config: the model's config as a dict (``config.json`` or ``PretrainedConfig.to_dict()``).
        tokenizer_max_length: the tokenizer's ``model_max_length`` (ignored unless an int below 1e12).
        where: how to name the config in the message (e.g. the file path).
    Returns:
        ``Limit(tokens, source)``, or None when neither states a limit.
    """
    limits: list[Limit] = []
    for key in _POSITION_KEYS:
        n = config.get(key)
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            model_type = str(config.get("model_type", ""))
            if model_type in PADDING_OFFSET_MODEL_TYPES:
                pad = config.get("pad_token_id")
                offset = (pad if isinstance(pad, int) and pad >= 0 else 1) + 1
                limits.append(
                    Limit(
                        n - offset,
                        f"{key}={n} in {where}, {n - offset} usable: {model_type} positions "
                        f"start after pad_token_id={offset - 1}",
                    )
                )
            else:
                limits.append(Limit(n, f"{key}={n} in {where}"))
            break
    if (
        isinstance(tokenizer_max_length, int)
        and not isinstance(tokenizer_max_length, bool)
        and 0 < tokenizer_max_length < _NO_LIMIT
    ):
        limits.append(Limit(tokenizer_max_length, f"the tokenizer's model_max_length={tokenizer_max_length}"))
    return min(limits, key=lambda lim: lim.tokens) if limits else None


def folder_limit(path: str | Path) -> Limit | None:
    """`config_limit` of a local model folder, from its JSON files only (no weights, no tokenizer load).

    Unreadable or missing JSON gives no limit (the folder checks elsewhere report broken folders).
    """
    path = Path(path)
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    tok_max = None
    try:
        tok_cfg = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
        tok_max = tok_cfg.get("model_max_length") if isinstance(tok_cfg, dict) else None
    except (OSError, ValueError):
        pass
    return config_limit(config, tok_max, where=str(path / "config.json"))


def check_max_seq_length(key: str, value: Any, limit: Limit | None) -> None:
    """Raise ConfigError (one line, naming `key`, `value` and the limit) when `value` exceeds `limit`.

    Args:
        key: the config key to name, e.g. "model.max_seq_length".
        value: the configured length in tokens (non-integers are left to the type checks).
        limit: from `config_limit` / `folder_limit`; None means nothing to check.
    """
    if limit is None or not isinstance(value, int) or isinstance(value, bool):
        return
    if value > limit.tokens:
        raise ConfigError(
            f"{key}={value} exceeds the model's limit of {limit.tokens} tokens ({limit.source}); "
            f"expected at most {limit.tokens}"
        )
