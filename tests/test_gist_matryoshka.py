"""GISTLoss and MatryoshkaLoss: value, gradients and masks against loop references and sentence-transformers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from embedexp.errors import ConfigError
from embedexp.losses.gist import GISTLoss
from embedexp.losses.infonce import InfoNCELoss
from embedexp.losses.matryoshka import MatryoshkaLoss, check_dims

TOL = 1e-5  # absolute and relative, float32 and float64

# --------------------------------------------------------------------------- data


def _make_batch(
    n_cols: int, seed: int, dtype=torch.float32, batch: int = 6, dim: int = 8, gdim: int = 5, flip_positive_rows=()
):
    """Trained columns (unnormalised, requires_grad) and guide columns built from 3 topics, so that
    the guide scores some in-batch candidates above the positives (something to mask) and others not.
    Rows in flip_positive_rows get a guide positive pointing away from the anchor (negative score)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, gdim, generator=g, dtype=torch.float64)
    topics = torch.randint(0, 3, (n_cols, batch), generator=g)
    topics[1] = topics[0]  # a positive shares its anchor's topic
    guides = []
    for c in range(n_cols):
        x = centers[topics[c]] + 0.7 * torch.randn(batch, gdim, generator=g, dtype=torch.float64)
        if c == 1:
            for r in flip_positive_rows:
                x[r] = -guides[0][r] + 0.3 * torch.randn(gdim, generator=g, dtype=torch.float64)
        guides.append(x)
    cols = []
    base = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    for c in range(n_cols):
        x = (base if c < 2 else 0) + torch.randn(batch, dim, generator=g, dtype=torch.float64)
        x = x * (0.5 + 1.5 * torch.rand(batch, 1, generator=g, dtype=torch.float64))  # rows of different norms
        cols.append(x.to(dtype).requires_grad_(True))
    return cols, [x.to(dtype) for x in guides]


def _value_and_grads(fn, cols):
    loss = fn(cols)
    grads = torch.autograd.grad(loss, cols)
    return loss.detach(), [g.detach() for g in grads]


def _assert_same(got, ref, what=""):
    (v1, g1), (v2, g2) = got, ref
    torch.testing.assert_close(v1, v2, atol=TOL, rtol=TOL, msg=f"value {what}")
    assert len(g1) == len(g2)
    for i, (a, b) in enumerate(zip(g1, g2)):
        torch.testing.assert_close(a, b, atol=TOL, rtol=TOL, msg=f"gradient of column {i} {what}")


# --------------------------------------------------------------------------- loop reference (GIST)


def _cos(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (u * v).sum() / (torch.sqrt((u * u).sum()) * torch.sqrt((v * v).sum()))


def _threshold(pos: float, strategy: str, margin: float) -> float:
    return pos - margin if strategy == "absolute" else pos - margin * abs(pos)


def _ref_rows(q, pos, negs, gq, gpos, gnegs, strategy, margin, contrast_q, contrast_p):
    """One direction, row by row: list of (logits, mask) with the target at index i of each row."""
    batch = q.shape[0]
    rows = []
    for i in range(batch):
        t = _threshold(float(_cos(gq[i], gpos[i])), strategy, margin)
        logits, mask = [], []
        for j in range(batch):  # query vs positives; the own positive is the target, never masked
            logits.append(_cos(q[i], pos[j]))
            mask.append(j != i and float(_cos(gq[i], gpos[j])) > t)
        if contrast_q:
            for j in range(batch):  # query vs other queries; itself always masked
                logits.append(_cos(q[i], q[j]))
                mask.append(j == i or float(_cos(gq[i], gq[j])) > t)
        if contrast_p:
            for j in range(batch):  # own positive vs other positives; itself always masked
                logits.append(_cos(pos[i], pos[j]))
                mask.append(j == i or float(_cos(gpos[i], gpos[j])) > t)
        for n, gn in zip(negs, gnegs):
            for j in range(batch):
                logits.append(_cos(q[i], n[j]))
                mask.append(float(_cos(gq[i], gn[j])) > t)
        rows.append((logits, mask))
    return rows


def reference_mask(guides, strategy, margin, contrast_anchors=True, contrast_positives=True):
    rows = _ref_rows(
        guides[0],
        guides[1],
        guides[2:],
        guides[0],
        guides[1],
        guides[2:],
        strategy,
        margin,
        contrast_anchors,
        contrast_positives,
    )
    return torch.tensor([m for _, m in rows], dtype=torch.bool)


def _ref_loss(rows, tau):
    terms = []
    for i, (logits, mask) in enumerate(rows):
        kept = torch.stack([z / tau for z, m in zip(logits, mask) if not m])
        terms.append(torch.logsumexp(kept, dim=0) - logits[i] / tau)
    return sum(terms) / len(terms)


def reference_gist(cols, guides, tau, strategy, margin, symmetric, contrast_anchors=True, contrast_positives=True):
    fwd = _ref_rows(
        cols[0],
        cols[1],
        cols[2:],
        guides[0],
        guides[1],
        guides[2:],
        strategy,
        margin,
        contrast_anchors,
        contrast_positives,
    )
    loss = _ref_loss(fwd, tau)
    if symmetric:
        bwd = _ref_rows(
            cols[1], cols[0], [], guides[1], guides[0], [], strategy, margin, contrast_positives, contrast_anchors
        )
        loss = (loss + _ref_loss(bwd, tau)) / 2
    return loss


# --------------------------------------------------------------------------- sentence-transformers oracles


def _tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]")))


