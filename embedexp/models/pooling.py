"""Pooling of token embeddings into one vector per text."""

from __future__ import annotations

import torch

POOLING_MODES = ("mean", "cls", "last_token")


def pool(token_embeddings: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """(batch, seq, dim) token embeddings + (batch, seq) mask -> (batch, dim).

    mean: average over non-padding tokens; cls: first token; last_token: last non-padding token
    (works for left and right padding).
    """
    if mode == "mean":
        mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
        summed = (token_embeddings * mask).sum(dim=1)
        return summed / mask.sum(dim=1).clamp(min=1e-9)
    if mode == "cls":
        return token_embeddings[:, 0]
    if mode == "last_token":
        seq_len = attention_mask.shape[1]
        positions = torch.arange(seq_len, device=attention_mask.device).expand_as(attention_mask)
        last = (positions * attention_mask).argmax(dim=1)
        return token_embeddings[torch.arange(token_embeddings.shape[0], device=last.device), last]
    raise ValueError(f"unknown pooling {mode!r}; expected one of {POOLING_MODES}")
