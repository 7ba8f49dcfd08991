"""Progress a person can follow: bars in a terminal, periodic plain lines anywhere else.

A bar redrawn with carriage returns is unreadable in a log file (SLURM, nohup, CI, `> log`): tqdm writes
one line hundreds of characters long, rich writes nothing until the bar closes. When stdout is not a
terminal, progress is therefore reported as ordinary log lines through the `embedexp.progress` logger
(so they land in the run's log file too):

    step 120/800 loss=0.4312 lr=1.9e-05 eta=3m12s        (training, `LineProgressBar`)
    helpdesk_test: corpus 12/40 batches                   (encoding, `progress_bar`)

Settings (`configure`, from the `progress` block of conf/train.yaml; $EMBEDEXP_PROGRESS sets the mode for
every command): mode `auto` (bars on a terminal, lines otherwise), `bars`, `lines` or `none`; a line every
`every_n_steps` optimiser steps or `every_s` seconds, whichever comes first (the first and last steps always).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from embedexp.errors import ConfigError

log = logging.getLogger("embedexp.progress")

MODES = ("auto", "bars", "lines", "none")


@dataclass
class ProgressSettings:
    """How progress is shown; see the module docstring."""

    mode: str = "auto"
    every_n_steps: int = 50
    every_s: float = 30.0


SETTINGS = ProgressSettings()


def configure(mode: str = "auto", every_n_steps: int = 50, every_s: float = 30.0) -> ProgressSettings:
    """Set the process-wide progress settings (checked: ConfigError naming `progress.<key>`)."""
    if mode not in MODES:
        raise ConfigError(f"progress.mode={mode!r}; expected one of {', '.join(MODES)}")
    if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
        raise ConfigError(f"progress.every_n_steps={every_n_steps!r}; expected an integer >= 1")
    if isinstance(every_s, bool) or not isinstance(every_s, (int, float)) or not every_s > 0:
        raise ConfigError(f"progress.every_s={every_s!r}; expected a number of seconds > 0")
    SETTINGS.mode, SETTINGS.every_n_steps, SETTINGS.every_s = mode, every_n_steps, float(every_s)
    return SETTINGS


def resolved_mode(stream: Any = None) -> str:
    """`bars`, `lines` or `none`: $EMBEDEXP_PROGRESS, else the configured mode; `auto` asks whether `stream`
    (default sys.stdout) is a terminal."""
    mode = os.environ.get("EMBEDEXP_PROGRESS") or SETTINGS.mode
    if mode not in MODES:
        raise ConfigError(f"EMBEDEXP_PROGRESS={mode!r}; expected one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    stream = sys.stdout if stream is None else stream
    try:
        return "bars" if stream.isatty() else "lines"
    except (AttributeError, ValueError):  # closed or replaced streams
        return "lines"


def format_duration(seconds: float) -> str:
    """`42s`, `3m12s`, `2h05m` (seconds rounded; `?` when unknown)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class LineProgress:
    """A tqdm-like counter (`update`, context manager) that logs `<desc> k/n <unit>s` every `every_s` seconds.

    A line is written only once the work has lasted `every_s` seconds; then the final count is written too,
    so a short encode adds nothing to the log (its caller logs the time it took).
    """

    def __init__(self, total: int | None, desc: str, unit: str = "batch", every_s: float | None = None) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.every_s = SETTINGS.every_s if every_s is None else every_s
        self.n = 0
        self._t0 = self._last = time.monotonic()
        self._reported = False
        self._closed = False

    def _line(self) -> None:
        total = f"/{self.total}" if self.total else ""
        units = self.unit + ("es" if self.unit.endswith(("s", "sh", "ch", "x")) else "s")
        log.info("%s %d%s %s (%s)", self.desc, self.n, total, units, format_duration(time.monotonic() - self._t0))
        self._last = time.monotonic()
        self._reported = True

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self._last >= self.every_s and (not self.total or self.n < self.total):
            self._line()

    def close(self) -> None:
        if not self._closed and self._reported:
            self._line()
        self._closed = True

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_NoProgress":
        return self

    def __exit__(self, *exc) -> None:
        pass


def progress_bar(total: int | None, desc: str, disable: bool = False, unit: str = "batch"):
    """A counter for a loop of `total` units: tqdm's bar on a terminal, `LineProgress` lines otherwise,
    nothing when `disable` or mode `none`. Use as a context manager and call `update(n)`."""
    mode = "none" if disable else resolved_mode(sys.stderr)  # tqdm draws on stderr
    if mode == "none":
        return _NoProgress()
    if mode == "lines":
        return LineProgress(total, desc, unit)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit)
