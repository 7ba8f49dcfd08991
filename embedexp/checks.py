"""Small config-value checks shared by every package's own config checks.

Each raises `ConfigError` with one line naming the key, the value and what is expected
(e.g. `trainer.lr=0; expected a number > 0`). The packages own the rules (which keys, which ranges);
this module only phrases them the same way everywhere.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from embedexp.errors import ConfigError

_ABSENT = object()


# ---------------------------------------------------------------- reading values
def select(cfg: Any, key: str, default: Any = None) -> Any:
    """Resolved value at dotted `key` (containers as plain lists/dicts); `default` when absent."""
    try:
        value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=True)
    except MissingMandatoryValue:
        raise ConfigError(f"{key} is required (it is ??? in the preset); set it, e.g. {key}=...") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{key}: cannot resolve its value ({first_line(e)})") from None
    if value is _ABSENT:
        return default
    if isinstance(value, (DictConfig, ListConfig)):
        try:
            return OmegaConf.to_container(value, resolve=True, throw_on_missing=True)
        except MissingMandatoryValue as e:
            raise ConfigError(
                f"{e.full_key or key} is required (it is ??? in the preset); set it, e.g. {e.full_key or key}=..."
            ) from None
        except OmegaConfBaseException as e:
            raise ConfigError(f"{key}: cannot resolve its value ({first_line(e)})") from None
    return value


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# ---------------------------------------------------------------- small checks
def check_int(key: str, value: Any, minimum: int, optional: bool = False, maximum: int | None = None) -> None:
    if value is None and optional:
        return
    if not is_int(value) or value < minimum or (maximum is not None and value > maximum):
        upper = f" and <= {maximum}" if maximum is not None else ""
        raise ConfigError(f"{key}={value!r}; expected {'null or ' if optional else ''}an integer >= {minimum}{upper}")


def check_number(
    key: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
    why: str = "",
) -> None:
    """A finite number in the interval given by low/high (open or closed ends)."""
    if value is None and optional:
        return
    ok = is_number(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        if low is not None and high is not None:
            rng = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        elif low is not None:
            rng = f"{'>' if low_open else '>='} {low}"
        elif high is not None:
            rng = f"{'<' if high_open else '<='} {high}"
        else:
            rng = "(finite)"
        raise ConfigError(f"{key}={value!r}; expected {'null or ' if optional else ''}a number {rng}{why}")


def check_bool(key: str, value: Any, optional: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r}; expected true or false")


def check_choice(key: str, value: Any, choices: tuple, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" (did you mean {key}={close[0]}?)" if close else ""
        raise ConfigError(f"{key}={value!r}; expected one of {', '.join(str(c) for c in choices)}{hint}")


def check_int_list(key: str, value: Any, allow_empty: bool = True, optional: bool = False) -> list[int]:
    if value is None and optional:
        return []
    if isinstance(value, (str, bytes, dict)) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key}={value!r}; expected a list of positive integers, e.g. [10, 100]")
    if (not value and not allow_empty) or not all(is_int(v) and v > 0 for v in value):
        raise ConfigError(
            f"{key}={value!r}; expected a {'non-empty ' if not allow_empty else ''}list of positive integers, e.g. [10, 100]"
        )
    return list(value)


def check_dir(key: str, value: Any, what: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key}={value!r}; expected the path of {what}")
    if not Path(value).expanduser().is_dir():
        raise ConfigError(f"{key}={value}: folder does not exist; expected {what}")


def check_file(key: str, value: Any, what: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key}={value!r}; expected the path of {what}")
    p = Path(value).expanduser()
    if not p.is_file():
        raise ConfigError(f"{key}={value}: {'is a folder' if p.is_dir() else 'file does not exist'}; expected {what}")
