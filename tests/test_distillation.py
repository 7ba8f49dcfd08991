"""Distillation losses (MarginMSE, listwise KL [+ InfoNCE]): values and gradients against sentence-transformers'
MarginMSELoss / DistillKLDivLoss on the same embeddings, GradCache = one big batch, Matryoshka, config and data
errors, and a tiny end-to-end `embedexp-train` on a FlagEmbedding jsonl with pos_scores/neg_scores."""

from __future__ import annotations

import json
import re

import pytest
import torch
from sentence_transformers.sentence_transformer.losses import DistillKLDivLoss
from sentence_transformers.sentence_transformer.losses import MarginMSELoss as STMarginMSE
from sentence_transformers.util import pairwise_cos_sim, pairwise_dot_score

from embedexp.errors import ConfigError, DataError
from embedexp.losses import DistillKLLoss, InfoNCELoss, MarginMSELoss, MatryoshkaLoss

ST_SIM = {"dot": pairwise_dot_score, "cosine": pairwise_cos_sim}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models: one thread avoids thread-pool contention on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cols(n_cols: int, batch: int = 6, dim: int = 8, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(batch, dim, generator=g, dtype=torch.float64) * (0.5 + torch.rand(batch, 1, generator=g))
        ).requires_grad_(True)
        for _ in range(n_cols)
    ]


def _teacher(batch: int, n: int, seed: int = 1, spread: float = 4.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, n, generator=g, dtype=torch.float64) * spread


def _value_and_grads(fn, cols):
    value = fn(cols)
    return value.detach(), [g.detach() for g in torch.autograd.grad(value, cols)]


def _assert_same(got, ref, atol=1e-10):
    (v, gs), (rv, rgs) = got, ref
    assert v.item() == pytest.approx(rv.item(), abs=atol, rel=1e-9)
    for g, r in zip(gs, rgs):
        torch.testing.assert_close(g, r, atol=atol, rtol=1e-9)


# --------------------------------------------------------------------------- the oracle: sentence-transformers


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
@pytest.mark.parametrize("n_neg", [1, 3])
def test_margin_mse_equals_sentence_transformers(similarity, n_neg):
    cols, t = _cols(2 + n_neg, seed=n_neg), _teacher(6, 1 + n_neg)
    ours = MarginMSELoss(similarity=similarity)
    oracle = STMarginMSE(None, similarity_fct=ST_SIM[similarity])  # compute_loss_from_embeddings needs no model
    got = _value_and_grads(lambda c: ours(c, teacher_scores=t), cols)
    ref = _value_and_grads(lambda c: oracle.compute_loss_from_embeddings(c, t), cols)
    _assert_same(got, ref)
    assert got[0].item() > 0
    # scale multiplies the student's similarities: = ST with the teacher's margins divided by the scale, x scale^2
    scaled = _value_and_grads(lambda c: MarginMSELoss(similarity=similarity, scale=20.0)(c, teacher_scores=t), cols)
    ref20 = _value_and_grads(lambda c: oracle.compute_loss_from_embeddings(c, t / 20.0) * 400.0, cols)
    _assert_same(scaled, ref20, atol=1e-8)


@pytest.mark.parametrize(
    "kwargs, st_kwargs",
    [
        ({"similarity": "dot"}, {"similarity_fct": pairwise_dot_score}),
        ({"similarity": "cosine", "temperature": 2.0}, {"similarity_fct": pairwise_cos_sim, "temperature": 2.0}),
        (
            {"similarity": "cosine", "student_temperature": 0.05, "teacher_temperature": 1.5},
            {"similarity_fct": pairwise_cos_sim, "student_temperature": 0.05, "teacher_temperature": 1.5},
        ),
    ],
    ids=["dot_T1", "cos_T2", "cos_Ts005_Tt15"],
)
def test_distill_kl_equals_sentence_transformers(kwargs, st_kwargs):
    cols, t = _cols(5, seed=3), _teacher(6, 4)
    ours = DistillKLLoss(**kwargs, scale_by_temperature_squared=True)
    oracle = DistillKLDivLoss(None, **st_kwargs)
    ref = _value_and_grads(lambda c: oracle.compute_loss_from_embeddings(c, t), cols)
    _assert_same(_value_and_grads(lambda c: ours(c, teacher_scores=t), cols), ref)
    # the preset's default (no T_s^2 factor) is the same loss divided by T_s^2
    ts = ours.student_temperature
    unscaled = DistillKLLoss(**kwargs, scale_by_temperature_squared=False)
    ref_unscaled = (ref[0] / ts**2, [g / ts**2 for g in ref[1]])
    _assert_same(_value_and_grads(lambda c: unscaled(c, teacher_scores=t), cols), ref_unscaled, atol=1e-8)


