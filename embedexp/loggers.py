"""Weights & Biases for `logger=wandb`: offline when it must be, secrets kept out, results at the end.

`wandb_logger` (the `_target_` of conf/logger/wandb.yaml) decides the mode before wandb starts, so a
run never waits on an unreachable server: no API key or no route to the W&B host -> offline (a local
run dir under the job's output dir; `wandb sync` uploads it later). `log_results` is called once
after results.json is written and is a no-op for every other logger.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlparse

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.wandb.ai"


def find_api_key() -> str | None:
    """The key wandb would use: $WANDB_API_KEY, else the netrc entry for the W&B host."""
    key = os.environ.get("WANDB_API_KEY")
    if key:
        return key
    import netrc

    host = urlparse(os.environ.get("WANDB_BASE_URL", DEFAULT_BASE_URL)).hostname or ""
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        auth = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None
    return auth[2] if auth and auth[2] else None


def reachable(url: str, timeout_s: float = 2.0) -> bool:
    """True when the server answers an HTTP request within timeout_s (any status; DNS and TLS included).
    A bare TCP connect is not enough: some sandboxes accept every connection and never answer."""
    import urllib.error
    import urllib.request

    if not urlparse(url).hostname:
        return False
    result: list[bool] = []

    def ask() -> None:  # DNS lookups have no timeout of their own, hence the thread
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s).close()
            result.append(True)
        except urllib.error.HTTPError:  # the server answered, with an error status
            result.append(True)
        except Exception:
            result.append(False)

    worker = threading.Thread(target=ask, daemon=True)
    worker.start()
    worker.join(timeout_s + 0.5)
    return bool(result and result[0])


def choose_mode(mode: str = "auto", timeout_s: float = 2.0) -> tuple[str, str]:
    """(wandb mode, why). An explicit $WANDB_MODE or a mode other than `auto` wins."""
    env = os.environ.get("WANDB_MODE")
    if env:
        return env, "WANDB_MODE is set"
    if mode != "auto":
        return mode, f"logger.wandb.mode={mode}"
    if not find_api_key():
        return "offline", "no W&B API key (WANDB_API_KEY or ~/.netrc)"
    url = os.environ.get("WANDB_BASE_URL", DEFAULT_BASE_URL)
    if not reachable(url, timeout_s):
        return "offline", f"{url} is not reachable"
    return "online", "API key found and server reachable"


def _secrets() -> list[str]:
    from embedexp.secrets import secret_values

    return sorted({*secret_values(), find_api_key() or ""} - {""}, key=len, reverse=True)


def _scrub_override(override: str, secrets: list[str]) -> str:
    """`+db.password=x` -> `+db.password=***`; secret values anywhere -> ***."""
    from embedexp.secrets import REDACTED, SECRET_KEY

    key, sep, _ = override.partition("=")
    if sep and SECRET_KEY.match(key.lstrip("+~").rsplit(".", 1)[-1]):
        override = f"{key}={REDACTED}"
    for s in secrets:
        override = override.replace(s, REDACTED)
    return override


def _hydra_names(secrets: list[str]) -> tuple[str | None, str | None]:
    """(run name, group) from the Hydra job: its overrides (secrets scrubbed), and the sweep dir in multirun."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except Exception:  # not inside a Hydra job (e.g. a test composing configs)
        return None, None
    name = ",".join(_scrub_override(o, secrets) for o in hc.overrides.task) or hc.job.name
    group = str(hc.sweep.dir) if str(hc.mode) == "RunMode.MULTIRUN" else None
    return name, group


def wandb_logger(
    save_dir: str,
    project: str = "embedexp",
    mode: str = "auto",
    name: str | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
    entity: str | None = None,
    init_timeout_s: float = 30,
    check_timeout_s: float = 2.0,
    **kwargs: Any,
):
    """A Lightning WandbLogger whose mode is decided here (auto: offline without key or network)."""
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    chosen, why = choose_mode(mode, check_timeout_s)
    previous_mode = os.environ.get("WANDB_MODE")
    os.environ["WANDB_MODE"] = chosen  # wandb's own processes read the mode from here too
    log.info("W&B mode %s (%s)", chosen, why)
    secrets = _secrets()
    auto_name, auto_group = _hydra_names(secrets)
    # wandb records the command line with the run's metadata: leave the metadata out when it holds a secret
    argv_secret = any(_scrub_override(a, secrets) != a for a in sys.argv[1:])
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    logger = WandbLogger(
        save_dir=save_dir,
        project=project,
        entity=entity,
        name=name or auto_name,
        group=group or auto_group,
        tags=list(tags or []),
        offline=chosen == "offline",
        mode=chosen,
        settings=wandb.Settings(init_timeout=float(init_timeout_s), x_disable_meta=argv_secret),
        **kwargs,
    )
    logger.embedexp_previous_mode = previous_mode  # restored by log_results: the next job of a sweep decides anew
    return logger


