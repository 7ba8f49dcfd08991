"""Matryoshka representation learning: one inner loss at several truncated embedding sizes.

Inputs: whatever the wrapped loss takes (its ``columns``, labels and keyword arguments); the
embeddings ``(B, d)`` per column as a tuple/list or a dict.

Formula, with ``D`` the selected dims (all of ``dims``, or ``n_dims_per_step`` of them sampled per
call), ``w_d`` their weights and ``trunc_d(x) = x[..., :d] / ||x[..., :d]||``:

    L = sum_{d in D} w_d * inner( [trunc_d(c) for c in columns], labels, **extra_d )

Labels are passed unchanged. Keyword arguments (``extra``) are passed unchanged, except those named in
``truncate_extra``, whose tensors (a tensor or a tuple/list/dict of tensors) are truncated and
re-normalised like the columns. By default nothing is truncated: ``guide_embeddings`` of GISTLoss come
from a different, frozen model whose first ``d`` dimensions were never trained to mean anything on their
own, and the false-negative mask should not depend on the trained model's truncation size; this is also
what sentence-transformers' MatryoshkaLoss(GISTEmbedLoss) does (it shrinks only the trained model's
outputs). ``truncate_extra=("guide_embeddings",)`` truncates the guide's too.

Only the embeddings it is given are used: nothing is re-encoded, and the result is a pure differentiable
function of the embeddings (GradCache may call it on leaf tensors and back-propagate into them).

Sampling (``n_dims_per_step > 0``): in training, the dims belong to the optimisation step, not to the call.
``begin_step(step, seed)`` (EmbeddingModule calls it before every batch with the global step and the run
seed) draws them from a generator seeded by (seed, step) only, and every call until the next step uses them:
all GradCache anchor chunks, every micro-batch of a gradient-accumulation window and every DDP rank train
the same dims in one update, and a resumed run (same seed, restored global step) draws exactly the dims
of an uninterrupted one, without touching the global RNG (so dropout draws are unchanged). Outside a step
(no ``begin_step`` yet) each call draws from torch's global CPU generator (``torch.randperm``), so stand-alone
use is reproducible under ``torch.manual_seed``. The dims used by the last call are in ``last_dims``
(descending).

Reference: Kusupati et al. 2022, "Matryoshka Representation Learning", arXiv:2205.13147; the loss
wrapper of sentence-transformers (``MatryoshkaLoss``; it sorts dims, we require them descending).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from embedexp.errors import ConfigError
from embedexp.losses.infonce import as_columns

log = logging.getLogger(__name__)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _as_list(value: Any) -> list | None:
    if value is None or isinstance(value, (str, bytes, dict)):
        return None
    try:
        return list(value)  # list, tuple, omegaconf ListConfig
    except TypeError:
        return None


def validate_dims(dims: Any) -> tuple[int, ...]:
    """Positive integers, strictly descending (so no duplicates); at least one."""
    items = _as_list(dims)
    if not items or not all(_is_int(d) and d > 0 for d in items):
        raise ConfigError(
            f"loss.dims={dims!r}; expected a non-empty list of positive integers, e.g. [768, 512, 256, 128, 64]"
        )
    if len(set(items)) != len(items):
        raise ConfigError(
            f"loss.dims={items}; contains duplicates; expected distinct dims in strictly descending order"
        )
    if any(a <= b for a, b in zip(items, items[1:])):
        raise ConfigError(f"loss.dims={items}; expected strictly descending order, e.g. {sorted(items, reverse=True)}")
    return tuple(items)


def check_dims(dims: Sequence[int], model_dim: int) -> None:
    """Config-time check against the trained model's embedding size (call once the model is loaded)."""
    dims = validate_dims(dims)
    if max(dims) > model_dim:
        raise ConfigError(
            f"loss.dims={list(dims)}; the largest, {max(dims)}, exceeds the model's embedding dimension {model_dim}"
        )
    if model_dim not in dims:
        log.warning(
            "loss.dims=%s does not include the model's embedding dimension %d: the full-size embedding is not trained",
            list(dims),
            model_dim,
        )


def _truncate(x: torch.Tensor, dim: int, what: str) -> torch.Tensor:
    if x.shape[-1] < dim:
        raise ValueError(f"Matryoshka: cannot truncate {what} of size {x.shape[-1]} to {dim} dims (loss.dims)")
    return F.normalize(x[..., :dim], p=2, dim=-1)


