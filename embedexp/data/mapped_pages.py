"""Give back the pages of a memory-mapped Arrow table that a full pass over a column has read.

`datasets` memory-maps its Arrow cache files (read-only); every page a pass reads is then mapped into this
process and counts in its resident set (RssFile), until the kernel needs the memory back. One full pass over a
column (the row checks of `embedexp.data.table_rows`, the text hashing of the no-duplicates sampler) would
leave the whole column resident, so a 1M-row table would cost its file size in peak RSS although nothing keeps
the texts. `MappedPages.release` drops the pages of the read-only file mappings that hold a table's buffers
from this process (`madvise(MADV_DONTNEED)`, Linux): the data stays in the kernel's page cache, exactly as
after a `read()` of the file, and a later access maps a page again (a minor fault, no disk read while the
page is cached). `released_chunks` does so every `RELEASE_EVERY` bytes of a pass, which bounds what such a pass
adds to the peak. `settle_after_open` drops what opening a table left behind (see there).

Only read-only file-backed mappings that contain one of the given arrays' buffers are touched: for those,
MADV_DONTNEED cannot lose data (see madvise(2): the pages are filled again from the file). Anonymous memory
(an in-memory table) is never touched, and where /proc or madvise are missing (not Linux) nothing is done.
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa

log = logging.getLogger(__name__)

MADV_DONTNEED = 4  # <sys/mman.h> on Linux (every architecture)
RELEASE_EVERY = 4 << 20  # bytes of a pass between two releases: about what a pass may add to the peak RSS
_LIBC = None


def _madvise():
    global _LIBC
    if _LIBC is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fn = libc.madvise
            fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            fn.restype = ctypes.c_int
            _LIBC = fn
        except (OSError, AttributeError):
            _LIBC = False
    return _LIBC or None


def read_only_file_mappings(maps: str | None = None) -> list[tuple[int, int]]:
    """Sorted (start, end) byte addresses of this process's read-only, file-backed data mappings
    (/proc/self/maps; `maps` gives that text instead, for tests), without those of files that are also mapped
    executable (programs, shared libraries). Empty where /proc is missing."""
    if maps is None:
        try:
            maps = Path("/proc/self/maps").read_text()
        except OSError:
            return []
    rows = []
    code: set[str] = set()
    for line in maps.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or parts[4] == "0" or not parts[5].startswith("/"):
            continue  # anonymous, [heap], [stack], [vvar] ...
        if "x" in parts[1]:
            code.add(parts[5])
        rows.append((parts[0], parts[1], parts[5]))
    out = []
    for addr, perms, path in rows:
        # readable, not writable, and not of a program or library file (whose read-only relocation pages were
        # written by the loader before it made them read-only: dropping those would lose that data)
        if perms[:3] != "r--" or path in code:
            continue
        lo, hi = addr.split("-")
        out.append((int(lo, 16), int(hi, 16)))
    out.sort()
    return out


def _arrays(data) -> Iterator[pa.Array]:
    if isinstance(data, pa.Table):
        for col in data.columns:
            yield from col.chunks
    elif isinstance(data, pa.ChunkedArray):
        yield from data.chunks
    elif isinstance(data, pa.Array):
        yield data
    else:
        for d in data:
            yield from _arrays(d)


class MappedPages:
    """The read-only file mappings holding some Arrow data's buffers; `release()` drops their pages from this
    process (see the module docstring).

    Build with `MappedPages.of(table_or_arrays)`; `ranges` are (start, end) byte addresses, page-aligned.
    """

    def __init__(self, ranges: Iterable[tuple[int, int]]) -> None:
        self.ranges = sorted(set(ranges))

    @classmethod
    def of(cls, data: pa.Table | pa.ChunkedArray | pa.Array | Iterable, maps: str | None = None) -> "MappedPages":
        """The mappings that hold any buffer of `data` (a table, (chunked) arrays, or an iterable of them,
        children such as list values included). An in-memory table gives no ranges."""
        mappings = read_only_file_mappings(maps)
        if not mappings:
            return cls([])
        starts = [lo for lo, _ in mappings]
        found: set[tuple[int, int]] = set()
        for arr in _arrays(data):
            for buf in arr.buffers():  # this array's buffers and its children's
                if buf is None or buf.size == 0:
                    continue
                i = bisect.bisect_right(starts, buf.address) - 1
                if i >= 0 and buf.address < mappings[i][1]:
                    found.add(mappings[i])
        return cls(found)

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def release(self) -> int:
        """madvise(MADV_DONTNEED) over every range; returns the bytes advised (0 where nothing was done)."""
        fn = _madvise() if self.ranges else None
        if fn is None:
            return 0
        done = 0
        for lo, hi in self.ranges:
            if fn(lo, hi - lo, MADV_DONTNEED) == 0:
                done += hi - lo
            else:  # not expected on a mapping read from /proc/self/maps; never fatal
                log.debug("madvise(%#x, %d) failed: errno %d", lo, hi - lo, ctypes.get_errno())
        return done


class Releaser:
    """Counts the bytes a pass has read and calls `pages.release()` every `every` bytes (and on `close`)."""

    def __init__(self, pages: MappedPages, every: int | None = None) -> None:
        self.pages, self.every, self.pending = pages, int(RELEASE_EVERY if every is None else every), 0

    def read(self, nbytes: int) -> None:
        """`nbytes` more bytes of the mapped data were read."""
        if not self.pages:
            return
        self.pending += int(nbytes)
        if self.pending >= self.every:
            self.pages.release()
            self.pending = 0

    def close(self) -> None:
        if self.pages and self.pending:
            self.pages.release()
        self.pending = 0


def released_chunks(column: pa.ChunkedArray | pa.Array, every: int | None = None) -> Iterator[pa.Array]:
    """The chunks of `column`, in order; the mapped pages of the column are released every `every` bytes
    (default `RELEASE_EVERY`) of chunks handed out, after the caller is done with the chunk, and once at the end
    of the pass."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    rel = Releaser(MappedPages.of(chunks), every)
    try:
        for chunk in chunks:
            yield chunk
            rel.read(chunk.nbytes)
    finally:
        rel.close()


def settle_after_open(table) -> None:
    """After `datasets` opened (and perhaps first converted) a table: drop the table's mapped pages that
    opening read and return the Arrow memory pool's freed memory to the system.

    Opening a memory-mapped Arrow stream file reads every record batch's header; with the kernel's fault-around
    (up to 64 KiB mapped per page fault) that maps ~64 MB of a 1M-row cache file written in `datasets`' batches
    of 1,000 rows. A first conversion (parquet/csv/json -> Arrow) leaves ~70 MB of freed blocks in Arrow's
    allocator (mimalloc keeps them for reuse); `MemoryPool.release_unused` gives them back. Both are cheap
    (about a millisecond) and change no data.
    """
    MappedPages.of(table).release()
    pa.default_memory_pool().release_unused()
