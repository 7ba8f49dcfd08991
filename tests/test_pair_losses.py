"""TripletLoss, CosineSimilarityLoss, ContrastiveLoss (+ online): value and gradients against
loop-based references and sentence-transformers' losses of the same name, hand-built batches
for the online hard-pair selection, configs and ConfigError on bad hyper-parameters."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from embedexp.errors import ConfigError
from embedexp.losses.contrastive import ContrastiveLoss, OnlineContrastiveLoss
from embedexp.losses.cosine import CosineSimilarityLoss
from embedexp.losses.triplet import TripletLoss

ATOL = 1e-5
DTYPES = [torch.float32, torch.float64]
CONF_LOSS = Path(__file__).resolve().parent.parent / "conf" / "loss"


# --------------------------------------------------------------------------- helpers


def _make_cols(n_cols: int, batch: int = 6, dim: int = 7, seed: int = 0, dtype=torch.float64, norms=(0.5, 2.0)):
    """Random columns whose rows have different norms (in `norms`), so losses must normalise where they should."""
    g = torch.Generator().manual_seed(seed)
    cols = []
    for _ in range(n_cols):
        x = torch.nn.functional.normalize(torch.randn(batch, dim, generator=g, dtype=torch.float64), dim=-1)
        x = x * (norms[0] + (norms[1] - norms[0]) * torch.rand(batch, 1, generator=g, dtype=torch.float64))
        cols.append(x.to(dtype).requires_grad_(True))
    return cols


def _value_and_grads(fn, cols):
    loss = fn(cols)
    grads = torch.autograd.grad(loss, cols, allow_unused=False)
    return loss.detach(), [g.detach() for g in grads]


def _assert_same(got, ref, *, atol=ATOL, nonzero=True):
    (v, gs), (rv, rgs) = got, ref
    assert v.dtype == rv.dtype
    assert v.item() == pytest.approx(rv.item(), abs=atol)
    assert len(gs) == len(rgs)
    for i, (g, r) in enumerate(zip(gs, rgs)):
        torch.testing.assert_close(g, r, atol=atol, rtol=0, msg=lambda m: f"gradient of column {i}: {m}")
        if nonzero:
            assert r.abs().max() > 1e-6, f"column {i} receives no gradient: the check would be vacuous"


class _LookupModel(nn.Module):
    """Stands in for a SentenceTransformer: returns precomputed embeddings chosen by features['column']."""

    def __init__(self, cols) -> None:
        super().__init__()
        self.cols = cols

    def forward(self, features: dict) -> dict:
        return {"sentence_embedding": self.cols[int(features["column"])]}


def _st_losses():
    return pytest.importorskip("sentence_transformers.sentence_transformer.losses")


def _st_call(loss_cls, cols, labels, **kwargs):
    oracle = loss_cls(_LookupModel(cols), **kwargs)
    features = [{"column": torch.tensor(i)} for i in range(len(cols))]
    return oracle(features, labels)


# --- reference distances, one pair of 1-D vectors at a time, written without F.normalize / linalg


def _ref_distance(x: torch.Tensor, y: torch.Tensor, distance: str) -> torch.Tensor:
    dot = sum(x[k] * y[k] for k in range(x.shape[0]))
    if distance == "cosine":
        nx = torch.sqrt(sum(x[k] * x[k] for k in range(x.shape[0])))
        ny = torch.sqrt(sum(y[k] * y[k] for k in range(y.shape[0])))
        return 1 - dot / (nx * ny)
    if distance == "euclidean":
        return torch.sqrt(sum((x[k] - y[k]) ** 2 for k in range(x.shape[0])))
    if distance == "dot":
        return -dot
    raise AssertionError(distance)


def _hinge(z):
    return z if z.item() > 0 else z * 0  # keeps the graph, zero gradient when inactive


def reference_triplet(cols, distance: str, margin: float) -> torch.Tensor:
    anchor, positive, negatives = cols[0], cols[1], cols[2:]
    terms = []
    for i in range(anchor.shape[0]):
        d_ap = _ref_distance(anchor[i], positive[i], distance)
        for neg in negatives:
            terms.append(_hinge(d_ap - _ref_distance(anchor[i], neg[i], distance) + margin))
    return sum(terms) / len(terms)


def reference_cosine_mse(cols, labels) -> torch.Tensor:
    a, b = cols
    terms = [(1 - _ref_distance(a[i], b[i], "cosine") - float(labels[i])) ** 2 for i in range(a.shape[0])]
    return sum(terms) / len(terms)


def reference_contrastive(cols, labels, distance: str, margin: float) -> torch.Tensor:
    a, b = cols
    terms = []
    for i in range(a.shape[0]):
        d = _ref_distance(a[i], b[i], distance)
        terms.append(0.5 * d**2 if labels[i] == 1 else 0.5 * _hinge(margin - d) ** 2)
    return sum(terms) / len(terms)


def reference_online_contrastive(cols, labels, distance: str, margin: float) -> torch.Tensor:
    """Hard pairs chosen with python floats and lists; summed loss without the 1/2."""
    a, b = cols
    d = [_ref_distance(a[i], b[i], distance) for i in range(a.shape[0])]
    pos = [i for i in range(len(d)) if labels[i] == 1]
    neg = [i for i in range(len(d)) if labels[i] == 0]
    pos_d = [d[i].item() for i in pos]
    neg_d = [d[i].item() for i in neg]
    neg_threshold = max(pos_d) if pos_d else sum(neg_d) / len(neg_d)
    pos_threshold = min(neg_d) if neg_d else sum(pos_d) / len(pos_d)
    total = d[0] * 0
    for i in pos:
        if d[i].item() > pos_threshold:
            total = total + d[i] ** 2
    for i in neg:
        if d[i].item() < neg_threshold:
            total = total + _hinge(margin - d[i]) ** 2
    return total


def _st_siamese_metric(st, distance: str):
    """sentence-transformers' cosine distance; for euclidean the exact norm (see the eps test below for why)."""
    if distance == "cosine":
        return st.SiameseDistanceMetric.COSINE_DISTANCE
    return lambda x, y: torch.linalg.vector_norm(x - y, dim=-1)


