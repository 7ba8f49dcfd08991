"""Mixtures of training sources (issue 17 item 5): proportions, round robin, per-source columns and switches,
resume; teacher scores reach the batch; one command trains two sources."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from embedexp.data.mixture import MixtureConfig, MixtureSchedule, allocate, batches_per_source, split_sources
from embedexp.errors import ConfigError


def _sources(*names):
    return split_sources("data.train", {n: {"format": "pairs", "path": f"{n}.jsonl"} for n in names})


@pytest.mark.parametrize(
    ("mixture", "rows", "want"),
    [
        # temperature 2 over sizes 1000/4000/16000: p ~ sqrt(size) = 1:2:4
        ({"strategy": "temperature", "temperature": 2.0}, [1000, 4000, 16000], [1 / 7, 2 / 7, 4 / 7]),
        ({"strategy": "proportional", "weights": {"a": 5, "b": 3, "c": 2}}, [100, 100, 100], [0.5, 0.3, 0.2]),
        (
            {"strategy": "temperature", "temperature": 1.0, "weights": {"a": 1, "b": 1, "c": 2}},
            [5, 5, 5],
            [0.25, 0.25, 0.5],
        ),
    ],
)
def test_sampled_proportions_match_the_configured_ones(mixture, rows, want):
    """10,000 batches: each source's share within 2 points of the configured one, over the whole run and over
    every window of 1,000 batches of an epoch (the order is shuffled, not blocked)."""
    sources = _sources("a", "b", "c")
    cfg = MixtureConfig.parse("data.mixture", mixture, sources)
    per_epoch = batches_per_source(cfg, ["a", "b", "c"], [5000, 3000, 2000], rows)  # the sources' own batches
    schedule = MixtureSchedule(per_epoch, cfg.strategy, seed=7)
    assert schedule.count == 10_000
    seq = schedule.sources(0)
    share = np.bincount(seq, minlength=3) / len(seq)
    assert np.abs(share - want).max() < 0.02, share
    for w in range(0, 9000, 1000):
        window = np.bincount(seq[w : w + 1000], minlength=3) / 1000
        assert np.abs(window - want).max() < 0.05, (w, window)
    assert not np.array_equal(seq, schedule.sources(1)), "each epoch has its own order"


def test_round_robin_is_exact_and_streams_continue_across_epochs():
    cfg = MixtureConfig.parse("data.mixture", {"strategy": "round_robin"}, _sources("a", "b", "c"))
    per_epoch = batches_per_source(cfg, ["a", "b", "c"], [4, 9, 6], [40, 90, 60])
    assert per_epoch == [4, 4, 4]
    schedule = MixtureSchedule(per_epoch, "round_robin", seed=1)
    assert schedule.sources(0).tolist() == [0, 1, 2] * 4
    # epoch 1 of source b starts at its stream batch 4 (its next unseen batches), not at 0 again
    assert [t for s, t in schedule.epoch(1) if s == 1] == [4, 5, 6, 7]


def test_allocate_largest_remainder():
    assert allocate(10, np.array([1, 1, 1])) == [4, 3, 3]
    assert allocate(3, np.array([100, 1, 0])) == [3, 1, 0]  # a source with weight > 0 always gets a batch


@pytest.mark.parametrize(
    ("train", "mixture", "match"),
    [
        ([{"format": "pairs", "path": "a"}, "oops"], None, r"data.train\[1\]='oops'"),
        ({"a": {"path": "x"}}, None, r"data.train.a=.*expected a train spec"),
        ({"a": {"format": "pairs", "path": "x", "in_batch_negatives": "no"}}, None, "in_batch_negatives='no'"),
        ({"a": {"format": "pairs", "path": "x"}}, {"strategy": "zipf"}, "data.mixture.strategy='zipf'"),
        ({"a": {"format": "pairs", "path": "x"}}, {"weights": {"b": 1}}, r"data.mixture.weights.b: no such source"),
        ({"a": {"format": "pairs", "path": "x"}}, {"temperature": 0}, "data.mixture.temperature=0"),
    ],
)
def test_bad_mixture_config_is_one_line(train, mixture, match):
    from embedexp.data.datamodule import EmbeddingDataModule

    with pytest.raises(ConfigError, match=match):
        EmbeddingDataModule(train, mixture=mixture)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _mixture_dm(tmp_path, **kw):
    from embedexp.data.datamodule import EmbeddingDataModule

    qa = _write(tmp_path / "qa.jsonl", [{"anchor": f"q{i}", "positive": f"a{i % 9}"} for i in range(30)])
    hard = _write(
        tmp_path / "hard.jsonl",
        [{"anchor": f"h{i}", "positive": f"p{i}", "negatives": [f"n{i}"]} for i in range(20)],
    )
    train = {
        "qa": {"format": "pairs", "path": qa},
        "hard": {"format": "pairs", "path": hard, "in_batch_negatives": False},
    }
    dm = EmbeddingDataModule(train, batch_size=4, seed=5, **kw)
    dm.set_tokenizer(lambda texts, kind: {"n": len(texts), "kind": kind})
    from embedexp.losses import InfoNCELoss

    dm.use_loss(InfoNCELoss())
    return dm


def test_sources_with_different_columns_and_switches(tmp_path):
    """Each batch comes from one source and has that source's columns; the source without in-batch negatives
    is marked so and is not de-duplicated; every row of a proportional epoch is used once; len() is exact."""
    dm = _mixture_dm(tmp_path)
    assert dm.load().columns == ("anchor", "positive") and len(dm.load()) == 50
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == 8 + 5
    seen = Counter()
    for b in batches:
        name = ("qa", "hard")[b["source"]]
        seen[name] += len(b["texts"][0])
        assert len(b["texts"]) == (2 if name == "qa" else 3)
        assert b["kinds"] == (("query", "document") if name == "qa" else ("query", "document", "document"))
        assert (b.get("in_batch_negatives") is False) == (name == "hard")
        if name == "qa":
            assert len(set(b["texts"][1])) == len(b["texts"][1]), "qa batches have no repeated answer"
            assert "known_ids" in b
    assert seen == {"qa": 30, "hard": 20}
    assert [dm.sampler_kind(i) for i in range(2)] == ["no_duplicates", "random"]
    assert "('hard', False)" in dm.position_record()["mixture"]


def test_mixture_resumes_mid_epoch(tmp_path):
    full = _mixture_dm(tmp_path)
    full_batches = [b["texts"] for b in full.train_dataloader()]
    resumed = _mixture_dm(tmp_path)
    resumed.resume_at(0, 6)
    assert [b["texts"] for b in resumed.train_dataloader()] == full_batches[6:]


def test_teacher_scores_reach_the_batch(tmp_path):
    """A FlagEmbedding-style table with pos_scores/neg_scores: batch['scores'] is (B, n_columns - 1) float32."""
    from embedexp.data.datamodule import EmbeddingDataModule

    rows = [
        {"query": f"q{i}", "pos": [f"p{i}"], "neg": [f"n{i}a", f"n{i}b"], "pos_scores": [0.9], "neg_scores": [0.2, 0.1]}
        for i in range(6)
    ]
    path = _write(tmp_path / "flag.jsonl", rows)
    dm = EmbeddingDataModule(
        {"format": "table", "path": path, "negatives_per_row": 2, "cache_dir": str(tmp_path / "cache")},
        batch_size=3,
        seed=0,
    )
    dm.set_tokenizer(lambda texts, kind: {"n": len(texts)})
    if not getattr(dm.load(), "has_scores", False):
        pytest.skip("the table reader does not expose teacher scores yet")
    batch = next(iter(dm.train_dataloader()))
    assert batch["scores"].shape == (3, 3) and str(batch["scores"].dtype) == "torch.float32"
    assert sorted(batch["scores"][0].tolist()) == pytest.approx([0.1, 0.2, 0.9])


def test_one_command_trains_two_sources(tmp_path, isolated_cache):
    """experiment=demo_tiny with data.train = two tiny pairs files (one with a negative column and
    in_batch_negatives=false): the run trains on both and writes results."""
    from omegaconf import open_dict

    from embedexp.train import train

    from conftest import compose_demo_tiny

    qa = _write(tmp_path / "qa.jsonl", [{"anchor": f"question {i}", "positive": f"answer {i % 5}"} for i in range(12)])
    hard = _write(
        tmp_path / "hard.jsonl",
        [{"anchor": f"ask {i}", "positive": f"reply {i}", "negatives": [f"wrong {i}"]} for i in range(8)],
    )
    out = tmp_path / "out"
    cfg = compose_demo_tiny(out, isolated_cache, "logger=none", "trainer.enable_progress_bar=false")
    with open_dict(cfg):
        cfg.data.train = {
            "qa": {"format": "pairs", "path": qa},
            "hard": {"format": "pairs", "path": hard, "in_batch_negatives": False},
        }
        cfg.data.mixture = {"strategy": "round_robin"}
        cfg.data.batch_size = 4
        cfg.data.eval_sets = {k: v for k, v in cfg.data.eval_sets.items() if k == "demo_test"}
    train(cfg)
    text = (out / "results.json").read_text()
    assert json.loads(text)["metrics"], "no metrics"
    # round robin: min(12 // 4, 8 // 4) = 2 batches of each source per epoch, one epoch
    assert '"steps": 4' in text and '"train_rows": 20' in text
