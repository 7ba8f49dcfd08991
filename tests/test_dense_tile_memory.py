"""Dense mining's tiled top-k holds one (query chunk x corpus block) score tile at a time."""

import tracemalloc

import numpy as np

from embedexp.miners import dense


def test_one_score_tile_alive_at_a_time():
    """Before: `s = q @ d[lo:hi].T` replaced the previous tile only after the next product was computed, so two
    tiles (2 x 64 MB at the default size) were alive at the peak. numpy's allocations are traced by tracemalloc."""
    rng = np.random.default_rng(0)
    q = rng.standard_normal((256, 16), dtype=np.float32)
    d = rng.standard_normal((40_000, 16), dtype=np.float32)
    block = 10_000
    tile = 256 * block * 4  # bytes of one float32 score tile
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        i, s, _ = dense.tiled_topk(q, d, 10, block, np.empty((0, 2), np.int64))
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    ref = np.argsort(-(q @ d.T), axis=1, kind="stable")[:, :10]
    assert np.array_equal(i, ref)
    assert peak < 1.8 * tile, peak / tile  # before: 2.02 tiles
