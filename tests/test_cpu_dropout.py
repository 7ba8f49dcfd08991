"""embedexp/models/cpu_dropout.py: the same function as F.dropout (keep rate, scaling, gradient, seeding)."""

import math

import pytest
import torch
import torch.nn.functional as F

from embedexp.models import cpu_dropout
from embedexp.models.cpu_dropout import CPUDropout, dropout, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_keep_rate_and_scaling(p, dtype):
    torch.manual_seed(0)
    x = torch.rand(1000, 1000).add_(0.5).to(dtype)  # no zeros: a zero in the output means dropped
    out = dropout(x, p, True)
    kept = out != 0
    n = x.numel()
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(int(kept.sum()) - n * (1 - p)) < 5 * sigma
    assert out.dtype == dtype
    ref = x[kept].float() / (1 - p)
    assert torch.allclose(out[kept].float(), ref, rtol=1e-2 if dtype == torch.bfloat16 else 1e-6)
    # not a fixed pattern: neighbouring rows differ, and the kept fraction is even across the tensor
    assert not torch.equal(kept[0], kept[1])
    assert abs(kept[:500].float().mean().item() - kept[500:].float().mean().item()) < 10 * sigma / n * 2


def test_gradient_uses_the_forward_mask():
    torch.manual_seed(1)
    x = torch.rand(64, 300).add_(0.5).requires_grad_(True)
    out = dropout(x, 0.3, True)
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    want = upstream * (out != 0) / 0.7
    assert torch.allclose(x.grad, want, atol=1e-6)
    y = torch.rand(5, 7, dtype=torch.float64, requires_grad=True)
    keep = torch.arange(35).view(5, 7) % 3 > 0
    assert torch.autograd.gradcheck(lambda t: cpu_dropout._ScaleKept.apply(t, keep, 1.5), (y,))


def test_masks_follow_torch_seed_and_rng_state():
    torch.manual_seed(7)
    a = keep_mask((100, 100), 0.2)
    state = torch.get_rng_state()
    b = keep_mask((100, 100), 0.2)
    torch.manual_seed(7)
    assert torch.equal(keep_mask((100, 100), 0.2), a)
    torch.set_rng_state(state)  # a resumed run restores this state: the next mask is the same
    assert torch.equal(keep_mask((100, 100), 0.2), b)
    assert not torch.equal(a, b)


def test_eval_mode_and_p_zero_are_identity():
    x = torch.randn(4, 5)
    assert dropout(x, 0.5, False) is x and dropout(x, 0.0, True) is x
    m = CPUDropout(0.5).eval()
    assert m(x) is x


def test_attention_equals_transformers_eager_without_dropout(tiny_model_dir):
    from transformers import AutoModel

    feats = {
        "input_ids": torch.tensor([[101, 2023, 2003, 1037, 3231, 102], [101, 7592, 102, 0, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]]),
    }
    ref = AutoModel.from_pretrained(str(tiny_model_dir), attn_implementation="eager").eval()
    ours = AutoModel.from_pretrained(str(tiny_model_dir)).eval()
    cpu_dropout.register_attention()
    ours.set_attn_implementation(cpu_dropout.ATTENTION_NAME)
    assert cpu_dropout.replace_dropout_modules(ours) > 0
    with torch.no_grad():
        assert torch.allclose(ours(**feats).last_hidden_state, ref(**feats).last_hidden_state, atol=1e-6)


def test_encoder_training_uses_it_and_learns(tiny_model_dir, monkeypatch):
    """Training mode: dropout is really applied (two passes differ) through both the modules and the attention."""
    from embedexp.models import Encoder

    monkeypatch.setattr(cpu_dropout, "wanted", lambda: True)
    calls = []
    real = cpu_dropout.keep_mask
    monkeypatch.setattr(cpu_dropout, "keep_mask", lambda shape, p: calls.append(tuple(shape)) or real(shape, p))
    enc = Encoder(str(tiny_model_dir))
    assert not any(type(m) is torch.nn.Dropout for m in enc.backbone.modules())
    feats = enc.tokenize(["vitamin d and bone fractures", "sleep"], "document")
    enc.train()
    a, b = enc(feats), enc(feats)
    assert enc.backbone.config._attn_implementation == cpu_dropout.ATTENTION_NAME
    assert not torch.allclose(a, b)
    heads = enc.backbone.config.num_attention_heads
    assert any(len(s) == 4 and s[1] == heads for s in calls)  # the attention probabilities' dropout
    enc.eval()
    with torch.no_grad():
        assert torch.allclose(enc(feats), enc(feats))


@pytest.mark.parametrize("value, expected", [("1", True), ("0", False)])
def test_env_override(monkeypatch, value, expected):
    monkeypatch.setenv("EMBEDEXP_FAST_DROPOUT", value)
    cpu_dropout.wanted.cache_clear()
    try:
        assert cpu_dropout.wanted() is expected
    finally:
        cpu_dropout.wanted.cache_clear()


def test_matches_f_dropout_statistics_on_a_linear_model():
    """Same expected output as F.dropout: E[dropout(x)] = x for both (averaged over many masks)."""
    torch.manual_seed(3)
    x = torch.rand(20, 20) + 0.5
    ours = torch.stack([dropout(x, 0.25, True) for _ in range(4000)]).mean(0)
    theirs = torch.stack([F.dropout(x, 0.25, True) for _ in range(4000)]).mean(0)
    assert torch.allclose(ours, x, rtol=0.05) and torch.allclose(theirs, x, rtol=0.05)
