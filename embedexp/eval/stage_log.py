"""One log line when a long evaluation stage starts and one when it ends, with its rate.

The per-batch progress of encoding and cross-encoder scoring comes from `embedexp.progress.progress_bar`
(`eval.show_progress`); a stage that takes minutes (encoding a corpus, reranking 300 queries x top 100) also
says what it is about to do and, at the end, how long it took and how fast it went:

    scifact_test: bi-encoder base + reranker: reranking 30000 pairs ...
    scifact_test: bi-encoder base + reranker: 30000 pairs in 412.3 s (72.8 pairs/s)

Lines go through the `embedexp.progress` logger (so they land in the run's log file as well), at INFO.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger("embedexp.progress")


@contextmanager
def stage(desc: str, n: int, unit: str, verb: str = "") -> Iterator[dict]:
    """Log `<desc>: <verb> <n> <unit> ...` now and `<desc>: <n> <unit> in <s> s (<rate> <unit>/s)` at the end.

    Args:
        desc: what runs, e.g. "scifact_test: bi-encoder base" (set name first).
        n: how many units the stage processes (documents, pairs, queries).
        unit: the unit's plural name ("documents", "pairs", "queries").
        verb: the start line's verb ("encoding", "reranking"); omitted when empty.
    Yields:
        a dict the caller may fill with "seconds" (the stage's own measured seconds, used for the rate instead of
        the wall time around the block, e.g. when the block also did untimed work).
    The end line is not written when the block raises.
    """
    log.info("%s: %s%d %s ...", desc, f"{verb} " if verb else "", n, unit)
    box: dict = {}
    t0 = time.perf_counter()
    yield box
    seconds = float(box.get("seconds", time.perf_counter() - t0))
    rate = f"{n / seconds:.1f}" if seconds > 0 else "inf"
    log.info("%s: %d %s in %.1f s (%s %s/s)", desc, n, unit, seconds, rate, unit)
