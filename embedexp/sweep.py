"""Hydra callback: after a multirun, write the sweep's summary.md / summary.json / plots in its sweep dir.

Registered under `hydra.callbacks` in conf/train.yaml. on_multirun_end runs in the launching process
once every job has returned; the jobs may have run elsewhere (SLURM), so it reads their results.json files from disk.
A sweep that fails raises before this hook; `embedexp-report SWEEP_DIR` then lists the failed jobs.

`check_objective` / `objective`: under `hydra/sweeper=optuna` (conf/hydra/sweeper/optuna.yaml) each job returns
its dev-set metric of model selection to the sweeper; a sweep without a dev set is refused before training.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class SweepSummary(Callback):
    """plots: write plots/ too. slurm_poll_interval_s: how often, at most, the launching process asks Slurm
    for its jobs' states (submitit's own limit is 10 minutes, so a job that dies without a result, e.g.
    by SIGKILL or the OOM killer, would leave the sweep waiting that long before it fails)."""

    def __init__(self, plots: bool = True, slurm_poll_interval_s: float = 20) -> None:
        self.plots = plots
        self.slurm_poll_interval_s = slurm_poll_interval_s

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if "submitit" not in str(config.hydra.launcher.get("_target_", "")):
            return
        from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

        SlurmJob.watcher = SlurmInfoWatcher(delay_s=max(1, int(self.slurm_poll_interval_s)))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from embedexp.sweep_report import write_report

        sweep_dir = str(config.hydra.sweep.dir)
        try:
            summary = write_report(sweep_dir, plots=self.plots)
        except Exception as e:  # the jobs' results are on disk already; a report problem must not fail the sweep
            log.warning("sweep summary not written (%s: %s); run `embedexp-report %s`", type(e).__name__, e, sweep_dir)
            return
        log.info("sweep summary: %s/summary.md\n%s", sweep_dir, summary["markdown"])


def optuna_sweep() -> bool:
    """Whether this process runs a job of a `hydra/sweeper=optuna` sweep (its return value is the objective)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    sweeper = HydraConfig.get().get("sweeper") or {}
    return "optuna" in str(sweeper.get("_target_", "")).lower()


def check_objective(cfg: DictConfig) -> bool:
    """Before training: True when the job must return its dev objective (an Optuna sweep), else False.

    Raises:
        ConfigError: an Optuna sweep without a dev set (data.dev_fraction <= 0): the objective is the dev metric
            of model selection (select.monitor), never a test-set metric; or select.mode against the direction.
    """
    if not optuna_sweep():
        return False
    from hydra.core.hydra_config import HydraConfig

    from embedexp.errors import ConfigError

    fraction = cfg.data.get("dev_fraction") or 0.0
    if not float(fraction) > 0:
        raise ConfigError(
            f"hydra/sweeper=optuna maximises the dev-set metric of model selection, but data.dev_fraction={fraction} "
            "holds out no dev set; expected data.dev_fraction > 0 (e.g. data.dev_fraction=0.2)"
        )
    direction = str(HydraConfig.get().sweeper.get("direction", "maximize"))
    mode = str((cfg.get("select") or {}).get("mode", "max"))
    if direction.startswith("max") != (mode == "max"):
        raise ConfigError(
            f"select.mode={mode} but hydra.sweeper.direction={direction}; expected select.mode=max with "
            "direction=maximize (or min with minimize)"
        )
    return True


def objective(out_dir: str | Path) -> float | None:
    """The dev objective of a finished job (see `embedexp.sweep_report.dev_objective`), read from results.json.

    Read from disk so that it is the same whether the job trained in this process, in a re-run DDP child or on
    a SLURM node. None on DDP ranks other than 0 (rank 0 writes results.json and reports the objective).
    Raises RuntimeError when the run wrote no dev result (a bug: check_objective ran first).
    """
    import json

    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    from embedexp.sweep_report import dev_objective

    if getattr(rank_zero_only, "rank", 0) != 0:
        return None

    results = Path(out_dir) / "results.json"
    found = dev_objective(json.loads(results.read_text(encoding="utf-8"))) if results.exists() else None
    if found is None:
        raise RuntimeError(f"{results}: no dev-set selection result; the sweep's objective needs one")
    log.info("objective (dev %s): %.6f", found["monitor"], found["value"])
    return found["value"]
