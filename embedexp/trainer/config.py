"""Checks of the `trainer` config group and its split into optimiser and `lightning.Trainer` arguments."""

from __future__ import annotations

import difflib
import inspect
from typing import Any

from omegaconf import DictConfig, OmegaConf

from embedexp.checks import check_bool, check_choice, check_int, check_number, is_int, select
from embedexp.errors import ConfigError

OPTIM_KEYS = ("lr", "weight_decay", "warmup_ratio", "grad_cache", "skip_bad_batches")  # ours, not lightning.Trainer's
FSDP_KEY = "fsdp"  # ours too: the FSDP strategy's settings (embedexp.trainer.fsdp), turned into a strategy object
PRECISIONS = (
    "16-true",
    "16-mixed",
    "bf16-true",
    "bf16-mixed",
    "32-true",
    "64-true",
    "16",
    "32",
    "64",
    "bf16",
    "transformer-engine",
    "transformer-engine-float16",
    16,
    32,
    64,
)


def world_size(trainer: dict) -> int | None:
    """devices x num_nodes when both are known numbers (None for 'auto' / -1)."""
    devices = trainer.get("devices", 1)
    if isinstance(devices, (list, tuple)):
        n = len(devices)
    elif isinstance(devices, str) and devices.isdigit():
        n = int(devices)
    elif is_int(devices) and devices > 0:
        n = devices
    else:
        return None
    nodes = trainer.get("num_nodes", 1)
    return n * nodes if is_int(nodes) else None


def check_trainer_config(prefix: str, trainer: Any, batch_size: Any) -> None:
    """Checks a `trainer` preset (optimiser, Lightning Trainer settings, GradCache) before anything is built.

    Raises:
        ConfigError: naming the key, its value and what is expected (e.g. `trainer.lr=0; expected a number > 0`).
    """
    if not isinstance(trainer, dict):
        raise ConfigError(f"{prefix}={trainer!r}; expected a trainer preset (e.g. trainer=cpu)")
    check_number(f"{prefix}.lr", trainer.get("lr", 2e-5), 0, low_open=True)
    check_number(f"{prefix}.weight_decay", trainer.get("weight_decay", 0.0), 0)
    check_number(f"{prefix}.warmup_ratio", trainer.get("warmup_ratio", 0.0), 0, 1, high_open=True)
    check_int(f"{prefix}.max_epochs", trainer.get("max_epochs"), -1, optional=True)
    check_int(f"{prefix}.max_steps", trainer.get("max_steps"), -1, optional=True)
    if trainer.get("max_epochs") == 0 or trainer.get("max_steps") == 0:
        key = "max_epochs" if trainer.get("max_epochs") == 0 else "max_steps"
        raise ConfigError(f"{prefix}.{key}=0; expected at least 1 (or -1 for no limit): the run would not train")
    check_int(f"{prefix}.accumulate_grad_batches", trainer.get("accumulate_grad_batches", 1), 1)
    check_number(f"{prefix}.gradient_clip_val", trainer.get("gradient_clip_val"), 0, optional=True)
    check_int(f"{prefix}.num_nodes", trainer.get("num_nodes", 1), 1)
    check_int(f"{prefix}.skip_bad_batches", trainer.get("skip_bad_batches", 0), 0)
    devices = trainer.get("devices", 1)
    if not (
        devices == "auto"
        or (is_int(devices) and (devices >= 1 or devices == -1))
        or (isinstance(devices, str) and devices.isdigit())
        or isinstance(devices, list)
    ):
        raise ConfigError(
            f"{prefix}.devices={devices!r}; expected a positive integer, -1, 'auto' or a list of device ids"
        )
    if "precision" in trainer:
        check_choice(f"{prefix}.precision", trainer["precision"], PRECISIONS)
    check_bool(f"{prefix}.allow_slow_bf16", trainer.get("allow_slow_bf16"))
    if trainer.get("accelerator") in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                f"{prefix}.accelerator={trainer['accelerator']}; no CUDA GPU is visible here; "
                "expected trainer=cpu (or run on a GPU node)"
            )
    gc = trainer.get("grad_cache") or {}
    if not isinstance(gc, dict):
        raise ConfigError(f"{prefix}.grad_cache={gc!r}; expected a mapping with chunk_size, anchor_chunk_size")
    chunk = gc.get("chunk_size")
    check_int(f"{prefix}.grad_cache.chunk_size", chunk, 1, optional=True)
    check_int(f"{prefix}.grad_cache.anchor_chunk_size", gc.get("anchor_chunk_size"), 1, optional=True)
    _check_fsdp(prefix, trainer, chunk)
    if chunk is not None and is_int(batch_size) and chunk > batch_size:
        raise ConfigError(
            f"{prefix}.grad_cache.chunk_size={chunk} exceeds data.batch_size={batch_size}; "
            "expected a chunk size <= the (per-device) batch size"
        )


