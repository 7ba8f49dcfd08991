"""Known-positive masking (issue 17 item 4): a known positive of the anchor is never its negative.

Reference values are worked by hand (math.log/exp on the cosine scores), independently of the loss code."""

from __future__ import annotations

import math

import pytest
import torch

from embedexp.data.no_duplicates import text_hash
from embedexp.losses import GISTLoss, InfoNCELoss, MatryoshkaLoss

TAU = 0.05
# anchors 0 and 1 are two questions whose positive is the same answer text; anchor 2 has its own answer
A = torch.tensor([[0.8, 0.6, 0.0], [0.8, 0.6, 0.0], [0.0, 0.8, 0.6]])
P = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
POS_TEXTS = ["the shared answer", "the shared answer", "another answer"]


def _ids(anchor_texts=("q0", "q1", "q2"), pos_texts=POS_TEXTS, extra_cols=()):
    text_ids = [torch.tensor([text_hash(t) for t in col]) for col in (anchor_texts, pos_texts, *extra_cols)]
    known_ids = text_ids[1].unsqueeze(1).clone()  # each anchor's own positive (what the collator always adds)
    return text_ids, known_ids


def _hand(rows):
    """mean_i -log(exp(s_ii) / sum_{j kept} exp(s_ij)), s = cos / TAU, from per-anchor lists of kept cosines."""
    return sum(-(t / TAU) + math.log(sum(math.exp(c / TAU) for c in kept)) for t, kept in rows) / len(rows)


def test_shared_positive_hand_computed():
    """The issue's case: unmasked, each of the two rows trains the other's (identical) positive as a negative,
    loss log(2 + e^-4) = 0.702 per row; masked, log(1 + e^-4) = 0.018."""
    text_ids, known_ids = _ids()
    unmasked = InfoNCELoss(TAU)([A, P])
    masked = InfoNCELoss(TAU)([A, P], text_ids=text_ids, known_ids=known_ids)
    # cosines: a0.p0 = a0.p1 = 0.8, a0.p2 = 0.6; a2.p0 = a2.p1 = 0, a2.p2 = 0.8
    want_unmasked = _hand([(0.8, [0.8, 0.8, 0.6]), (0.8, [0.8, 0.8, 0.6]), (0.8, [0.0, 0.0, 0.8])])
    want_masked = _hand([(0.8, [0.8, 0.6]), (0.8, [0.8, 0.6]), (0.8, [0.0, 0.0, 0.8])])
    assert unmasked.item() == pytest.approx(want_unmasked, rel=1e-5)
    assert masked.item() == pytest.approx(want_masked, rel=1e-5)
    per_row_unmasked, per_row_masked = math.log(2 + math.exp(-4)), math.log(1 + math.exp(-4))
    assert per_row_unmasked == pytest.approx(0.702, abs=1e-3) and per_row_masked == pytest.approx(0.018, abs=1e-3)
    # switched off: exactly the unmasked loss
    off = InfoNCELoss(TAU, mask_known_positives=False)([A, P], text_ids=text_ids, known_ids=known_ids)
    assert off.item() == unmasked.item()


def test_qrels_relevant_candidate_and_hard_negative_column_are_masked():
    """Anchor 2 judges positive 0's document relevant (known_ids from the qrels), and anchor 0's hard negative
    is the text of its own positive's twin: both are left out; the targets stay."""
    negs = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.6, 0.8, 0.0]])
    neg_texts = ["the shared answer", "neg one", "neg two"]
    text_ids, known = _ids(pos_texts=["answer zero", "answer one", "answer two"], extra_cols=(neg_texts,))
    known_ids = torch.zeros(3, 2, dtype=torch.int64)
    known_ids[:, 0] = known[:, 0]
    known_ids[0, 1] = text_hash("the shared answer")  # a0 knows "the shared answer" is relevant
    known_ids[2, 1] = text_hash("answer zero")  # a2 knows p0 is relevant
    got = InfoNCELoss(TAU)([A, P, negs], text_ids=text_ids, known_ids=known_ids)
    # candidates: p0 p1 p2 n0 n1 n2; a0: n0 masked; a2: p0 masked
    c = lambda a, b: float(torch.nn.functional.cosine_similarity(a, b, dim=0))  # noqa: E731
    cand = [P[0], P[1], P[2], negs[0], negs[1], negs[2]]
    kept = [[c(A[0], x) for j, x in enumerate(cand) if j != 3], [c(A[1], x) for x in cand]]
    kept.append([c(A[2], x) for j, x in enumerate(cand) if j != 0])
    want = _hand([(c(A[i], P[i]), kept[i]) for i in range(3)])
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_symmetric_masks_anchors_whose_known_positive_is_the_row_positive():
    text_ids, known_ids = _ids()
    got = InfoNCELoss(TAU, symmetric=True)([A, P], text_ids=text_ids, known_ids=known_ids)
    forward = _hand([(0.8, [0.8, 0.6]), (0.8, [0.8, 0.6]), (0.8, [0.0, 0.0, 0.8])])
    # backward: p_i against anchors; p0 is a known positive of a0 and a1 -> a1 masked for p0, a0 for p1
    backward = _hand([(0.8, [0.8, 0.0]), (0.8, [0.8, 0.0]), (0.8, [0.6, 0.6, 0.8])])
    assert got.item() == pytest.approx((forward + backward) / 2, rel=1e-5)


