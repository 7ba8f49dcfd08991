"""Secrets never reach a results file, a saved config or a log: values of secret-looking variables and keys become ***."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from embedexp.io import atomic_write

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
        new = re.sub(
            rf"(?im)^(\s*-?\s*[+~]*(?:[\w.@/-]*\.)?{_SECRET_NAME}\s*[:=]\s*)(?![\s'\"]*\$\{{)(\S.*)$",
            lambda m: m.group(1) + REDACTED,
            new,
        )
        if new != text:
            atomic_write(f, new)
            changed.append(f)
    return changed
