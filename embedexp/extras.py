"""Optional extras (`pip install 'embedexp[<extra>]'`): checked at config time, before any data or weights load."""

from __future__ import annotations

import importlib.util

from embedexp.errors import ConfigError


def has_package(module: str) -> bool:
    """True when `module` can be imported (found on the path; not imported here)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken parent package, or a module left as None in sys.modules
        return False


def require_extra(module: str, extra: str, what: str) -> None:
    """Raise one ConfigError line naming the pip extra when `module` is not installed.

    Args:
        module: the import name (`mteb`, `wandb`).
        extra: embedexp's extra that installs it (pyproject `[project.optional-dependencies]`).
        what: the config choice that needs it (`eval=mteb`, `logger=wandb`).
    Raises:
        ConfigError: e.g. "eval=mteb needs the mteb package: pip install 'embedexp[mteb]'".
    """
    if not has_package(module):
        raise ConfigError(f"{what} needs the {module} package: pip install 'embedexp[{extra}]'")
