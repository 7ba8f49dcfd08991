"""No-duplicates batches (issue 17 item 4): no text twice in a batch, also across DDP ranks; exact length;
mid-epoch resume; the data module's default follows the loss."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embedexp.data.mixture import MixtureSchedule
from embedexp.data.no_duplicates import (
    KnownPositives,
    batch_sizes,
    normalise,
    plan_no_duplicates,
    row_hashes,
    text_hash,
)
from embedexp.data.resumable import ResumableBatchSampler, SourcePlan, epoch_order


class _Set:
    """A minimal TrainSet: columns, get(i)."""

    def __init__(self, rows, columns=("anchor", "positive", "negative_1")):
        self.rows, self.columns = rows, columns

    def __len__(self):
        return len(self.rows)

    def get(self, i):
        return self.rows[i]


def _random_rows(rng, n, pool):
    """Rows drawn from a small pool of texts, so duplicates are frequent (and some rows repeat a text inside)."""
    words = [f"text {k}" for k in range(pool)]
    return [tuple(words[j] for j in rng.integers(0, pool, size=3)) for _ in range(n)]


def _sampler(ts, batch, world, rank, drop_last, seed=0):
    hashes = row_hashes(ts)
    plan = SourcePlan(len(ts), batch, seed, True, world, drop_last, "no_duplicates", hashes=lambda e: hashes)
    return ResumableBatchSampler([plan], MixtureSchedule([plan.count]), rank, world)


def test_hash_normalises_white_space_and_unicode_but_not_case():
    assert text_hash("a  b\n") == text_hash(" a b") == text_hash("a\tb")
    assert text_hash("caf\u00e9") == text_hash("cafe\u0301")  # NFC
    assert text_hash("A b") != text_hash("a b")
    assert normalise("  x \n y ") == "x y"
    assert 0 < text_hash("") < 2**63


@pytest.mark.parametrize("seed", range(40))
def test_no_batch_repeats_a_text_property(seed):
    """Random rows with many repeated texts, random batch sizes, 1-3 simulated ranks, drop_last on/off: every
    global batch (the ranks' batches of one step together) has no text twice whenever the plan reports no
    forced row; every row is used once per epoch (drop_last=False); all ranks get equal batches; len() exact."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 120))
    pool = int(rng.integers(max(8, n // 2), 4 * n))
    ts = _Set(_random_rows(rng, n, pool))
    world = int(rng.integers(1, 4))
    batch = int(rng.integers(1, 6))
    drop_last = bool(rng.integers(0, 2))
    samplers = [_sampler(ts, batch, world, r, drop_last, seed) for r in range(world)]
    for epoch in (0, 1):
        per_rank = []
        for s in samplers:
            s.set_epoch(epoch)
            per_rank.append(list(s))
        assert all(len(b) == len(samplers[0]) for b in per_rank), "len() must equal the batches yielded"
        forced = samplers[0].sources[0].forced
        used = []
        for step in zip(*per_rank):
            assert len({len(b) for b in step}) == 1, "ranks must get equally many rows per step"
            rows = [r for b in step for (_, r, _) in b]
            used += rows
            texts = [normalise(t) for r in rows for t in set(ts.get(r))]
            if not forced:
                assert len(texts) == len(set(texts)), f"a text repeats in a batch: {sorted(texts)}"
        assert len(used) == len(set(used)), "a row was used twice in one epoch"
        if not drop_last:
            assert len(used) == n // world * world if n >= world else True
        sizes = batch_sizes(n, batch, world, drop_last)
        assert len(per_rank[0]) == len(sizes)


def test_plan_defers_instead_of_dropping_and_swaps_at_the_tail():
    """Rows 0-3 share a positive; 4 batches of 2: each batch gets exactly one of them (no row dropped)."""
    hashes = np.array([[10 + i, 99] for i in range(4)] + [[20 + i, 30 + i] for i in range(4)], dtype=np.int64)
    for seed in range(20):
        order = np.random.default_rng(seed).permutation(8)
        plan = plan_no_duplicates(hashes, order, [2, 2, 2, 2])
        assert plan.forced == 0
        assert sorted(np.concatenate(plan.batches).tolist()) == list(range(8))
        assert all(sum(int(r) < 4 for r in b) == 1 for b in plan.batches)


def test_impossible_plans_keep_the_count_and_report_forced_rows():
    """Three rows with one text, two batches: one batch must repeat it; the count stays exact."""
    hashes = np.array([[1, 5], [2, 5], [3, 5], [4, 6]], dtype=np.int64)
    plan = plan_no_duplicates(hashes, np.arange(4), [2, 2])
    assert [len(b) for b in plan.batches] == [2, 2] and plan.forced == 1


def test_resume_mid_epoch_gives_the_same_batches():
    rng = np.random.default_rng(0)
    ts = _Set(_random_rows(rng, 90, 60))
    full = _sampler(ts, 8, 1, 0, False, seed=3)
    full.set_epoch(1)
    batches = list(full)
    resumed = _sampler(ts, 8, 1, 0, False, seed=3)
    resumed.skip_batches(1, 4)
    resumed.set_epoch(1)
    assert list(resumed) == batches[4:]
    resumed.set_epoch(2)  # the skip belongs to epoch 1 only
    full.set_epoch(2)
    assert list(resumed) == list(full)
    assert len(full) == len(batches)


def test_random_plan_keeps_the_single_process_order():
    """batch_sampler=random on one process: the same rows, in the same order, as the old ResumableSampler."""
    from embedexp.data.resumable import ResumableSampler

    old = ResumableSampler(50, 8, seed=3)
    old.set_epoch(1)
    plan = SourcePlan(50, 8, 3, True, 1, False, "random")
    new = ResumableBatchSampler([plan], MixtureSchedule([plan.count]))
    new.set_epoch(1)
    assert [r for b in new for (_, r, _) in b] == list(old) == epoch_order(50, 3, 1).tolist()
    assert len(new) == 7


def test_known_positives_group_by_anchor_and_qrels():
    class Retrieval(_Set):
        query_ids = ["q1", "q1", "q2"]
        qrels = {"q1": {"d1": 1, "d2": 1, "d3": 0}, "q2": {"d3": 2}}
        corpus = {"d1": "doc one", "d2": "doc two", "d3": "doc three"}

    ts = Retrieval([("query one", "doc one"), ("query one", "doc two"), ("query two", "doc three")], ("a", "p"))
    known = KnownPositives.build(row_hashes(ts), ts)
    assert set(known.lookup(0).tolist()) == {text_hash("doc one"), text_hash("doc two")}
    assert set(known.lookup(2).tolist()) == {text_hash("doc three")}


def _pairs(tmp_path, rows):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"anchor": a, "positive": p}) + "\n" for a, p in rows))
    return path