def _zero_sum_pair(batch=6, dim=8, seed=0, dtype=torch.float64):
    """(a, b) with sum_k (a - b)_ik = 0 on every row: sentence-transformers' euclidean adds 1e-6 to every
    coordinate of a - b (F.pairwise_distance), which then changes ||a - b||^2 only by dim * 1e-12."""
    a, b = _make_cols(2, batch=batch, dim=dim, seed=seed, dtype=torch.float64)
    diff = (a - b).detach()
    diff = diff - diff.mean(dim=-1, keepdim=True)
    b2 = a.detach() - diff
    return [a.detach().to(dtype).requires_grad_(True), b2.to(dtype).requires_grad_(True)]


# --------------------------------------------------------------------------- TripletLoss


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_negatives", [1, 2])
@pytest.mark.parametrize("margin", [None, 0.0, 0.1, 0.5, 2.0])
@pytest.mark.parametrize("distance", ["cosine", "euclidean", "dot"])
def test_triplet_matches_reference(distance, margin, n_negatives, dtype):
    cols = _make_cols(
        2 + n_negatives, seed=sum(map(ord, distance)) + int(100 * (margin or 0.3)) + n_negatives, dtype=dtype
    )
    loss_fn = TripletLoss(distance=distance, margin=margin)
    got = _value_and_grads(lambda c: loss_fn(tuple(c)), cols)
    ref = _value_and_grads(lambda c: reference_triplet(c, distance, loss_fn.margin), cols)
    assert got[0].dtype == dtype
    _assert_same(got, ref, nonzero=got[0].item() > 0)