class _FakeST(nn.Module):
    """Stands in for a SentenceTransformer: returns precomputed embeddings chosen by features['column']."""

    def __init__(self, cols, tokenizer=None) -> None:
        super().__init__()
        self.cols = list(cols)
        self.tokenizer = tokenizer
        self.max_seq_length = 128

    def forward(self, features: dict) -> dict:
        return {"sentence_embedding": self.cols[int(features["column"])]}

    def __getitem__(self, idx):  # ST's StaticEmbedding check looks at model[0]
        return self

    def get_embedding_dimension(self) -> int:
        return self.cols[0].shape[-1]


def _features(n):
    return [{"column": torch.tensor(i)} for i in range(n)]


def st_gist_one_direction(cols, guides, tau, strategy, margin, ca, cp):
    st = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
    tok = _tokenizer()
    model, guide = _FakeST(cols, tok), _FakeST(guides, tok)
    kwargs = dict(temperature=tau, margin_strategy=strategy, margin=margin, contrast_anchors=ca, contrast_positives=cp)
    if len(cols) <= 3:
        return st.GISTEmbedLoss(model, guide, **kwargs)(_features(len(cols)), labels=None)
    # GISTEmbedLoss takes at most one negative column; the cached variant's loss takes any number
    cached = st.CachedGISTEmbedLoss(model, guide, mini_batch_size=1024, **kwargs)
    return cached.calculate_loss([[c] for c in cols], [[g] for g in guides])


def st_gist(cols, guides, tau, strategy, margin, symmetric, ca=True, cp=True):
    loss = st_gist_one_direction(cols, guides, tau, strategy, margin, ca, cp)
    if symmetric:  # ST has no symmetric option: compose it from the reversed pair, flags kept on their columns
        back = st_gist_one_direction([cols[1], cols[0]], [guides[1], guides[0]], tau, strategy, margin, cp, ca)
        loss = (loss + back) / 2
    return loss


# --------------------------------------------------------------------------- GIST: value + gradient


