"""Full passes over a memory-mapped Arrow table give its pages back (issue 17 item 7: peak RSS at 1M rows):
embedexp.data.mapped_pages, and the hashing/checks that use it keep their results and the sampler's batches."""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from embedexp.data import mapped_pages
from embedexp.data.mapped_pages import MappedPages, read_only_file_mappings, released_chunks
from embedexp.data.no_duplicates import hash_strings, row_hashes, text_hash

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/maps and madvise: Linux")

MAPS = """\
55d0c0000000-55d0c0001000 r--p 00000000 fe:00 11 /usr/bin/python3.11
55d0c0001000-55d0c0002000 r-xp 00001000 fe:00 11 /usr/bin/python3.11
7f0000000000-7f0000100000 r--p 00000000 fe:00 42 /data/cache/train-00000.arrow
7f0000100000-7f0000200000 r--s 00000000 fe:00 43 /data/other.arrow
7f0000200000-7f0000300000 rw-p 00000000 00:00 0
7f0000300000-7f0000301000 r--p 00000000 fe:00 44 /lib/libarrow.so.2600
7f0000301000-7f0000302000 r-xp 00001000 fe:00 44 /lib/libarrow.so.2600
7f0000302000-7f0000303000 r--p 00002000 fe:00 44 /lib/libarrow.so.2600
7f0000400000-7f0000500000 rw-s 00000000 fe:00 45 /data/writable.bin
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
"""


def test_only_read_only_data_file_mappings_are_candidates():
    # the two .arrow mappings; never anonymous/writable memory, nor any page of a program or library file
    assert read_only_file_mappings(MAPS) == [(0x7F0000000000, 0x7F0000100000), (0x7F0000100000, 0x7F0000200000)]


def _resident_mib(path) -> float:
    """MiB of `path`'s pages mapped into this process now (the Rss of its mappings in /proc/self/smaps)."""
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        first = line.split(maxsplit=1)[0]
        if "-" in first and not first.endswith(":"):  # a mapping's header line
            inside = line.rstrip("\n").endswith(str(path))
        elif inside and first == "Rss:":
            total += int(line.split()[1])
    return total / 1024


def _mapped_table(tmp_path, n=60_000, batch=5_000):
    """An Arrow IPC stream file memory-mapped the way `datasets` opens its cache (pa.memory_map + open_stream),
    in record batches of `batch` rows: about 6 MB of text."""
    texts = pa.array([f"row {i:06d} " + "word " * 18 for i in range(n)])
    table = pa.table({"text": texts})
    path = tmp_path / "t.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        for b in table.to_batches(max_chunksize=batch):
            writer.write_batch(b)
    return pa.ipc.open_stream(pa.memory_map(str(path))).read_all(), texts, path