def test_distill_kl_hand_worked_example():
    """One anchor, candidates scored (dot) 1 and 0, teacher 0 and 0: KL(uniform || softmax(1, 0))."""
    q = torch.tensor([[1.0, 0.0]])
    p, n = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    value = DistillKLLoss(similarity="dot")((q, p, n), teacher_scores=torch.zeros(1, 2))
    log_q = torch.log_softmax(torch.tensor([1.0, 0.0]), 0)
    expect = 0.5 * (torch.log(torch.tensor(0.5)) - log_q[0]) + 0.5 * (torch.log(torch.tensor(0.5)) - log_q[1])
    assert value.item() == pytest.approx(expect.item(), abs=1e-7)


def test_kl_plus_infonce_is_the_weighted_sum_and_masks_known_positives():
    cols, t = _cols(4, seed=5), _teacher(6, 3)
    text_ids = [torch.arange(1, 7) + 100 * c for c in range(4)]
    known = torch.stack([text_ids[1], text_ids[1].roll(1)], dim=1)  # row i's positive and row i-1's
    kw = {"text_ids": text_ids, "known_ids": known}
    mixed = DistillKLLoss(similarity="cosine", student_temperature=0.05, infonce_weight=0.7)
    alone = DistillKLLoss(similarity="cosine", student_temperature=0.05)
    infonce = InfoNCELoss(0.05)
    got = mixed(cols, teacher_scores=t, **kw)
    expect = alone(cols, teacher_scores=t) + 0.7 * infonce(cols, **kw)
    assert got.item() == pytest.approx(expect.item(), abs=1e-10)
    assert infonce(cols, **kw).item() != pytest.approx(infonce(cols).item())  # the mask did something
    assert mixed.in_batch_negatives and mixed.mask_known_positives and mixed.supports_anchor_rows
    assert not alone.in_batch_negatives and not alone.mask_known_positives


@pytest.mark.parametrize("loss", [MarginMSELoss(), DistillKLLoss(infonce_weight=1.0)], ids=["margin_mse", "kl_nce"])
def test_anchor_chunks_add_up_to_the_whole_batch(loss):
    """GradCache's anchor chunks: sum over chunks of loss(anchor_rows=chunk) * |chunk| / B = loss of the batch."""
    cols, t = _cols(4, batch=7, seed=7), _teacher(7, 3)
    whole = _value_and_grads(lambda c: loss(c, teacher_scores=t), cols)
    chunks = [slice(0, 3), slice(3, 6), slice(6, 7)]
    parts = _value_and_grads(
        lambda c: sum(loss(c, teacher_scores=t, anchor_rows=s) * (s.stop - s.start) / 7 for s in chunks), cols
    )
    _assert_same(parts, whole, atol=1e-10)


def test_matryoshka_wraps_distill_kl():
    """Matryoshka passes teacher_scores through: the sum over dims of the loss on truncated embeddings."""
    cols, t = _cols(4, dim=8, seed=9), _teacher(6, 3)
    inner = DistillKLLoss(student_temperature=0.1, infonce_weight=0.5)
    wrapped = MatryoshkaLoss(inner, dims=[8, 4], weights=[1.0, 0.5])
    got = wrapped(cols, teacher_scores=t)
    expect = inner(cols, teacher_scores=t) + 0.5 * inner([c[:, :4] for c in cols], teacher_scores=t)
    assert got.item() == pytest.approx(expect.item(), abs=1e-10)  # cosine: truncation's re-normalising is moot
    got.backward()
    assert all(c.grad is not None and torch.isfinite(c.grad).all() for c in cols)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "cls, kwargs, key",
    [
        (MarginMSELoss, {"similarity": "euclid"}, "loss.similarity"),
        (MarginMSELoss, {"scale": 0}, "loss.scale"),
        (DistillKLLoss, {"temperature": -1.0}, "loss.temperature"),
        (DistillKLLoss, {"teacher_temperature": float("inf")}, "loss.teacher_temperature"),
        (DistillKLLoss, {"infonce_weight": -0.5}, "loss.infonce_weight"),
        (DistillKLLoss, {"infonce_temperature": 0}, "loss.infonce_temperature"),
        (DistillKLLoss, {"scale_by_temperature_squared": "yes"}, "loss.scale_by_temperature_squared"),
    ],
)
def test_bad_loss_config_is_one_line_naming_the_key(cls, kwargs, key):
    with pytest.raises(ConfigError) as e:
        cls(**kwargs)
    assert str(e.value).startswith(f"{key}=") and "\n" not in str(e.value)


