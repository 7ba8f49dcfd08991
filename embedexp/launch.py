"""How a training job starts its processes: a DDP job inside a Hydra multirun re-runs itself alone.

Lightning's subprocess DDP launcher starts ranks 1..n-1 by re-running `sys.argv`; inside a multirun that
would be the whole sweep again. `hydra_job_command` gives the command that runs exactly one job of the
sweep as a plain single run (its own overrides and folder); `launches_script_children` asks Lightning
whether a Trainer would start its ranks that way.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


def launches_script_children(trainer_kwargs: dict) -> bool:
    """Whether `lightning.Trainer(**trainer_kwargs)` would start its other ranks by re-running the command line.

    That is Lightning's subprocess-script launcher (`strategy: ddp*`, `fsdp`, `deepspeed` with more than one
    device; not `*_spawn` / `*_fork`), in an environment that does not start the ranks itself (no torchrun,
    SLURM tasks, LOCAL_RANK, ...). Lightning decides; a throw-away Trainer is built to ask it (no process group,
    no model), with its log lines muted and torch's global determinism/cudnn flags restored afterwards.

    Args:
        trainer_kwargs: the `lightning.Trainer` arguments from `split_trainer_cfg` (second element).
    Returns:
        True when the Trainer's children would re-execute `sys.argv` (see `hydra_job_command`).
    """
    devices, nodes = trainer_kwargs.get("devices", 1), trainer_kwargs.get("num_nodes", 1)
    if devices in (1, "1") and nodes == 1:
        return False
    import lightning as L
    import torch
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    flags = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    quiet = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        probe = L.Trainer(**trainer_kwargs, logger=False, enable_checkpointing=False)
        launcher = probe.strategy.launcher
    finally:
        quiet.setLevel(level)
        torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
        torch.backends.cudnn.benchmark = flags[2]
    return (
        isinstance(launcher, _SubprocessScriptLauncher)
        and not launcher.cluster_environment.creates_processes_externally
    )


# Hydra overrides that belong to the sweep (or that the single run sets itself), not to the job
_SWEEP_ONLY = (
    "hydra.mode",
    "hydra.run.",
    "hydra.sweep.",
    "hydra.output_subdir",
    "hydra.job.name",
    "hydra/launcher",
    "hydra.launcher",
    "hydra/sweeper",
    "hydra.sweeper",
    "hydra.job.num",
    "hydra.job.id",
)


def hydra_job_command(module: str, hydra_cfg: Any, output_dir: str | Path) -> tuple[list[str], str]:
    """The command line (and working directory) that runs one job of a Hydra multirun again, alone.

    `python -m <module> [--config-path P] [--config-dir D] --config-name N <the job's task overrides>
    <its hydra overrides, less the sweep's> hydra.run.dir="<output_dir>" hydra.output_subdir=null
    hydra.job.num=<n> hydra.job.id=<id>`, run in Hydra's original working directory: a plain single run (RUN mode)
    with exactly the job's composed config, writing into the job's own folder (whose .hydra/ the multirun already
    wrote). Nothing is read from `sys.argv`, so it also works where the process runs for a launcher (submitit).

    Args:
        module: the entry point, e.g. "embedexp.train".
        hydra_cfg: `HydraConfig.get()` of the running job (any mapping with the same keys).
        output_dir: the job's output folder (`hydra.runtime.output_dir`).
    Returns:
        (argv list for subprocess, without a shell; working directory).
    """
    quote = lambda s: '"' + str(s).replace('"', '\\"') + '"'  # noqa: E731 - a Hydra quoted value
    cmd = [sys.executable, "-m", module]
    for src in hydra_cfg.runtime.config_sources:
        path = src.path if src.schema == "file" else f"{src.schema}://{src.path}"
        if src.provider == "main":
            cmd += ["--config-path", path]
        elif src.provider == "command-line":
            cmd += ["--config-dir", path]
    cmd += ["--config-name", str(hydra_cfg.job.config_name)]
    cmd += list(hydra_cfg.overrides.task)
    cmd += [o for o in hydra_cfg.overrides.hydra if not o.lstrip("+~").startswith(_SWEEP_ONLY)]
    cmd += [f"hydra.run.dir={quote(Path(output_dir).resolve())}", "hydra.output_subdir=null"]
    for key in ("num", "id"):  # ${hydra:job.num} / ${hydra:job.id} in the config keep their sweep values
        value = OmegaConf.select(hydra_cfg, f"job.{key}", default=None)
        if value is not None:
            cmd.append(f"hydra.job.{key}={quote(value) if key == 'id' else value}")
    return cmd, str(hydra_cfg.runtime.cwd)
