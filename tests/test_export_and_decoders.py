"""Issue 14, items 4, 9 and 11: the exported similarity function, model length limits, and EOS for last-token pooling.

References: sentence-transformers (its `similarity`, its InformationRetrievalEvaluator and its encode on the exported
folder); transformers' own models (which sequence lengths their position tables accept); hand-built token ids
(``[BOS] + tokens + [EOS]``) run through the backbone directly, without the Encoder.
"""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from embedexp.cli import one_line_errors
from embedexp.errors import ConfigError
from embedexp.models import Encoder
from embedexp.models.limits import check_max_seq_length, config_limit, folder_limit
from embedexp.models.tiny import build_tiny_decoder

from conftest import compose_demo_tiny

PREFIX = "embedexp: error: "
TEXTS = ["what causes tides", "the moon's gravity pulls the oceans.", "a b", "knead the dough, then let it rest!"]


# ================================================================ item 4: exported similarity function
def _ir_set(n_docs: int = 24, n_queries: int = 8):
    words = "tide moon ocean bread dough star plasma gravity yeast oven orbit wave salt flour sun light".split()
    g = torch.Generator().manual_seed(0)
    pick = lambda k: " ".join(words[i] for i in torch.randint(len(words), (k,), generator=g).tolist())  # noqa: E731
    corpus = {f"d{i}": pick(4 + i % 9) for i in range(n_docs)}
    queries = {f"q{i}": pick(2 + i % 3) for i in range(n_queries)}
    qrels = {f"q{i}": {f"d{(3 * i) % n_docs}": 1, f"d{(3 * i + 7) % n_docs}": 1} for i in range(n_queries)}
    return corpus, queries, qrels


def test_unnormalised_export_scores_like_embedexp(tmp_path, tiny_model_dir):
    """Reference: sentence-transformers' `similarity` and InformationRetrievalEvaluator on the exported folder.

    Before the fix a normalize=false model was exported with similarity_fn_name "dot", so both disagreed with
    embedexp's cosine scores (nDCG@10: sentence-transformers 0.2998 with "dot", embedexp 0.2257; after: both 0.2257)."""
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.evaluation import InformationRetrievalEvaluator

    from embedexp.eval.metrics import ir_metrics, retrieve, top_k

    enc = Encoder(str(tiny_model_dir), normalize=False, max_seq_length=32)
    corpus, queries, qrels = _ir_set()
    q_ids, d_ids = list(queries), list(corpus)
    q = enc.encode([queries[i] for i in q_ids], "query")
    d = enc.encode([corpus[i] for i in d_ids], "document")
    assert not torch.allclose(q.norm(dim=1), torch.ones(len(q)))  # really un-normalised
    ours_scores, ours_idx = top_k(q, d, k=len(d_ids))  # embedexp's evaluator's scores

    st = SentenceTransformer(str(enc.save(tmp_path / "model")), device="cpu")
    assert st.similarity_fn_name == "cosine"
    theirs = st.similarity(
        st.encode([queries[i] for i in q_ids], convert_to_tensor=True),
        st.encode([corpus[i] for i in d_ids], convert_to_tensor=True),
    )
    torch.testing.assert_close(theirs.gather(1, ours_idx), ours_scores, atol=1e-5, rtol=1e-5)

    ours = ir_metrics(retrieve(q_ids, q, d_ids, d, 10), qrels, ndcg_at=[10])["ndcg@10"]
    ev = InformationRetrievalEvaluator(
        queries,
        corpus,
        {k: set(v) for k, v in qrels.items()},
        name="t",
        ndcg_at_k=[10],
        mrr_at_k=[10],
        accuracy_at_k=[1],
        precision_recall_at_k=[10],
        map_at_k=[10],
        show_progress_bar=False,
    )
    res = ev(st)
    assert res["t_cosine_ndcg@10"] == pytest.approx(ours, abs=1e-6)


# ================================================================ item 9: max_seq_length above the model's limit
def _compose_train(tmp_path: Path, overrides):
    return compose_demo_tiny(tmp_path / "out", tmp_path / "cache", *overrides)


def _no_weight_loading(monkeypatch) -> list:
    import transformers

    calls = []
    real = transformers.AutoModel.from_pretrained

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", spy)
    return calls


