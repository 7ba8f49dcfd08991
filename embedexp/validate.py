"""Fail-fast orchestration: each package checks its own config, cheapest first, before any data or weights load.

`validate_config(cfg, stage)` only decides the order and which groups a stage needs; the rules live with
the code that uses them (`embedexp.losses.config`, `embedexp.data.config`, `embedexp.trainer.config`,
`embedexp.eval.config`, `embedexp.models.config`). Command-line mistakes are caught from Hydra's own
composition in `embedexp.cli`.
"""

from __future__ import annotations

from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from embedexp.checks import check_dir, check_int, is_int, select
from embedexp.errors import ConfigError
from embedexp.extras import require_extra

STAGES = ("train", "evaluate", "mine")


def validate_config(cfg: DictConfig, stage: str = "train") -> None:
    """Every check that needs no data rows and no model weights; raises ConfigError/ModelError."""
    from embedexp.data.config import check_data_config
    from embedexp.eval.config import check_eval_config
    from embedexp.losses.config import check_loss_config, loss_attr
    from embedexp.models.config import check_model_config
    from embedexp.trainer.config import check_trainer_config

    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}")
    seed = select(cfg, "seed", 0)
    if not is_int(seed):
        raise ConfigError(f"seed={seed!r}; expected an integer")
    if stage == "train" and any("wandb" in str((lg or {}).get("_target_", "")) for lg in _loggers(cfg)):
        require_extra("wandb", "wandb", "logger=wandb")  # one line now, not a traceback after data loads
    miner = select(cfg, "miner") or {}
    needs_model = stage != "mine" or (miner.get("name") == "dense" and miner.get("model") is None)
    model_dim = check_model_config("model", select(cfg, "model")) if needs_model else None
    if stage == "train":
        loss = check_loss_config("loss", select(cfg, "loss"), model_dim, check_model_config)
        if loss_attr(loss, "needs_teacher_scores") and miner.get("name", "none") != "none":
            if miner.get("teacher_scores") is not True:  # a miner's rows replace the data's (and its scores)
                raise ConfigError(
                    f"loss={type(loss).__name__} distils teacher scores, but miner={miner.get('name')} replaces the "
                    "data's negatives without scores; expected miner.teacher_scores=true (e.g. miner=cross_encoder)"
                )
        data = select(cfg, "data")
        check_data_config("data", data)
        check_trainer_config("trainer", select(cfg, "trainer"), data.get("batch_size"))
        pretrain = select(cfg, "pretrain")
        if pretrain:
            check_loss_config("pretrain.loss", pretrain.get("loss"), model_dim, check_model_config)
            check_data_config("pretrain.data", pretrain.get("data"))
            merged = {**select(cfg, "trainer"), **(pretrain.get("trainer") or {})}
            check_trainer_config("pretrain.trainer", merged, (pretrain.get("data") or {}).get("batch_size"))
    if stage == "mine":
        check_data_config("data", select(cfg, "data"))
        check_int("miner.n_negatives", miner.get("n_negatives", 1), 1)
    if stage in ("train", "evaluate"):
        cross = stage == "train" and "CrossEncoder" in str((select(cfg, "model") or {}).get("_target_", ""))
        check_eval_config(select(cfg, "eval"), model_dim, _sets_key(cfg), cross_encoder=cross)
    if stage == "evaluate" and select(cfg, "tuned") is not None:
        check_dir("tuned", select(cfg, "tuned"), "an exported model folder")


def _loggers(cfg: DictConfig) -> list:
    """The logger group's entries (a mapping name -> {_target_, ...}); [] when absent."""
    group = cfg.get("logger") if isinstance(cfg, DictConfig) else None  # not resolved: save_dir may need hydra
    if not isinstance(group, DictConfig):
        return []
    return [{"_target_": lg.get("_target_")} for lg in group.values() if isinstance(lg, DictConfig)]


def _sets_key(cfg: DictConfig) -> str:
    """Name eval sets by the key the user edits: `data.eval_sets` when eval.sets points there."""
    try:
        raw = cfg.eval._get_node("sets")._value()
    except (AttributeError, OmegaConfBaseException):
        return "eval.sets"
    return "data.eval_sets" if isinstance(raw, str) and raw.replace(" ", "") == "${data.eval_sets}" else "eval.sets"
