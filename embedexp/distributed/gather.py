"""Cross-rank in-batch negatives: a differentiable all-gather with exact gradients.

Every rank holds B rows of each column (equal B on all ranks: use drop_last). `gather` returns the
(W*B, d) concatenation in rank order, so row `r*B + i` is rank r's row i, in every column alike,
and the positive of local anchor i is global row `rank*B + i` ("labels offset by rank").

Gradient: rank r computes its loss L_r on the gathered rows; the backward all-reduces (SUM) the
gradient w.r.t. the gathered tensor and keeps the local slice, so rank s receives
sum_r dL_r/de_s. DDP then averages parameter gradients over the W ranks, which gives exactly the
gradient of mean_r L_r. With L_r = mean over the local anchors (anchor_rows), mean_r L_r is the
mean over all W*B anchors: the single-process loss on the concatenated batch. No stray W factor.
Single-process runs take the same path; gather is then the identity.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        rank, size = world()
        ctx.rank, ctx.rows = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather(x: torch.Tensor) -> torch.Tensor:
    """Differentiable all-gather along rows (identity in a single process)."""
    if world()[1] == 1:
        return x
    _check_equal_rows(x)
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather of constants (guide embeddings, cached embeddings)."""
    if world()[1] == 1:
        return x
    _check_equal_rows(x)
    parts = [torch.empty_like(x) for _ in range(world()[1])]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def gather_padded(x: torch.Tensor, fill: int = 0) -> torch.Tensor:
    """All-gather of a constant (B, K) tensor whose K may differ by rank: padded with `fill` to the largest K."""
    if world()[1] == 1:
        return x
    k = torch.tensor([x.shape[1]], device=x.device)
    ks = [torch.empty_like(k) for _ in range(world()[1])]
    dist.all_gather(ks, k)
    width = max(int(v) for v in ks)
    if x.shape[1] < width:
        x = torch.cat([x, x.new_full((x.shape[0], width - x.shape[1]), fill)], dim=1)
    return gather_no_grad(x)


ROW_VALUES = ("teacher_scores",)  # (B, n) per-row constants gathered as they are (equal width on every rank)


def gather_extra(extra: dict) -> dict:
    """The loss's keyword arguments for the gathered batch: lists of per-column tensors (guide embeddings,
    text ids) are all-gathered column by column, per-row values (teacher scores, (B, n)) row by row, another
    (B, K) tensor (known-positive ids) with padding to the largest K; other values (flags) are passed
    unchanged. Identity in a single process."""
    if world()[1] == 1:
        return extra
    out = {}
    for key, value in extra.items():
        if isinstance(value, (list, tuple)):
            out[key] = [gather_no_grad(t) for t in value]
        elif key in ROW_VALUES:
            out[key] = gather_no_grad(value)
        elif isinstance(value, torch.Tensor) and value.ndim == 2:
            out[key] = gather_padded(value)
        elif isinstance(value, torch.Tensor):
            out[key] = gather_no_grad(value)
        else:
            out[key] = value
    return out


def all_reduce_sum_(x: torch.Tensor) -> torch.Tensor:
    if world()[1] > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def local_rows(rows: int) -> slice:
    """This rank's rows in the gathered batch."""
    rank, _ = world()
    return slice(rank * rows, (rank + 1) * rows)


def _check_equal_rows(x: torch.Tensor) -> None:
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.empty_like(n) for _ in range(world()[1])]
    dist.all_gather(sizes, n)
    if len({int(s) for s in sizes}) != 1:
        raise RuntimeError(
            f"cross-rank gather needs equal per-rank batch sizes, got {[int(s) for s in sizes]}; set data.drop_last=true"
        )