@pytest.mark.parametrize("distance", ["cosine", "euclidean", "dot"])
def test_triplet_reference_batch_has_active_and_inactive_triplets(distance):
    """Guards the parametrised check: with the default margin the hinge is neither always on nor always off."""
    cols = [c.detach() for c in _make_cols(3, batch=40, seed=1)]
    margin = TripletLoss(distance=distance).margin
    active = [
        (
            _ref_distance(cols[0][i], cols[1][i], distance) - _ref_distance(cols[0][i], cols[2][i], distance) + margin
        ).item()
        > 0
        for i in range(40)
    ]
    assert 0 < sum(active) < 40


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("margin", [0.0, 0.2, 1.0, 5.0])
@pytest.mark.parametrize("distance", ["cosine", "euclidean", "dot"])
def test_triplet_matches_sentence_transformers(distance, margin, dtype):
    st = _st_losses()
    from sentence_transformers.util import pairwise_dot_score

    metric = {
        "cosine": st.TripletDistanceMetric.COSINE,
        "euclidean": st.TripletDistanceMetric.EUCLIDEAN,
        "dot": lambda x, y: -pairwise_dot_score(x, y),  # sentence-transformers has no dot metric; same hinge/mean
    }[distance]
    cols = _make_cols(3, seed=int(10 * margin) + len(distance), dtype=dtype)
    ref = _value_and_grads(
        lambda c: _st_call(st.TripletLoss, c, None, distance_metric=metric, triplet_margin=margin), cols
    )
    got = _value_and_grads(lambda c: TripletLoss(distance, margin)(c), cols)
    _assert_same(got, ref, nonzero=ref[0].item() > 0)


def test_triplet_hand_example():
    a = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[1.0, 1.0]])  # cos = 1/sqrt2, euclidean 1, dot 1
    n = torch.tensor([[0.0, 2.0]])  # cos = 0, euclidean sqrt5, dot 0
    d_ap = 1 - 1 / math.sqrt(2)
    assert TripletLoss("cosine", 0.2)((a, p, n)).item() == pytest.approx(0.0, abs=1e-7)  # 0.29 - 1 + 0.2 < 0
    assert TripletLoss("cosine", 1.0)((a, p, n)).item() == pytest.approx(d_ap, abs=1e-6)
    assert TripletLoss("euclidean", 2.0)((a, p, n)).item() == pytest.approx(1 - math.sqrt(5) + 2, abs=1e-6)
    assert TripletLoss("dot", 0.5)((a, p, n)).item() == pytest.approx(0.0, abs=1e-7)  # -1 - 0 + 0.5 < 0
    assert TripletLoss("dot", 1.5)((a, p, n)).item() == pytest.approx(0.5, abs=1e-6)
    # two negatives: the mean runs over both triplets
    n2 = torch.tensor([[1.0, 0.0]])  # identical to the anchor: cosine distance 0
    both = TripletLoss("cosine", 1.0)((a, p, n, n2)).item()
    assert both == pytest.approx((d_ap + (d_ap + 1.0)) / 2, abs=1e-6)


def test_triplet_defaults_and_margin_override():
    assert TripletLoss().distance == "cosine" and TripletLoss().margin == pytest.approx(0.2)
    assert TripletLoss("euclidean").margin == pytest.approx(1.0)
    assert TripletLoss("dot").margin == pytest.approx(0.2)
    assert TripletLoss("euclidean", margin=0).margin == 0.0
    assert TripletLoss("dot", margin=3).margin == 3.0
    assert TripletLoss.columns == ("anchor", "positive", "negative_1")
    assert TripletLoss.needs_labels is False


