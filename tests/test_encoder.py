import json

import pytest
import torch

from embedexp.errors import ConfigError, ModelError
from embedexp.models import Encoder
from embedexp.models.pooling import pool

TEXTS = ["the cat sat on the mat", "a", "bread needs a long, slow rise in a warm kitchen", "orbital mechanics"]


def _reference_pool(hidden, mask, mode):
    out = []
    for h, m in zip(hidden, mask):
        idx = [i for i, v in enumerate(m.tolist()) if v == 1]
        if mode == "mean":
            out.append(torch.stack([h[i] for i in idx]).mean(0))
        elif mode == "cls":
            out.append(h[0])
        else:
            out.append(h[idx[-1]])
    return torch.stack(out)


@pytest.mark.parametrize("mode", ["mean", "cls", "last_token"])
@pytest.mark.parametrize("left", [False, True])
def test_pooling_matches_loop(mode, left):
    torch.manual_seed(0)
    hidden = torch.randn(3, 6, 4, dtype=torch.float64)
    lengths = [6, 2, 4]
    mask = torch.zeros(3, 6, dtype=torch.long)
    for r, n in enumerate(lengths):
        if left:
            mask[r, 6 - n :] = 1
        else:
            mask[r, :n] = 1
    if mode == "cls" and left:
        pytest.skip("cls pooling assumes the CLS token first (right padding)")
    torch.testing.assert_close(pool(hidden, mask, mode), _reference_pool(hidden, mask, mode))


def test_prefixes_applied_in_one_place(tiny_model_dir):
    enc = Encoder(str(tiny_model_dir), query_prefix="query: ", document_prefix="passage: ")
    q = enc.encode(["hello"], "query")
    enc_plain = Encoder(str(tiny_model_dir))
    torch.testing.assert_close(q, enc_plain.encode(["query: hello"], "query"))
    torch.testing.assert_close(enc.encode(["hello"], "document"), enc_plain.encode(["passage: hello"], "document"))
    assert not torch.allclose(q, enc_plain.encode(["hello"], "query"))


def test_encode_order_and_batching_independent(tiny_model_dir):
    enc = Encoder(str(tiny_model_dir))
    a = enc.encode(TEXTS, batch_size=1)
    b = enc.encode(TEXTS, batch_size=3)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5, rtol=0)
    unnorm = Encoder(str(tiny_model_dir), normalize=False).encode(TEXTS)
    assert not torch.allclose(unnorm.norm(dim=1), torch.ones(len(TEXTS)))


@pytest.mark.parametrize("pooling,normalize", [("mean", True), ("cls", False), ("last_token", True)])
def test_export_roundtrip_sentence_transformers(tmp_path, tiny_model_dir, pooling, normalize):
    from sentence_transformers import SentenceTransformer

    enc = Encoder(
        str(tiny_model_dir),
        pooling=pooling,
        normalize=normalize,
        max_seq_length=32,
        query_prefix="query: ",
        document_prefix="passage: ",
    )
    path = enc.save(tmp_path / "exported")
    st = SentenceTransformer(str(path), device="cpu")
    ours_q = enc.encode(TEXTS, "query")
    ours_d = enc.encode(TEXTS, "document")
    theirs_q = torch.as_tensor(st.encode(TEXTS, prompt_name="query", convert_to_numpy=True))
    theirs_d = torch.as_tensor(st.encode(TEXTS, prompt_name="document", convert_to_numpy=True))
    torch.testing.assert_close(ours_q, theirs_q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_d, theirs_d, atol=1e-5, rtol=1e-5)
    assert st.max_seq_length == 32
    # and our own loader restores every setting
    again = Encoder.from_exported(path)
    assert again.settings() == enc.settings()
    torch.testing.assert_close(again.encode(TEXTS, "query"), ours_q)
    assert not (tmp_path / "exported.tmp").exists()


def test_unknown_pooling_is_config_error(tiny_model_dir):
    with pytest.raises(ConfigError, match="model.pooling='max_mean'"):
        Encoder(str(tiny_model_dir), pooling="max_mean")


def test_model_folder_without_weights(tmp_path, tiny_model_dir):
    broken = tmp_path / "no-weights"
    broken.mkdir()
    for f in ("config.json", "tokenizer.json", "vocab.txt"):
        (broken / f).write_bytes((tiny_model_dir / f).read_bytes())
    with pytest.raises(ModelError, match="has no weights"):
        Encoder(str(broken))


def test_missing_model_folder(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        Encoder(str(tmp_path / "nope"))


def test_tokenizer_larger_than_embedding_table(tmp_path, tiny_model_dir):
    bad = tmp_path / "vocab-mismatch"
    bad.mkdir()
    for f in tiny_model_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((bad / "config.json").read_text())
    cfg["vocab_size"] = 100
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="size mismatch"):
        Encoder(str(bad))


def test_fingerprint_changes_with_weights_and_settings(tiny_model_dir):
    a = Encoder(str(tiny_model_dir))
    b = Encoder(str(tiny_model_dir))
    assert a.fingerprint() == b.fingerprint()
    assert Encoder(str(tiny_model_dir), query_prefix="q: ").fingerprint() != a.fingerprint()
    with torch.no_grad():
        next(b.backbone.parameters()).add_(1e-3)
    assert b.fingerprint() != a.fingerprint()