@linux
def test_release_drops_the_pages_a_pass_read_and_keeps_the_data(tmp_path):
    mapped, texts, path = _mapped_table(tmp_path)
    pages = MappedPages.of(mapped)
    assert len(pages.ranges) == 1 and pages.ranges[0][1] - pages.ranges[0][0] >= path.stat().st_size - 4096
    pages.release()
    assert _resident_mib(path) < 0.1
    lengths = [pc.sum(pc.utf8_length(c)).as_py() for c in mapped.column("text").chunks]  # reads every page
    assert _resident_mib(path) > 5  # the ~6 MB file became resident
    assert pages.release() > 0
    assert _resident_mib(path) < 0.1
    assert mapped.column("text").combine_chunks().equals(texts)  # the data is intact (read again from the file)
    pages.release()
    # a pass through released_chunks sees the same chunks and ends with the pages given back
    resident = []
    for c in released_chunks(mapped.column("text"), every=1 << 20):
        lengths.append(pc.sum(pc.utf8_length(c)).as_py())
        resident.append(_resident_mib(path))
    assert lengths[: len(lengths) // 2] == lengths[len(lengths) // 2 :]
    assert max(resident) < 2.5 and _resident_mib(path) < 0.1  # at most ~1 MB read between two releases


def test_in_memory_data_has_nothing_to_release(tmp_path):
    table = pa.table({"text": [f"t{i}" for i in range(1000)]})
    pages = MappedPages.of(table)
    assert not pages and pages.release() == 0
    assert [len(c) for c in released_chunks(table.column("text"), every=1)] == [1000]


@linux
def test_hash_strings_releases_a_mapped_column_with_the_same_hashes(tmp_path, monkeypatch):
    mapped, texts, path = _mapped_table(tmp_path)
    col = mapped.column("text")
    expected = hash_strings(texts, release=False)
    assert expected[:3].tolist() == [text_hash(t) for t in texts[:3].to_pylist()]
    monkeypatch.setattr(mapped_pages, "RELEASE_EVERY", 1 << 20)
    assert np.array_equal(hash_strings(col, batch=5_000, release=False), expected)
    assert _resident_mib(path) > 5  # without the release the ~6 MB column stays resident
    MappedPages.of(mapped).release()
    assert np.array_equal(hash_strings(col, batch=5_000), expected)
    assert _resident_mib(path) < 0.1


def _flag_table(n=2500):
    """FlagEmbedding rows with many shared texts (so the no-duplicates plan defers and swaps rows), 1..4
    negatives and 1..2 positives per row."""
    q = [f"question {i % 1700}" for i in range(n)]
    pos = [[f"answer {i % 900}"] + ([f"answer  {(i * 7) % 900}"] if i % 3 == 0 else []) for i in range(n)]
    neg = [[f"negative {(i * 13 + j) % 1100}" for j in range(1 + i % 4)] for i in range(n)]
    return pa.table({"query": q, "pos": pos, "neg": neg})


def test_sampler_batches_are_unchanged_by_the_page_releases(tmp_path, monkeypatch):
    """Same seed -> the same text hashes and no-duplicates batches as before the releases existed: the digest
    below was computed by this code at commit 209f0a9 (before embedexp.data.mapped_pages), and a release after
    every chunk of every pass (RELEASE_EVERY=1) must not change it."""
    import pyarrow.parquet as pq

    from embedexp.data.resumable import SourcePlan
    from embedexp.data.train_sets import build_train_set

    monkeypatch.setattr(mapped_pages, "RELEASE_EVERY", 1)
    pq.write_table(_flag_table(), tmp_path / "flag.parquet", row_group_size=700)  # 4 Arrow chunks in the cache
    spec = {"format": "table", "path": str(tmp_path / "flag.parquet"), "cache_dir": str(tmp_path / "hf")}
    ts = build_train_set({**spec, "negatives_per_row": 2, "positives": "sample"}, seed=3)
    assert ts.rows.table.column("query").num_chunks == 4
    h = hashlib.blake2b(digest_size=8)
    for epoch in (0, 1):
        hashes = row_hashes(ts, epoch)
        h.update(hashes.tobytes())
        plan = SourcePlan(len(ts), 32, 3, True, 2, False, "no_duplicates", hashes=lambda e, x=hashes: x)
        for b in plan.batches(epoch):
            h.update(np.asarray(b, dtype=np.int64).tobytes())
    assert h.hexdigest() == "566f68539f11e39f"


@linux
def test_opening_a_table_leaves_none_of_its_cache_file_resident(tmp_path):
    """Opening reads every record batch's header of the Arrow cache file (with fault-around, ~64 KiB mapped per
    header); `open_table` gives those pages back (`settle_after_open`)."""
    import pyarrow.parquet as pq

    from embedexp.data.tables import open_table

    texts = [f"row {i:06d} " + "word " * 18 for i in range(30_000)]
    pq.write_table(pa.table({"anchor": texts, "positive": texts[::-1]}), tmp_path / "p.parquet")
    ds, _, _ = open_table(str(tmp_path / "p.parquet"), cache_dir=str(tmp_path / "hf"))
    cache = ds.cache_files[0]["filename"]
    assert ds.data.table.column("anchor").num_chunks == 30  # datasets' 1,000-row record batches
    assert MappedPages.of(ds.data.table).ranges  # memory-mapped, not read into memory
    assert _resident_mib(cache) < 0.1
    assert ds[29_999]["anchor"] == texts[-1]  # rows read as before