def test_datamodule_default_follows_the_loss(tmp_path):
    """batch_sampler=auto: no_duplicates for InfoNCE (in-batch negatives), random for a triplet loss; the
    SciFact-like case of many rows sharing a positive yields batches without a repeated text."""
    from embedexp.data.datamodule import EmbeddingDataModule
    from embedexp.losses import InfoNCELoss, TripletLoss

    rows = [(f"question {i}", f"answer {i % 7}") for i in range(40)]  # 7 answers shared by 40 questions
    dm = EmbeddingDataModule({"format": "pairs", "path": str(_pairs(tmp_path, rows))}, batch_size=6, seed=1)
    dm.set_tokenizer(lambda texts, kind: {"n": len(texts)})
    dm.use_loss(InfoNCELoss())
    assert dm.sampler_kind() == "no_duplicates" and dm.position_record()["batch_sampler"] == "auto"
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == 7
    for b in batches:
        assert len(set(b["texts"][1])) == len(b["texts"][1])
        assert b["known_ids"].shape[0] == len(b["texts"][0])
    dm.use_loss(TripletLoss())
    assert dm.sampler_kind() == "random" and "known_ids" not in next(iter(dm.train_dataloader()))


def test_bad_batch_sampler_is_a_config_error(tmp_path):
    from embedexp.data.datamodule import EmbeddingDataModule
    from embedexp.errors import ConfigError

    with pytest.raises(ConfigError, match="data.batch_sampler='nodup'"):
        EmbeddingDataModule({"format": "pairs", "path": "x"}, batch_sampler="nodup")


# ---------------------------------------------------------------- hashes straight from Arrow (issue 17, scale)
def _per_row(ts, epoch):
    """The per-row reference: text_hash of every text of `ts.get(i)` at `epoch` (the sampler's former path)."""
    ts.set_epoch(epoch)
    return np.array([[text_hash(t) for t in ts.get(i)] for i in range(len(ts))], dtype=np.int64)


