import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("EMBEDEXP_DATA", REPO.parent / "shared" / "data"))
DEMO = REPO / "embedexp" / "data" / "demo"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from embedexp.models.tiny import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert", seed=0)


@pytest.fixture()
def isolated_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("EMBEDEXP_CACHE", str(cache))
    return cache


def write_beir(root: Path, corpus: dict, queries: dict, qrels: dict, split: str = "test") -> Path:
    """A small BEIR folder from python dicts (corpus values: (title, text))."""
    import json

    (root / "qrels").mkdir(parents=True, exist_ok=True)
    with open(root / "corpus.jsonl", "w") as f:
        for did, (title, text) in corpus.items():
            f.write(json.dumps({"_id": did, "title": title, "text": text}) + "\n")
    with open(root / "queries.jsonl", "w") as f:
        for qid, text in queries.items():
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    with open(root / "qrels" / f"{split}.tsv", "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for qid, docs in qrels.items():
            for did, g in docs.items():
                f.write(f"{qid}\t{did}\t{g}\n")
    return root


def compose_demo_tiny(out: Path, cache: Path, *overrides: str):
    """The `train` config of a demo_tiny run writing to `out`, caching under `cache`."""
    from hydra import compose, initialize_config_dir

    from embedexp.config import config_dir, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(
            config_name="train",
            overrides=["experiment=demo_tiny", f"paths.output_dir={out}", f"paths.cache_dir={cache}", *overrides],
        )


# A train() run spends ~55% of its CPU drawing the three PNGs (matplotlib) and ~20% on 10,000 bootstrap
# resamples of the paired statistics. Tests that check neither (they read results.json's numbers, weights,
# errors) use these; the plots are covered by tests/test_plots.py and the full runs of tests/test_train.py,
# the statistics by tests/test_stats.py (against scipy) and the runs that keep the default.
FAST_STATS = "eval.stats.n_resamples=200"


@pytest.fixture()
def no_plots(monkeypatch):
    """write_results without the PNGs (write_plots never raises, so a run's results never depended on them)."""
    import embedexp.eval.results

    monkeypatch.setattr(embedexp.eval.results, "write_plots", lambda *args, **kwargs: [])


def tiny_cross_encoder(path: Path, tokenizer_dir: Path, seed: int) -> Path:
    """A tiny random one-label BertForSequenceClassification folder (a CrossEncoder) with the tiny tokenizer."""
    import shutil

    import torch
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=1,
    )
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(path, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(tokenizer_dir / f, path / f)
    return path
