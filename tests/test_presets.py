"""Model presets of the field guide: they compose with train.yaml and their prefixes reach the tokenizer.

The presets name hub models that are not available here, so each is instantiated on the tiny local
BERT (`model.model_name_or_path=...`); pooling, prefixes and lengths are the preset's own.
"""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from transformers import AutoTokenizer

from embedexp.cli import find_user_error
from embedexp.config import config_dir, register_resolvers
from embedexp.errors import ModelError

BGE_Q = "Represent this sentence for searching relevant passages: "
WEB_TASK = "Given a web search query, retrieve relevant passages that answer the query"
# preset -> (hub name, pooling, max_seq_length, dim, query prefix, document prefix, trust_remote_code); from the model cards
CARDS = {
    "bge-small": ("BAAI/bge-small-en-v1.5", "cls", 512, 384, BGE_Q, "", False),
    "bge-base": ("BAAI/bge-base-en-v1.5", "cls", 512, 768, BGE_Q, "", False),
    "bge-large": ("BAAI/bge-large-en-v1.5", "cls", 512, 1024, BGE_Q, "", False),
    "e5-mistral-7b": (
        "intfloat/e5-mistral-7b-instruct",
        "last_token",
        4096,
        4096,
        f"Instruct: {WEB_TASK}\nQuery: ",
        "",
        False,
    ),
    "gte-qwen2-7b": (
        "Alibaba-NLP/gte-Qwen2-7B-instruct",
        "last_token",
        8192,
        3584,
        f"Instruct: {WEB_TASK}\nQuery: ",
        "",
        True,
    ),
    "nomic-v1.5": ("nomic-ai/nomic-embed-text-v1.5", "mean", 8192, 768, "search_query: ", "search_document: ", True),
    "multilingual-e5-large": ("intfloat/multilingual-e5-large", "mean", 512, 1024, "query: ", "passage: ", False),
}
TEXTS = ["what causes tides", "The Moon's gravity pulls the oceans."]


def _compose(overrides: list[str]):
    register_resolvers()
    with initialize_config_dir(config_dir=str(Path(config_dir())), version_base="1.3"):
        return compose(config_name="train", overrides=overrides + ["paths.output_dir=/tmp/embedexp-test-out"])


@pytest.mark.parametrize("preset", sorted(CARDS))
def test_preset_composes_with_card_values(preset, isolated_cache):
    hub, pooling, max_len, dim, q, d, remote = CARDS[preset]
    m = _compose([f"model={preset}"]).model
    assert m._target_ == "embedexp.models.Encoder"
    assert (m.model_name_or_path, m.pooling, m.max_seq_length, m.expected_dim) == (hub, pooling, max_len, dim)
    assert (m.query_prefix, m.document_prefix, m.trust_remote_code, m.normalize) == (q, d, remote, True)


@pytest.mark.parametrize("preset", sorted(CARDS))
def test_prefixes_reach_the_tokenizer(preset, tiny_model_dir, isolated_cache):
    _, pooling, max_len, _, q, d, _ = CARDS[preset]
    # the stand-in BERT has 512 positions; the 4096/8192-token presets would (rightly) be refused on it
    cfg = _compose(
        [
            f"model={preset}",
            f"model.model_name_or_path={tiny_model_dir}",
            "model.expected_dim=null",
            f"model.max_seq_length={min(max_len, 512)}",
        ]
    )
    enc = instantiate(cfg.model)
    assert enc.pooling == pooling
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    for kind, prefix in (("query", q), ("document", d)):
        ids = enc.tokenize(TEXTS, kind)["input_ids"]
        want = tok([prefix + t for t in TEXTS], padding=True, return_tensors="pt")["input_ids"]
        assert ids.tolist() == want.tolist(), kind
        decoded = tok.decode(ids[0], skip_special_tokens=True)
        plain = tok.decode(tok(TEXTS[0])["input_ids"], skip_special_tokens=True)
        expected = tok.decode(tok(prefix)["input_ids"], skip_special_tokens=True)
        assert decoded == (f"{expected} {plain}" if prefix else plain)
    if q != d:
        assert (
            enc.tokenize(TEXTS, "query")["input_ids"].tolist() != enc.tokenize(TEXTS, "document")["input_ids"].tolist()
        )


def test_instruct_task_is_configurable(tiny_model_dir, isolated_cache):
    task = "Given a scientific claim, retrieve documents that support or refute the claim"
    cfg = _compose(
        [
            "model=e5-mistral-7b",
            f"model.model_name_or_path={tiny_model_dir}",
            "model.expected_dim=null",
            "model.max_seq_length=512",
            f"model.task='{task}'",
        ]
    )
    assert cfg.model.query_prefix == f"Instruct: {task}\nQuery: "
    enc = instantiate(cfg.model)
    text = AutoTokenizer.from_pretrained(str(tiny_model_dir)).decode(enc.tokenize(["tides"], "query")["input_ids"][0])
    assert "scientific claim" in text and "web search" not in text


def test_expected_dim_mismatch_is_a_model_error(tiny_model_dir, isolated_cache):
    cfg = _compose(["model=bge-small", f"model.model_name_or_path={tiny_model_dir}"])
    with pytest.raises(Exception) as info:
        instantiate(cfg.model)
    err = find_user_error(info.value)
    assert isinstance(err, ModelError) and "32-dim embeddings but model.expected_dim=384" in str(err)
    cfg = _compose(["model=bge-small", f"model.model_name_or_path={tiny_model_dir}", "model.expected_dim=32"])
    assert instantiate(cfg.model).dim == 32


def test_unreachable_hub_name_fails_fast(isolated_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = _compose(["model=bge-small"])
    with pytest.raises(Exception) as info:
        instantiate(cfg.model)
    err = find_user_error(info.value)
    assert isinstance(err, ModelError) and "BAAI/bge-small-en-v1.5" in str(err)


def test_decoder_tokenizer_without_pad_token_pads_with_eos(tiny_model_dir, monkeypatch):
    """Mistral/Qwen tokenizers ship no pad token; batches must still pad (with EOS) and pool the last real token."""
    import transformers

    from embedexp.models import Encoder

    real = transformers.AutoTokenizer.from_pretrained

    def without_pad(*args, **kwargs):
        tok = real(*args, **kwargs)
        tok.pad_token = None
        tok.eos_token = "[SEP]"
        return tok

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", without_pad)
    enc = Encoder(str(tiny_model_dir), pooling="last_token")
    assert enc.tokenizer.pad_token == "[SEP]"
    texts = ["a", "a much longer text that needs no padding at all"]
    together = enc.encode(texts, batch_size=2)
    alone = torch.cat([enc.encode([t], batch_size=1) for t in texts])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
