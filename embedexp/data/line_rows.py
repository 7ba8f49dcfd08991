"""The line-oriented training formats (beir, pairs, labeled_pairs, sts, sentences) on the Arrow layer.

Their validating readers (embedexp.data.readers `iter_*`) yield rows one at a time; `arrow_rows` writes them,
`CHUNK` rows per record batch, into an Arrow stream file (the kind of file `datasets` itself writes for
`format=table`) and opens it memory-mapped with `datasets.Dataset.from_file`. Memory stays bounded by one chunk
of rows plus what a reader keeps for its checks (ids seen, the first row's number of negatives); the training
rows (embedexp.data.table_rows.TableRows, embedexp.data.text_rows.TextRows) read the mapped file lazily.

Cache: `<cache>/embedexp_line_rows/<name>-<key>.arrow` with `cache` as for tables (`data.train.cache_dir`, else
HF_DATASETS_CACHE, else a temp folder: embedexp.data.tables.cache_dir_for) and `key` the blake2b digest of the
source files' bytes (embedexp.data.tables.files_digest, about 1 s per GB) plus the reader options and
`LAYOUT_VERSION`. A second build of the same content opens the file without parsing the source again; the
rows that `data.on_error=skip` dropped are counted and warned about again from a small JSON file beside it
(readers.replay_skipped). Files are written under a temporary name and renamed when complete (atomic): a read
that fails (a bad row under on_error=raise) leaves no file, and concurrent processes (DDP ranks) never see half
a file.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa

from embedexp.data import readers
from embedexp.data.tables import cache_dir_for, files_digest

LAYOUT_VERSION = 1  # part of the key: bump when a format's columns or a reader's output change
CHUNK = 8192  # rows per record batch written
FOLDER = "embedexp_line_rows"
log = logging.getLogger("embedexp.data")


def arrow_rows(
    name: str,
    files: list[Path],
    options: dict[str, Any],
    rows: Callable[[], Iterable[tuple]],
    schema_for: Callable[[tuple | None], pa.Schema],
    cache_dir: str | None = None,
):
    """-> (datasets.Dataset memory-mapped over the rows, the 16-hex-digit content key).

    Args:
        name: the format (the file name's prefix).
        files: the source files read by `rows` (their bytes are in the key; their skipped-row counts are kept).
        options: the reader options that change the rows (on_error, split, max_score...), in the key.
        rows: called on a cache miss only: an iterable of row tuples, one value per schema field.
        schema_for: the Arrow schema given the first row (None when there is none).
        cache_dir: data.train.cache_dir (None: HF_DATASETS_CACHE or a temp folder).
    Raises:
        DataError: whatever the reader raises (the partial file is removed first).
    """
    import datasets

    key = files_digest(files, json.dumps({"layout": LAYOUT_VERSION, "format": name, **options}, sort_keys=True))
    folder = Path(cache_dir_for(cache_dir)) / FOLDER
    path, meta_path = folder / f"{name}-{key}.arrow", folder / f"{name}-{key}.json"
    if path.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            ds = datasets.Dataset.from_file(str(path))
        except (OSError, ValueError, pa.ArrowException) as e:  # damaged: write it again
            log.warning("rereading %s: its cached Arrow rows %s are unreadable (%s)", files[0], path, e)
        else:
            if ds.num_rows == meta.get("rows"):
                for i, skipped, first in meta.get("skipped", []):
                    readers.replay_skipped(files[i], int(skipped), str(first))
                return ds, key
    folder.mkdir(parents=True, exist_ok=True)
    n, skipped = _write(path, files, rows, schema_for)
    tmp_meta = meta_path.with_name(f"{meta_path.stem}.{os.getpid()}.tmp")
    tmp_meta.write_text(json.dumps({"rows": n, "skipped": skipped, "options": options}))
    os.replace(tmp_meta, meta_path)
    return datasets.Dataset.from_file(str(path)), key


def _write(
    path: Path,
    files: list[Path],
    rows: Callable[[], Iterable[tuple]],
    schema_for: Callable[[tuple | None], pa.Schema],
) -> tuple[int, list]:
    """Write the rows to `path` (atomically); -> (rows written, [[file index, rows skipped, first message]])."""
    for f in files:
        readers.FINISHED.pop(str(f), None)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
    writer = schema = None
    buf: list[list] = []
    n = 0

    def flush() -> None:
        if buf and buf[0]:
            arrays = [pa.array(col, type=f.type) for col, f in zip(buf, schema)]
            writer.write_batch(pa.record_batch(arrays, schema=schema))
            for col in buf:
                col.clear()

    try:
        for row in rows():
            if writer is None:
                schema = schema_for(row)
                writer = pa.ipc.new_stream(str(tmp), schema)
                buf = [[] for _ in schema]
            for col, value in zip(buf, row):
                col.append(value)
            n += 1
            if n % CHUNK == 0:
                flush()
        if writer is None:
            schema = schema_for(None)
            writer = pa.ipc.new_stream(str(tmp), schema)
        flush()
        writer.close()
        writer = None
        os.replace(tmp, path)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    skipped = []
    for i, f in enumerate(files):
        count, first = readers.FINISHED.get(str(f), (0, ""))
        if count:
            skipped.append([i, count, first])
    return n, skipped


def text_schema(names: list[str], label: str | None = None) -> pa.Schema:
    """String columns `names` (and a float64 `label` column)."""
    fields = [pa.field(c, pa.string()) for c in names]
    if label:
        fields.append(pa.field(label, pa.float64()))
    return pa.schema(fields)