def _truncate_nested(value: Any, dim: int, what: str) -> Any:
    if isinstance(value, torch.Tensor):
        return _truncate(value, dim, what)
    if isinstance(value, dict):
        return {k: _truncate_nested(v, dim, f"{what}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_truncate_nested(v, dim, f"{what}[{i}]") for i, v in enumerate(value))
    raise ValueError(f"Matryoshka: cannot truncate {what} of type {type(value).__name__}")


class MatryoshkaLoss(nn.Module):
    def __init__(
        self,
        loss: Callable[..., torch.Tensor],
        dims: Sequence[int] = (768, 512, 256, 128, 64),
        weights: Sequence[float] | None = None,
        n_dims_per_step: int = -1,
        truncate_extra: Sequence[str] = (),
    ) -> None:
        super().__init__()
        if not callable(loss):
            raise ConfigError(f"loss.loss={loss!r}; expected an embedding loss to wrap (e.g. InfoNCELoss)")
        self.dims = validate_dims(dims)
        if weights is None:
            weights = [1.0] * len(self.dims)
        w = _as_list(weights)
        if w is None or len(w) != len(self.dims):
            raise ConfigError(f"loss.weights={weights!r}; expected one weight per dim of loss.dims={list(self.dims)}")
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0 for x in w):
            raise ConfigError(f"loss.weights={w}; expected finite numbers >= 0")
        self.weights = tuple(float(x) for x in w)
        if not (_is_int(n_dims_per_step) and (n_dims_per_step == -1 or 1 <= n_dims_per_step <= len(self.dims))):
            raise ConfigError(
                f"loss.n_dims_per_step={n_dims_per_step!r}; expected -1 (all dims every step) or 1..{len(self.dims)}"
            )
        self.n_dims_per_step = n_dims_per_step
        names = _as_list(truncate_extra)
        if names is None or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"loss.truncate_extra={truncate_extra!r}; expected a list of keyword-argument names")
        self.truncate_extra = tuple(names)
        self.loss = loss  # registered as a submodule when it is an nn.Module (module.loss_attr looks here)
        self.last_dims: tuple[int, ...] = ()
        self._step_indices: list[int] | None = None  # set by begin_step: the dims of the current optimisation step

    @property
    def samples_dims(self) -> bool:
        """True when only `n_dims_per_step` of the dims are trained per step."""
        return self.n_dims_per_step != -1 and self.n_dims_per_step < len(self.dims)

    def step_dims(self, step: int, seed: int = 0) -> tuple[int, ...]:
        """The dims (descending) trained at optimisation step `step` of a run seeded `seed`.

        A pure function of (seed, step, dims, n_dims_per_step): a fresh torch.Generator seeded with
        `seed * 1_000_003 + step` (offset so it is not the data sampler's stream), `randperm(len(dims))`, the
        first `n_dims_per_step` indices. All dims when nothing is sampled.
        """
        return tuple(self.dims[i] for i in self._draw_step(step, seed))

    def _draw_step(self, step: int, seed: int) -> list[int]:
        n = len(self.dims)
        if not self.samples_dims:
            return list(range(n))
        g = torch.Generator()
        g.manual_seed((int(seed) * 1_000_003 + int(step) + 0x4D52) % (2**63))
        return sorted(torch.randperm(n, generator=g)[: self.n_dims_per_step].tolist())

    def begin_step(self, step: int, seed: int = 0) -> None:
        """Fix the sampled dims for optimisation step `step` (see the module doc); idempotent within a step."""
        self._step_indices = self._draw_step(step, seed)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(getattr(self.loss, "columns", ()))

    @property
    def needs_labels(self) -> bool:
        return bool(getattr(self.loss, "needs_labels", False))

    def select(self) -> list[int]:
        """Indices into ``dims`` used by one call, ascending (= dims descending)."""
        n = len(self.dims)
        if not self.samples_dims:
            return list(range(n))
        if self._step_indices is not None:  # inside an optimisation step: its dims, whichever call this is
            return list(self._step_indices)
        return sorted(torch.randperm(n)[: self.n_dims_per_step].tolist())

    def forward(
        self, embeddings: Sequence[torch.Tensor] | dict, labels: torch.Tensor | None = None, **extra
    ) -> torch.Tensor:
        cols = as_columns(embeddings)
        if not cols:
            raise ValueError("Matryoshka: no embedding columns")
        missing = [n for n in self.truncate_extra if n not in extra]
        if missing:
            raise ValueError(f"Matryoshka: loss.truncate_extra names {missing}, which the loss call did not pass")
        names = list(embeddings.keys()) if isinstance(embeddings, dict) else None

        indices = self.select()
        self.last_dims = tuple(self.dims[i] for i in indices)
        total = None
        for i in indices:
            dim, weight = self.dims[i], self.weights[i]
            truncated = [_truncate(c, dim, f"embedding column {k}") for k, c in enumerate(cols)]
            inputs = dict(zip(names, truncated)) if names is not None else truncated
            extra_d = {k: (_truncate_nested(v, dim, k) if k in self.truncate_extra else v) for k, v in extra.items()}
            term = weight * self.loss(inputs, labels, **extra_d)
            total = term if total is None else total + term
        return total

    def extra_repr(self) -> str:
        return (
            f"dims={list(self.dims)}, weights={list(self.weights)}, n_dims_per_step={self.n_dims_per_step}, "
            f"truncate_extra={list(self.truncate_extra)}"
        )