CASES = [
    ("absolute", 0.0),
    ("absolute", 0.1),
    ("relative", 0.0),
    ("relative", 0.2),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("n_negatives", [0, 1, 2])
@pytest.mark.parametrize("strategy,margin", CASES)
def test_gist_matches_loop_reference_and_st(strategy, margin, n_negatives, symmetric, dtype):
    cols, guides = _make_batch(
        2 + n_negatives, seed=n_negatives + 7 * int(symmetric), dtype=dtype, flip_positive_rows=(1, 4)
    )
    loss_fn = GISTLoss(temperature=0.01, margin_strategy=strategy, margin=margin, symmetric=symmetric)

    got = _value_and_grads(lambda c: loss_fn(tuple(c), guide_embeddings=guides), cols)
    ref = _value_and_grads(lambda c: reference_gist(c, guides, 0.01, strategy, margin, symmetric), cols)
    oracle = _value_and_grads(lambda c: st_gist(c, guides, 0.01, strategy, margin, symmetric), cols)

    assert got[0].dtype == dtype and torch.isfinite(got[0])
    _assert_same(got, ref, "vs loop reference")
    _assert_same(got, oracle, "vs sentence-transformers")
    for g in ref[1][:2]:
        assert g.abs().max() > 1e-6  # anchor and positive really receive gradient


@pytest.mark.parametrize("ca,cp", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("symmetric", [False, True])
def test_gist_contrast_flags_match_reference_and_st(ca, cp, symmetric):
    cols, guides = _make_batch(3, seed=11, dtype=torch.float64)
    loss_fn = GISTLoss(0.05, "relative", 0.1, symmetric=symmetric, contrast_anchors=ca, contrast_positives=cp)
    got = _value_and_grads(lambda c: loss_fn(c, guide_embeddings=guides), cols)
    ref = _value_and_grads(lambda c: reference_gist(c, guides, 0.05, "relative", 0.1, symmetric, ca, cp), cols)
    oracle = _value_and_grads(lambda c: st_gist(c, guides, 0.05, "relative", 0.1, symmetric, ca, cp), cols)
    _assert_same(got, ref, "vs loop reference")
    _assert_same(got, oracle, "vs sentence-transformers")
    assert loss_fn.mask(guides).shape == (6, 6 * (2 + int(ca) + int(cp)))


def test_test_data_masks_something_but_not_everything():
    """Guards the tests above: the guide must mask rule-selected candidates (not only the forced ones)."""
    for n_cols in (2, 3, 4):
        _, guides = _make_batch(n_cols, seed=n_cols - 2, flip_positive_rows=(1, 4))
        for strategy, margin in CASES:
            m = reference_mask(guides, strategy, margin)
            forced = 2 * 6  # aa and pp diagonals
            unmaskable = 6  # targets
            assert m.sum() > forced + 3, (strategy, margin)
            assert m.numel() - m.sum() > unmaskable + 3, (strategy, margin)


def test_gist_differs_from_unmasked_infonce_and_margin_matters():
    cols, guides = _make_batch(3, seed=2)
    plain = GISTLoss(0.01, "absolute", 0.0)(cols, guide_embeddings=guides)
    wider = GISTLoss(0.01, "absolute", 0.3)(cols, guide_embeddings=guides)
    no_contrast = GISTLoss(0.01, contrast_anchors=False, contrast_positives=False)
    far_guides = [torch.eye(6), torch.eye(6), -torch.eye(6)]  # g(a_i, p_i) = 1 > every other score: rule masks nothing
    assert abs(plain.item() - wider.item()) > 1e-3
    # nothing masked by the rule and no contrast blocks -> exactly InfoNCE
    unmasked = no_contrast(cols, guide_embeddings=far_guides)
    assert no_contrast.mask(far_guides).sum() == 0
    torch.testing.assert_close(unmasked, InfoNCELoss(0.01)(cols), atol=TOL, rtol=TOL)
    assert abs(plain.item() - unmasked.item()) > 1e-3


# --------------------------------------------------------------------------- GIST: mask


@pytest.mark.parametrize("n_negatives", [0, 1, 2])
@pytest.mark.parametrize("strategy,margin", CASES + [("relative", 0.5), ("absolute", 0.5)])
@pytest.mark.parametrize("ca,cp", [(True, True), (False, True), (True, False)])
def test_mask_equals_loop_rule(strategy, margin, n_negatives, ca, cp):
    _, guides = _make_batch(2 + n_negatives, seed=3 + n_negatives, dtype=torch.float64, flip_positive_rows=(0, 2, 5))
    got = GISTLoss(0.01, strategy, margin, contrast_anchors=ca, contrast_positives=cp).mask(guides)
    assert got.dtype == torch.bool
    assert torch.equal(got, reference_mask(guides, strategy, margin, ca, cp))


def test_relative_margin_with_negative_positive_score():
    """g(a_i, p_i) < 0: the threshold is g - margin*|g| (lower than g), not g*(1 - margin) (higher than g)."""
    deg = [0.0, 90.0]
    a = torch.tensor([[math.cos(math.radians(x)), math.sin(math.radians(x))] for x in deg], dtype=torch.float64)

    def unit(x):
        return torch.tensor([math.cos(math.radians(x)), math.sin(math.radians(x))], dtype=torch.float64)

    # row 0: positive at 120 deg -> g = -0.5; threshold -0.5 - 0.5*0.5 = -0.75 (the naive g*(1-m) would be -0.25)
    # p_1 at 250 deg -> g(a_0, p_1) = cos(250) = -0.342: in (-0.75, -0.25) -> masked by the rule, kept by the naive one
    p = torch.stack([unit(120.0), unit(250.0)])
    n = torch.stack([unit(200.0), unit(170.0)])  # g(a_0, n_0) = -0.940 (kept), g(a_0, n_1) = -0.985 (kept)
    guides = [a, p, n]
    m = GISTLoss(0.01, "relative", 0.5, contrast_anchors=False, contrast_positives=False).mask(guides)
    # row 0: [ap_00 target, ap_01, an_00, an_01]
    assert m[0].tolist() == [False, True, False, False]
    assert torch.equal(m, reference_mask(guides, "relative", 0.5, False, False))
    naive_t = -0.5 * (1 - 0.5)
    assert not (float(_cos(a[0], p[1])) > naive_t)  # the naive rule would keep it: the test tells them apart
    # margin 0: only candidates above -0.5
    m0 = GISTLoss(0.01, "relative", 0.0, contrast_anchors=False, contrast_positives=False).mask(guides)
    assert m0[0].tolist() == [False, True, False, False]
    # relative margin 1.0 -> threshold -1.0: every candidate with g > -1 is masked
    m1 = GISTLoss(0.01, "relative", 1.0, contrast_anchors=False, contrast_positives=False).mask(guides)
    assert m1[0].tolist() == [False, True, True, True]
    # the loss on such a batch matches the loop reference and ST
    cols = [
        torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(k)).requires_grad_(True)
        for k in range(3)
    ]
    loss_fn = GISTLoss(0.01, "relative", 0.5)
    got = _value_and_grads(lambda c: loss_fn(c, guide_embeddings=guides), cols)
    _assert_same(got, _value_and_grads(lambda c: reference_gist(c, guides, 0.01, "relative", 0.5, False), cols))
    _assert_same(got, _value_and_grads(lambda c: st_gist(c, guides, 0.01, "relative", 0.5, False), cols))


def _unit_rows(degrees):
    return torch.tensor([[math.cos(math.radians(x)), math.sin(math.radians(x))] for x in degrees], dtype=torch.float64)


HAND_GUIDES = [_unit_rows([0, 90, 200]), _unit_rows([50, 95, 150]), _unit_rows([30, 275, 10])]
# guide cosines (row i: threshold from g(a_i, p_i)):
# row 0 t=0.643  ap [0.643*, -0.087, -0.866]  aa [self, 0.000, -0.940]  pp [self, 0.707, -0.174]  an [0.866, 0.087, 0.985]
# row 1 t=0.996  ap [0.766, 0.996*, 0.500]   aa [0.000, self, -0.342]   pp [0.707, self, 0.574]   an [0.500, -0.996, 0.174]
# row 2 t=0.643  ap [-0.866, -0.259, 0.643*] aa [-0.940, -0.342, self]  pp [-0.174, 0.574, self]  an [-0.985, 0.259, -0.985]
o = False  # kept
X = True  # masked
HAND_MASK_ABS_0 = [
    #  ap         aa         pp         an
    [o, o, o, X, o, o, X, X, o, X, o, X],
    [o, o, o, o, X, o, o, X, o, o, o, o],
    [o, o, o, o, o, X, o, o, X, o, o, o],
]
HAND_MASK_ABS_01 = [row[:] for row in HAND_MASK_ABS_0]
HAND_MASK_ABS_01[2][7] = X  # row 2 t=0.543 now: pp g(p_2, p_1)=0.574 > 0.543
HAND_MASK_ABS_025 = [row[:] for row in HAND_MASK_ABS_01]
HAND_MASK_ABS_025[1][0] = X  # row 1 t=0.746: ap g(a_1, p_0)=0.766 > 0.746


@pytest.mark.parametrize(
    "margin,expected", [(0.0, HAND_MASK_ABS_0), (0.1, HAND_MASK_ABS_01), (0.25, HAND_MASK_ABS_025)]
)
def test_mask_hand_built(margin, expected):
    got = GISTLoss(0.01, "absolute", margin).mask(HAND_GUIDES)
    assert got.tolist() == expected
    assert torch.equal(got, reference_mask(HAND_GUIDES, "absolute", margin))
    # the target is never masked, even when the guide scores a candidate far above it
    assert not got[torch.arange(3), torch.arange(3)].any()


def test_tie_with_positive_score_is_not_masked():
    """The rule is strict (g > t_i): a candidate the guide scores exactly like the positive (here an exact
    duplicate of it) is kept at margin 0 and masked by any margin > 0."""
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[0.6, 0.8], [0.6, 0.8]])  # p_0 == p_1: g(a_i, p_j) == g(a_i, p_i) for all j
    flags = dict(contrast_anchors=False, contrast_positives=False)
    for strategy in ("absolute", "relative"):
        assert not GISTLoss(0.01, strategy, 0.0, **flags).mask([a, p]).any()
        assert GISTLoss(0.01, strategy, 0.01, **flags).mask([a, p]).tolist() == [[o, X], [X, o]]


