"""Checks of the `model` config group: a preset's keys and, for a local folder, what the folder must hold.

Everything here reads only small files (config.json, tokenizer settings), never weights, so a bad preset
fails in the first second of a run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from embedexp.checks import check_bool, check_choice, check_int, is_int
from embedexp.errors import ConfigError, ModelError
from embedexp.extras import require_extra
from embedexp.models.encoder import TORCH_DTYPES, _looks_like_path, check_model_folder
from embedexp.models.limits import check_max_seq_length, folder_limit
from embedexp.models.lora import peft_settings, resolve_targets
from embedexp.models.pooling import POOLING_MODES

# the keys `embedexp.models.Encoder` takes (its constructor's arguments)
ENCODER_KEYS = (
    "_target_",
    "name",
    "model_name_or_path",
    "pooling",
    "normalize",
    "max_seq_length",
    "query_prefix",
    "document_prefix",
    "trust_remote_code",
    "expected_dim",
    "task",
    "peft",
    "gradient_checkpointing",
    "torch_dtype",
)


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


def check_model_config(prefix: str, model: Any) -> int | None:
    """Checks a model preset (the trained model or a guide) without loading weights; returns its embedding dim.

    Reads only the folder's small files (config.json, tokenizer config) when `model_name_or_path` is a local folder.
    Raises:
        ConfigError: a key of the wrong type or range, a key the Encoder does not take, `max_seq_length` above the
            model's position limit, bad `peft` settings (`embedexp.models.lora.peft_settings`), LoRA target
            modules the model does not have (checked on a weightless copy of a local folder's architecture).
        ModelError: a folder without weights/tokenizer, code in the folder without trust_remote_code, a hidden size
            other than the preset's `expected_dim`.
    """
    if not isinstance(model, dict):
        raise ConfigError(f"{prefix}={model!r}; expected a model preset (e.g. {prefix.split('.')[0]}=tiny)")
    name = model.get("model_name_or_path")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{prefix}.model_name_or_path={name!r}; expected a model folder")
    is_encoder = str(model.get("_target_", "embedexp.models.Encoder")) in ("embedexp.models.Encoder", "")
    if is_encoder:
        for key in model:
            if key not in ENCODER_KEYS:
                raise ConfigError(
                    f"{prefix}.{key} is not a model setting; expected one of {', '.join(ENCODER_KEYS[1:])}"
                )
    peft = peft_settings(f"{prefix}.peft", model.get("peft"))
    if peft is not None:
        require_extra("peft", "lora", f"{prefix}.peft.r={peft['r']}")
    check_bool(f"{prefix}.gradient_checkpointing", model.get("gradient_checkpointing"))
    dtype = model.get("torch_dtype")
    if dtype is not None and dtype not in TORCH_DTYPES:
        raise ConfigError(f"{prefix}.torch_dtype={dtype!r}; expected one of {', '.join(TORCH_DTYPES)} or null")
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
        check_max_seq_length(f"{prefix}.max_seq_length", model.get("max_seq_length", 256), folder_limit(path))
        stated = next((model[k] for k in ("expected_dim", "dim") if model.get(k) is not None), None)
        actual = model_dim_of({"model_name_or_path": name})
        if stated is not None and actual is not None and stated != actual:
            key = "expected_dim" if model.get("expected_dim") is not None else "dim"
            raise ModelError(
                f"model folder {path} has hidden size {actual}, but {prefix}.{key}={stated}; "
                "expected the preset's dim to match the weights"
            )
        if peft is not None and isinstance(peft["target_modules"], list):
            _check_targets(f"{prefix}.peft", path, peft["target_modules"], bool(model.get("trust_remote_code")))
    return model_dim_of(model)


def _check_targets(prefix: str, path: Path, targets: list[str], trust_remote_code: bool) -> None:
    """LoRA target modules against the folder's architecture, built weightless on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        skeleton = AutoModel.from_config(config, trust_remote_code=trust_remote_code)
    resolve_targets(f"{prefix}", skeleton, targets)


def _check_remote_code(prefix: str, path: Path, trusted: bool) -> None:
    """A folder whose config.json maps to its own Python code needs an explicit opt-in to run it."""
    try:
        auto_map = json.loads((path / "config.json").read_text(encoding="utf-8")).get("auto_map")
    except (ValueError, OSError, AttributeError):
        return
    if auto_map and not trusted:
        raise ModelError(
            f"model folder {path} ships its own Python code (auto_map in config.json); it is not run "
            f"unless {prefix}.trust_remote_code=true (only for folders you trust)"
        )
