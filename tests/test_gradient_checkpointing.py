"""model.gradient_checkpointing: the same gradients as the plain step, with dropout on, also under GradCache.

Hugging Face's checkpointing (non-reentrant torch.utils.checkpoint) recomputes each layer in backward from
the RNG state saved at its forward, so the recomputed dropout masks are the forward's; GradCache replays each
chunk's RNG state on top of that. The tests check the equality and that checkpointing really ran (each layer's
forward runs twice per step: forward, then recomputation in backward).
"""

from __future__ import annotations

import functools

import pytest
import torch

from embedexp.losses import InfoNCELoss
from embedexp.models import Encoder
from embedexp.models.tiny import build_tiny_decoder

from ddp_harness import run_step

TEXTS = [
    "what causes tides",
    "the moon pulls the sea",
    "knead the dough then let it rest for an hour",
    "a b",
    "protein folding in the cell",
    "heart rate and blood pressure",
]


def _layer_calls(enc: Encoder) -> list[int]:
    """Counts forward calls of the first linear layer inside the backbone's first transformer layer (transformers
    checkpoints the layer's `forward`, so hooks on the layer itself fire once; those inside it fire on recompute)."""
    calls = [0]
    layer = next(m for n, m in enc.hf_model.named_modules() if n.endswith(("layer.0", "layers.0")))
    first = next(m for m in layer.modules() if isinstance(m, torch.nn.Linear))
    first.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    return calls


def _grads(enc: Encoder, rng: torch.Tensor) -> dict[str, torch.Tensor]:
    """One contrastive loss on (query, document) pairs of TEXTS under RNG state `rng`; parameter gradients."""
    enc.train()
    enc.zero_grad(set_to_none=True)
    torch.set_rng_state(rng)
    q = enc(enc.tokenize(TEXTS, "query"))
    d = enc(enc.tokenize(TEXTS[1:] + TEXTS[:1], "document"))
    InfoNCELoss()([q, d]).backward()
    return {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory):
    return build_tiny_decoder(tmp_path_factory.mktemp("dec") / "qwen2", family="qwen2", seed=0)


@pytest.mark.parametrize("case", ["bert_full", "bert_lora", "qwen2_lora"])
def test_checkpointed_gradients_equal_plain(case, tiny_model_dir, qwen2_dir):
    folder = qwen2_dir if case.startswith("qwen2") else tiny_model_dir
    kwargs = {"max_seq_length": 32}
    if case.startswith("qwen2"):
        kwargs["pooling"] = "last_token"
    if case.endswith("lora"):
        kwargs["peft"] = {"r": 4, "alpha": 8, "dropout": 0.2}
    models = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # the same LoRA init
        enc = Encoder(str(folder), gradient_checkpointing=checkpointing, **kwargs)
        if case.endswith("lora"):
            with torch.no_grad():  # a non-zero B, so A gets gradients too
                g = torch.Generator().manual_seed(1)
                for n, p in enc.named_parameters():
                    if "lora_B" in n:
                        p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        models.append(enc)
    plain, ckpt = models
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), ckpt.state_dict().values()))
    calls_plain, calls_ckpt = _layer_calls(plain), _layer_calls(ckpt)
    rng = torch.manual_seed(123).get_state()
    g_plain, g_ckpt = _grads(plain, rng), _grads(ckpt, rng)
    assert calls_plain[0] == 2 and calls_ckpt[0] == 4  # two columns; checkpointing recomputed both in backward
    assert g_plain.keys() == g_ckpt.keys() and g_plain
    for n in g_plain:
        torch.testing.assert_close(g_ckpt[n], g_plain[n], atol=1e-6, rtol=0, msg=n)
    # dropout was on: another RNG state gives other gradients
    other = _grads(plain, torch.manual_seed(7).get_state())
    assert max(float((other[n] - g_plain[n]).abs().max()) for n in g_plain) > 1e-4


@pytest.mark.slow  # the LoRA variant runs by default (tests/test_lora.py, case gradcache_checkpointing)
def test_gradcache_with_checkpointing_equals_plain_big_batch(tiny_model_dir, tmp_path, monkeypatch):
    """Full fine-tuning, GradCache chunks of 3 over 8 rows, checkpointing on: the optimiser's gradients equal one
    plain (not checkpointed) backward over the whole batch under the step's RNG state (< 1e-6 absolute)."""
    from embedexp.distributed.grad_cache import chunk_rows, unsort

    rows = [(f"q{i} " + TEXTS[i % 6], f"d{i} " + TEXTS[(i + 1) % 6]) for i in range(8)]
    monkeypatch.setattr("embedexp.models.Encoder", functools.partial(Encoder, gradient_checkpointing=True))
    run_step(str(tiny_model_dir), rows, str(tmp_path), 1, InfoNCELoss(symmetric=True), 8, 3)
    monkeypatch.undo()
    cap = torch.load(tmp_path / "rank0.pt", weights_only=True)
    ref_enc = Encoder(str(tiny_model_dir), max_seq_length=32)
    ref_enc.train()
    torch.set_rng_state(cap["rng"])
    cols = []
    for features in cap["features"]:  # the chunks GradCache encoded, in its order: the same dropout masks
        chunks, order = chunk_rows(features, 3)
        cols.append(unsort(torch.cat([ref_enc(c) for c in chunks]), order))
    InfoNCELoss(symmetric=True)(cols).backward()
    ref = {n: p.grad for n, p in ref_enc.named_parameters() if p.grad is not None}
    assert cap["grads"].keys() == ref.keys()
    for n in ref:
        torch.testing.assert_close(cap["grads"][n], ref[n], atol=1e-6, rtol=0, msg=n)


def test_checkpointing_on_a_model_without_support_is_one_line(tiny_model_dir, monkeypatch):
    from transformers import BertModel

    from embedexp.errors import ConfigError

    monkeypatch.setattr(BertModel, "supports_gradient_checkpointing", False)
    with pytest.raises(ConfigError, match=r"^model.gradient_checkpointing=true: BertModel does not support"):
        Encoder(str(tiny_model_dir), max_seq_length=32, gradient_checkpointing=True)
