"""TSDAE: word-deletion noise, encoder/decoder tying, loss value vs independent computations, training."""

from __future__ import annotations

import random
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from embedexp.data.noise import delete_words
from embedexp.errors import ConfigError
from embedexp.losses.tsdae import TSDAELoss
from embedexp.models import Encoder

SENTENCES = [
    "the cat sat on the warm mat by the kitchen door",
    "bread needs a long and slow rise in a warm place",
    "orbital mechanics explains how satellites stay in their paths",
    "she planted tomatoes and basil along the garden fence",
    "the train to the city leaves every hour on weekdays",
    "a good night of sleep improves memory and mood",
    "rivers carry sediment from the mountains to the sea",
    "the museum opened a new exhibit about ancient maps",
    "coffee prices rose sharply after the dry summer",
    "he fixed the old bicycle with parts from a friend",
    "the library stays open late during the exam weeks",
    "wind turbines turn slowly on the hills above town",
    "children learned to count using colourful wooden blocks",
    "the storm knocked out power across the northern valley",
    "fresh snow covered the quiet streets before dawn",
    "the team celebrated their first win of the season",
]


# --------------------------------------------------------------------------- helpers


@pytest.fixture()
def encoder(tiny_model_dir) -> Encoder:
    return Encoder(str(tiny_model_dir), pooling="cls")


def _batch(enc: Encoder, originals, seed: int = 0):
    rng = random.Random(seed)
    damaged = [delete_words(s, 0.6, rng) for s in originals]
    return enc.tokenize(damaged, "document"), enc.tokenize(originals, "document")


def _param_ids(module: nn.Module) -> set[int]:
    return {id(p) for p in module.parameters()}


def _storages(module: nn.Module) -> set[int]:
    return {p.untyped_storage().data_ptr() for p in module.parameters()}


# --------------------------------------------------------------------------- 1. noise


def test_delete_words_ratio_zero_keeps_all():
    rng = random.Random(0)
    for s in SENTENCES:
        assert delete_words(s, 0.0, rng) == " ".join(s.split())
    assert delete_words("  spaced   out\twords \n", 0.0) == "spaced out words"


def test_delete_words_keeps_about_forty_percent():
    rng = random.Random(1234)
    total = kept = 0
    for _ in range(200):
        for s in SENTENCES:
            words = s.split()
            out = delete_words(s, 0.6, rng).split()
            assert 1 <= len(out) <= len(words)
            it = iter(words)
            assert all(w in it for w in out), "kept words must be a subsequence of the original words"
            total += len(words)
            kept += len(out)
    # ~30k Bernoulli(0.4) draws: std of the fraction ~0.003; the at-least-one rule adds < 0.001.
    frac = kept / total
    print(f"kept fraction {frac:.4f} over {total} words")
    assert abs(frac - 0.4) < 0.015


def test_delete_words_at_least_one_word_and_empty_text():
    rng = random.Random(7)
    for _ in range(500):
        out = delete_words("one two", 0.99, rng)
        assert out in ("one", "two")
    assert delete_words("single", 0.9, rng) == "single"
    assert delete_words("", 0.6, rng) == ""
    assert delete_words("   ", 0.6, rng) == "   "


