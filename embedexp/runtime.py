"""Process-wide settings applied by the command-line entry points: offline hub, tokenizer threads, allocator, quiet logs.

The CPU allocator part:

glibc's malloc serves every block above a (dynamic, at most 32 MiB) threshold with a fresh mmap and unmaps it on
free, and gives the top of the heap back to the kernel once more than 128 KiB of it is free. A transformer step
allocates and frees the same large activation tensors every layer of every batch, so each one is page-faulted
and zero-filled by the kernel again. Keeping freed memory in the process (serve large blocks from the heap,
never trim it) removed that cost: ~10% of a MiniLM encoding batch (64 x 128 tokens) and ~20% of a batch-128
training step on 2 CPU cores, at a peak RSS within ~10% of before (docs/benchmarks.md).

Set EMBEDEXP_MALLOC_TUNING=0 to leave the allocator alone (e.g. when many runs share one machine's memory).

Memory-first runs (LoRA, gradient checkpointing: `prefer_low_memory`) do the opposite: blocks above 256 KiB come
from mmap and go back to the kernel when freed. Measured on a 101.7M-parameter decoder (docs/big_models.md), the
speed setting kept ~1.6 GB of freed activation memory resident in a LoRA process, so LoRA's peak RSS equalled full
fine-tuning's although its live memory was ~0.9 GB smaller; with 256 KiB, LoRA + checkpointing peaked at 0.30x.
EMBEDEXP_MALLOC_TUNING=memory asks for it in any run; =speed keeps the speed setting also for LoRA runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, from glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the heap (reused), not from a fresh mmap each time
TRIM_THRESHOLD = 2**31 - 1  # (int max) never hand the free top of the heap back to the kernel
_applied: bool | None = None


def _mallopt(mmap_threshold: int, trim_threshold: int) -> bool:
    """Set glibc's mmap and trim thresholds (bytes); True when both were accepted."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return (
            libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
            and libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1
        )
    except (OSError, AttributeError):  # pragma: no cover - glibc always has mallopt
        return False


