"""End-to-end: a tiny fine-tuning run writes base vs tuned results and an exported model."""

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from embedexp.config import config_dir, register_resolvers


def _cfg(out: Path, *overrides: str):
    register_resolvers()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(
            config_name="train",
            overrides=[
                "experiment=demo_tiny",
                f"paths.output_dir={out}",
                f"paths.cache_dir={out.parent / 'cache'}",
                *overrides,
            ],
        )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from embedexp.train import train

    out = tmp_path_factory.mktemp("run") / "out"
    cfg = _cfg(out)
    train(cfg)
    return out, cfg


def test_results_have_base_tuned_delta_for_every_metric(tiny_run):
    out, _ = tiny_run
    results = json.loads((out / "results.json").read_text())
    metrics = results["metrics"]
    expected = {f"demo_test/{m}" for m in ("ndcg@10", "recall@10", "recall@100", "mrr@10", "map@10")} | {
        "demo_sts/spearman",
        "demo_sts/pearson",
    }
    assert expected <= set(metrics)
    for name, row in metrics.items():
        assert 0.0 <= row["tuned"] <= 1.0 or name.endswith(("spearman", "pearson"))
        assert row["delta"] == pytest.approx(row["tuned"] - row["base"], abs=1e-12)
    md = (out / "results.md").read_text()
    assert all(name in md for name in metrics) and "| metric | base | fine-tuned | delta |" in md
    assert results["steps"] > 0


def test_base_column_is_the_base_model_and_tuned_column_the_export(tiny_run):
    from hydra.utils import instantiate

    from embedexp.config import container
    from embedexp.eval import Evaluator
    from embedexp.models import Encoder

    out, cfg = tiny_run
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    evaluator = Evaluator(**{**container(cfg.eval), "cache_dir": None})
    base = evaluator.evaluate(instantiate(cfg.model))
    tuned = evaluator.evaluate(Encoder.from_exported(out / "model"))
    for name in metrics:
        assert metrics[name]["base"] == pytest.approx(base[name], abs=1e-6)
        assert metrics[name]["tuned"] == pytest.approx(tuned[name], abs=1e-6)
    assert base != tuned  # training changed the model


def test_exported_model_loads_in_sentence_transformers(tiny_run):
    from sentence_transformers import SentenceTransformer

    from embedexp.models import Encoder

    out, _ = tiny_run
    texts = ["how do I fix a flat tyre", "Sourdough needs a starter."]
    ours = Encoder.from_exported(out / "model").encode(texts, "query")
    theirs = torch.as_tensor(SentenceTransformer(str(out / "model"), device="cpu").encode(texts, prompt_name="query"))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_base_evaluation_is_cached(tiny_run, monkeypatch):
    from hydra.utils import instantiate

    from embedexp.config import container
    from embedexp.eval import Evaluator

    out, cfg = tiny_run
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    evaluator = Evaluator(**container(cfg.eval))
    assert list((Path(cfg.eval.cache_dir) / "eval").glob("*.json"))

    def boom(*a, **k):
        raise AssertionError("base model was re-encoded despite the cache")

    monkeypatch.setattr(Evaluator, "_retrieval", boom)
    monkeypatch.setattr(Evaluator, "_sts", boom)
    cached = evaluator.evaluate(instantiate(cfg.model), use_cache=True)
    assert cached == {k: v["base"] for k, v in metrics.items()}


def test_same_seed_same_result(tiny_run, tmp_path):
    from embedexp.train import train

    out, _ = tiny_run
    train(_cfg(tmp_path / "again"))
    first = json.loads((out / "results.json").read_text())["metrics"]
    second = json.loads((tmp_path / "again" / "results.json").read_text())["metrics"]
    assert first == second