def test_anchor_rows_and_gradcache_chunks_agree_with_the_full_masked_loss():
    """Cross-rank gather and GradCache score a slice of anchors against all candidates: the mean over slices
    equals the full masked loss, and GradCache's embedding gradients equal plain autograd's."""
    from embedexp.distributed.grad_cache import loss_and_embedding_grads

    text_ids, known_ids = _ids()
    loss = InfoNCELoss(TAU, symmetric=True)
    full = loss([A, P], text_ids=text_ids, known_ids=known_ids)
    parts = [loss([A, P], text_ids=text_ids, known_ids=known_ids, anchor_rows=slice(i, i + 1)) for i in range(3)]
    assert (sum(parts) / 3).item() == pytest.approx(full.item(), rel=1e-6)
    extra = {"text_ids": text_ids, "known_ids": known_ids}
    value, grads = loss_and_embedding_grads(loss, [A, P], None, extra, True, True, anchor_chunk_size=1)
    a, p = A.clone().requires_grad_(True), P.clone().requires_grad_(True)
    loss([a, p], **extra).backward()
    assert value.item() == pytest.approx(full.item(), rel=1e-6)
    assert torch.allclose(grads[0], a.grad, atol=1e-6) and torch.allclose(grads[1], p.grad, atol=1e-6)


def test_matryoshka_passes_the_ids_through():
    text_ids, known_ids = _ids()
    emb = [torch.cat([A, torch.zeros(3, 1)], 1), torch.cat([P, torch.zeros(3, 1)], 1)]
    got = MatryoshkaLoss(InfoNCELoss(TAU), dims=[4, 3])(emb, text_ids=text_ids, known_ids=known_ids)
    assert got.item() == pytest.approx(2 * InfoNCELoss(TAU)([A, P], text_ids=text_ids, known_ids=known_ids).item())


def test_gist_masks_known_positives_like_infonce():
    """A guide that masks nothing (each anchor's own positive is its guide's best match; contrast flags off):
    GIST with the ids equals masked InfoNCE at the same temperature."""
    text_ids, known_ids = _ids()
    guide = [torch.eye(3), torch.eye(3)]
    gist = GISTLoss(temperature=TAU, contrast_anchors=False, contrast_positives=False)
    got = gist([A, P], guide_embeddings=guide, text_ids=text_ids, known_ids=known_ids)
    want = InfoNCELoss(TAU)([A, P], text_ids=text_ids, known_ids=known_ids)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert gist([A, P], guide_embeddings=guide).item() == pytest.approx(InfoNCELoss(TAU)([A, P]).item(), rel=1e-5)


def test_source_without_in_batch_negatives_scores_only_its_own_row():
    negs = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    got = InfoNCELoss(TAU)([A, P, negs], in_batch_negatives=False)
    c = lambda a, b: float(torch.nn.functional.cosine_similarity(a, b, dim=0))  # noqa: E731
    want = _hand([(c(A[i], P[i]), [c(A[i], P[i]), c(A[i], negs[i])]) for i in range(3)])
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_collator_and_module_carry_the_ids_to_the_loss(tiny_model_dir):
    """Rows sharing a positive text, through ColumnCollator and EmbeddingModule.compute_loss: the loss gets
    text_ids/known_ids (the masked loss differs from the unmasked one on the same batch)."""
    from embedexp.data import ColumnCollator
    from embedexp.models import Encoder
    from embedexp.module import EmbeddingModule

    encoder = Encoder(str(tiny_model_dir))
    items = [(("q one", "shared doc"), None, {}), (("q two", "shared doc"), None, {}), (("q three", "d3"), None, {})]
    batch = ColumnCollator(encoder.tokenize, ("query", "document"), mask_ids=True)(items)
    assert batch["known_ids"].tolist() == [[text_hash("shared doc")]] * 2 + [[text_hash("d3")]]
    torch.manual_seed(0)
    encoder.eval()
    with torch.no_grad():
        masked = EmbeddingModule(encoder, InfoNCELoss()).compute_loss(batch)
        plain = EmbeddingModule(encoder, InfoNCELoss(mask_known_positives=False)).compute_loss(batch)
    assert masked.item() < plain.item()