def tune_cpu_allocator() -> bool:
    """Keep freed memory for reuse (glibc only; a no-op elsewhere or with EMBEDEXP_MALLOC_TUNING=0).

    Returns whether the settings are in effect. Idempotent.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("EMBEDEXP_MALLOC_TUNING", "1") in ("0", "memory") or platform.libc_ver()[0] != "glibc":
        return False
    ok = _mallopt(MMAP_THRESHOLD, TRIM_THRESHOLD)
    if not ok:  # pragma: no cover
        log.debug("mallopt was refused; the allocator keeps its defaults")
    _applied = ok
    return ok


LOW_MEMORY_MMAP_THRESHOLD = 256 * 1024  # bytes; larger blocks are mmapped and unmapped on free
LOW_MEMORY_TRIM_THRESHOLD = 128 * 1024  # glibc's default: give a free heap top above 128 KiB back to the kernel


def prefer_low_memory(reason: str) -> bool:
    """Return freed large blocks to the kernel from now on (glibc; for memory-bound runs such as LoRA).

    Applied unless EMBEDEXP_MALLOC_TUNING is "0" (allocator left alone) or "speed" (keep `tune_cpu_allocator`'s
    setting); `reason` goes into the log line. Blocks already in the heap stay; new ones follow the setting.
    Returns whether the setting is in effect.
    """
    global _applied
    if os.environ.get("EMBEDEXP_MALLOC_TUNING", "1") in ("0", "speed") or platform.libc_ver()[0] != "glibc":
        return False
    ok = _mallopt(LOW_MEMORY_MMAP_THRESHOLD, LOW_MEMORY_TRIM_THRESHOLD)
    if ok:
        _applied = False  # the speed setting is no longer in effect
        log.info(
            "allocator: freed blocks above 256 KiB go back to the kernel (%s; EMBEDEXP_MALLOC_TUNING=speed keeps them)",
            reason,
        )
    return ok


def allocator_tuned() -> bool:
    """Whether `tune_cpu_allocator` has put its settings in effect in this process."""
    return bool(_applied)


def set_offline_defaults() -> None:
    """No model hub is reachable in many of our environments; without these a hub name retries ~70 s."""
    if os.environ.get("EMBEDEXP_ONLINE", "0") != "1":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    global _TOKENIZERS_PARALLELISM_DEFAULTED
    if "TOKENIZERS_PARALLELISM" not in os.environ:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # DataLoader workers fork: no warnings, no deadlocks
        _TOKENIZERS_PARALLELISM_DEFAULTED = True


_TOKENIZERS_PARALLELISM_DEFAULTED = False


def parallel_tokenizing_allowed() -> bool:
    """Whether a bulk tokenisation in this process may use the tokenizers library's thread pool.

    Only while the variable is unset or our own "false" default (a user's explicit "false" is obeyed) and not
    inside a DataLoader worker (a forked child must not start the pool).
    """
    value = os.environ.get("TOKENIZERS_PARALLELISM")
    if value is not None and value.lower() in ("false", "0", "off", "no") and not _TOKENIZERS_PARALLELISM_DEFAULTED:
        return False
    try:
        from torch.utils.data import get_worker_info

        return get_worker_info() is None
    except ImportError:  # pragma: no cover
        return True


def process_defaults() -> None:
    """What every command-line entry point sets up before heavy imports: offline hub, allocator tuning."""
    set_offline_defaults()
    tune_cpu_allocator()


def quiet_third_party() -> None:
    """One log stream (hydra's), without known-harmless third-party lines.

    Drops transformers' per-file progress bars and installs narrow filters (exact logger + message, or exact
    warning message + module; see `_filters`), and `quiet_lightning` if Lightning is already imported.
    Call `quiet_lightning` again after a later `import lightning`. Real warnings are untouched.
    """
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    _install_warning_filters()
    if "lightning" in sys.modules:
        quiet_lightning()


class MessageFilter(logging.Filter):
    """Drops records of one logger whose message starts with one of `prefixes` (and nothing else)."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.prefixes)


# (logger, message prefix): lines Lightning prints on every run that say nothing about this run
_LOG_FILTERS = (
    # an advertisement, printed whenever no LitLogger is configured
    ("lightning.pytorch.utilities.rank_zero", "💡 Tip: For seamless cloud logging"),
    # every checkpoint save: weights_only is a loading option; our checkpoints hold the optimiser and RNG state
    # on purpose (embedexp.checkpointing) and are loaded by Lightning itself
    ("lightning.pytorch.trainer.connectors.checkpoint_connector", "`weights_only` was not set, defaulting to"),
)


def _install_warning_filters() -> None:
    """Known-harmless warnings, each by its exact message and the module that raises it."""
    import warnings

    # lightning's pytree helper calls a torch API deprecated in torch 2.13; nothing for a user to change
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", module=r"lightning\.pytorch\."
    )
    # a run shorter than log_every_n_steps: embedexp.curves.CurveKeeper logs its last step, so the advice is moot
    warnings.filterwarnings(
        "ignore", message=r"The number of training batches \(\d+\) is smaller than the logging interval"
    )
    if not os.environ.get("SLURM_JOB_ID"):
        # outside a SLURM allocation the hint ("prepend srun") is wrong advice; inside one it stays
        warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used")


def quiet_lightning() -> None:
    """After `import lightning`: drop the console handler it adds to the `lightning` logger (every INFO line
    would print twice beside hydra's root handler) and filter the lines in `_LOG_FILTERS`. Idempotent."""
    import lightning

    root = logging.getLogger("lightning")
    console = getattr(lightning, "_console", None)
    if console is not None and console in root.handlers and logging.getLogger().handlers:
        root.removeHandler(console)  # only when the root logger (hydra's) prints them instead
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    for name, prefix in _LOG_FILTERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, MessageFilter) and prefix in f.prefixes for f in logger.filters):
            logger.addFilter(MessageFilter(prefix))
