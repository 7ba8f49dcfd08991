"""Lightning's FSDP strategy from the `trainer.fsdp` block of a trainer preset (`trainer=fsdp_gpu`).

Fully Sharded Data Parallel (Zhao et al., 2023, "PyTorch FSDP: Experiences on Scaling Fully Sharded Data
Parallel"; `torch.distributed.fsdp`) shards parameters, gradients and optimiser state over the ranks, so a model
that does not fit one device trains on several. Each transformer block becomes one FSDP unit (its weights are
gathered just before its forward/backward and freed after): `wrap_layers` names the block classes, and `auto`
takes them from the Hugging Face model itself (`PreTrainedModel._no_split_modules`, e.g. `Qwen2DecoderLayer`,
`MistralDecoderLayer`, `BertLayer`), found while FSDP walks the module tree, so the preset needs no class path.

The block below is ours (checked by `check_fsdp_config`, turned into `lightning.pytorch.strategies.FSDPStrategy`
by `fsdp_strategy`); everything else in the trainer preset goes to `lightning.Trainer` as usual.
"""

from __future__ import annotations

from typing import Any

from embedexp.checks import check_bool, check_choice
from embedexp.errors import ConfigError

SHARDING_STRATEGIES = ("FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD")
STATE_DICT_TYPES = ("full", "sharded")
FSDP_KEYS = (
    "sharding_strategy",
    "wrap_layers",
    "activation_checkpointing",
    "cpu_offload",
    "use_orig_params",
    "state_dict_type",
)


def is_fsdp(strategy: Any) -> bool:
    """Whether a `trainer.strategy` value names Lightning's FSDP strategy (`fsdp`, `fsdp_cpu_offload`, ...)."""
    return isinstance(strategy, str) and strategy.lower().startswith("fsdp")


def check_fsdp_config(prefix: str, fsdp: Any) -> None:
    """Checks a `trainer.fsdp` block (None = all defaults).

    Raises:
        ConfigError: naming the key, its value and what is expected.
    """
    if fsdp is None:
        return
    if not isinstance(fsdp, dict):
        raise ConfigError(f"{prefix}={fsdp!r}; expected a mapping with keys {', '.join(FSDP_KEYS)}")
    for key in fsdp:
        if key not in FSDP_KEYS:
            raise ConfigError(f"{prefix}.{key} is not an FSDP option; expected one of {', '.join(FSDP_KEYS)}")
    check_choice(f"{prefix}.sharding_strategy", fsdp.get("sharding_strategy", "FULL_SHARD"), SHARDING_STRATEGIES)
    check_choice(f"{prefix}.state_dict_type", fsdp.get("state_dict_type", "full"), STATE_DICT_TYPES)
    for key in ("activation_checkpointing", "cpu_offload", "use_orig_params"):
        check_bool(f"{prefix}.{key}", fsdp.get(key))
    layers = fsdp.get("wrap_layers", "auto")
    if not (
        layers == "auto"
        or (isinstance(layers, (list, tuple)) and layers and all(isinstance(x, str) and x for x in layers))
    ):
        raise ConfigError(
            f"{prefix}.wrap_layers={layers!r}; expected 'auto' or a list of transformer block class names "
            "(e.g. [Qwen2DecoderLayer])"
        )


class LayerWrapPolicy:
    """FSDP auto-wrap policy: one FSDP unit per module whose class name is in `names`.

    Called by FSDP as ``policy(module, recurse, nonwrapped_numel) -> bool`` while it walks the tree top-down
    (`torch.distributed.fsdp.wrap._recursive_wrap`): ``recurse=True`` asks whether to look inside `module`,
    ``recurse=False`` whether to wrap it. With ``names="auto"`` the names are collected from every Hugging Face
    model met on the way down (its ``_no_split_modules``, the blocks transformers itself never splits across
    devices), before their blocks are reached. Also usable as Lightning's `activation_checkpointing_policy`.
    """

    def __init__(self, names: str | list[str] = "auto") -> None:
        self.auto = names == "auto"
        self.names: set[str] = set() if self.auto else set(names)

    def __call__(self, module, recurse: bool, nonwrapped_numel: int = 0, **_: Any) -> bool:
        if self.auto:
            self.names.update(getattr(module, "_no_split_modules", None) or ())
        if recurse:
            return True
        return type(module).__name__ in self.names

    def __repr__(self) -> str:
        return f"LayerWrapPolicy({'auto' if self.auto else sorted(self.names)})"


def fsdp_strategy(fsdp: dict | None, process_group_backend: str | None = None):
    """`lightning.pytorch.strategies.FSDPStrategy` built from a checked `trainer.fsdp` block.

    Keys: sharding_strategy (FULL_SHARD | SHARD_GRAD_OP | HYBRID_SHARD | NO_SHARD), wrap_layers ('auto' or block
    class names), activation_checkpointing (FSDP's own, per wrapped block; or use `model.gradient_checkpointing`,
    not both), cpu_offload (parameters and gradients in CPU memory), use_orig_params (needed when only some
    parameters train, e.g. LoRA adapters: FSDP keeps the frozen and trainable tensors apart), state_dict_type
    (checkpoints: one consolidated `full` file or per-rank `sharded` files).

    Raises:
        ConfigError: a bad key or value (see `check_fsdp_config`).
    """
    from lightning.pytorch.strategies import FSDPStrategy

    fsdp = dict(fsdp or {})
    check_fsdp_config("trainer.fsdp", fsdp)
    layers = fsdp.get("wrap_layers", "auto")
    kwargs: dict[str, Any] = {
        "auto_wrap_policy": LayerWrapPolicy(layers),
        "sharding_strategy": fsdp.get("sharding_strategy", "FULL_SHARD"),
        "state_dict_type": fsdp.get("state_dict_type", "full"),
        "cpu_offload": bool(fsdp.get("cpu_offload", False)),
        "use_orig_params": bool(fsdp.get("use_orig_params", True)),
    }
    if fsdp.get("activation_checkpointing", False):
        kwargs["activation_checkpointing_policy"] = LayerWrapPolicy(layers)
    if process_group_backend:
        kwargs["process_group_backend"] = process_group_backend
    return FSDPStrategy(**kwargs)
