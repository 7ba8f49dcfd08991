"""Teacher scores from the miner (issue 19 item 2): `miner.teacher_scores=true` rows carry the scorer's score of
the positive and of each mined negative; they equal the cross-encoder's own logits for those (query, document)
pairs, arrive as batch["scores"], survive the mining cache and a resume."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch
from test_miners import tiny_cross_encoder  # noqa: F401  (a module fixture: a tiny BertForSequenceClassification)

from embedexp.data.scored_rows import ScoredRows
from embedexp.data.train_sets import TrainSet
from embedexp.errors import ConfigError
from embedexp.miners import BM25Miner, CrossEncoderMiner

WORDS = "protein cell gene tumour virus brain heart drug dose trial mouse patient risk blood liver insulin".split()


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _retrieval_set(n_docs: int = 30, n_queries: int = 6) -> TrainSet:
    """A small retrieval-shaped set; query 5's positive text is not the corpus text (scored outside the corpus)."""
    rng = np.random.default_rng(0)
    docs = {f"d{i}": " ".join(rng.choice(WORDS, 6 + i % 5)) for i in range(n_docs)}
    queries = [" ".join(rng.choice(WORDS, 3)) for _ in range(n_queries)]
    qrels = {f"q{q}": {f"d{3 * q}": 1} for q in range(n_queries)}
    rows = [(queries[q], docs[f"d{3 * q}"]) for q in range(n_queries)]
    rows[5] = (queries[5], "a positive that is not a corpus text " + docs["d15"])
    return TrainSet(
        ("anchor", "positive"),
        ("query", "document"),
        rows,
        query_ids=[f"q{q}" for q in range(n_queries)],
        corpus=docs,
        qrels=qrels,
    )


def _miner(model_dir, cache_dir=None, **kw) -> CrossEncoderMiner:
    opts = dict(n_candidates=12, top_k=8, n_negatives=3, batch_size=4, show_progress=False, teacher_scores=True)
    opts.update(kw)
    return CrossEncoderMiner(model_path=str(model_dir), cache=cache_dir is not None, cache_dir=cache_dir, **opts)


