"""Hydra callback: after a multirun, write the sweep's summary.md / summary.json / plots in its sweep dir.

Registered under `hydra.callbacks` in conf/train.yaml. on_multirun_end runs in the launching process
once every job has returned; the jobs may have run elsewhere (SLURM), so it reads their results.json files from disk.
A sweep that fails raises before this hook; `embedexp-report SWEEP_DIR` then lists the failed jobs.
"""

from __future__ import annotations

import logging
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
