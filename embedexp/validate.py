"""Fail-fast orchestration: each package checks its own config, cheapest first, before any data or weights load.

`validate_config(cfg, stage)` only decides the order and which groups a stage needs; the rules live with
the code that uses them (`embedexp.losses.config`, `embedexp.data.config`, `embedexp.trainer.config`,
`embedexp.eval.config`, the model checks below). Command-line mistakes are caught from Hydra's own
composition in `embedexp.cli`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from embedexp.checks import check_bool, check_choice, check_dir, check_int, is_int, select
from embedexp.errors import ConfigError, ModelError

STAGES = ("train", "evaluate", "mine")


def model_dim_of(model: dict) -> int | None:
    """Embedding size a model preset promises: `expected_dim`/`dim`, else config.json's hidden size."""
    for k in ("expected_dim", "dim"):
        if is_int(model.get(k)):
            return int(model[k])
    path = model.get("model_name_or_path")
    cfg_file = Path(str(path)).expanduser() / "config.json" if path else None
    if cfg_file is not None and cfg_file.is_file():
        try:
            hidden = json.loads(cfg_file.read_text(encoding="utf-8")).get("hidden_size")
        except (ValueError, OSError, AttributeError):
            return None  # the loader reports a broken config.json with its own message
        return int(hidden) if is_int(hidden) else None
    return None


def validate_model(prefix: str, model: Any) -> int | None:
    """Checks a model preset (the trained model or a guide); returns its embedding dim when knowable."""
    from embedexp.models.encoder import _looks_like_path, check_model_folder
    from embedexp.models.pooling import POOLING_MODES

    if not isinstance(model, dict):
        raise ConfigError(f"{prefix}={model!r}; expected a model preset (e.g. {prefix.split('.')[0]}=tiny)")
    name = model.get("model_name_or_path")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{prefix}.model_name_or_path={name!r}; expected a model folder")
    check_choice(f"{prefix}.pooling", model.get("pooling", "mean"), POOLING_MODES)
    check_bool(f"{prefix}.normalize", model.get("normalize"))
    check_int(f"{prefix}.max_seq_length", model.get("max_seq_length", 256), 1)
    if "trust_remote_code" in model:
        check_bool(f"{prefix}.trust_remote_code", model["trust_remote_code"], optional=False)
    for k in ("query_prefix", "document_prefix"):
        if model.get(k) is not None and not isinstance(model[k], str):
            raise ConfigError(f"{prefix}.{k}={model[k]!r}; expected a string")
    for k in ("expected_dim", "dim"):
        check_int(f"{prefix}.{k}", model.get(k), 1, optional=True)
    path = Path(name).expanduser()
    if path.exists() or _looks_like_path(name):
        check_model_folder(path)
        _check_remote_code(prefix, path, model.get("trust_remote_code", False))
        from embedexp.models.limits import check_max_seq_length, folder_limit

        check_max_seq_length(f"{prefix}.max_seq_length", model.get("max_seq_length", 256), folder_limit(path))
        stated = next((model[k] for k in ("expected_dim", "dim") if model.get(k) is not None), None)
        actual = model_dim_of({"model_name_or_path": name})
        if stated is not None and actual is not None and stated != actual:
            key = "expected_dim" if model.get("expected_dim") is not None else "dim"
            raise ModelError(f"model folder {path} has hidden size {actual}, but {prefix}.{key}={stated}; "
                             "expected the preset's dim to match the weights")
    return model_dim_of(model)


def _check_remote_code(prefix: str, path: Path, trusted: bool) -> None:
    """A folder whose config.json maps to its own Python code needs an explicit opt-in to run it."""
    try:
        auto_map = json.loads((path / "config.json").read_text(encoding="utf-8")).get("auto_map")
    except (ValueError, OSError, AttributeError):
        return
    if auto_map and not trusted:
        raise ModelError(f"model folder {path} ships its own Python code (auto_map in config.json); it is not run "
                         f"unless {prefix}.trust_remote_code=true (only for folders you trust)")


def validate_config(cfg: DictConfig, stage: str = "train") -> None:
    """Every check that needs no data rows and no model weights; raises ConfigError/ModelError."""
    from embedexp.data.config import check_data_config
    from embedexp.eval.config import check_eval_config
    from embedexp.losses.config import check_loss_config
    from embedexp.trainer.config import check_trainer_config

    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}")
    seed = select(cfg, "seed", 0)
    if not is_int(seed):
        raise ConfigError(f"seed={seed!r}; expected an integer")
    miner = select(cfg, "miner") or {}
    needs_model = stage != "mine" or (miner.get("name") == "dense" and miner.get("model") is None)
    model_dim = validate_model("model", select(cfg, "model")) if needs_model else None
    if stage == "train":
        check_loss_config("loss", select(cfg, "loss"), model_dim, validate_model)
        data = select(cfg, "data")
        check_data_config("data", data)
        check_trainer_config("trainer", select(cfg, "trainer"), data.get("batch_size"))
        pretrain = select(cfg, "pretrain")
        if pretrain:
            check_loss_config("pretrain.loss", pretrain.get("loss"), model_dim, validate_model)
            check_data_config("pretrain.data", pretrain.get("data"))
            merged = {**select(cfg, "trainer"), **(pretrain.get("trainer") or {})}
            check_trainer_config("pretrain.trainer", merged, (pretrain.get("data") or {}).get("batch_size"))
    if stage == "mine":
        check_data_config("data", select(cfg, "data"))
        check_int("miner.n_negatives", miner.get("n_negatives", 1), 1)
    if stage in ("train", "evaluate"):
        check_eval_config(select(cfg, "eval"), model_dim, _sets_key(cfg))
    if stage == "evaluate" and select(cfg, "tuned") is not None:
        check_dir("tuned", select(cfg, "tuned"), "an exported model folder")


def _sets_key(cfg: DictConfig) -> str:
    """Name eval sets by the key the user edits: `data.eval_sets` when eval.sets points there."""
    try:
        raw = cfg.eval._get_node("sets")._value()
    except (AttributeError, OmegaConfBaseException):
        return "eval.sets"
    return "data.eval_sets" if isinstance(raw, str) and raw.replace(" ", "") == "${data.eval_sets}" else "eval.sets"