def test_teacher_score_shape_and_values_are_checked():
    cols = _cols(3)
    with pytest.raises(ValueError, match="teacher_scores=\\(B, 2\\)"):
        DistillKLLoss()(cols)
    with pytest.raises(ValueError, match="expected \\(batch, 1 \\+ negatives\\) = \\(6, 2\\)"):
        MarginMSELoss()(cols, teacher_scores=torch.zeros(6, 3))
    with pytest.raises(ValueError, match="NaN or inf"):
        MarginMSELoss()(cols, teacher_scores=torch.tensor([[0.0, float("nan")]] * 6))


def test_nan_teacher_score_in_a_batch_is_a_data_error_naming_the_row():
    from embedexp.module import teacher_scores

    batch = {"texts": [["first query", "second query"]], "scores": torch.tensor([[1.0, 0.5], [2.0, float("nan")]])}
    with pytest.raises(DataError) as e:
        teacher_scores(batch)
    msg = str(e.value)
    assert "negative_1" in msg and "'second query'" in msg and "nan" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="pos_scores/neg_scores"):
        teacher_scores({"texts": [["q"]]})


def test_data_without_teacher_scores_is_refused_before_training():
    from embedexp.losses.config import check_loss_fits_data

    cols = ("anchor", "positive", "negative_1")
    with pytest.raises(ConfigError, match="^loss=DistillKLLoss distils teacher scores, but data=demo has none"):
        check_loss_fits_data(DistillKLLoss(), cols, False, "data=demo", has_scores=False)
    with pytest.raises(ConfigError, match="distils teacher scores"):
        check_loss_fits_data(MatryoshkaLoss(MarginMSELoss(), dims=[8]), cols, False, "data=demo", has_scores=False)
    with pytest.raises(ConfigError, match="needs columns"):
        check_loss_fits_data(DistillKLLoss(), cols[:2], False, "data=demo", has_scores=True)
    check_loss_fits_data(DistillKLLoss(), cols, False, "data=demo", has_scores=True)
    check_loss_fits_data(InfoNCELoss(), cols, False, "data=demo", has_scores=False)


# --------------------------------------------------------------------------- GradCache = one big batch


def test_gradcache_distillation_gradient_equals_one_big_batch(tiny_model_dir, tmp_path):
    """One real Lightning step with GradCache (3-row chunks, 2-anchor chunks), dropout on, KL + InfoNCE over
    2 negative columns: the parameter gradient equals plain autograd on the whole batch (< 1e-5 relative)."""
    from test_distributed import _reference_grads, _rel_err, _rows

    from embedexp.data.scored_rows import ScoredRows

    from ddp_harness import run_step

    rows = _rows(8)
    scores = _teacher(8, 3, seed=4).tolist()
    loss = DistillKLLoss(student_temperature=0.05, infonce_weight=1.0)
    run_step(str(tiny_model_dir), ScoredRows(rows, scores), str(tmp_path), 1, loss, 8, 3, 2)
    cap = torch.load(tmp_path / "rank0.pt", weights_only=True)
    t = torch.tensor(scores, dtype=torch.float32)
    ref = _reference_grads(tiny_model_dir, [cap], lambda cols: loss(cols, teacher_scores=t), 3)
    err = _rel_err(cap["grads"], ref)
    assert err < 1e-5, f"relative gradient error {err:.2e}"
    wrong = _reference_grads(tiny_model_dir, [cap], lambda cols: loss(cols, teacher_scores=t.flip(0)), 3)
    assert _rel_err(wrong, ref) > 1e-3  # the teacher scores really are in the gradient (row-aligned)


