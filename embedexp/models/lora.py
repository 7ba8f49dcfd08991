"""LoRA adapters on the Encoder's backbone, through the `peft` library.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685) freezes a
linear layer's weight W (out, in) and trains a low-rank update: y = W x + (alpha / r) * B A dropout(x), with
A (r, in) random and B (out, r) zero at the start, so the adapted model starts as the base model. The reference
implementation is Hugging Face `peft` (`LoraConfig` + `get_peft_model`), which this module drives; the export
(`merged_state_dict`) is `peft`'s `merge_and_unload` computed without touching the training model.

The `model.peft` preset mapping (every Encoder preset carries one, off while `r` is null):

    peft: {method: lora, r: null, alpha: 32, dropout: 0.1, target_modules: auto, bias: none}

`target_modules: auto` picks every linear layer of the transformer blocks by architecture (`AUTO_TARGETS`):
BERT-style encoders their query/key/value/dense layers (not the unused pooler), Qwen2/Mistral/Llama decoders
q/k/v/o_proj and the gate/up/down MLP projections (the "all linear layers" recipe of QLoRA, tevatron and
FlagEmbedding's decoder LoRA). A list names modules by their last name part(s), as peft matches them.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
from torch import nn

from embedexp.checks import is_int
from embedexp.errors import ConfigError

log = logging.getLogger(__name__)

PEFT_KEYS = ("method", "r", "alpha", "dropout", "target_modules", "bias")
PEFT_DEFAULTS = {"method": "lora", "r": None, "alpha": 32, "dropout": 0.1, "target_modules": "auto", "bias": "none"}
ADAPTER_DIR = "adapter"  # `Encoder.save` writes the adapter alone into <export>/adapter/

_BERT_LIKE = r"(?!pooler\.)(.*\.)?(query|key|value|dense)"  # every block's linear layers, not the pooler
_DECODER = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
AUTO_TARGETS: dict[str, str | list[str]] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "qwen2": _DECODER,
    "qwen3": _DECODER,
    "mistral": _DECODER,
    "llama": _DECODER,
    "gemma": _DECODER,
    "gemma2": _DECODER,
}


def peft_settings(prefix: str, peft: Any) -> dict | None:
    """Checked `model.peft` settings with defaults filled in, or None when LoRA is off (peft null or r null;
    the other keys are checked either way).

    Raises:
        ConfigError: one line naming `<prefix>.<key>`: an unknown key, method other than "lora", r not a positive
            integer, alpha not > 0, dropout outside [0, 1), bias other than "none", target_modules neither
            "auto" nor a non-empty list of strings.
    """
    if peft is None:
        return None
    if not isinstance(peft, dict):
        raise ConfigError(f"{prefix}={peft!r}; expected a mapping like {{r: 8, alpha: 16}} or null")
    for key in peft:
        if key not in PEFT_KEYS:
            raise ConfigError(f"{prefix}.{key} is not a LoRA setting; expected one of {', '.join(PEFT_KEYS)}")
    cfg = {**PEFT_DEFAULTS, **{k: v for k, v in peft.items() if v is not None or k == "r"}}
    if cfg["method"] != "lora":
        raise ConfigError(f"{prefix}.method={cfg['method']!r}; expected lora (the only PEFT method supported)")
    if cfg["r"] is not None and (not is_int(cfg["r"]) or int(cfg["r"]) < 1):
        raise ConfigError(f"{prefix}.r={cfg['r']!r}; expected a positive integer (the LoRA rank), or null for off")
    alpha = cfg["alpha"]
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ConfigError(f"{prefix}.alpha={alpha!r}; expected a number > 0 (updates are scaled by alpha / r)")
    dropout = cfg["dropout"]
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"{prefix}.dropout={dropout!r}; expected a probability in [0, 1)")
    if cfg["bias"] != "none":
        raise ConfigError(f"{prefix}.bias={cfg['bias']!r}; expected none (only the adapter weights train)")
    targets = cfg["target_modules"]
    if isinstance(targets, (list, tuple)):
        if not targets or not all(isinstance(t, str) and t.strip() for t in targets):
            raise ConfigError(f"{prefix}.target_modules={list(targets)!r}; expected a non-empty list of module names")
        targets = [str(t) for t in targets]
    elif targets != "auto":
        raise ConfigError(f"{prefix}.target_modules={targets!r}; expected auto or a list of module names")
    if cfg["r"] is None:  # off; the other settings were still checked, so a typo shows before it is turned on
        return None
    return {**cfg, "r": int(cfg["r"]), "alpha": float(alpha), "dropout": float(dropout), "target_modules": targets}


def _adaptable(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (nn.Linear, nn.Embedding, Conv1D))


def resolve_targets(prefix: str, model: nn.Module, targets: str | list[str]) -> str | list[str]:
    """The target_modules to hand to peft: `auto` -> the architecture's preset; a list -> checked against `model`.

    `model` may live on the meta device (config-time checks build it there). Raises ConfigError when a listed
    name matches no linear/embedding layer of `model`, or `auto` meets an architecture without a preset.
    """
    model_type = str(getattr(getattr(model, "config", None), "model_type", "") or "")
    names = [n for n, m in model.named_modules() if _adaptable(m)]
    if targets == "auto":
        if model_type not in AUTO_TARGETS:
            raise ConfigError(
                f"{prefix}.target_modules=auto has no preset for model_type {model_type!r}; "
                f"expected a list of its layer names, e.g. {sorted({n.rsplit('.', 1)[-1] for n in names})[:8]}"
            )
        return AUTO_TARGETS[model_type]
    for t in targets:
        if not any(n == t or n.endswith("." + t) for n in names):
            known = sorted({n.rsplit(".", 1)[-1] for n in names})
            raise ConfigError(
                f"{prefix}.target_modules: {t!r} names no linear layer of this {model_type or 'model'}; "
                f"expected some of {', '.join(known[:12])}"
            )
    return list(targets)


def apply_lora(backbone: nn.Module, settings: dict, prefix: str = "model.peft") -> nn.Module:
    """Wrap `backbone` (a transformers model) in a peft LoRA model; only the adapter weights require grad.

    Args:
        backbone: the loaded AutoModel.
        settings: `peft_settings(...)`'s output (LoRA on).
    Returns:
        a `peft.PeftModel` whose forward takes the backbone's arguments. Adapter weights are float32 whatever
        the base weights' dtype (peft's `autocast_adapter_dtype`).
    Raises:
        ConfigError: target modules missing from the model (see `resolve_targets`).
    """
    from embedexp.extras import require_extra

    require_extra("peft", "lora", prefix)
    from peft import LoraConfig, TaskType, get_peft_model

    targets = resolve_targets(prefix, backbone, settings["target_modules"])
    config = LoraConfig(
        task_type=TaskType.FEATURE_EXTRACTION,
        r=settings["r"],
        lora_alpha=settings["alpha"],
        lora_dropout=settings["dropout"],
        target_modules=targets,
        bias="none",
    )
    with warnings.catch_warnings():  # peft reads transformers' deprecated `is_gradient_checkpointing`
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(backbone, config)


def is_peft_model(module: nn.Module) -> bool:
    """True for a backbone wrapped by `apply_lora`."""
    return hasattr(module, "peft_config") and hasattr(module, "get_base_model")


def merged_state_dict(peft_model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's state dict with every LoRA update merged in (W + alpha/r * B A), under the base model's
    own key names, ready for `save_pretrained(state_dict=...)`; the training model is left untouched.

    Equals `peft_model.merge_and_unload().state_dict()` (peft's reference), but copies only the adapted
    weights, so exporting mid-run (the pretrain stage) leaves training bit-exact.
    """
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    adapter = peft_model.active_adapter
    deltas: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            weight = module.get_base_layer().weight
            deltas[f"{name}.base_layer.weight"] = module.get_delta_weight(adapter).to(weight.dtype)
    out: dict[str, torch.Tensor] = {}
    for key, value in base.state_dict().items():
        if ".lora_" in key:
            continue
        if key in deltas:
            value = value + deltas[key]
        out[key.replace(".base_layer.", ".")] = value
    return out


def split_state_dict(peft_model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(base weights under the base model's own key names, adapter weights under peft's adapter key names).

    The base half is what `state_dict()` of the model without LoRA holds (same keys, same tensors); the adapter
    half is what `peft_model.save_pretrained` writes (`peft.get_peft_model_state_dict`).
    """
    from peft import get_peft_model_state_dict

    base = {
        k.replace(".base_layer.", "."): v
        for k, v in peft_model.get_base_model().state_dict().items()
        if ".lora_" not in k
    }
    return base, get_peft_model_state_dict(peft_model)


def trainable_parameters(module: nn.Module) -> tuple[int, int]:
    """(parameters that require grad, all parameters) of `module`, counted in elements."""
    trainable = total = 0
    for p in module.parameters():
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total