def test_triplet_input_forms_and_labels_ignored():
    cols = _make_cols(4, seed=2)
    names = ["anchor", "positive", "negative_1", "negative_2"]
    loss_fn = TripletLoss("euclidean", 2.0)
    t_val, t_grads = _value_and_grads(lambda c: loss_fn(tuple(c)), cols)
    for fn in (lambda c: loss_fn(dict(zip(names, c))), lambda c: loss_fn(list(c)), lambda c: loss_fn(c, torch.ones(6))):
        v, gs = _value_and_grads(fn, cols)
        assert v.item() == pytest.approx(t_val.item(), abs=1e-12)
        for g, t in zip(gs, t_grads):
            torch.testing.assert_close(g, t, atol=1e-12, rtol=0)


def test_triplet_euclidean_identical_rows_have_finite_gradient():
    a = torch.randn(3, 4, requires_grad=True)
    p = a.detach().clone().requires_grad_(True)  # d(a, p) = 0 exactly
    n = torch.randn(3, 4, requires_grad=True)
    loss = TripletLoss("euclidean", margin=100.0)((a, p, n))
    for g in torch.autograd.grad(loss, (a, p, n)):
        assert torch.isfinite(g).all()


def test_triplet_needs_three_columns():
    with pytest.raises(ValueError):
        TripletLoss()((torch.randn(3, 4), torch.randn(3, 4)))


@pytest.mark.parametrize("bad", [-0.1, -1, float("nan"), float("inf"), "0.2", True])
def test_triplet_bad_margin_raises_config_error(bad):
    with pytest.raises(ConfigError, match=r"loss\.margin=.*expected a number >= 0"):
        TripletLoss("cosine", margin=bad)


@pytest.mark.parametrize("bad", ["manhattan", "Cosine", "cos", None, ""])
def test_triplet_bad_distance_raises_config_error(bad):
    with pytest.raises(ConfigError, match=r"loss\.distance=.*expected one of cosine, euclidean, dot"):
        TripletLoss(distance=bad)


# --------------------------------------------------------------------------- CosineSimilarityLoss