@pytest.mark.slow
@pytest.mark.parametrize("infonce_weight", [0.0, 1.0], ids=["kl_local", "kl_infonce_gathered"])
def test_ddp_distillation_gradient_equals_one_big_batch(infonce_weight, tiny_model_dir, tmp_path):
    """2 gloo ranks x 4 rows: with InfoNCE the teacher scores are gathered with the rows; without, the loss is
    local. Either way each rank's gradient equals one process on the 8 rows."""
    from test_distributed import _reference_grads, _rel_err, _rows

    from embedexp.data.scored_rows import ScoredRows

    from ddp_harness import run_step

    rows = _rows(8)
    scores = _teacher(8, 3, seed=4).tolist()
    loss = DistillKLLoss(student_temperature=0.05, infonce_weight=infonce_weight)
    run_step(str(tiny_model_dir), ScoredRows(rows, scores), str(tmp_path), 2, loss, 4, None)
    caps = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    t = torch.tensor(scores, dtype=torch.float32)
    # the rows each rank trained on (Lightning's split), in rank order: their scores in that order
    order = [int(re.match(r"r(\d+)c0", a).group(1)) for cap in caps for a in _decode(cap, tiny_model_dir)[0]]
    assert sorted(order) == list(range(8))
    ref = _reference_grads(tiny_model_dir, caps, lambda cols: loss(cols, teacher_scores=t[order]), None)
    for cap in caps:
        err = _rel_err(cap["grads"], ref)
        assert err < 1e-5, f"relative gradient error {err:.2e}"


def _decode(cap, model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    return [tok.batch_decode(f["input_ids"], skip_special_tokens=True) for f in cap["features"]]


# --------------------------------------------------------------------------- end to end


def _flag_jsonl(path, n_rows: int = 24, n_neg: int = 2):
    words = "protein cell gene tumour virus brain heart drug dose trial mouse patient risk blood liver".split()
    g = torch.Generator().manual_seed(0)

    def text(k):
        return f"{k} " + " ".join(words[int(i)] for i in torch.randint(len(words), (6,), generator=g))

    with open(path, "w") as f:
        for r in range(n_rows):
            row = {
                "query": text(f"q{r}"),
                "pos": [text(f"p{r}")],
                "neg": [text(f"n{r}_{j}") for j in range(n_neg)],
                "pos_scores": [5.0 + r % 3],
                "neg_scores": [float(-j) for j in range(n_neg)],
            }
            f.write(json.dumps(row) + "\n")
    return path


@pytest.mark.parametrize(
    "overrides",
    [
        ["loss=distill_kl", "loss.infonce_weight=1.0"],
        pytest.param(["loss=margin_mse", "trainer.grad_cache.chunk_size=4"], marks=pytest.mark.slow),
    ],
    ids=["distill_kl_infonce", "margin_mse_gradcache"],
)
def test_train_end_to_end_on_a_table_with_teacher_scores(overrides, tmp_path):
    from test_losses_e2e import _cfg

    from embedexp.train import train

    data = _flag_jsonl(tmp_path / "flag.jsonl")
    out = tmp_path / "out"
    train(_cfg(out, ["data=table", f"data.train.path={data}", "data.batch_size=8", *overrides]))
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 3


def test_train_without_teacher_scores_is_one_config_error_before_the_model_loads(tmp_path, monkeypatch):
    from test_losses_e2e import _cfg

    import embedexp.train as train_mod

    monkeypatch.setattr(train_mod, "_fit", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ConfigError, match="distils teacher scores, but data=pairs has none"):
        train_mod.train(
            _cfg(
                tmp_path / "out",
                # no eval set from ../shared/data: a fresh clone (CI) may not have it beside it
                [
                    "loss=distill_kl",
                    "data=pairs",
                    f"data.train.path={_plain_pairs(tmp_path)}",
                    "~data.eval_sets.stsb_test",
                ],
            )
        )
    with pytest.raises(ConfigError, match="^loss=DistillKLLoss distils teacher scores, but miner=bm25"):
        train_mod.train(_cfg(tmp_path / "out2", ["loss=distill_kl", "miner=bm25"]))


def _plain_pairs(tmp_path):
    path = tmp_path / "pairs.jsonl"
    with open(path, "w") as f:
        for r in range(16):
            f.write(json.dumps({"anchor": f"q{r} a", "positive": f"p{r} b", "negatives": [f"n{r} c"]}) + "\n")
    return path
