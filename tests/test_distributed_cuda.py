"""The gradient-exactness cases of test_distributed.py on CUDA (skipped without a GPU; scripts/gpu_smoke.sh runs them).

Same cases, same harness (tests/ddp_harness.py with accelerator="gpu": NCCL between ranks), dropout on; the
reference is plain autograd on the GPU with each micro-batch's recorded CPU and CUDA RNG states (dropout on the
GPU draws from the device's generator), every rank's rows concatenated, one loss, one backward. Cases with
2 ranks need 2 GPUs and are skipped on one.
"""

import pytest
import torch
from test_distributed import CASES, _fixed_dims_loss, _rel_err, _rows

from embedexp.distributed.grad_cache import chunk_rows, unsort
from embedexp.losses import InfoNCELoss, MatryoshkaLoss
from embedexp.models import Encoder

from ddp_harness import run_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_smoke.sh)")


def _reference_grads_cuda(model_dir, captures, loss, chunk):
    device = torch.device("cuda", 0)
    encoder = Encoder(str(model_dir), max_seq_length=32).to(device)
    encoder.train()
    micro = [cap["micro"] for cap in captures]
    total = 0.0
    for m in range(len(micro[0])):
        columns = None
        for rank_micro in micro:
            torch.set_rng_state(rank_micro[m]["rng"])
            torch.cuda.set_rng_state(rank_micro[m]["cuda_rng"], device)
            cols = []
            for features in rank_micro[m]["features"]:
                features = {k: v.to(device) for k, v in features.items()}
                chunks, order = chunk_rows(features, chunk) if chunk else ([features], None)
                cols.append(unsort(torch.cat([encoder(part) for part in chunks]), order))
            columns = cols if columns is None else [torch.cat([a, b]) for a, b in zip(columns, cols)]
        total = total + loss(columns) / len(micro[0])
    total.backward()
    return {n: p.grad for n, p in encoder.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("case", list(CASES))
def test_cuda_step_gradient_equals_single_process_big_batch(case, tiny_model_dir, tmp_path):
    devices, batch, chunk, anchor_chunk, matryoshka, n_dims, accumulate = CASES[case]
    if devices > torch.cuda.device_count():
        pytest.skip(f"{case} needs {devices} GPUs, {torch.cuda.device_count()} visible")
    loss = InfoNCELoss(symmetric=True)
    if matryoshka:
        loss = MatryoshkaLoss(
            InfoNCELoss(symmetric=True), dims=[32, 16, 8, 4], weights=[1.0, 0.5, 0.25, 0.125], n_dims_per_step=n_dims
        )
    rows = _rows(devices * batch * accumulate)
    run_step(str(tiny_model_dir), rows, str(tmp_path), devices, loss, batch, chunk, anchor_chunk, accumulate, "gpu")
    captures = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True, map_location="cpu") for r in range(devices)]
    assert all("cuda_rng" in m for c in captures for m in c["micro"]), "the step did not run on the GPU"
    if n_dims != -1:
        loss = _fixed_dims_loss(loss, captures[0]["dims"][0])
    ref = {k: v.cpu() for k, v in _reference_grads_cuda(tiny_model_dir, captures, loss, chunk).items()}
    for cap in captures:
        err = _rel_err({k: v.cpu() for k, v in cap["grads"].items()}, ref)
        assert err < 1e-5, f"{case} on CUDA: relative gradient error {err:.2e}"