def _labels(batch, seed, dtype=torch.float32):
    return torch.rand(batch, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cosine_matches_reference(seed, dtype):
    cols = _make_cols(2, seed=seed, dtype=dtype)
    labels = _labels(6, seed)  # float32 labels, as the datamodule gives
    got = _value_and_grads(lambda c: CosineSimilarityLoss()(c, labels), cols)
    ref = _value_and_grads(lambda c: reference_cosine_mse(c, labels.tolist()), cols)
    assert got[0].dtype == dtype
    _assert_same(got, ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cosine_matches_sentence_transformers(seed, dtype):
    st = _st_losses()
    cols = _make_cols(2, seed=seed + 10, dtype=dtype)
    labels = _labels(6, seed + 10, dtype=dtype)
    ref = _value_and_grads(
        lambda c: _st_call(
            st.CosineSimilarityLoss, c, labels, loss_fct=nn.MSELoss(), cos_score_transformation=nn.Identity()
        ),
        cols,
    )
    got = _value_and_grads(lambda c: CosineSimilarityLoss()(c, labels), cols)
    _assert_same(got, ref)


def test_cosine_hand_example_and_scale_invariance():
    a = torch.tensor([[1.0, 0.0], [3.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[0.0, 2.0], [5.0, 0.0]], dtype=torch.float64)  # cos 0 and 1
    labels = torch.tensor([0.5, 0.8], dtype=torch.float64)
    assert CosineSimilarityLoss()((a, b), labels).item() == pytest.approx((0.25 + 0.04) / 2, abs=1e-12)
    assert CosineSimilarityLoss()({"text_a": 7 * a, "text_b": 0.1 * b}, labels).item() == pytest.approx(
        0.145, abs=1e-12
    )


def test_cosine_labels_required_one_per_row():
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    with pytest.raises(ValueError, match="labels"):
        CosineSimilarityLoss()((a, b))
    with pytest.raises(ValueError, match="one label per row"):
        CosineSimilarityLoss()((a, b), torch.rand(4))
    with pytest.raises(ValueError, match="two columns"):
        CosineSimilarityLoss()((a, b, a), torch.rand(3))
    assert CosineSimilarityLoss.columns == ("text_a", "text_b") and CosineSimilarityLoss.needs_labels is True


# --------------------------------------------------------------------------- ContrastiveLoss


LABEL_PATTERNS = {
    "mixed": [1, 0, 1, 1, 0, 0, 1, 0],
    "mostly_neg": [0, 0, 1, 0, 0, 0, 0, 0],
    "all_pos": [1] * 8,
    "all_neg": [0] * 8,
}
CONTRASTIVE_MARGINS = {"cosine": [0.3, 0.5, 1.0, 1.5], "euclidean": [0.5, 1.5, 3.0]}
CONTRASTIVE_CASES = [(d, m) for d, ms in CONTRASTIVE_MARGINS.items() for m in ms]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pattern", ["mixed", "mostly_neg"])
@pytest.mark.parametrize("distance,margin", CONTRASTIVE_CASES)
def test_contrastive_matches_reference(distance, margin, pattern, dtype):
    cols = _make_cols(2, batch=8, seed=int(10 * margin), dtype=dtype)
    labels = torch.tensor(LABEL_PATTERNS[pattern], dtype=torch.float32)
    got = _value_and_grads(lambda c: ContrastiveLoss(margin, distance)(c, labels), cols)
    ref = _value_and_grads(lambda c: reference_contrastive(c, labels.tolist(), distance, margin), cols)
    assert got[0].dtype == dtype
    _assert_same(got, ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pattern", ["mixed", "mostly_neg", "all_pos", "all_neg"])
@pytest.mark.parametrize("distance,margin", CONTRASTIVE_CASES)
def test_contrastive_matches_sentence_transformers(distance, margin, pattern, dtype):
    st = _st_losses()
    metric = _st_siamese_metric(st, distance)
    cols = _make_cols(2, batch=8, seed=int(10 * margin) + 1, dtype=dtype)
    labels = torch.tensor(LABEL_PATTERNS[pattern], dtype=torch.float32)
    ref = _value_and_grads(
        lambda c: _st_call(st.ContrastiveLoss, c, labels, distance_metric=metric, margin=margin, size_average=True),
        cols,
    )
    got = _value_and_grads(lambda c: ContrastiveLoss(margin, distance)(c, labels), cols)
    _assert_same(got, ref, nonzero=ref[0].item() > 0)


def test_contrastive_margin_matters_and_hand_example():
    # a = e1; b at cosine distance 0.2 (label 1) and 0.4 (label 0)
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[0.8, math.sqrt(1 - 0.64)], [0.6, 0.8]], dtype=torch.float64)
    labels = torch.tensor([1.0, 0.0])
    assert ContrastiveLoss(0.5)((a, b), labels).item() == pytest.approx(0.5 * (0.04 + 0.01) / 2, abs=1e-12)
    assert ContrastiveLoss(0.3)((a, b), labels).item() == pytest.approx(
        0.5 * 0.04 / 2, abs=1e-12
    )  # negative beyond margin
    # euclidean: |b - a| = 0.5 and 1.0
    b = torch.tensor([[1.5, 0.0], [1.0, 1.0]], dtype=torch.float64)
    assert ContrastiveLoss(1.5, "euclidean")((a, b), labels).item() == pytest.approx(0.5 * (0.25 + 0.25) / 2, abs=1e-12)


# --------------------------------------------------------------------------- online ContrastiveLoss


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pattern", list(LABEL_PATTERNS))
@pytest.mark.parametrize("distance,margin", CONTRASTIVE_CASES)
def test_online_contrastive_matches_reference(distance, margin, pattern, dtype):
    cols = _make_cols(2, batch=8, seed=int(10 * margin) + 2, dtype=dtype)
    labels = torch.tensor(LABEL_PATTERNS[pattern], dtype=torch.float32)
    got = _value_and_grads(lambda c: ContrastiveLoss(margin, distance, online=True)(c, labels), cols)
    ref = _value_and_grads(lambda c: reference_online_contrastive(c, labels.tolist(), distance, margin), cols)
    _assert_same(got, ref, nonzero=ref[0].item() > 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pattern", list(LABEL_PATTERNS))
@pytest.mark.parametrize("distance,margin", CONTRASTIVE_CASES)
def test_online_contrastive_matches_sentence_transformers(distance, margin, pattern, dtype):
    st = _st_losses()
    metric = _st_siamese_metric(st, distance)
    cols = _make_cols(2, batch=8, seed=int(10 * margin) + 3, dtype=dtype)
    labels = torch.tensor(LABEL_PATTERNS[pattern], dtype=torch.float32)
    ref = _value_and_grads(
        lambda c: _st_call(st.OnlineContrastiveLoss, c, labels, distance_metric=metric, margin=margin), cols
    )
    got = _value_and_grads(lambda c: OnlineContrastiveLoss(margin, distance)(c, labels), cols)
    _assert_same(got, ref, nonzero=ref[0].item() > 0)


def _pairs_at_distances(distances, distance: str):
    """Rows (a_i, b_i) with D(a_i, b_i) = distances[i] exactly (up to float64 rounding)."""
    a, b = [], []
    for d in distances:
        if distance == "cosine":
            c = 1 - d
            a.append([1.0, 0.0])
            b.append([2 * c, 2 * math.sqrt(1 - c * c)])  # norm 2: scale must not matter
        else:
            a.append([1.0, -1.0])
            b.append([1.0 + d, -1.0])
    return (
        torch.tensor(a, dtype=torch.float64, requires_grad=True),
        torch.tensor(b, dtype=torch.float64, requires_grad=True),
    )


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_online_selects_exactly_the_hard_pairs(distance):
    #        pos  neg  pos  neg  neg  pos  neg  neg  pos
    dists = [0.1, 0.2, 0.4, 0.5, 0.8, 0.7, 1.2, 0.7, 0.2]
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    # max positive distance 0.7 -> hard negatives 0.2, 0.5 (not 0.8, 1.2, nor the tie at 0.7: strict <)
    # min negative distance 0.2 -> hard positives 0.4, 0.7 (not 0.1, nor the tie at 0.2: strict >)
    hard_rows = {1, 2, 3, 5}
    a, b = _pairs_at_distances(dists, distance)
    loss = ContrastiveLoss(1.0, distance, online=True)((a, b), labels)
    expected = 0.4**2 + 0.7**2 + (1 - 0.2) ** 2 + (1 - 0.5) ** 2
    assert loss.item() == pytest.approx(expected, abs=1e-10)
    # the 0.8 negative is inside the margin: had it been selected it would add 0.04
    assert abs(loss.item() - (expected + 0.04)) > 1e-3
    ga, gb = torch.autograd.grad(loss, (a, b))
    for i in range(len(dists)):
        moved = bool(ga[i].abs().max() > 1e-8 or gb[i].abs().max() > 1e-8)
        assert moved == (i in hard_rows), f"row {i} (d={dists[i]}, label={int(labels[i])})"
    # with margin 0.5 the hard negative at 0.5 contributes 0 and the one at 0.2 contributes 0.09
    a, b = _pairs_at_distances(dists, distance)
    loss = ContrastiveLoss(0.5, distance, online=True)((a, b), labels)
    assert loss.item() == pytest.approx(0.4**2 + 0.7**2 + 0.3**2, abs=1e-10)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_online_single_class_batches_use_the_mean(distance):
    st = _st_losses()
    metric = _st_siamese_metric(st, distance)
    # only positives: mean 0.55 -> hard positives are 0.7 and 1.0
    a, b = _pairs_at_distances([0.1, 0.4, 0.7, 1.0], distance)
    pos = torch.ones(4)
    loss = OnlineContrastiveLoss(1.0, distance)((a, b), pos)
    assert loss.item() == pytest.approx(0.49 + 1.0, abs=1e-10)
    assert loss.item() == pytest.approx(
        _st_call(st.OnlineContrastiveLoss, [a, b], pos, distance_metric=metric, margin=1.0).item(), abs=ATOL
    )
    # only negatives: mean 0.65 -> hard negatives are 0.2 and 0.5
    a, b = _pairs_at_distances([0.2, 0.5, 0.8, 1.1], distance)
    neg = torch.zeros(4)
    loss = OnlineContrastiveLoss(1.0, distance)((a, b), neg)
    assert loss.item() == pytest.approx(0.64 + 0.25, abs=1e-10)
    assert loss.item() == pytest.approx(
        _st_call(st.OnlineContrastiveLoss, [a, b], neg, distance_metric=metric, margin=1.0).item(), abs=ATOL
    )
    # a single pair is never harder than itself: loss 0, and backward still works
    a, b = _pairs_at_distances([0.3], distance)
    loss = OnlineContrastiveLoss(1.0, distance)((a, b), torch.ones(1))
    assert loss.item() == 0.0
    assert all(g.abs().max() == 0 for g in torch.autograd.grad(loss, (a, b)))


def test_online_no_hard_pairs_gives_zero_with_a_graph():
    a, b = _pairs_at_distances([0.1, 0.2, 0.5, 0.9], "cosine")
    loss = OnlineContrastiveLoss(1.0)((a, b), torch.tensor([1.0, 1.0, 0.0, 0.0]))  # positives all closer than negatives
    assert loss.item() == 0.0 and loss.requires_grad
    assert all(g.abs().max() == 0 for g in torch.autograd.grad(loss, (a, b)))
    # the plain variant is not zero on the same batch (negatives inside the margin)
    assert ContrastiveLoss(1.0)((a.detach(), b.detach()), torch.tensor([1.0, 1.0, 0.0, 0.0])).item() > 0.01


def test_online_class_equals_online_flag_and_defaults():
    cols = _make_cols(2, batch=8, seed=4)
    labels = torch.tensor(LABEL_PATTERNS["mixed"], dtype=torch.float32)
    assert (
        OnlineContrastiveLoss(0.7, "euclidean")(cols, labels).item()
        == ContrastiveLoss(0.7, "euclidean", True)(cols, labels).item()
    )
    assert OnlineContrastiveLoss().online and not ContrastiveLoss().online
    assert ContrastiveLoss().margin == 0.5 and ContrastiveLoss().distance == "cosine"
    assert ContrastiveLoss.columns == ("text_a", "text_b") and ContrastiveLoss.needs_labels is True
    assert OnlineContrastiveLoss.columns == ("text_a", "text_b") and OnlineContrastiveLoss.needs_labels is True


@pytest.mark.parametrize("online", [False, True])
def test_contrastive_rejects_non_binary_or_missing_labels(online):
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    with pytest.raises(ValueError, match="binary labels"):
        ContrastiveLoss(online=online)((a, b), torch.tensor([1.0, 0.0, 0.6, 1.0]))
    with pytest.raises(ValueError, match="labels"):
        ContrastiveLoss(online=online)((a, b))
    with pytest.raises(ValueError, match="one label per row"):
        ContrastiveLoss(online=online)((a, b), torch.ones(3))
    # integer / bool-like labels are fine
    ContrastiveLoss(online=online)((a, b), torch.tensor([1, 0, 0, 1]))


@pytest.mark.parametrize("bad", [0, 0.0, -0.5, float("nan"), float("inf"), "0.5", True, None])
def test_contrastive_bad_margin_raises_config_error(bad):
    with pytest.raises(ConfigError, match=r"loss\.margin=.*expected a number > 0"):
        ContrastiveLoss(margin=bad)
    with pytest.raises(ConfigError, match=r"loss\.margin="):
        OnlineContrastiveLoss(margin=bad)


@pytest.mark.parametrize("bad", ["dot", "manhattan", "COSINE", None])
def test_contrastive_bad_distance_raises_config_error(bad):
    with pytest.raises(ConfigError, match=r"loss\.distance=.*expected one of cosine, euclidean"):
        ContrastiveLoss(distance=bad)


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_contrastive_bad_online_raises_config_error(bad):
    with pytest.raises(ConfigError, match=r"loss\.online="):
        ContrastiveLoss(online=bad)


@pytest.mark.parametrize("online", [False, True])
@pytest.mark.parametrize("margin", [0.5, 1.5, 3.0])
def test_st_builtin_euclidean_differs_only_by_its_eps(margin, online):
    """sentence-transformers' SiameseDistanceMetric.EUCLIDEAN is F.pairwise_distance = ||a - b + 1e-6||; ours is
    ||a - b||. On rows whose difference sums to 0 the values agree to ~1e-10 and the gradients to ~eps / D."""
    st = _st_losses()
    cls = st.OnlineContrastiveLoss if online else st.ContrastiveLoss
    metric = st.SiameseDistanceMetric.EUCLIDEAN
    cols = _zero_sum_pair(batch=8, seed=int(10 * margin) + 5)
    a, b = [c.detach() for c in cols]
    torch.testing.assert_close(metric(a, b), torch.linalg.vector_norm(a - b + 1e-6, dim=-1), atol=1e-12, rtol=0)
    labels = torch.tensor(LABEL_PATTERNS["mixed"], dtype=torch.float32)
    ref = _value_and_grads(lambda c: _st_call(cls, c, labels, distance_metric=metric, margin=margin), cols)
    got = _value_and_grads(lambda c: ContrastiveLoss(margin, "euclidean", online)(c, labels), cols)
    assert got[0].item() == pytest.approx(ref[0].item(), abs=1e-9)
    for g, r in zip(got[1], ref[1]):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=0)


# --------------------------------------------------------------------------- configs


def _instantiate(name: str):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONF_LOSS / f"{name}.yaml")
    return cfg, instantiate(cfg)


def test_configs_instantiate_with_the_class_defaults():
    cfg, loss = _instantiate("triplet")
    assert type(loss) is TripletLoss and cfg.margin is None and (loss.distance, loss.margin) == ("cosine", 0.2)
    cfg, loss = _instantiate("cosine")
    assert type(loss) is CosineSimilarityLoss
    cfg, loss = _instantiate("contrastive")
    assert type(loss) is ContrastiveLoss and (loss.margin, loss.distance, loss.online) == (0.5, "cosine", False)
    cfg, loss = _instantiate("online_contrastive")
    assert isinstance(loss, ContrastiveLoss) and (loss.margin, loss.distance, loss.online) == (0.5, "cosine", True)


@pytest.mark.parametrize("name", ["triplet", "cosine", "contrastive", "online_contrastive"])
def test_config_has_a_comment_naming_what_the_loss_needs(name):
    first = (CONF_LOSS / f"{name}.yaml").read_text().splitlines()[0]
    assert first.startswith("# ") and "needs" in first.lower()


def test_columns_fit_the_data_presets():
    """The required columns are the ones the data readers produce (pairs with a negative / sts)."""
    from embedexp.losses.config import check_loss_fits_data

    check_loss_fits_data(TripletLoss(), ("anchor", "positive", "negative_1"), False, "pairs")
    check_loss_fits_data(TripletLoss(), ("anchor", "positive", "negative_1", "negative_2"), False, "pairs")
    with pytest.raises(ConfigError):
        check_loss_fits_data(TripletLoss(), ("anchor", "positive"), False, "scifact")
    for loss in (CosineSimilarityLoss(), ContrastiveLoss(), OnlineContrastiveLoss()):
        check_loss_fits_data(loss, ("text_a", "text_b"), True, "stsb")
        with pytest.raises(ConfigError, match="needs labels"):
            check_loss_fits_data(loss, ("text_a", "text_b"), False, "x")
