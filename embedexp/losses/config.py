"""Checks of the `loss` config group, by building the loss itself (every loss constructor is cheap).

The rules live in the loss classes' constructors (InfoNCE's temperature, each loss's margin range,
Matryoshka's dims); this module only builds them from config without loading weights: a nested loss
(`loss.loss` of Matryoshka) is built first, a nested model preset (GIST's `loss.guide`) is handed to
the caller's model check and replaced by None. Adding a loss therefore needs no change here.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable

from torch import nn

from embedexp.errors import ConfigError


def loss_attr(loss: Any, name: str) -> Any:
    """An attribute of the loss or of the loss it wraps (Matryoshka wraps another loss as `.loss`).

    Returns the first value that is neither None nor False, walking inward; None when no layer has one.
    """
    while loss is not None:
        value = getattr(loss, name, None)
        if value is not None and value is not False:
            return value
        loss = getattr(loss, "loss", None)
    return None


def _reprefix(message: str, prefix: str) -> str:
    """Constructors name their keys `loss.<key>`; the config may hold them under `pretrain.loss` or `loss.loss`."""
    return prefix + message[len("loss") :] if prefix != "loss" and message.startswith("loss.") else message


def _loss_class(prefix: str, target: Any) -> type:
    from hydra.utils import get_class

    try:
        cls = get_class(str(target))
    except Exception as e:  # ImportError, AttributeError, ValueError from Hydra's locate
        raise ConfigError(
            f"{prefix}._target_={target}: cannot import it ({str(e).splitlines()[0]}); "
            "expected a loss class such as embedexp.losses.InfoNCELoss"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"{prefix}._target_={target}; expected an nn.Module loss class")
    return cls


def _check_arguments(prefix: str, cls: type, kwargs: dict) -> None:
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    allowed = [n for n in params if n != "self"]
    for key in kwargs:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean {prefix}.{close[0]}? " if close else ""
            raise ConfigError(
                f"{prefix}.{key} is not an argument of {cls.__name__}; {hint}expected one of {', '.join(allowed)}"
            )


def check_loss_config(
    prefix: str, loss: Any, model_dim: int | None = None, check_model: Callable[[str, dict], Any] | None = None
) -> nn.Module:
    """Build the loss described by `loss` (a resolved mapping with `_target_`) to check it; returns the built loss.

    Args:
        prefix: the config key of this loss (`loss`, `pretrain.loss`, `loss.loss`).
        loss: the resolved loss config.
        model_dim: the trained model's embedding size when known; losses with `dims` (Matryoshka) must fit it.
        check_model: called as `check_model(key, preset)` for a nested model preset (e.g. GIST's guide),
            which is not loaded here.
    Raises:
        ConfigError: a value the loss class refuses, an unknown argument, dims larger than the model's.
    """
    if not isinstance(loss, dict) or "_target_" not in loss:
        raise ConfigError(f"{prefix}={loss!r}; expected a loss preset (e.g. loss=infonce)")
    cls = _loss_class(prefix, loss["_target_"])
    kwargs = {}
    for key, value in loss.items():
        if str(key).startswith("_"):
            continue
        if isinstance(value, dict) and "model_name_or_path" in value:  # a model preset (GIST's guide): not loaded here
            if check_model is not None:
                check_model(f"{prefix}.{key}", value)
            kwargs[key] = None
        elif isinstance(value, dict) and "_target_" in value:  # a wrapped loss (Matryoshka's loss.loss)
            kwargs[key] = check_loss_config(f"{prefix}.{key}", value, model_dim, check_model)
        else:
            kwargs[key] = value
    _check_arguments(prefix, cls, kwargs)
    try:
        rule = getattr(cls, "check_config", None)  # a config-time rule stricter than the Python constructor's
        if rule is not None:
            rule(kwargs)
        built = cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(_reprefix(str(e), prefix)) from None
    dims = getattr(built, "dims", None)
    if dims and model_dim is not None and max(dims) > model_dim:
        raise ConfigError(
            f"{prefix}.dims={list(dims)}; the largest, {max(dims)}, exceeds the model's embedding "
            f"dimension {model_dim}; expected dims <= {model_dim}"
        )
    return built


def check_loss_fits_data(
    loss: Any, columns: tuple[str, ...], has_labels: bool, data_name: str, has_scores: bool | None = None
) -> None:
    """The loss's required columns (its `columns` attribute) must be the first columns the data gives, and a
    distillation loss (`needs_teacher_scores`) needs data with teacher scores (`has_scores`; None = not known).

    Raises:
        ConfigError: naming the loss, the columns it needs and the columns `data_name` gives, or the missing
            teacher scores.
    """
    need = tuple(getattr(loss, "columns", ()))
    if columns[: len(need)] != need:
        raise ConfigError(
            f"loss={type(loss).__name__} needs columns {need}, but data={data_name} gives {columns}; "
            "choose a loss for this data or a data preset with those columns"
        )
    if getattr(loss, "needs_labels", False) and not has_labels:
        raise ConfigError(f"loss={type(loss).__name__} needs labels, but data={data_name} has none")
    if has_scores is False and loss_attr(loss, "needs_teacher_scores"):
        raise ConfigError(
            f"loss={type(loss).__name__} distils teacher scores, but {data_name} has none; expected data with "
            "pos_scores/neg_scores columns (data=table, e.g. FlagEmbedding jsonl) or a miner with "
            "miner.teacher_scores=true (e.g. miner=cross_encoder)"
        )
