"""Opening training tables with Hugging Face `datasets` (Arrow, memory-mapped): files, folders, hub names.

What `data.train.path` may name (the file kind comes from the suffix, or `data.train.kind`):

- a file: `.csv`, `.tsv`, `.json`/`.jsonl`, `.parquet`, `.arrow` (optionally `.gz`/`.bz2`/`.xz`/`.zst`
  compressed), read by `datasets.load_dataset(<builder>, data_files=...)` into Arrow files in the cache;
  an `.arrow` file is memory-mapped as it is (`Dataset.from_file`);
- a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` (`datasets.load_from_disk`);
- any other folder, or a hub name such as `sentence-transformers/natural-questions`: `load_dataset(path)`,
  the library's own resolution (a folder of data files locally; the hub when online). With
  `HF_DATASETS_OFFLINE=1` only what is cached already can load.

The Arrow cache goes to `cache_dir` (the presets set `${paths.cache_dir}/datasets`), else
`HF_DATASETS_CACHE`, else a folder in the system temp dir: never `~/.cache` by default.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from embedexp.errors import ConfigError, DataError

BUILDERS: dict[str, tuple[str, dict[str, Any]]] = {
    "csv": ("csv", {}),
    "tsv": ("csv", {"sep": "\t"}),
    "json": ("json", {}),
    "jsonl": ("json", {}),
    "parquet": ("parquet", {}),
    "arrow": ("arrow", {}),
}
COMPRESSION = (".gz", ".bz2", ".xz", ".zst")


def file_kind(path: Path, kind: str | None = None) -> str:
    """The table kind of a file (csv, tsv, json, jsonl, parquet, arrow) from `kind` or its suffix.

    Raises:
        DataError: an unknown suffix (e.g. `.xlsx`), naming the file and the kinds that are read.
    """
    if kind is not None:
        if kind not in BUILDERS:
            raise ConfigError(f"data.train.kind={kind!r}; expected one of {', '.join(BUILDERS)}")
        return kind
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSION:
        suffixes = suffixes[:-1]
    ext = suffixes[-1].lstrip(".") if suffixes else ""
    if ext not in BUILDERS:
        raise DataError(
            f"{path}: unknown file kind {('.' + ext) if ext else '(no suffix)'}; expected one of "
            f"{', '.join('.' + k for k in BUILDERS)} (or set data.train.kind)"
        )
    return ext


def cache_dir_for(cache_dir: str | None) -> str:
    """Where `datasets` writes its Arrow cache: `cache_dir`, else HF_DATASETS_CACHE, else a temp folder."""
    if cache_dir:
        return str(Path(cache_dir).expanduser())
    return os.environ.get("HF_DATASETS_CACHE") or str(Path(tempfile.gettempdir()) / "embedexp-datasets")


def _cause(e: BaseException) -> str:
    """The innermost message of a chained exception, first line only (datasets wraps the reader's error)."""
    while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def _pick_split(obj, where: str, split: str | None):
    import datasets

    if isinstance(obj, (datasets.DatasetDict, dict)):
        names = list(obj)
        want = split or ("train" if "train" in names else names[0] if len(names) == 1 else None)
        if want not in names:
            raise DataError(
                f"{where}: no split {split or 'train'!r} (splits: {', '.join(names)}); set data.train.split"
            )
        return obj[want]
    return obj


def open_table(path: str, split: str | None = None, cache_dir: str | None = None, kind: str | None = None):
    """-> (datasets.Dataset, source files to fingerprint, a short description of the source).

    Raises:
        DataError: the file/folder cannot be read as a table (naming it and the reader's own message), an
            unknown file kind, a missing split, or a hub name that cannot load (offline or unknown).
    """
    import datasets

    datasets.disable_progress_bars()
    level = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its reader errors come back as our one line
    try:
        opened = _open(datasets, path, split, cache_dir, kind)
    finally:
        datasets.logging.set_verbosity(level)
    from embedexp.data.mapped_pages import settle_after_open

    settle_after_open(opened[0].data.table)  # what opening left resident (embedexp.data.mapped_pages)
    return opened


def _open(datasets, path: str, split: str | None, cache_dir: str | None, kind: str | None):
    p = Path(path).expanduser()
    cache = cache_dir_for(cache_dir)
    try:
        if p.is_file():
            k = file_kind(p, kind)
            if k == "arrow":
                return datasets.Dataset.from_file(str(p)), [p], f"arrow file {p}"
            builder, kw = BUILDERS[k]
            ds = datasets.load_dataset(builder, data_files=str(p), split="train", cache_dir=cache, **kw)
            return ds, [p], f"{k} file {p}"
        if p.is_dir():
            if (p / "dataset_dict.json").is_file() or (p / "state.json").is_file():
                ds = _pick_split(datasets.load_from_disk(str(p)), str(p), split)
                files = sorted(p.rglob("*.arrow"))
                return ds, files, f"save_to_disk folder {p}"
            ds = _pick_split(datasets.load_dataset(str(p), cache_dir=cache), str(p), split)
            files = sorted(f for f in p.rglob("*") if f.is_file() and not any(x.startswith(".") for x in f.parts))
            return ds, files, f"data folder {p}"
    except DataError:
        raise
    except Exception as e:  # the readers raise many kinds (pyarrow, pandas, datasets); one line names them
        what = f"a {file_kind(p, kind)} file" if p.is_file() else "a dataset folder"
        raise DataError(f"{p}: cannot read as {what} ({_cause(e)})") from None
    if p.suffix.lower().lstrip(".") in BUILDERS or str(path).startswith(("/", ".", "~")):
        raise DataError(f"{p}: file does not exist; expected a table file, a dataset folder or a hub name")
    try:
        ds = _pick_split(datasets.load_dataset(str(path), cache_dir=cache), str(path), split)
    except DataError:
        raise
    except Exception as e:
        offline = " (HF_DATASETS_OFFLINE=1: only cached datasets load)" if _offline(datasets) else ""
        raise DataError(f"{path}: cannot load as a hub dataset{offline} ({_cause(e)})") from None
    return ds, [], f"hub dataset {path}"


def _offline(datasets) -> bool:
    cfg = datasets.config
    return bool(getattr(cfg, "HF_HUB_OFFLINE", False) or getattr(cfg, "HF_DATASETS_OFFLINE", False))


def files_digest(files: list[Path], extra: str = "") -> str:
    """blake2b (16 hex digits) of the files' bytes, in order, plus `extra`; about 1 s per GB."""
    h = hashlib.blake2b(digest_size=8)
    for f in files:
        h.update(str(f.name).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    h.update(extra.encode())
    return h.hexdigest()