def test_self_similarities_masked_even_when_guide_says_duplicate():
    """g(a_i, p_i) = 1 (duplicate) with margin 0: no candidate can exceed the threshold, yet s(a_i, a_i)
    and s(p_i, p_i) must not count as candidates (ST relies on 1 > t_i there)."""
    a = _unit_rows([0, 90])
    m = GISTLoss(0.01, "absolute", 0.0).mask([a, a.clone()])
    assert m.tolist() == [[o, o, X, o, X, o], [o, o, o, X, o, X]]


def test_mask_monotone_in_margin():
    _, guides = _make_batch(3, seed=21, dtype=torch.float64, flip_positive_rows=(2,))
    for strategy in ("absolute", "relative"):
        prev = None
        for margin in (0.0, 0.05, 0.2, 0.5, 1.0):
            m = GISTLoss(0.01, strategy, margin).mask(guides)
            if prev is not None:
                assert bool((m | ~prev).all())  # masked at a smaller margin -> masked at a larger one
            prev = m


# --------------------------------------------------------------------------- GIST: guide handling


def test_guide_embeddings_get_no_gradient():
    cols, guides = _make_batch(3, seed=4)
    guides = [g.clone().requires_grad_(True) for g in guides]
    loss = GISTLoss(0.01, "absolute", 0.1, symmetric=True)(cols, guide_embeddings=guides)
    grads = torch.autograd.grad(loss, cols + guides, allow_unused=True)
    assert all(g is not None for g in grads[:3])
    assert all(g is None for g in grads[3:])
    loss2 = GISTLoss(0.01, "absolute", 0.1, symmetric=True)(cols, guide_embeddings=guides)
    loss2.backward()
    assert all(g.grad is None for g in guides)
    assert all(c.grad is not None for c in cols)
    m = GISTLoss().mask(guides)
    assert not m.requires_grad