def test_hash_strings_equals_text_hash_for_unicode_white_space_and_nulls():
    import pyarrow as pa

    from embedexp.data.no_duplicates import hash_strings

    spaces = [chr(c) for c in range(0x110000) if chr(c).isspace()]  # every char Python's str.split() splits on
    joined = pa.array([f"{s}a{s}{s}b{s}" for s in spaces] + ["a b", "a\u200bb"])  # zero-width space: not white
    h = hash_strings(joined)
    assert (h[:-1] == text_hash("a b")).all() and h[-1] != text_hash("a b")
    rng = np.random.default_rng(0)
    alphabet = list("aZ é\u0301\t\n\x0b\x1c\u3000\u00a0\u2028\u00c5\u212b") + ["\U0001f600", "ß"]
    texts = ["".join(rng.choice(alphabet, size=rng.integers(0, 12))) for _ in range(2000)] + [None, ""]
    chunked = pa.chunked_array([pa.array(texts[:700]), pa.array(texts[700:])])
    expected = [text_hash(t) if t is not None else 0 for t in texts]
    assert hash_strings(chunked, batch=97).tolist() == expected
    assert hash_strings(pa.array(texts, pa.large_string()).slice(5)).tolist() == expected[5:]  # offset, large


def _flag_unicode_rows():
    """FlagEmbedding rows: 1..5 negatives, two positives on odd rows, unicode/white-space variants of shared
    texts (the same text after NFC and white-space collapsing), a prompt column."""
    variants = ["caf\u00e9  au lait", "cafe\u0301 au\tlait", " café au lait\n", "Café au lait"]
    rows = []
    for r in range(9):
        n = 1 + r % 5
        rows.append(
            {
                "query": f"query {r % 4}",
                "pos": [variants[r % 4], f"p{r}\u3000x"] if r % 2 else [variants[(r + 1) % 4]],
                "neg": [variants[(r + j) % 4] if j % 2 else f"n{r}_{j}" for j in range(n)],
                "prompt": "Represent: ",
            }
        )
    return rows


@pytest.mark.parametrize(
    "spec",
    [
        {"negatives_per_row": 3},  # sampled negatives (with replacement below 3): draws change per epoch
        {"negatives_per_row": 1, "positives": "all"},
        {"negatives_per_row": 2, "positives": "sample"},
        {},  # k = the fewest negatives (1): rows with more negatives sample one
    ],
    ids=["k3", "all", "sample", "min"],
)
def test_table_row_hashes_equal_the_per_row_hashes(tmp_path, spec):
    from embedexp.data.train_sets import build_train_set

    path = tmp_path / "flag.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _flag_unicode_rows()))
    ts = build_train_set({"format": "table", "path": str(path), "cache_dir": str(tmp_path / "hf"), **spec}, seed=5)
    for epoch in (0, 1, 2):
        new = row_hashes(ts, epoch)
        old = _per_row(ts, epoch)
        assert new.dtype == np.int64 and np.array_equal(new, old), epoch
        order = np.random.default_rng(epoch).permutation(len(ts))
        sizes = batch_sizes(len(ts), 3, 1, False)
        a, b = plan_no_duplicates(new, order, sizes), plan_no_duplicates(old, order, sizes)
        assert [x.tolist() for x in a.batches] == [x.tolist() for x in b.batches]  # the sampler's output


