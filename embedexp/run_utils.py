"""Shared helpers of the entry points: one-line errors, trainer kwargs, compatibility checks."""

from __future__ import annotations

import difflib
import functools
import inspect
import logging
import sys
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from embedexp.errors import ConfigError, EmbedexpError

log = logging.getLogger("embedexp")
OPTIM_KEYS = ("lr", "weight_decay", "warmup_ratio", "grad_cache")
EMBEDEXP_TRAINER_KEYS = OPTIM_KEYS + ("name",)


def one_line_errors(fn: Callable) -> Callable:
    """Turn user errors into `embedexp: error: ...` on stderr and exit status 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            user_error = find_user_error(e)
            if user_error is None:
                raise
            print(f"embedexp: error: {user_error}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper


def find_user_error(e: BaseException | None) -> EmbedexpError | None:
    """The EmbedexpError behind `e`, also when hydra's instantiate wrapped it."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, EmbedexpError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def container(cfg: DictConfig | dict | None) -> dict:
    if cfg is None:
        return {}
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def split_trainer_cfg(cfg: DictConfig) -> tuple[dict, dict]:
    """trainer group -> (optimiser kwargs, lightning.Trainer kwargs); unknown keys fail with a suggestion."""
    import lightning as L

    raw = container(cfg)
    optim = {k: raw.pop(k) for k in OPTIM_KEYS if k in raw}
    raw.pop("name", None)
    allowed = set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}
    for key in raw:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f" (did you mean trainer.{close[0]}?)" if close else ""
            raise ConfigError(f"trainer.{key} is not a lightning.Trainer argument{hint}")
    for key in ("lr",):
        if key in optim and not (isinstance(optim[key], (int, float)) and optim[key] > 0):
            raise ConfigError(f"trainer.{key}={optim[key]!r}; expected a number > 0")
    gc = optim.get("grad_cache")
    if gc and gc.get("chunk_size") is not None:
        chunk = gc.get("chunk_size")
        if not isinstance(chunk, int) or chunk < 1:
            raise ConfigError(f"trainer.grad_cache.chunk_size={chunk!r}; expected a positive integer (rows per encoder chunk)")
        anchor = gc.get("anchor_chunk_size")
        if anchor is not None and (not isinstance(anchor, int) or anchor < 1):
            raise ConfigError(f"trainer.grad_cache.anchor_chunk_size={anchor!r}; expected a positive integer or null")
        # manual optimisation: the module clips and accumulates itself
        optim["gradient_clip_val"] = raw.pop("gradient_clip_val", None)
        optim["accumulate_grad_batches"] = raw.pop("accumulate_grad_batches", 1)
    else:
        optim.pop("grad_cache", None)
    if "warmup_ratio" in optim and not 0 <= optim["warmup_ratio"] < 1:
        raise ConfigError(f"trainer.warmup_ratio={optim['warmup_ratio']!r}; expected a number in [0, 1)")
    return optim, raw


def check_loss_fits_data(loss: Any, columns: tuple[str, ...], has_labels: bool, data_name: str) -> None:
    """The loss's required columns must be the first columns the data gives."""
    need = tuple(getattr(loss, "columns", ()))
    if columns[: len(need)] != need:
        raise ConfigError(
            f"loss={type(loss).__name__} needs columns {need}, but data={data_name} gives {columns}; "
            "choose a loss for this data or a data preset with those columns"
        )
    if getattr(loss, "needs_labels", False) and not has_labels:
        raise ConfigError(f"loss={type(loss).__name__} needs labels, but data={data_name} has none")