def _check_fsdp(prefix: str, trainer: dict, grad_cache_chunk: Any) -> None:
    """`strategy: fsdp` needs a GPU accelerator (Lightning's FSDP runs on CUDA only) and no GradCache; a
    `trainer.fsdp` block needs `strategy: fsdp`."""
    from embedexp.trainer.fsdp import check_fsdp_config, is_fsdp

    strategy = trainer.get("strategy", "auto")
    block = trainer.get(FSDP_KEY)
    check_fsdp_config(f"{prefix}.{FSDP_KEY}", block)
    if not is_fsdp(strategy):
        if block is not None:
            raise ConfigError(
                f"{prefix}.{FSDP_KEY} is set but {prefix}.strategy={strategy!r}; expected {prefix}.strategy=fsdp "
                "(trainer=fsdp_gpu) or no fsdp block"
            )
        return
    accelerator = str(trainer.get("accelerator", "auto")).lower()
    if accelerator not in ("gpu", "cuda", "auto"):
        raise ConfigError(
            f"{prefix}.strategy={strategy} with {prefix}.accelerator={accelerator}; Lightning's FSDP runs on CUDA "
            "GPUs only: expected trainer=fsdp_gpu on a GPU node (on CPUs use trainer=ddp_cpu)"
        )
    if grad_cache_chunk is not None:
        raise ConfigError(
            f"{prefix}.grad_cache.chunk_size={grad_cache_chunk} with {prefix}.strategy={strategy}; GradCache is not "
            "supported under FSDP (its chunked backward is tested with DDP's no_sync only): expected "
            f"{prefix}.grad_cache.chunk_size=null (save memory with model.gradient_checkpointing=true instead)"
        )


def check_batches(cfg: Any, n_rows: int) -> None:
    """Once the rows are known: drop_last must leave at least one step on every device."""
    batch, drop_last = select(cfg, "data.batch_size", 32), select(cfg, "data.drop_last", False)
    world = world_size(select(cfg, "trainer") or {}) or 1
    if drop_last and n_rows < batch * world:
        raise ConfigError(
            f"data.batch_size={batch} x {world} device(s) = {batch * world} rows per step, but the training data has "
            f"{n_rows} rows and data.drop_last=true: no step would run; expected a smaller batch or drop_last=false"
        )


def split_trainer_cfg(cfg: Any) -> tuple[dict, dict]:
    """trainer group -> (optimiser kwargs, lightning.Trainer kwargs).

    The values are checked by `check_trainer_config`; a key that is neither ours (OPTIM_KEYS) nor a
    `lightning.Trainer` argument fails with the closest Trainer argument. With GradCache (manual optimisation)
    clipping and accumulation move to the optimiser side: the module does them itself. `strategy: fsdp` becomes a
    `lightning.pytorch.strategies.FSDPStrategy` built from the preset's `fsdp:` block (`embedexp.trainer.fsdp`).
    Raises:
        ConfigError: naming the key.
    """
    import lightning as L

    raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg or {})
    check_trainer_config("trainer", raw, None)
    optim = {k: raw.pop(k) for k in OPTIM_KEYS if k in raw}
    raw.pop("name", None)
    fsdp = raw.pop(FSDP_KEY, None)
    allow_slow_bf16 = raw.pop("allow_slow_bf16", False)
    allowed = set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}
    for key in raw:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f" (did you mean trainer.{close[0]}?)" if close else ""
            raise ConfigError(f"trainer.{key} is not a lightning.Trainer argument{hint}")
    gc = optim.get("grad_cache")
    if gc and gc.get("chunk_size") is not None:
        optim["gradient_clip_val"] = raw.pop("gradient_clip_val", None)
        optim["accumulate_grad_batches"] = raw.pop("accumulate_grad_batches", 1)
    else:
        optim.pop("grad_cache", None)
    from embedexp.trainer.fsdp import fsdp_strategy, is_fsdp

    if is_fsdp(raw.get("strategy")):  # Lightning's FSDPStrategy, wrapping the model's transformer blocks
        if "offload" in raw["strategy"]:  # Lightning's registered "fsdp_cpu_offload"
            fsdp = {**(fsdp or {}), "cpu_offload": True}
        raw["strategy"] = fsdp_strategy(fsdp)
    from embedexp.trainer.precision import resolve_cpu_precision

    return optim, resolve_cpu_precision(raw, allow_slow_bf16=bool(allow_slow_bf16))