def test_dict_inputs_and_guide_dim_differs():
    cols, guides = _make_batch(3, seed=5, gdim=3, dim=10)
    names = ["anchor", "positive", "negative_1"]
    loss_fn = GISTLoss(0.02, "relative", 0.1)
    t = loss_fn(cols, guide_embeddings=guides)
    d = loss_fn(dict(zip(names, cols)), guide_embeddings=dict(zip(names, guides)))
    torch.testing.assert_close(t, d, atol=0, rtol=0)


def test_missing_or_mismatched_guide_embeddings():
    cols, guides = _make_batch(3, seed=6)
    with pytest.raises(ValueError, match="guide_embeddings"):
        GISTLoss()(cols)
    with pytest.raises(ValueError):
        GISTLoss()(cols, guide_embeddings=guides[:2])
    with pytest.raises(ValueError):
        GISTLoss()(cols[:1], guide_embeddings=guides[:1])
    with pytest.raises(ValueError):
        GISTLoss()(cols, guide_embeddings=[g[:3] for g in guides])


def test_guide_is_frozen_and_not_trained():
    guide = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    loss_fn = GISTLoss(guide=guide)
    assert loss_fn.guide is guide
    assert not any(p.requires_grad for p in guide.parameters())
    assert not guide.training
    assert list(loss_fn.parameters()) == [] and len(loss_fn.state_dict()) == 0
    loss_fn.train()  # Lightning does this every epoch; must not switch on the guide's dropout
    assert not guide.training
    other = nn.Linear(4, 4)
    loss_fn.guide = other  # assignment goes through the freezing path, not submodule registration
    assert loss_fn.guide is other and not other.weight.requires_grad and list(loss_fn.parameters()) == []
    wrapped = MatryoshkaLoss(loss_fn, dims=(4, 2))
    assert list(wrapped.parameters()) == []
    assert GISTLoss().guide is None


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"temperature": 0}, "loss.temperature="),
        ({"temperature": -0.1}, "loss.temperature="),
        ({"temperature": "0.01"}, "loss.temperature="),
        ({"margin_strategy": "percent"}, "loss.margin_strategy="),
        ({"margin": -0.1}, "loss.margin="),
        ({"margin": float("nan")}, "loss.margin="),
        ({"margin": None}, "loss.margin="),
        ({"guide": "minilm"}, "loss.guide="),
    ],
)
def test_gist_config_errors(kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        GISTLoss(**kwargs)


def test_gist_defaults():
    loss = GISTLoss()
    assert (loss.temperature, loss.margin_strategy, loss.margin, loss.symmetric) == (0.01, "absolute", 0.0, False)
    assert loss.contrast_anchors and loss.contrast_positives
    assert loss.columns == ("anchor", "positive") and loss.needs_labels is False


# --------------------------------------------------------------------------- Matryoshka


def _hand_matryoshka(inner, cols, dims, weights, labels=None, **extra_by_dim):
    total = 0
    for d, w in zip(dims, weights):
        trunc = [c[:, :d] / torch.linalg.vector_norm(c[:, :d], dim=1, keepdim=True) for c in cols]
        extra = {k: f(d) for k, f in extra_by_dim.items()}
        total = total + w * inner(trunc, labels, **extra)
    return total


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weights", [None, (1.0, 0.5, 0.25, 2.0)])
@pytest.mark.parametrize("n_negatives", [0, 2])
def test_matryoshka_infonce_equals_weighted_sum(weights, n_negatives, dtype):
    dims = (16, 8, 5, 2)
    cols, _ = _make_batch(2 + n_negatives, seed=30 + n_negatives, dtype=dtype, dim=16)
    inner = InfoNCELoss(0.05, symmetric=True)
    loss_fn = MatryoshkaLoss(inner, dims=dims, weights=weights)
    w = weights or (1.0,) * len(dims)
    got = _value_and_grads(lambda c: loss_fn(c), cols)
    ref = _value_and_grads(lambda c: _hand_matryoshka(inner, c, dims, w), cols)
    _assert_same(got, ref)
    # the sum really depends on the truncation (guards the reference)
    full = InfoNCELoss(0.05, symmetric=True)(cols) * sum(w)
    assert abs(full.item() - got[0].item()) > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matryoshka_gist_equals_weighted_sum(dtype):
    dims, weights = (8, 4, 2), (1.0, 0.7, 0.3)
    cols, guides = _make_batch(3, seed=40, dtype=dtype, gdim=6)
    inner = GISTLoss(0.02, "relative", 0.1, symmetric=True)

    # default: guide embeddings forwarded unchanged
    loss_fn = MatryoshkaLoss(inner, dims=dims, weights=weights)
    got = _value_and_grads(lambda c: loss_fn(c, None, guide_embeddings=guides), cols)
    ref = _value_and_grads(lambda c: _hand_matryoshka(inner, c, dims, weights, guide_embeddings=lambda d: guides), cols)
    _assert_same(got, ref, "guide untruncated")

    # truncate_extra: guide embeddings truncated + re-normalised like the columns (guide dim 6 >= all dims but 8)
    dims2 = (6, 4, 2)
    loss_t = MatryoshkaLoss(inner, dims=dims2, weights=weights, truncate_extra=("guide_embeddings",))
    got_t = _value_and_grads(lambda c: loss_t(c, None, guide_embeddings=guides), cols)
    ref_t = _value_and_grads(
        lambda c: _hand_matryoshka(
            inner,
            c,
            dims2,
            weights,
            guide_embeddings=lambda d: [
                g[:, :d] / torch.linalg.vector_norm(g[:, :d], dim=1, keepdim=True) for g in guides
            ],
        ),
        cols,
    )
    _assert_same(got_t, ref_t, "guide truncated")
    untrunc = MatryoshkaLoss(inner, dims=dims2, weights=weights)(cols, None, guide_embeddings=guides)
    assert abs(untrunc.item() - got_t[0].item()) > 1e-4  # the option really changes the masks
    with pytest.raises(ValueError):  # guide of 6 dims cannot be truncated to 8
        MatryoshkaLoss(inner, dims=dims, truncate_extra=("guide_embeddings",))(cols, None, guide_embeddings=guides)


def test_matryoshka_dict_input_and_mirrored_attributes():
    cols, _ = _make_batch(3, seed=41, dim=16)
    names = ["anchor", "positive", "negative_1"]
    loss_fn = MatryoshkaLoss(InfoNCELoss(), dims=(16, 4))
    torch.testing.assert_close(loss_fn(dict(zip(names, cols))), loss_fn(cols), atol=0, rtol=0)
    assert loss_fn.columns == ("anchor", "positive") and loss_fn.needs_labels is False
    assert MatryoshkaLoss(GISTLoss(), dims=(4,)).columns == ("anchor", "positive")

    class NeedsLabels(nn.Module):
        columns = ("sentence1", "sentence2")
        needs_labels = True

        def forward(self, embeddings, labels=None):
            return (embeddings[0] * embeddings[1]).sum(-1).sub(labels).pow(2).mean()

    wrapped = MatryoshkaLoss(NeedsLabels(), dims=(16, 8))
    assert wrapped.columns == ("sentence1", "sentence2") and wrapped.needs_labels is True
    labels = torch.rand(6)
    got = wrapped(cols[:2], labels)
    ref = _hand_matryoshka(NeedsLabels(), cols[:2], (16, 8), (1, 1), labels)
    torch.testing.assert_close(got, ref, atol=TOL, rtol=TOL)


def test_matryoshka_on_leaf_tensors_like_gradcache():
    """Cached embeddings as leaves with requires_grad: backward fills .grad, inputs untouched, repeatable."""
    cols, guides = _make_batch(3, seed=42, dim=8)
    leaves = [c.detach().clone().requires_grad_(True) for c in cols]
    before = [c.detach().clone() for c in leaves]
    loss_fn = MatryoshkaLoss(GISTLoss(0.01, "absolute", 0.05), dims=(8, 4, 2))
    loss_fn(leaves, None, guide_embeddings=guides).backward()
    first = [c.grad.clone() for c in leaves]
    for c in leaves:
        c.grad = None
    loss_fn(leaves, None, guide_embeddings=guides).backward()
    for c, b, g in zip(leaves, before, first):
        assert torch.equal(c.detach(), b)
        torch.testing.assert_close(c.grad, g, atol=0, rtol=0)
        assert g.abs().max() > 0


def test_n_dims_per_step_reproducible_and_counts():
    dims = (32, 16, 8, 4, 2)
    cols, _ = _make_batch(2, seed=43, dim=32)
    inner = InfoNCELoss(0.05)
    loss_fn = MatryoshkaLoss(inner, dims=dims, weights=(1, 2, 3, 4, 5), n_dims_per_step=2)

    def run(seed):
        torch.manual_seed(seed)
        out = []
        for _ in range(20):
            value = loss_fn(cols)
            chosen = loss_fn.last_dims
            w = [loss_fn.weights[dims.index(d)] for d in chosen]
            torch.testing.assert_close(value, _hand_matryoshka(inner, cols, chosen, w), atol=TOL, rtol=TOL)
            out.append(chosen)
        return out

    a, b = run(0), run(0)
    assert a == b
    assert all(
        len(s) == 2 and len(set(s)) == 2 and set(s) <= set(dims) and list(s) == sorted(s, reverse=True) for s in a
    )
    assert len(set(a)) > 3  # really sampled
    assert run(1) != a
    # -1 and n == len(dims): every dim, no randomness consumed
    for n in (-1, len(dims)):
        every = MatryoshkaLoss(inner, dims=dims, n_dims_per_step=n)
        torch.manual_seed(0)
        every(cols)
        assert every.last_dims == dims
        assert torch.equal(torch.get_rng_state(), torch.manual_seed(0).get_state())


def test_begin_step_fixes_the_dims_of_one_optimisation_step():
    """Issue 14 item 8: inside a step every call (GradCache anchor chunks, accumulated micro-batches, DDP ranks)
    uses the step's dims, a pure function of (seed, step) that leaves the global RNG alone.
    Reference: the hand-written draw below (randperm of a generator seeded seed * 1_000_003 + step + 0x4D52)."""
    dims = (32, 16, 8, 4, 2)
    cols, _ = _make_batch(2, seed=44, dim=32)
    inner = InfoNCELoss(0.05)
    loss_fn = MatryoshkaLoss(inner, dims=dims, weights=(1, 2, 3, 4, 5), n_dims_per_step=2)
    other_rank = MatryoshkaLoss(inner, dims=dims, weights=(1, 2, 3, 4, 5), n_dims_per_step=2)
    torch.manual_seed(0)
    rng = torch.get_rng_state()
    drawn = []
    for step in range(12):
        loss_fn.begin_step(step, seed=3)
        calls = set()
        for _ in range(4):  # e.g. 4 anchor chunks
            loss_fn(cols)
            calls.add(loss_fn.last_dims)
        other_rank.begin_step(step, seed=3)
        other_rank(cols)
        g = torch.Generator().manual_seed(3 * 1_000_003 + step + 0x4D52)
        expected = tuple(dims[i] for i in sorted(torch.randperm(5, generator=g)[:2].tolist()))
        assert calls == {expected} and other_rank.last_dims == expected == loss_fn.step_dims(step, seed=3)
        drawn.append(expected)
    assert torch.equal(torch.get_rng_state(), rng)  # dropout draws are unaffected
    assert len(set(drawn)) > 3
    assert MatryoshkaLoss(inner, dims=dims, n_dims_per_step=-1).step_dims(5, seed=3) == dims


@pytest.mark.parametrize(
    "dims", [(), [], (64, 128), (128, 128, 64), (128, 0), (128, -64), (128, 64.0), "768", None, 768, (True,)]
)
def test_bad_dims_raise_config_error(dims):
    with pytest.raises(ConfigError, match=r"loss\.dims="):
        MatryoshkaLoss(InfoNCELoss(), dims=dims)


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"weights": (1, 1)}, "loss.weights="),
        ({"weights": (1, 1, 1, 1)}, "loss.weights="),
        ({"weights": (1, float("nan"), 1)}, "loss.weights="),
        ({"weights": (1, -1, 1)}, "loss.weights="),
        ({"n_dims_per_step": 0}, "loss.n_dims_per_step="),
        ({"n_dims_per_step": 4}, "loss.n_dims_per_step="),
        ({"n_dims_per_step": -2}, "loss.n_dims_per_step="),
        ({"truncate_extra": "guide_embeddings"}, "loss.truncate_extra="),
    ],
)
def test_bad_matryoshka_config(kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        MatryoshkaLoss(InfoNCELoss(), dims=(8, 4, 2), **kwargs)


def test_dims_accept_omegaconf_list_and_check_dims():
    from omegaconf import OmegaConf

    loss = MatryoshkaLoss(InfoNCELoss(), dims=OmegaConf.create([8, 4]), weights=OmegaConf.create([1, 0.5]))
    assert loss.dims == (8, 4) and loss.weights == (1.0, 0.5)
    check_dims((768, 512, 64), 768)
    check_dims((256, 64), 768)  # allowed (warns: full size untrained)
    with pytest.raises(ConfigError, match=r"loss\.dims=.*1024.*768"):
        check_dims((1024, 512), 768)
    with pytest.raises(ConfigError, match=r"loss\.dims="):
        check_dims((64, 128), 768)
    with pytest.raises(ValueError):  # at run time: a column narrower than a dim
        MatryoshkaLoss(InfoNCELoss(), dims=(16, 8))([torch.randn(3, 8), torch.randn(3, 8)])


def test_matryoshka_never_encodes():
    """Only the given embeddings are used: a loss that records its inputs sees truncated copies of them."""
    seen = []

    class Recorder(nn.Module):
        columns = ("anchor", "positive")

        def forward(self, embeddings, labels=None, **extra):
            seen.append(([c.shape[-1] for c in embeddings], sorted(extra)))
            return sum(c.sum() for c in embeddings)

    cols = [torch.randn(2, 8), torch.randn(2, 8)]
    MatryoshkaLoss(Recorder(), dims=(8, 3))(cols, None, guide_embeddings=[torch.randn(2, 5)] * 2, foo=1)
    assert seen == [([8, 8], ["foo", "guide_embeddings"]), ([3, 3], ["foo", "guide_embeddings"])]


# --------------------------------------------------------------------------- Matryoshka: sentence-transformers oracle


@pytest.mark.parametrize("n_negatives", [0, 1])
def test_matryoshka_matches_sentence_transformers_mnrl(n_negatives):
    st = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
    dims, weights = (16, 8, 3), (1.0, 0.5, 2.0)
    cols, _ = _make_batch(2 + n_negatives, seed=50 + n_negatives, dim=16)
    model = _FakeST(cols)
    oracle = st.MatryoshkaLoss(model, st.MultipleNegativesRankingLoss(model, scale=20.0), list(dims), list(weights))
    ref = _value_and_grads(lambda c: oracle(_features(len(cols)), labels=None), cols)
    got = _value_and_grads(lambda c: MatryoshkaLoss(InfoNCELoss(0.05), dims, weights)(c), cols)
    _assert_same(got, ref)


@pytest.mark.parametrize("n_negatives", [0, 1])
def test_matryoshka_gist_matches_sentence_transformers(n_negatives):
    """ST shrinks only the trained model's outputs: its guide stays full size (our default)."""
    st = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
    dims, weights = (8, 5, 2), (1.0, 0.5, 0.25)
    cols, guides = _make_batch(2 + n_negatives, seed=60 + n_negatives, dim=8, gdim=8)
    tok = _tokenizer()
    model, guide = _FakeST(cols, tok), _FakeST(guides, tok)
    inner_st = st.GISTEmbedLoss(model, guide, temperature=0.01, margin_strategy="absolute", margin=0.1)
    oracle = st.MatryoshkaLoss(model, inner_st, list(dims), list(weights))
    ref = _value_and_grads(lambda c: oracle(_features(len(cols)), labels=None), cols)
    loss_fn = MatryoshkaLoss(GISTLoss(0.01, "absolute", 0.1), dims, weights)
    got = _value_and_grads(lambda c: loss_fn(c, None, guide_embeddings=guides), cols)
    _assert_same(got, ref)