def _direct_scores(model_dir, pairs: list[tuple[str, str]]) -> np.ndarray:
    """The cross-encoder's logit for each (query, document), one pair at a time (no padding)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    with torch.inference_mode():
        return np.array(
            [
                float(model(**tok([q], [d], truncation=True, max_length=256, return_tensors="pt")).logits[0, 0])
                for q, d in pairs
            ]
        )


def _scores(ts: TrainSet) -> np.ndarray:
    return np.array([ts.scores(i) for i in range(len(ts))])


def test_teacher_scores_are_the_cross_encoders_scores_and_reach_the_batch(tiny_cross_encoder, tiny_model_dir):  # noqa: F811
    mined = _miner(tiny_cross_encoder).mine(_retrieval_set())
    assert mined.has_scores and isinstance(mined.rows, ScoredRows) and len(mined) == 6
    assert mined.columns == ("anchor", "positive", "negative_1", "negative_2", "negative_3")
    got = _scores(mined)
    assert got.shape == (6, 4)
    expect = _direct_scores(tiny_cross_encoder, [(row[0], text) for row in mined.rows for text in row[1:]])
    np.testing.assert_allclose(got.ravel(), expect, rtol=0, atol=1e-5)  # incl. row 5's out-of-corpus positive
    # the negatives are in the scorer's order: scores descending
    assert all((np.diff(got[:, 1:], axis=1) <= 1e-6).all(axis=1))

    from embedexp.data import EmbeddingDataModule
    from embedexp.models import Encoder

    dm = EmbeddingDataModule(train={"format": "beir", "root": "unused"}, batch_size=3, shuffle=False)
    dm.set_train_set(mined)
    dm.set_tokenizer(Encoder(str(tiny_model_dir), max_seq_length=32).tokenize)
    dm.use_loss(None)
    batches = list(dm.train_dataloader())
    scores = torch.cat([b["scores"] for b in batches])
    texts = [t for b in batches for t in b["texts"][0]]
    order = [next(i for i, r in enumerate(mined.rows) if r[0] == t) for t in texts]
    torch.testing.assert_close(scores, torch.tensor(got[order], dtype=torch.float32))

    plain = _miner(tiny_cross_encoder, teacher_scores=False).mine(_retrieval_set())
    assert not plain.has_scores and plain.rows == mined.rows  # the same negatives, without scores


def test_teacher_scores_survive_the_mining_cache(tiny_cross_encoder, tmp_path):  # noqa: F811
    cache = str(tmp_path / "mining")
    first = _miner(tiny_cross_encoder, cache).mine(_retrieval_set())
    assert first.info["mining"]["cache"] == "miss"
    again = _miner(tiny_cross_encoder, cache).mine(_retrieval_set())
    assert again.info["mining"]["cache"] == "hit"
    assert again.rows == first.rows and np.array_equal(_scores(again), _scores(first))
    assert again.fingerprint() == first.fingerprint()

    # a "mined" entry written without teacher scores (before this feature): re-selected from the cached ranking
    mined_files = [p for p in (tmp_path / "mining").glob("*.json.gz") if _read(p)["kind"] == "mined"]
    assert len(mined_files) == 1
    entry = _read(mined_files[0])
    assert len(entry["teacher_scores"]) == 6
    del entry["teacher_scores"]
    with gzip.open(mined_files[0], "wt", encoding="utf-8") as f:
        json.dump(entry, f)
    old = _miner(tiny_cross_encoder, cache).mine(_retrieval_set())
    assert old.info["mining"]["cache"] == "candidates"
    assert np.array_equal(_scores(old), _scores(first))


def _read(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def test_a_resume_checks_the_teacher_scores(tiny_cross_encoder, tmp_path):  # noqa: F811
    """The resume check's data record (position_record: fingerprint of the rows) is the same on a cache hit, and
    differs when the cached teacher scores differ: a resume never trains on other scores unnoticed."""
    from embedexp.checkpointing import compare_position_record
    from embedexp.data import EmbeddingDataModule

    def record(ts):
        dm = EmbeddingDataModule(train={"format": "beir", "root": "unused"}, batch_size=2)
        dm.set_train_set(ts)
        return dm.position_record()

    cache = str(tmp_path / "mining")
    saved = record(_miner(tiny_cross_encoder, cache).mine(_retrieval_set()))
    compare_position_record(saved, record(_miner(tiny_cross_encoder, cache).mine(_retrieval_set())), "last.ckpt")
    path = next(p for p in (tmp_path / "mining").glob("*.json.gz") if _read(p)["kind"] == "mined")
    entry = _read(path)
    entry["teacher_scores"][0][1] += 1.0  # another teacher's score for one negative
    with gzip.open(path, "wt", encoding="utf-8") as f:
        json.dump(entry, f)
    changed = _miner(tiny_cross_encoder, cache).mine(_retrieval_set())
    assert changed.info["mining"]["cache"] == "hit"
    with pytest.raises(ConfigError, match="fingerprint"):
        compare_position_record(saved, record(changed), "last.ckpt")


def test_any_miner_can_carry_its_scores_and_the_flag_is_checked():
    mined = BM25Miner(top_k=10, n_negatives=2, cache=False, show_progress=False, teacher_scores=True).mine(
        _retrieval_set()
    )
    assert mined.has_scores and np.isfinite(_scores(mined)[:, 1:]).all()
    with pytest.raises(ConfigError, match=r"^miner.teacher_scores='yes'; expected true or false$"):
        BM25Miner(cache=False, teacher_scores="yes")


def test_scored_rows_checks_and_pickles():
    import pickle

    rows = ScoredRows([("q", "p", "n")], [[1.0, float("nan")]])
    back = pickle.loads(pickle.dumps(rows))
    assert back == rows and back.scores(0)[0] == 1.0 and np.isnan(back.scores(0)[1])
    assert back.fingerprint() == rows.fingerprint() != ScoredRows([("q", "p", "n")], [[1.0, 2.0]]).fingerprint()
    with pytest.raises(ValueError, match="2 scores per row"):
        ScoredRows([("q", "p", "n", "m")], [[1.0, 2.0]])


def test_mine_writes_flagembedding_rows_that_train_with_their_scores(tmp_path):
    from embedexp.data.train_sets import build_train_set
    from embedexp.mine import write_pairs

    mined = BM25Miner(top_k=10, n_negatives=2, cache=False, show_progress=False, teacher_scores=True).mine(
        _retrieval_set()
    )
    path = write_pairs(tmp_path / "mined.jsonl", mined)
    back = build_train_set({"format": "table", "path": str(path)})
    assert back.has_scores and len(back) == len(mined)
    for i in range(len(mined)):
        assert back.get(i) == mined.rows[i]
        np.testing.assert_allclose(back.scores(i), mined.scores(i), rtol=1e-12)


@pytest.mark.slow
def test_train_and_resume_with_miner_teacher_scores(tiny_cross_encoder, tmp_path):  # noqa: F811
    """In-process: a distill_kl run on cross-encoder-mined rows with teacher scores, checkpointed, then resumed
    with ckpt_path=last (mining is a cache hit; the resume check accepts the same scores)."""
    from test_losses_e2e import _cfg

    from embedexp.train import train

    out = tmp_path / "out"
    common = [
        "loss=distill_kl",
        "loss.infonce_weight=1.0",
        "miner=cross_encoder",
        f"miner.model_path={tiny_cross_encoder}",
        "miner.teacher_scores=true",
        "miner.n_negatives=2",
        "miner.show_progress=false",
        "checkpoint.every_n_steps=1",
        "checkpoint.keep=true",
    ]
    train(_cfg(out, [*common, "trainer.max_steps=2"]))
    first = json.loads((out / "results.json").read_text())
    assert first["steps"] == 2
    (out / "results.json").unlink()
    cfg = _cfg(out, [*common, "ckpt_path=last"])
    cfg.trainer.max_steps = 4
    train(cfg)
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["steps"] == 4 and resumed["resumed_from"].endswith("last.ckpt")
