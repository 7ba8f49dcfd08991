"""Files written so that a crash never leaves a half-written one looking like a result."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | Path, data: str | bytes | Callable[[Any], None], binary: bool = False) -> Path:
    """Write `data` (text, bytes, or a function writing to an open file) to a temp sibling, fsync, rename.

    A crash or kill at any moment leaves either the previous file or the complete new one at `path`.
    Returns `path`. Raises OSError from the file system.
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


def replace_folder(tmp: str | Path, path: str | Path) -> Path:
    """Move the finished folder `tmp` to `path`; an existing `path` is moved aside first, not deleted.

    A crash at any moment leaves the previous folder (at `path` or at `<path>.old`) or the new one intact.
    Returns `path`. Raises OSError from the file system.
    """
    import shutil

    tmp, path = Path(tmp), Path(path)
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path
