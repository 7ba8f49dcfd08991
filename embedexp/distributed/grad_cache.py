"""GradCache (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup").

A contrastive batch of any size is trained in three passes with memory bounded by the chunk size:

1. encode every column in chunks without a graph, recording each chunk's RNG state;
2. compute the loss on the cached embeddings (leaf tensors; chunked over anchors when the loss
   supports `anchor_rows`) and cache d loss / d embedding;
3. re-encode each chunk with its recorded RNG state (the same dropout masks) and back-propagate the
   cached gradient into the encoder.

The parameter gradient equals one backward pass over the whole batch. Under DDP, every chunk's
backward but the last runs inside `no_sync`, so gradients are all-reduced once per step.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch

from embedexp.distributed.gather import all_reduce_sum_, gather_extra, gather_no_grad, local_rows, world


@dataclass
class RngState:
    cpu: torch.Tensor
    cuda: torch.Tensor | None
    device: torch.device

    @classmethod
    def capture(cls, device: torch.device) -> "RngState":
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return cls(torch.get_rng_state(), cuda, device)

    @contextlib.contextmanager
    def restored(self):
        """Run with this RNG state; the global RNG continues afterwards as if nothing happened."""
        devices = [self.device] if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices, enabled=True):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


def split_rows(features: dict[str, torch.Tensor], chunk_size: int) -> list[dict[str, torch.Tensor]]:
    """Row chunks of tokenised features, each cut to its own longest text (trailing padding removed)."""
    rows = next(iter(features.values())).shape[0]
    mask = features.get("attention_mask")
    chunks = []
    for s in range(0, rows, chunk_size):
        width = None
        if mask is not None and mask.ndim == 2:
            active = mask[s : s + chunk_size].any(dim=0).nonzero()
            width = int(active.max()) + 1 if active.numel() else None
        chunks.append(
            {
                k: v[s : s + chunk_size, :width]
                if (width and v.ndim == 2 and v.shape[1] == mask.shape[1])
                else v[s : s + chunk_size]
                for k, v in features.items()
            }
        )
    return chunks


def chunk_rows(
    features: dict[str, torch.Tensor], chunk_size: int
) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor | None]:
    """Rows sorted longest first, then cut into chunks (each trimmed to its own longest text).

    Similar lengths share a chunk, so chunks carry little padding; rows are encoded independently, so
    the order changes nothing but speed. Returns the chunks and `order` (sorted row i = original row
    order[i]; None when there is no attention mask to sort by).
    """
    mask = features.get("attention_mask")
    if mask is None or mask.ndim != 2:
        return split_rows(features, chunk_size), None
    rows = mask.shape[0]
    order = torch.argsort(mask.sum(dim=1), descending=True, stable=True)
    ordered = {k: v[order] if v.ndim >= 1 and v.shape[0] == rows else v for k, v in features.items()}
    return split_rows(ordered, chunk_size), order


def unsort(sorted_rows: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """Rows in sorted order -> rows in the original order."""
    if order is None:
        return sorted_rows
    out = torch.empty_like(sorted_rows)
    out[order] = sorted_rows
    return out


def loss_and_embedding_grads(
    loss_fn: torch.nn.Module,
    columns: list[torch.Tensor],
    labels: torch.Tensor | None,
    extra: dict,
    in_batch_negatives: bool,
    supports_anchor_rows: bool,
    anchor_chunk_size: int | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Pass 2: loss value and d loss / d (local) embeddings, across ranks when distributed."""
    rows = columns[0].shape[0]
    gathered = in_batch_negatives and world()[1] > 1
    if gathered:
        columns = [gather_no_grad(c) for c in columns]
        extra = gather_extra(extra)  # guide embeddings, text/known-positive ids
    leaves = [c.detach().requires_grad_(True) for c in columns]
    total = torch.zeros((), device=columns[0].device)
    with torch.enable_grad():
        if supports_anchor_rows:
            mine = local_rows(rows) if gathered else slice(0, rows)
            step = anchor_chunk_size or rows
            for s in range(0, rows, step):
                part = slice(mine.start + s, mine.start + min(s + step, rows))
                value = loss_fn(leaves, labels, anchor_rows=part, **extra) * ((part.stop - part.start) / rows)
                value.backward()
                total += value.detach()
        else:
            value = loss_fn(leaves, labels, **extra)
            value.backward()
            total += value.detach()
    grads = [leaf.grad if leaf.grad is not None else torch.zeros_like(leaf) for leaf in leaves]
    if gathered:
        mine = local_rows(rows)
        grads = [all_reduce_sum_(g)[mine] for g in grads]
    return total, grads


def grad_cache_backward(
    encoder: Callable[[dict], torch.Tensor],
    column_features: list[dict[str, torch.Tensor]],
    chunk_size: int,
    loss_and_grads: Callable[[list[torch.Tensor]], tuple[torch.Tensor, list[torch.Tensor]]],
    backward: Callable[[torch.Tensor, torch.Tensor], None],
    no_sync: Callable[[], ContextManager] = contextlib.nullcontext,
    sync_last: bool = True,
    grad_scale: float = 1.0,
) -> torch.Tensor:
    """Run passes 1-3; returns the loss value (detached). `backward(embeddings, grad)` back-propagates."""
    device = next(iter(column_features[0].values())).device
    plans = [chunk_rows(f, chunk_size) for f in column_features]
    chunks = [c for c, _ in plans]
    states: list[list[RngState]] = []
    cached: list[torch.Tensor] = []
    with torch.no_grad():  # pass 1
        for col, (_, order) in zip(chunks, plans):
            states.append([])
            parts = []
            for chunk in col:
                states[-1].append(RngState.capture(device))
                parts.append(encoder(chunk))
            cached.append(unsort(torch.cat(parts), order))
    value, grads = loss_and_grads(cached)  # pass 2
    n_total = sum(len(c) for c in chunks)
    done = 0
    for col, col_states, grad, (_, order) in zip(chunks, states, grads, plans):  # pass 3
        if order is not None:
            grad = grad[order]  # back into the chunks' (sorted) row order
        start = 0
        for chunk, state in zip(col, col_states):
            rows = next(iter(chunk.values())).shape[0]
            done += 1
            last = done == n_total
            with state.restored():
                ctx = contextlib.nullcontext() if (last and sync_last) else no_sync()
                with ctx:
                    emb = encoder(chunk)
                    backward(emb, grad[start : start + rows] * grad_scale)
            start += rows
    return value