def log_results(
    loggers: Iterable[Any],
    rows: dict[str, dict[str, float | None]],
    model_dir: str | Path | None,
    meta: dict[str, Any] | None = None,
) -> None:
    """For each W&B logger: the scrubbed config, base/tuned/delta (and CI/p/verdict) summary values, a results table, the
    exported model as an artifact; then end the run (a sweep in one process starts a new run per job)."""
    from lightning.pytorch.loggers import WandbLogger

    from embedexp.secrets import scrub_secrets

    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        import wandb

        run = logger.experiment
        secrets = _secrets()
        config = (meta or {}).get("config")
        if config:
            run.config.update(scrub_secrets(config, secrets), allow_val_change=True)
        from embedexp.eval.results import STAT_KEYS

        table = wandb.Table(columns=["metric", "base", "tuned", "delta"])
        for metric, r in rows.items():
            table.add_data(metric, r["base"], r["tuned"], r["delta"])
            for part in ("base", "tuned", "delta", *STAT_KEYS):
                if r.get(part) is not None:
                    run.summary[f"{part}/{metric}"] = r[part]
        run.log({"results": table})
        if model_dir is not None and Path(model_dir).is_dir():
            artifact = wandb.Artifact(
                name=f"model-{run.id}",
                type="model",
                metadata=scrub_secrets({k: v for k, v in (meta or {}).items() if k != "config"}, secrets),
            )
            artifact.add_dir(str(model_dir))
            run.log_artifact(artifact)
        run.finish()
        previous = getattr(logger, "embedexp_previous_mode", "")
        if previous is None:
            os.environ.pop("WANDB_MODE", None)
        elif previous:
            os.environ["WANDB_MODE"] = previous


_WANDB_HEADER = b":W&B\xe1\xbe\x00"  # ident, magic 0xBEE1 (little endian), version 0
_BLOCK = 32 * 1024
_RECORD_HEADER = 7  # crc32 (4), length (2, little endian), type (1): 1 full, 2 first, 3 middle, 4 last


def _wandb_records(path: Path):
    """The protobuf records of a .wandb file (a LevelDB-style log: 32 KiB blocks of length-prefixed chunks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    if not data.startswith(_WANDB_HEADER):
        raise ValueError(f"{path}: not a W&B run file (bad header)")
    pos, pending = len(_WANDB_HEADER), b""
    while pos + _RECORD_HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _RECORD_HEADER:  # block trailer: zero padding
            pos += left
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        chunk = data[pos + _RECORD_HEADER : pos + _RECORD_HEADER + length]
        pos += _RECORD_HEADER + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def read_wandb_run(run_dir: str | Path) -> dict[str, Any]:
    """id, config, final summary, logged artifacts (name, type, files) and whether the run ended (its exit
    record is there; wandb may write the file a moment after run.finish() returns) of a local W&B run
    dir (offline-run-* or run-*), from its .wandb file.
    The summary follows wandb's rule: the last logged value of each key unless set explicitly later."""
    import json

    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("*.wandb"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no .wandb file")
    run_id, config, summary, artifacts, finished = None, {}, {}, [], False

    def key_of(item) -> str:
        return "/".join([*item.nested_key]) if item.nested_key else item.key

    for record in _wandb_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_id = record.run.run_id or run_id
            for item in record.run.config.update:
                config[key_of(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                config[key_of(item)] = json.loads(item.value_json)
        elif kind == "history":
            for item in record.history.item:
                summary[key_of(item)] = json.loads(item.value_json)
        elif kind == "summary":
            for item in record.summary.update:
                summary[key_of(item)] = json.loads(item.value_json)
            for item in record.summary.remove:
                summary.pop(key_of(item), None)
        elif kind == "exit":
            finished = True
        elif kind == "artifact":
            a = record.artifact
            artifacts.append({"name": a.name, "type": a.type, "files": sorted(e.path for e in a.manifest.contents)})
    return {
        "dir": str(run_dir),
        "id": run_id,
        "config": config,
        "summary": summary,
        "artifacts": artifacts,
        "finished": finished,
    }
