"""CoSENTLoss: value and gradient equal sentence-transformers' CoSENTLoss (test-time oracle) and a hand-worked case."""

import math

import pytest
import torch

from embedexp.errors import ConfigError
from embedexp.losses.cosent import CoSENTLoss


def _st_cosent(a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor, scale: float) -> torch.Tensor:
    """sentence-transformers' CoSENTLoss applied to given embeddings (its model is bypassed)."""
    from sentence_transformers import losses

    class Fixed(torch.nn.Module):
        def forward(self, features):
            return {"sentence_embedding": features["emb"]}

    loss = losses.CoSENTLoss(Fixed(), scale=scale)
    return loss([{"emb": a}, {"emb": b}], labels)


@pytest.mark.parametrize("scale", [20.0, 5.0])
def test_equals_sentence_transformers(scale):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(12, 16, generator=g, requires_grad=True)
    b = torch.randn(12, 16, generator=g, requires_grad=True)
    labels = torch.randint(0, 6, (12,), generator=g).float()  # ties included
    ours = CoSENTLoss(scale)((a, b), labels)
    ga, gb = torch.autograd.grad(ours, (a, b))
    theirs = _st_cosent(a, b, labels, scale)
    ta, tb = torch.autograd.grad(theirs, (a, b))
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
    assert torch.allclose(ga, ta, atol=1e-6) and torch.allclose(gb, tb, atol=1e-6)


def test_hand_worked_two_pairs():
    # cosines 1 (row 0) and 0 (row 1); labels say row 0 < row 1: L = log(1 + exp(s * (1 - 0)))
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert CoSENTLoss(2.0)((a, b), torch.tensor([0.0, 1.0])).item() == pytest.approx(math.log(1 + math.exp(2.0)))
    assert CoSENTLoss(2.0)((a, b), torch.tensor([1.0, 0.0])).item() == pytest.approx(math.log(1 + math.exp(-2.0)))
    assert CoSENTLoss(2.0)((a, b), torch.tensor([1.0, 1.0])).item() == pytest.approx(0.0)  # no ordered pair


def test_bad_scale():
    with pytest.raises(ConfigError, match=r"^loss.scale=0; expected a number > 0"):
        CoSENTLoss(0)