def test_train_refuses_max_seq_length_above_positions_before_loading_weights(tmp_path, capsys, monkeypatch):
    """Hand-worked: the tiny BERT has max_position_embeddings=512 (BertModel fails at 513, see below).
    Before the fix this passed validation (and trained: the demo texts are short)."""
    from embedexp.train import train

    calls = _no_weight_loading(monkeypatch)
    cfg = _compose_train(tmp_path, ["model.max_seq_length=1024"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        one_line_errors(train)(cfg)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count(PREFIX) == 1 and err[err.index(PREFIX) :].count("\n") == 1, err[-2000:]
    line = err[err.index(PREFIX) + len(PREFIX) :].strip()
    assert line.startswith(
        "model.max_seq_length=1024 exceeds the model's limit of 512 tokens (max_position_embeddings=512 in "
    )
    assert line.endswith("; expected at most 512")
    assert calls == []  # refused before any weights load
    assert not (tmp_path / "out" / "results.json").exists()


def test_encoder_from_python_refuses_too_long(tiny_model_dir, monkeypatch):
    calls = _no_weight_loading(monkeypatch)
    with pytest.raises(ConfigError, match=r"^model\.max_seq_length=513 exceeds the model's limit of 512 tokens"):
        Encoder(str(tiny_model_dir), max_seq_length=513)
    assert calls == []
    assert Encoder(str(tiny_model_dir), max_seq_length=512).max_seq_length == 512


@pytest.mark.parametrize(
    "family, config_cls, model_cls, positions, pad",
    [
        ("bert", "BertConfig", "BertModel", 512, 0),
        ("xlm-roberta", "XLMRobertaConfig", "XLMRobertaModel", 514, 1),  # XLM-R: 514 positions, 512 usable
        ("roberta", "RobertaConfig", "RobertaModel", 20, 3),
    ],
)
def test_position_limit_matches_what_the_model_accepts(family, config_cls, model_cls, positions, pad):
    """Reference: transformers' own models: `limit` tokens run, `limit + 1` fail with a tensor-size error."""
    import transformers

    cfg = getattr(transformers, config_cls)(
        vocab_size=16,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=1,
        intermediate_size=8,
        max_position_embeddings=positions,
        pad_token_id=pad,
    )
    limit = config_limit(cfg.to_dict())
    model = getattr(transformers, model_cls)(cfg).eval()
    with torch.no_grad():
        model(input_ids=torch.full((1, limit.tokens), 5))
        with pytest.raises((IndexError, RuntimeError)):
            model(input_ids=torch.full((1, limit.tokens + 1), 5))
    assert limit.tokens == {"bert": 512, "xlm-roberta": 512, "roberta": 16}[family]


def test_tokenizer_model_max_length_is_a_limit_unless_a_placeholder(tmp_path, tiny_model_dir):
    import shutil

    folder = shutil.copytree(tiny_model_dir, tmp_path / "m")
    tok_cfg = json.loads((folder / "tokenizer_config.json").read_text())
    tok_cfg["model_max_length"] = 128
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    assert folder_limit(folder).tokens == 128
    with pytest.raises(
        ConfigError,
        match=r"^model\.max_seq_length=200 exceeds .* of 128 tokens \(the tokenizer's model_max_length=128\)",
    ):
        Encoder(str(folder), max_seq_length=200)
    tok_cfg["model_max_length"] = 1000000000000000019884624838656  # transformers' "no limit"
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    assert folder_limit(folder).tokens == 512
    check_max_seq_length("model.max_seq_length", 512, folder_limit(folder))  # at the limit: fine


# ================================================================ item 11: EOS for last-token pooling
@pytest.fixture(scope="module", params=["mistral", "qwen2"])
def decoder_dir(request, tmp_path_factory):
    return build_tiny_decoder(tmp_path_factory.mktemp("dec") / request.param, family=request.param, seed=0)


def _reference(enc: Encoder, texts, kind="document"):
    """Hand-built ids: [BOS] + the text's tokens + [EOS], run through the backbone alone; the EOS state, normalised."""
    tok = enc.tokenizer
    out = []
    for t in enc.add_prefix(texts, kind):
        ids = tok(t, add_special_tokens=False)["input_ids"]
        ids = ([tok.bos_token_id] if tok.bos_token_id is not None else []) + ids + [tok.eos_token_id]
        with torch.no_grad():
            h = enc.backbone(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
        out.append(F.normalize(h.float(), dim=-1))
    return torch.stack(out)


def test_tiny_decoder_tokenizers_do_not_append_eos_by_themselves(decoder_dir):
    """The fault's premise, on the offline stand-ins: add_eos_token is true in the folder, but no EOS comes out."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(decoder_dir))
    assert json.loads((decoder_dir / "tokenizer_config.json").read_text())["add_eos_token"] is True
    assert tok("hello world")["input_ids"][-1] != tok.eos_token_id


@pytest.mark.parametrize("side", ["right", "left"])
def test_encode_pools_the_eos_token(decoder_dir, side):
    enc = Encoder(str(decoder_dir), pooling="last_token", max_seq_length=64, query_prefix="Instruct: x\nQuery: ")
    enc.eval()
    enc.tokenizer.padding_side = side
    want = _reference(enc, TEXTS)
    torch.testing.assert_close(enc.encode(TEXTS, batch_size=4), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        enc.encode(TEXTS, "query", batch_size=3), _reference(enc, TEXTS, "query"), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("side", ["right", "left"])
def test_training_path_ends_with_eos(decoder_dir, side):
    """tokenize (the training collator) and tokenize_unpadded + pad both end every text with EOS."""
    enc = Encoder(str(decoder_dir), pooling="last_token", max_seq_length=64)
    enc.eval()
    enc.tokenizer.padding_side = side
    eos = enc.tokenizer.eos_token_id
    for feats in (enc.tokenize(TEXTS, "document"), enc.pad(enc.tokenize_unpadded(TEXTS, "document"))):
        mask = feats["attention_mask"]
        last = torch.arange(mask.shape[1]).mul(mask).argmax(dim=1)
        assert feats["input_ids"][torch.arange(len(TEXTS)), last].tolist() == [eos] * len(TEXTS)
        with torch.no_grad():
            torch.testing.assert_close(enc(feats), _reference(enc, TEXTS), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("manual", [False, True])
def test_truncation_keeps_eos(decoder_dir, manual):
    """A text longer than max_seq_length keeps its first max_seq_length - 1 tokens plus EOS (hand-built reference)."""
    n = 8
    enc = Encoder(str(decoder_dir), pooling="last_token", max_seq_length=n)
    if manual:  # the path for tokenizers without a Rust pipeline: EOS appended by the Encoder itself
        from transformers import AutoTokenizer

        enc.tokenizer = AutoTokenizer.from_pretrained(str(decoder_dir))  # as loaded: appends no EOS
        enc.tokenizer.pad_token = enc.tokenizer.pad_token or enc.tokenizer.eos_token
        enc._manual_eos = True
        assert enc.tokenizer("hello")["input_ids"][-1] != enc.tokenizer.eos_token_id
    tok = enc.tokenizer
    long = "knead the dough then let it rest for an hour"
    full = ([tok.bos_token_id] if tok.bos_token_id is not None else []) + tok(long, add_special_tokens=False)[
        "input_ids"
    ]
    assert len(full) > n
    want = full[: n - 1] + [tok.eos_token_id]
    assert enc.tokenize_unpadded([long], "document")["input_ids"] == [want]
    padded = enc.tokenize([long, "a b"], "document")
    assert padded["input_ids"].shape[1] == n and padded["input_ids"][0].tolist() == want
    short = enc.tokenize_unpadded(["a b"], "document")["input_ids"][0]
    assert short[-1] == tok.eos_token_id and short.count(tok.eos_token_id) == 1


def test_exported_decoder_embeds_like_embedexp(tmp_path, decoder_dir):
    """Reference: sentence-transformers on the exported folder gives the Encoder's (and the hand-built) embeddings."""
    from sentence_transformers import SentenceTransformer

    enc = Encoder(str(decoder_dir), pooling="last_token", max_seq_length=96, query_prefix="Instruct: x\nQuery: ")
    path = enc.save(tmp_path / "model")
    st = SentenceTransformer(str(path), device="cpu")
    texts = TEXTS + [" ".join(["one two three four five six seven eight nine ten"] * 4)]  # truncated
    theirs = torch.as_tensor(st.encode(texts, prompt_name="query", batch_size=3))
    ours = enc.encode(texts, "query", batch_size=2)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours[:-1], _reference(enc, TEXTS, "query"), atol=1e-5, rtol=1e-5)
    again = Encoder.from_exported(path)
    assert again.ends_with_eos and not again._manual_eos
    torch.testing.assert_close(again.encode(texts, "query"), ours, atol=1e-5, rtol=1e-5)


def test_decoder_presets_end_queries_with_eos(tmp_path, isolated_cache):
    """e5-mistral / gte-Qwen2 presets on their tiny stand-ins: the query ends with the family's EOS."""
    from hydra.utils import instantiate

    for preset, family, eos in (("e5-mistral-7b", "mistral", "</s>"), ("gte-qwen2-7b", "qwen2", "<|endoftext|>")):
        folder = build_tiny_decoder(tmp_path / family, family=family)
        cfg = _compose_train(
            tmp_path,
            [
                f"model={preset}",
                f"model.model_name_or_path={folder}",
                "model.expected_dim=null",
                "model.max_seq_length=256",
            ],
        )
        enc = instantiate(cfg.model)
        ids = enc.tokenize(["tides"], "query")["input_ids"][0].tolist()
        assert enc.tokenizer.convert_ids_to_tokens(ids)[-1] == eos, preset
        assert ids.count(enc.tokenizer.eos_token_id) == 1


def test_bert_last_token_is_unchanged(tiny_model_dir):
    """A tokenizer without an EOS token (BERT) is left alone: last-token pooling takes its [SEP]."""
    enc = Encoder(str(tiny_model_dir), pooling="last_token", max_seq_length=32)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    assert not enc.ends_with_eos
    assert (
        enc.tokenize(TEXTS, "document")["input_ids"].tolist()
        == tok(TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt")["input_ids"].tolist()
    )


# ================================================================ issue 18: decoder embedders with LoRA, bf16
# qwen2 also runs end to end in tests/test_lora.py (trained, exported, loaded): here behind `-m slow`
@pytest.mark.parametrize("family", [pytest.param("qwen2", marks=pytest.mark.slow), "mistral", "llama"])
def test_decoder_preset_lora_forward_and_export(family, tmp_path, isolated_cache):
    """tiny_<family> preset + LoRA: left padding with EOS in every row's last column, the instruction on queries
    only, and an export (merged folder; base folder + adapter/) that sentence-transformers embeds like embedexp."""
    from hydra.utils import instantiate
    from sentence_transformers import SentenceTransformer

    cfg = _compose_train(tmp_path, [f"model=tiny_{family}", "model.peft.r=4", "model.peft.dropout=0.0"])
    torch.manual_seed(0)
    enc = instantiate(cfg.model)
    with torch.no_grad():  # a trained-looking adapter (B starts at zero)
        for n, p in enc.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    assert enc.tokenizer.padding_side == "left" and enc.trainable_parameters()[0] > 0
    feats = enc.tokenize(TEXTS, "query")
    assert feats["input_ids"][:, -1].tolist() == [enc.tokenizer.eos_token_id] * len(TEXTS)
    assert enc.prefixes["query"].startswith("Instruct: ") and enc.prefixes["query"].endswith("\nQuery: ")
    assert enc.prefixes["document"] == ""
    ours = enc.encode(TEXTS, "query", batch_size=3)
    torch.testing.assert_close(ours, _reference(enc, TEXTS, "query"), atol=1e-5, rtol=1e-5)  # unpadded, hand-built
    out = enc.save(tmp_path / "model")
    merged = SentenceTransformer(str(out), device="cpu")
    torch.testing.assert_close(torch.as_tensor(merged.encode(TEXTS, prompt_name="query")), ours, atol=1e-5, rtol=0)
    base = instantiate({**cfg.model, "peft": None})
    st = SentenceTransformer(str(base.save(tmp_path / "base")), device="cpu")
    st.load_adapter(str(out / "adapter"))
    torch.testing.assert_close(torch.as_tensor(st.encode(TEXTS, prompt_name="query")), ours, atol=1e-5, rtol=0)


def test_torch_dtype_bfloat16_loads_bf16_weights(tmp_path, isolated_cache):
    """model.torch_dtype=bfloat16: bf16 weights (LoRA adapters stay float32), float32 embeddings near float32's."""
    from hydra.utils import instantiate

    cfg = _compose_train(tmp_path, ["model=tiny_qwen2", "model.torch_dtype=bfloat16", "model.peft.r=4"])
    enc = instantiate(cfg.model)
    dtypes = {n: p.dtype for n, p in enc.named_parameters()}
    assert {d for n, d in dtypes.items() if ".lora_" not in n} == {torch.bfloat16}
    assert {d for n, d in dtypes.items() if ".lora_" in n} == {torch.float32}
    fp32 = instantiate({**cfg.model, "torch_dtype": None, "peft": None})
    got = enc.encode(TEXTS, "query")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, fp32.encode(TEXTS, "query"), atol=5e-2, rtol=0)
    assert enc.fingerprint() != fp32.fingerprint()
