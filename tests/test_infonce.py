"""InfoNCELoss: value and gradients against a loop-based reference and sentence-transformers' MNRL."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from embedexp.errors import ConfigError
from embedexp.losses.infonce import InfoNCELoss

ATOL = 1e-5


# --------------------------------------------------------------------------- reference


def _cos(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (u * v).sum() / (torch.sqrt((u * u).sum()) * torch.sqrt((v * v).sum()))


def _ce_row(query: torch.Tensor, candidates: list[torch.Tensor], positive: torch.Tensor, tau: float) -> torch.Tensor:
    """-log softmax of the positive among all candidates, for one query vector."""
    logits = torch.stack([_cos(query, c) / tau for c in candidates])
    return torch.logsumexp(logits, dim=0) - _cos(query, positive) / tau


def reference_infonce(cols: list[torch.Tensor], tau: float, symmetric: bool) -> torch.Tensor:
    anchor, positive, negatives = cols[0], cols[1], cols[2:]
    batch = anchor.shape[0]
    candidates = [positive[j] for j in range(batch)]
    for neg in negatives:
        candidates += [neg[j] for j in range(batch)]

    forward_terms = [_ce_row(anchor[i], candidates, positive[i], tau) for i in range(batch)]
    loss = sum(forward_terms) / batch
    if symmetric:
        anchors = [anchor[j] for j in range(batch)]  # only anchors as candidates, never the negatives
        backward_terms = [_ce_row(positive[i], anchors, anchor[i], tau) for i in range(batch)]
        loss = (loss + sum(backward_terms) / batch) / 2
    return loss


def _make_cols(n_cols: int, batch: int = 5, dim: int = 7, seed: int = 0, unnormalised: bool = True):
    g = torch.Generator().manual_seed(seed)
    cols = []
    for _ in range(n_cols):
        x = torch.randn(batch, dim, generator=g, dtype=torch.float64)
        if unnormalised:
            # rows with very different norms: the loss must normalise internally
            x = x * (0.1 + 10 * torch.rand(batch, 1, generator=g, dtype=torch.float64))
        cols.append(x.requires_grad_(True))
    return cols


def _value_and_grads(fn, cols):
    loss = fn(cols)
    grads = torch.autograd.grad(loss, cols)
    return loss.detach(), [g.detach() for g in grads]


# --------------------------------------------------------------------------- value + gradient vs reference


@pytest.mark.parametrize("n_negatives", [0, 1, 2])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("tau", [0.05, 1.0])
def test_matches_reference_value_and_gradients(n_negatives, symmetric, tau):
    cols = _make_cols(2 + n_negatives, seed=10 * n_negatives + int(symmetric) + int(100 * tau))
    loss_fn = InfoNCELoss(temperature=tau, symmetric=symmetric)

    got, got_grads = _value_and_grads(lambda c: loss_fn(tuple(c)), cols)
    ref, ref_grads = _value_and_grads(lambda c: reference_infonce(c, tau, symmetric), cols)

    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(ref.item(), abs=ATOL)
    assert len(got_grads) == len(cols)
    for i, (g, r) in enumerate(zip(got_grads, ref_grads)):
        torch.testing.assert_close(g, r, atol=ATOL, rtol=0, msg=f"gradient of column {i}")
        assert r.abs().max() > 1e-6  # every column really receives gradient


def test_symmetric_differs_from_one_directional_with_negatives():
    """Guards the reference itself: the directions/negatives matter for the value."""
    cols = _make_cols(3, seed=5)
    plain = InfoNCELoss(0.05, symmetric=False)(cols).item()
    sym = InfoNCELoss(0.05, symmetric=True)(cols).item()
    assert abs(plain - sym) > 1e-3
    # symmetric backward term uses only anchors: adding negatives into it would change the value
    wrong = (reference_infonce(cols, 0.05, False) + _backward_with_negatives(cols, 0.05)) / 2
    assert abs(sym - wrong.item()) > 1e-3
    assert sym == pytest.approx(reference_infonce(cols, 0.05, True).item(), abs=ATOL)


def _backward_with_negatives(cols, tau):
    anchor, positive = cols[0], cols[1]
    batch = anchor.shape[0]
    cands = [anchor[j] for j in range(batch)] + [n[j] for n in cols[2:] for j in range(batch)]
    return sum(_ce_row(positive[i], cands, anchor[i], tau) for i in range(batch)) / batch


def test_temperature_one_small_hand_example():
    """B=2, orthogonal/antiparallel vectors: cosines are 0/±1 so the value is written out by hand."""
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    p = torch.tensor([[2.0, 0.0], [0.0, -3.0]], dtype=torch.float64)  # cos(a0,p0)=1, cos(a1,p1)=-1
    # row 0: logits [1, 0] -> -log(e / (e + 1)); row 1: logits [0, -1] -> -log(e^-1 / (1 + e^-1))
    expected = (-math.log(math.e / (math.e + 1)) - math.log(math.exp(-1) / (1 + math.exp(-1)))) / 2
    assert InfoNCELoss(1.0)((a, p)).item() == pytest.approx(expected, abs=1e-12)
    # temperature divides the cosines: tau = 0.5 doubles the logits
    expected_half = (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(math.exp(-2) / (1 + math.exp(-2)))) / 2
    assert InfoNCELoss(0.5)((a, p)).item() == pytest.approx(expected_half, abs=1e-12)


# --------------------------------------------------------------------------- input forms


@pytest.mark.parametrize("n_negatives", [0, 2])
def test_dict_input_equals_tuple_input(n_negatives):
    cols = _make_cols(2 + n_negatives, seed=3)
    names = ["anchor", "positive"] + [f"negative_{i + 1}" for i in range(n_negatives)]
    for symmetric in (False, True):
        loss_fn = InfoNCELoss(0.05, symmetric=symmetric)
        t_val, t_grads = _value_and_grads(lambda c: loss_fn(tuple(c)), cols)
        d_val, d_grads = _value_and_grads(lambda c: loss_fn(dict(zip(names, c))), cols)
        l_val, _ = _value_and_grads(lambda c: loss_fn(list(c)), cols)
        assert d_val.item() == pytest.approx(t_val.item(), abs=1e-12)
        assert l_val.item() == pytest.approx(t_val.item(), abs=1e-12)
        for g_d, g_t in zip(d_grads, t_grads):
            torch.testing.assert_close(g_d, g_t, atol=1e-12, rtol=0)


def test_scale_invariance_per_row():
    """Rescaling any row by a positive factor leaves the loss unchanged (cosine similarity)."""
    cols = [c.detach() for c in _make_cols(3, seed=4, unnormalised=False)]
    g = torch.Generator().manual_seed(9)
    scaled = [c * (0.01 + 50 * torch.rand(c.shape[0], 1, generator=g, dtype=torch.float64)) for c in cols]
    loss_fn = InfoNCELoss(0.05, symmetric=True)
    assert loss_fn(scaled).item() == pytest.approx(loss_fn(cols).item(), abs=1e-10)
    # and the raw dot-product version would differ, so the check is meaningful
    raw = torch.nn.functional.cross_entropy(scaled[0] @ torch.cat(scaled[1:]).T / 0.05, torch.arange(5))
    assert abs(raw.item() - loss_fn(cols).item()) > 1e-2


def test_single_column_rejected():
    with pytest.raises(ValueError):
        InfoNCELoss()((torch.randn(3, 4),))


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("bad", [0, 0.0, -1, -1.0, float("nan"), "0.05", None])
def test_invalid_temperature_raises_config_error(bad):
    with pytest.raises(ConfigError):
        InfoNCELoss(temperature=bad)


def test_default_temperature_is_scale_20():
    assert InfoNCELoss().temperature == pytest.approx(0.05)
    assert InfoNCELoss().symmetric is False


# --------------------------------------------------------------------------- sentence-transformers oracle


class _LookupModel(nn.Module):
    """Stands in for a SentenceTransformer: returns precomputed embeddings chosen by features['column']."""

    def __init__(self, cols: list[torch.Tensor]) -> None:
        super().__init__()
        self.cols = cols

    def forward(self, features: dict) -> dict:
        return {"sentence_embedding": self.cols[int(features["column"])]}


@pytest.mark.parametrize("n_negatives", [0, 1, 2])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("tau", [0.05, 1.0])
def test_matches_sentence_transformers_mnrl(n_negatives, symmetric, tau):
    st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
    MNRL = st_losses.MultipleNegativesRankingLoss

    cols = _make_cols(2 + n_negatives, seed=7 + n_negatives)
    kwargs = {"scale": 1.0 / tau}
    if symmetric:
        kwargs.update(directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction")
    oracle = MNRL(_LookupModel(cols), **kwargs)
    features = [{"column": torch.tensor(i)} for i in range(len(cols))]

    ref, ref_grads = _value_and_grads(lambda c: oracle(features, labels=None), cols)
    got, got_grads = _value_and_grads(lambda c: InfoNCELoss(tau, symmetric=symmetric)(c), cols)

    assert got.item() == pytest.approx(ref.item(), abs=ATOL)
    for i, (g, r) in enumerate(zip(got_grads, ref_grads)):
        torch.testing.assert_close(g, r, atol=ATOL, rtol=0, msg=f"gradient of column {i}")