def test_table_row_hashes_of_scalar_passage_and_labelled_tables(tmp_path):
    from embedexp.data.train_sets import build_train_set

    def build(name, text, **spec):
        (tmp_path / name).write_text(text)
        return build_train_set(
            {"format": "table", "path": str(tmp_path / name), "cache_dir": str(tmp_path / "hf"), **spec}, seed=0
        )

    csv = build("t.csv", "anchor,positive,negative\nq  1,a\u00a0b,a b\nq 1,x,\u00c5\nq2,y,\u212b\n")
    tev = {
        "query": "what purrs",
        "positive_passages": [{"title": "Cats", "text": "cats purr"}],
        "negative_passages": [{"title": "", "text": "dogs bark"}, {"title": "Cars", "text": "vroom"}],
    }
    tevatron = build("tev.jsonl", json.dumps(tev) + "\n" + json.dumps({**tev, "query": "who barks"}) + "\n")
    labelled = build("l.csv", "sentence1,sentence2,label\na,b,1\nc  d,c d,0\n")
    mixed_rows = [  # negatives from a text column and a list column, positives from a list and a text column
        {
            "q": f"q{r}",
            "p1": [f"p{r}"] * (1 + r % 2),
            "p2": f"p{r} b",
            "n1": f"x{r % 2}",
            "n2": [f"y{r}_{j}" for j in range(r)],
        }
        for r in range(5)
    ]
    mixed_spec = {"anchor": "q", "positive": ["p1", "p2"], "negatives": ["n1", "n2"]}
    mixed = [
        build("mx.jsonl", "".join(json.dumps(r) + "\n" for r in mixed_rows), columns=mixed_spec, **extra)
        for extra in ({"negatives_per_row": 2}, {"negatives_per_row": 3, "positives": "sample"})
    ]
    for ts in (csv, tevatron, labelled, *mixed):
        for epoch in (0, 1):
            assert np.array_equal(row_hashes(ts, epoch), _per_row(ts, epoch))
    assert row_hashes(csv, 0)[0, 1] == row_hashes(csv, 0)[0, 2]  # "a\u00a0b" and "a b": one text


def test_table_row_hashes_are_cached_by_fingerprint_and_epoch(tmp_path, monkeypatch):
    from embedexp.data.table_rows import TableRows
    from embedexp.data.train_sets import build_train_set

    path = tmp_path / "flag.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _flag_unicode_rows()))

    def build(**spec):
        return build_train_set({"format": "table", "path": str(path), "cache_dir": str(tmp_path / "hf"), **spec})

    first = {e: row_hashes(build(negatives_per_row=3), e) for e in (0, 1)}
    files = sorted(p.name for p in (tmp_path / "hf" / "embedexp_row_hashes").glob("*.npy"))
    assert len(files) == 2 and files[0].endswith("-e0-v1.npy") and files[1].endswith("-e1-v1.npy")

    def fail(self, epoch):
        raise AssertionError("hashed again instead of loading the cache")

    monkeypatch.setattr(TableRows, "_hash_rows", fail)
    again = build(negatives_per_row=3)  # a second run (or another rank): loads, same arrays
    assert all(np.array_equal(row_hashes(again, e), first[e]) for e in (0, 1))
    with pytest.raises(AssertionError, match="hashed again"):  # another draw setting: another key
        row_hashes(build(negatives_per_row=2), 0)
    monkeypatch.undo()
    static = build(negatives_per_row=1, positives="all")
    static.rows.draws_vary = lambda: False  # a fixed draw: one file for every epoch
    row_hashes(static, 0)
    assert any(p.name.endswith("-static-v1.npy") for p in (tmp_path / "hf" / "embedexp_row_hashes").iterdir())


def test_positive_scores_only_pad_the_drawn_negatives_with_nan(tmp_path):
    """The draw (`TableRows._pick`, shared by rows and hashes) with teacher scores on the positive side only."""
    from embedexp.data.train_sets import build_train_set

    path = tmp_path / "f.jsonl"
    rows = [
        {"query": f"q{r}", "pos": [f"p{r}"], "neg": [f"n{r}_{j}" for j in range(3)], "pos_scores": [0.5]}
        for r in range(3)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ts = build_train_set(
        {"format": "table", "path": str(path), "cache_dir": str(tmp_path / "hf"), "negatives_per_row": 2}
    )
    scores = ts.scores(0)
    assert len(ts.get(0)) == 4 and scores[0] == 0.5 and len(scores) == 3 and np.isnan(scores[1:]).all()


def test_plan_without_shared_texts_is_the_order_cut_into_batches():
    """The fast path (no text in two rows): consecutive slices of the order, like the general loop gives."""
    rng = np.random.default_rng(3)
    hashes = rng.integers(1, 2**62, size=(103, 3))
    order = rng.permutation(103)
    sizes = batch_sizes(103, 10, 1, False)
    plan = plan_no_duplicates(hashes, order, sizes)
    assert plan.forced == 0 and [len(b) for b in plan.batches] == sizes
    assert np.array_equal(np.concatenate(plan.batches), order[: sum(sizes)])
    hashes[order[5], 0] = hashes[order[6], 1]  # a text shared within batch 0: the general path defers a row
    general = plan_no_duplicates(hashes, order, sizes)
    assert [len(b) for b in general.batches] == sizes and general.forced == 0
    assert order[6] not in general.batches[0] and order[6] in general.batches[1]