def test_delete_words_deterministic_for_seeded_rng():
    a = [delete_words(s, 0.6, random.Random(42)) for s in SENTENCES]
    b = [delete_words(s, 0.6, random.Random(42)) for s in SENTENCES]
    assert a == b
    r1, r2 = random.Random(5), random.Random(5)
    assert [delete_words(s, 0.6, r1) for s in SENTENCES] == [delete_words(s, 0.6, r2) for s in SENTENCES]
    random.seed(3)
    g1 = [delete_words(s) for s in SENTENCES]
    random.seed(3)
    assert [delete_words(s) for s in SENTENCES] == g1


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, "0.6", None, True])
def test_delete_words_bad_ratio(bad):
    with pytest.raises((ConfigError, ValueError)):
        delete_words("a b c", bad)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"deletion_ratio": 1.0}, "loss.deletion_ratio"),
        ({"deletion_ratio": -0.2}, "loss.deletion_ratio"),
        ({"tie_encoder_decoder": "yes"}, "loss.tie_encoder_decoder"),
        ({"decoder_name_or_path": ""}, "loss.decoder_name_or_path"),
    ],
)
def test_bad_config_raises_config_error(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        TSDAELoss(**kwargs)


def test_damage_uses_deletion_ratio():
    loss = TSDAELoss(deletion_ratio=0.0)
    assert loss.damage(SENTENCES[0], random.Random(0)) == SENTENCES[0]


# --------------------------------------------------------------------------- 2. tying


def test_tied_parameters_are_the_encoders(encoder):
    loss = TSDAELoss().attach(encoder)
    dec, bb = loss.decoder, encoder.backbone
    assert loss.columns == ("damaged", "original") and loss.needs_tokens is True

    # the requested check: the decoder's self-attention query weight IS the encoder's
    q_dec = dec.bert.encoder.layer[0].attention.self.query.weight
    q_enc = bb.encoder.layer[0].attention.self.query.weight
    assert q_dec is q_enc
    assert q_dec.untyped_storage().data_ptr() == q_enc.untyped_storage().data_ptr()
    # every overlapping parameter is shared; the LM head output matrix follows the shared embeddings
    assert len(loss.tied_names) == sum(1 for n, _ in bb.named_parameters() if not n.startswith("pooler."))
    for name in loss.tied_names:
        assert dec.get_parameter(name) is bb.get_parameter(name.split(".", 1)[1])
    assert dec.get_output_embeddings().weight is bb.get_input_embeddings().weight
    # cross-attention is decoder-only and trainable
    extra_names = [n for n, _ in loss.extra_named_parameters()]
    assert any("crossattention" in n for n in extra_names)
    assert all(p.requires_grad for p in loss.decoder.parameters())

    # optimizer bookkeeping: extra params are exactly the decoder params not in the encoder, no duplicates
    extra = loss.extra_parameters()
    assert not (_param_ids(encoder) & {id(p) for p in extra})
    assert _param_ids(dec) == (_param_ids(dec) & _param_ids(encoder)) | {id(p) for p in extra}
    holder = nn.ModuleDict({"encoder": encoder, "loss": loss})  # how a LightningModule holds them
    assert len(list(holder.parameters())) == len(list(encoder.parameters())) + len(extra)


def test_tied_gradient_step_changes_encoder(encoder):
    torch.manual_seed(0)
    loss = TSDAELoss().attach(encoder)
    damaged, original = _batch(encoder, SENTENCES[:4])
    q_enc = encoder.backbone.encoder.layer[0].attention.self.query.weight
    cross_v = loss.decoder.bert.encoder.layer[0].crossattention.self.value.weight
    cross_q = loss.decoder.bert.encoder.layer[0].crossattention.self.query.weight

    # gradient through the decoder path alone (embedding detached) reaches the encoder's tensors
    value = loss([encoder(damaged).detach()], target_features=original)
    value.backward()
    assert q_enc.grad is not None and q_enc.grad.abs().sum() > 0

    params = list(encoder.parameters()) + loss.extra_parameters()
    assert len({id(p) for p in params}) == len(params)
    opt = torch.optim.SGD(params, lr=0.5)
    opt.zero_grad()
    before_q, before_cross = q_enc.detach().clone(), cross_v.detach().clone()
    loss([encoder(damaged)], target_features=original).backward()
    # one memory slot: the cross-attention softmax is 1 whatever the query/key, so their gradient is ~0
    assert cross_q.grad is not None and cross_q.grad.abs().max() < 1e-10  # 0 up to rounding
    opt.step()
    assert not torch.equal(q_enc.detach(), before_q), "the encoder's weights must change"
    assert not torch.equal(cross_v.detach(), before_cross), "the decoder's cross-attention must change"
    assert loss.decoder.bert.encoder.layer[0].attention.self.query.weight is q_enc  # still tied


def test_untied_has_separate_parameters(encoder):
    loss = TSDAELoss(tie_encoder_decoder=False).attach(encoder)
    dec, bb = loss.decoder, encoder.backbone
    assert loss.tied_names == []
    assert not (_param_ids(dec) & _param_ids(bb))
    assert not (_storages(dec) & _storages(bb))
    assert {id(p) for p in loss.extra_parameters()} == _param_ids(dec)
    q_dec = dec.bert.encoder.layer[0].attention.self.query.weight
    q_enc = bb.encoder.layer[0].attention.self.query.weight
    assert q_dec is not q_enc and torch.equal(q_dec, q_enc)  # same checkpoint, separate copies

    damaged, original = _batch(encoder, SENTENCES[:4])
    opt = torch.optim.SGD(loss.extra_parameters(), lr=0.5)
    loss([encoder(damaged).detach()], target_features=original).backward()
    assert q_enc.grad is None
    opt.step()
    assert not torch.equal(q_dec, q_enc)


def _tiny_roberta(tmp_path, tiny_model_dir, hidden_size=32):
    from transformers import RobertaConfig, RobertaModel

    path = tmp_path / f"tiny-roberta-{hidden_size}"
    config = RobertaConfig(
        vocab_size=30522,
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=514,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    RobertaModel(config).save_pretrained(path, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (tiny_model_dir / f).is_file():
            shutil.copy(tiny_model_dir / f, path / f)
    return path


def test_tying_other_architecture_is_config_error(encoder, tmp_path, tiny_model_dir):
    roberta = _tiny_roberta(tmp_path, tiny_model_dir)
    with pytest.raises(ConfigError, match="loss.tie_encoder_decoder"):
        TSDAELoss(decoder_name_or_path=str(roberta)).attach(encoder)
    # untied, another architecture with the same hidden size and vocabulary works
    loss = TSDAELoss(decoder_name_or_path=str(roberta), tie_encoder_decoder=False).attach(encoder)
    damaged, original = _batch(encoder, SENTENCES[:3])
    assert torch.isfinite(loss([encoder(damaged)], target_features=original))
    # hidden size must match the sentence embedding
    wide = _tiny_roberta(tmp_path, tiny_model_dir, hidden_size=48)
    with pytest.raises(ConfigError, match="hidden size"):
        TSDAELoss(decoder_name_or_path=str(wide), tie_encoder_decoder=False).attach(encoder)
    with pytest.raises(ConfigError, match="loss.decoder_name_or_path"):
        TSDAELoss(decoder_name_or_path=str(tmp_path / "nope")).attach(encoder)


def test_decoder_with_other_vocabulary_retokenizes(encoder, tmp_path, tiny_model_dir):
    """Untied decoder whose tokenizer numbers the words differently: targets are re-tokenised for it."""
    import json

    path = tmp_path / "permuted-vocab-bert"
    shutil.copytree(tiny_model_dir, path)
    tj = json.loads((path / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    n = len(vocab)
    permuted = {tok: (i if i < 999 else n - 1 - (i - 999)) for tok, i in vocab.items()}  # keep specials
    tj["model"]["vocab"] = permuted
    (path / "tokenizer.json").write_text(json.dumps(tj))
    (path / "vocab.txt").write_text("\n".join(sorted(permuted, key=permuted.get)) + "\n")

    with pytest.raises(ConfigError, match="vocabulary"):
        TSDAELoss(decoder_name_or_path=str(path)).attach(encoder)
    loss = TSDAELoss(decoder_name_or_path=str(path), tie_encoder_decoder=False).attach(encoder)
    loss.eval()
    damaged, original = _batch(encoder, SENTENCES[:3])
    emb = encoder(damaged).detach()
    got = loss([emb], target_features=original)
    dec_tok = loss._decoder_tokenizer
    feats = dec_tok(SENTENCES[:3], padding=True, return_tensors="pt")
    assert not torch.equal(feats["input_ids"], original["input_ids"])
    ids, mask = feats["input_ids"], feats["attention_mask"]
    with torch.no_grad():
        ref = loss.decoder(
            input_ids=ids,
            attention_mask=mask,
            encoder_hidden_states=emb[:, None, :],
            labels=ids.masked_fill(mask == 0, -100),
            use_cache=False,
        ).loss
    assert abs(got.item() - ref.item()) < 1e-5


# --------------------------------------------------------------------------- 3. value


@pytest.mark.parametrize("tie", [True, False])
def test_loss_matches_independent_computation(encoder, tie):
    torch.manual_seed(0)
    loss = TSDAELoss(tie_encoder_decoder=tie).attach(encoder)
    encoder.eval()
    loss.eval()  # no dropout, so the runs below are comparable
    originals = [SENTENCES[0], "short one", SENTENCES[2], "a b c d e"]  # different lengths: padding matters
    damaged, original = _batch(encoder, originals)
    assert (original["attention_mask"] == 0).any()
    emb = encoder(damaged).detach().requires_grad_(True)

    got = loss([emb], target_features=original)
    ids, mask = original["input_ids"], original["attention_mask"]

    # (a) Hugging Face's own causal-LM loss: full sequence, labels = input_ids with padding -100 (HF shifts)
    with torch.no_grad():
        hf = loss.decoder(
            input_ids=ids,
            attention_mask=mask,
            encoder_hidden_states=emb[:, None, :],
            labels=ids.masked_fill(mask == 0, -100),
            use_cache=False,
        )
    # (b) by hand: mean over every non-padding next token of -log softmax
    terms = []
    for i in range(ids.shape[0]):
        for t in range(ids.shape[1] - 1):
            if mask[i, t + 1]:
                terms.append(-F.log_softmax(hf.logits[i, t].double(), dim=-1)[ids[i, t + 1]])
    by_hand = torch.stack(terms).mean()

    print(f"tie={tie}: loss {got.item():.6f}  HF labels= {hf.loss.item():.6f}  by hand {by_hand.item():.6f}")
    assert abs(got.item() - hf.loss.item()) < 1e-5
    assert abs(got.item() - by_hand.item()) < 1e-5
    # a dict of columns and a bare list give the same value; the decoder depends on the embedding
    assert abs(loss({"damaged": emb}, target_features=original).item() - got.item()) < 1e-6
    got.backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0


# --------------------------------------------------------------------------- 4. training


@pytest.fixture()
def one_thread():
    """Tiny matrices: one intra-op thread avoids oversubscription on busy CI machines (several x faster)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_fifty_adamw_steps_reduce_the_loss(encoder, one_thread):
    torch.manual_seed(0)
    loss = TSDAELoss().attach(encoder)
    params = list(encoder.parameters()) + loss.extra_parameters()
    opt = torch.optim.AdamW(params, lr=2e-3)  # 1e-3 also passes (10.32 -> 6.87, ratio 0.67) with less margin
    eval_damaged, eval_original = _batch(encoder, SENTENCES, seed=999)

    def evaluate() -> float:
        encoder.eval(), loss.eval()
        with torch.no_grad():
            value = loss([encoder(eval_damaged)], target_features=eval_original).item()
        encoder.train(), loss.train()
        return value

    initial = evaluate()
    rng = random.Random(0)
    original = encoder.tokenize(SENTENCES, "document")
    for _ in range(50):  # fresh deletion noise every step
        damaged = encoder.tokenize([delete_words(s, 0.6, rng) for s in SENTENCES], "document")
        opt.zero_grad()
        value = loss([encoder(damaged)], target_features=original)
        value.backward()
        opt.step()
    final = evaluate()
    print(f"TSDAE on the tiny model: loss at step 0 = {initial:.4f}, after 50 AdamW steps = {final:.4f}")
    assert final < 0.7 * initial


# --------------------------------------------------------------------------- 5. inputs


def test_missing_target_features_raises(encoder):
    loss = TSDAELoss().attach(encoder)
    damaged, _ = _batch(encoder, SENTENCES[:2])
    with pytest.raises(ValueError, match="target_features"):
        loss([encoder(damaged)])


def test_forward_before_attach_and_batch_mismatch(encoder):
    damaged, original = _batch(encoder, SENTENCES[:3])
    with pytest.raises(RuntimeError, match="attach"):
        TSDAELoss()([encoder(damaged)], target_features=original)
    loss = TSDAELoss().attach(encoder)
    with pytest.raises(ValueError, match="damaged embeddings"):
        loss([encoder(damaged)[:2]], target_features=original)
