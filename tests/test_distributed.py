"""GradCache and the cross-rank gather give the gradient of one big batch on one process.

Each case runs ONE real optimisation step through Lightning (2 gloo processes for DDP, spawned),
with dropout ON and two negative columns, and captures the gradients the optimiser sees. The
reference is plain autograd in this process: the same model, every rank's rows concatenated, the
same RNG state per rank (so dropout masks match), one loss, one backward.
"""

import pytest
import torch

from embedexp.distributed.grad_cache import chunk_rows, unsort
from embedexp.losses import InfoNCELoss, MatryoshkaLoss
from embedexp.models import Encoder

from ddp_harness import run_step

WORDS = "protein cell gene tumour virus brain heart drug dose trial mouse patient risk blood liver".split()


def _rows(n: int, n_neg: int = 2) -> list[tuple[str, ...]]:
    g = torch.Generator().manual_seed(0)

    def text(k):
        idx = torch.randint(len(WORDS), (3 + int(torch.randint(8, (1,), generator=g)),), generator=g)
        return f"{k} " + " ".join(WORDS[i] for i in idx)

    return [tuple(text(f"r{r}c{c}") for c in range(2 + n_neg)) for r in range(n)]


def _reference_grads(model_dir, captures, loss, chunk):
    """Plain autograd: per micro-batch, every rank's rows concatenated, one loss; their mean, one backward."""
    encoder = Encoder(str(model_dir), max_seq_length=32)
    encoder.train()
    micro = [cap.get("micro") or [{"rng": cap["rng"], "features": cap["features"]}] for cap in captures]
    total = 0.0
    for m in range(len(micro[0])):
        columns = None
        for rank_micro in micro:  # rank order = row order of the gathered batch
            torch.set_rng_state(rank_micro[m]["rng"])
            cols = []
            for features in rank_micro[m]["features"]:
                # GradCache: the chunks it encoded, in its (length-sorted) order; plain: the whole column at once
                chunks, order = chunk_rows(features, chunk) if chunk else ([features], None)
                cols.append(unsort(torch.cat([encoder(part) for part in chunks]), order))
            columns = cols if columns is None else [torch.cat([a, b]) for a, b in zip(columns, cols)]
        total = total + loss(columns) / len(micro[0])
    total.backward()
    return {n: p.grad for n, p in encoder.named_parameters() if p.grad is not None}


def _fixed_dims_loss(loss: MatryoshkaLoss, dims: tuple[int, ...]) -> MatryoshkaLoss:
    """The same Matryoshka loss at one fixed set of dims (no sampling): the reference for a sampled step."""
    weights = [loss.weights[loss.dims.index(d)] for d in dims]
    return MatryoshkaLoss(loss.loss, dims=list(dims), weights=weights)


def _rel_err(got: dict, ref: dict) -> float:
    assert got.keys() == ref.keys()
    diff = torch.cat([(got[k] - ref[k]).flatten() for k in ref]).norm()
    return float(diff / torch.cat([ref[k].flatten() for k in ref]).norm())


CASES = {
    # name: (devices, per-rank batch, grad-cache chunk, anchor chunk, matryoshka, n_dims_per_step, accumulate)
    "a_gradcache_3_chunks": (1, 8, 3, None, False, -1, 1),
    "a_gradcache_anchor_chunks": (1, 8, 3, 2, False, -1, 1),
    "b_ddp_gather": (2, 4, None, None, False, -1, 1),
    "c_ddp_gather_gradcache": (2, 4, 3, None, False, -1, 1),
    "d_ddp_gradcache_matryoshka": (2, 4, 3, 3, True, -1, 1),
    # n_dims_per_step: one set of dims per optimisation step, whatever the number of loss calls in it
    # (issue 14 item 8): GradCache anchor chunks (4 calls), accumulation (2 micro-batches), DDP ranks
    "e_gradcache_anchor_chunks_sampled_dims": (1, 8, 3, 2, True, 2, 1),
    "f_accumulate_sampled_dims": (1, 4, None, None, True, 2, 2),
    "g_ddp_gradcache_accumulate_sampled_dims": (2, 4, 3, 2, True, 2, 2),
    "h_ddp_gather_sampled_dims": (2, 4, None, None, True, 2, 1),
}


# the DDP gather case with sampled dims agreed across ranks before the fix too (a guard, not a regression test):
# behind the slow marker to keep the default run short; `pytest -m slow` runs it
SLOW_CASES = {"h_ddp_gather_sampled_dims"}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_CASES else c for c in CASES])
def test_step_gradient_equals_single_process_big_batch(case, tiny_model_dir, tmp_path):
    devices, batch, chunk, anchor_chunk, matryoshka, n_dims, accumulate = CASES[case]
    loss = InfoNCELoss(symmetric=True)
    if matryoshka:
        loss = MatryoshkaLoss(
            InfoNCELoss(symmetric=True), dims=[32, 16, 8, 4], weights=[1.0, 0.5, 0.25, 0.125], n_dims_per_step=n_dims
        )
    run_step(
        str(tiny_model_dir),
        _rows(devices * batch * accumulate),
        str(tmp_path),
        devices,
        loss,
        batch,
        chunk,
        anchor_chunk,
        accumulate,
    )
    captures = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(devices)]
    assert all(len(c["micro"]) == accumulate for c in captures)
    assert all(m["features"][0]["input_ids"].shape[0] == batch for c in captures for m in c["micro"])
    assert len(captures[0]["features"]) == 4  # anchor, positive, 2 negative columns
    if n_dims != -1:
        calls = [d for c in captures for d in c["dims"]]
        n_calls = (-(-batch // anchor_chunk) if chunk and anchor_chunk else 1) * accumulate
        assert all(len(c["dims"]) == n_calls for c in captures)
        assert len(set(calls)) == 1, f"{case}: one step trained the dims {calls} (per loss call, rank by rank)"
        assert calls[0] == loss.step_dims(0, seed=0)  # the documented draw: (run seed, global step) only
        loss = _fixed_dims_loss(loss, calls[0])
    ref = _reference_grads(tiny_model_dir, captures, loss, chunk)
    for cap in captures:
        err = _rel_err(cap["grads"], ref)
        assert err < 1e-5, f"{case}: relative gradient error {err:.2e}"
    # dropout really was on: the reference without the recorded RNG differs
    torch.manual_seed(12345)
    other_rng = torch.get_rng_state()
    other = _reference_grads(
        tiny_model_dir, [{**c, "micro": [{**m, "rng": other_rng} for m in c["micro"]]} for c in captures], loss, chunk
    )
    assert _rel_err(other, ref) > 1e-3


@pytest.mark.slow  # ~80 s of spawned DDP processes on 2 loaded cores; the gradient cases above cover DDP + GradCache
def test_gradcache_does_one_allreduce_schedule_per_step(tiny_model_dir, tmp_path):
    """DDP + GradCache with 4 chunks per column triggers exactly the all-reduces of a plain DDP step."""
    rows = _rows(8)
    plain, cached = tmp_path / "plain", tmp_path / "cached"
    plain.mkdir()
    cached.mkdir()
    run_step(str(tiny_model_dir), rows, str(plain), 2, InfoNCELoss(), 4, None)
    run_step(str(tiny_model_dir), rows, str(cached), 2, InfoNCELoss(), 4, 1)
    n_plain = torch.load(plain / "rank0.pt", weights_only=True)["allreduce"]
    n_cached = torch.load(cached / "rank0.pt", weights_only=True)["allreduce"]
    assert n_plain >= 1
    assert n_cached == n_plain, f"GradCache step: {n_cached} all-reduce calls, plain step: {n_plain}"
