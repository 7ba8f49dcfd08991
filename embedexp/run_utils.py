"""Shared helpers of the entry points: one-line errors, trainer kwargs, compatibility checks."""

from __future__ import annotations

import difflib
import functools
import inspect
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from embedexp.errors import ConfigError, EmbedexpError

log = logging.getLogger("embedexp")
OPTIM_KEYS = ("lr", "weight_decay", "warmup_ratio", "grad_cache", "skip_bad_batches")
EMBEDEXP_TRAINER_KEYS = OPTIM_KEYS + ("name",)


def one_line_errors(fn: Callable) -> Callable:
    """Turn user errors into `embedexp: error: ...` on stderr and exit status 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            user_error = find_user_error(e)
            if user_error is None:
                raise
            print(f"embedexp: error: {user_error}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper


def find_user_error(e: BaseException | None) -> EmbedexpError | None:
    """The EmbedexpError behind `e`, also when hydra's instantiate wrapped it."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, EmbedexpError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def container(cfg: DictConfig | dict | None) -> dict:
    if cfg is None:
        return {}
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def split_trainer_cfg(cfg: DictConfig) -> tuple[dict, dict]:
    """trainer group -> (optimiser kwargs, lightning.Trainer kwargs); unknown keys fail with a suggestion."""
    import lightning as L

    raw = container(cfg)
    optim = {k: raw.pop(k) for k in OPTIM_KEYS if k in raw}
    raw.pop("name", None)
    allowed = set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}
    for key in raw:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f" (did you mean trainer.{close[0]}?)" if close else ""
            raise ConfigError(f"trainer.{key} is not a lightning.Trainer argument{hint}")
    for key in ("lr",):
        if key in optim and not (isinstance(optim[key], (int, float)) and optim[key] > 0):
            raise ConfigError(f"trainer.{key}={optim[key]!r}; expected a number > 0")
    gc = optim.get("grad_cache")
    if gc and gc.get("chunk_size") is not None:
        chunk = gc.get("chunk_size")
        if not isinstance(chunk, int) or chunk < 1:
            raise ConfigError(f"trainer.grad_cache.chunk_size={chunk!r}; expected a positive integer (rows per encoder chunk)")
        anchor = gc.get("anchor_chunk_size")
        if anchor is not None and (not isinstance(anchor, int) or anchor < 1):
            raise ConfigError(f"trainer.grad_cache.anchor_chunk_size={anchor!r}; expected a positive integer or null")
        # manual optimisation: the module clips and accumulates itself
        optim["gradient_clip_val"] = raw.pop("gradient_clip_val", None)
        optim["accumulate_grad_batches"] = raw.pop("accumulate_grad_batches", 1)
    else:
        optim.pop("grad_cache", None)
    if "warmup_ratio" in optim and not 0 <= optim["warmup_ratio"] < 1:
        raise ConfigError(f"trainer.warmup_ratio={optim['warmup_ratio']!r}; expected a number in [0, 1)")
    return optim, raw


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

    flags = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark)
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
    return isinstance(launcher, _SubprocessScriptLauncher) and not launcher.cluster_environment.creates_processes_externally


# Hydra overrides that belong to the sweep (or that the single run sets itself), not to the job
_SWEEP_ONLY = ("hydra.mode", "hydra.run.", "hydra.sweep.", "hydra.output_subdir", "hydra.job.name", "hydra/launcher",
               "hydra.launcher", "hydra/sweeper", "hydra.sweeper", "hydra.job.num", "hydra.job.id")


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


def check_loss_fits_data(loss: Any, columns: tuple[str, ...], has_labels: bool, data_name: str) -> None:
    """The loss's required columns must be the first columns the data gives."""
    need = tuple(getattr(loss, "columns", ()))
    if columns[: len(need)] != need:
        raise ConfigError(
            f"loss={type(loss).__name__} needs columns {need}, but data={data_name} gives {columns}; "
            "choose a loss for this data or a data preset with those columns"
        )
    if getattr(loss, "needs_labels", False) and not has_labels:
        raise ConfigError(f"loss={type(loss).__name__} needs labels, but data={data_name} has none")


def check_section(cfg: Any, name: str, keys: tuple[str, ...], shape: str) -> None:
    """An optional config section (`eval.mteb`, `eval.rerank`): a mapping whose keys are all known settings."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"{name}={cfg!r}; expected a mapping ({shape}) or null")
    unknown = sorted(set(cfg) - set(keys))
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]} is not a setting; expected one of {', '.join(keys)}")


def atomic_write(path: str | Path, data: str | bytes | Callable[[Any], None], binary: bool = False) -> Path:
    """Write `data` (text, bytes, or a function writing to an open file) to a temp sibling, fsync, rename.

    A crash or kill at any moment leaves either the previous file or the complete new one at `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    binary = binary or isinstance(data, bytes)
    try:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            data(f) if callable(data) else f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


SECRET_ENV = re.compile(r"(API_KEY|APIKEY|_TOKEN|_SECRET|SECRET_KEY|ACCESS_KEY|PASSWORD)$", re.IGNORECASE)
_SECRET_NAME = r"(?:[\w-]*_api_?key|api_?key|(?:auth_|access_|hf_|bearer_)?token|(?:client_)?secret|[\w-]*password|[\w-]*passwd|(?:aws_)?(?:secret_)?access_key|secret_key|private_key)"
SECRET_KEY = re.compile(rf"^{_SECRET_NAME}$", re.IGNORECASE)  # a config key (leaf name) whose value is a secret
REDACTED = "***"


def secret_values(cfg: Any = None, environ: dict | None = None) -> list[str]:
    """Values of environment variables named like secrets (WANDB_API_KEY, HF_TOKEN, ...) and literal values of
    secret-named config keys (`+tracker.api_key=...` on the command line), longest first."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if SECRET_ENV.search(k) and len(v) >= 6}

    def walk(node: Any, key: str = "") -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, str(k))
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, str) and SECRET_KEY.match(key) and len(node) >= 6 and "${" not in node:
            values.add(node)

    if cfg is not None:
        walk(OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else cfg)
    return sorted(values, key=len, reverse=True)


def scrub_secrets(obj: Any, secrets: list[str] | None = None) -> Any:
    """A copy of `obj` (dicts/lists/strings) with secret env values and values of secret-named keys replaced."""
    secrets = secret_values() if secrets is None else secrets

    def scrub(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: scrub(v, str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(scrub(v) for v in value)
        if isinstance(value, str):
            if value and SECRET_KEY.match(key) and not value.startswith("${"):
                return REDACTED
            for s in secrets:
                value = value.replace(s, REDACTED)
        return value

    return scrub(obj)


def scrub_files(folder: str | Path, cfg: Any = None) -> list[Path]:
    """Replace secret values in the text files Hydra wrote to `folder/.hydra` (a key given on the command line)."""
    secrets = secret_values(cfg)
    changed = []
    for f in sorted(Path(folder).glob(".hydra/*.yaml")):
        text = f.read_text(encoding="utf-8")
        new = text
        for s in secrets:
            new = new.replace(s, REDACTED)
        new = re.sub(rf"(?im)^(\s*-?\s*[+~]*(?:[\w.@/-]*\.)?{_SECRET_NAME}\s*[:=]\s*)(?![\s'\"]*\$\{{)(\S.*)$",
                     lambda m: m.group(1) + REDACTED, new)
        if new != text:
            atomic_write(f, new)
            changed.append(f)
    return changed
