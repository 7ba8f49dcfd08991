"""Every loss trains end to end through the Hydra config + LightningModule (tiny model, demo data)."""

import json

import pytest
import torch
from hydra import compose, initialize_config_dir

from embedexp.config import config_dir, register_resolvers

from conftest import FAST_STATS

CASES = {
    "infonce_symmetric": ["loss.symmetric=true"],
    "triplet_random_miner": ["loss=triplet", "miner=random"],
    "infonce_two_negatives": ["miner=random", "miner.n_negatives=2"],
    "triplet_bm25_miner": ["loss=triplet", "miner=bm25"],
    "infonce_dense_miner_of_the_model_being_trained": ["miner=dense", "miner.n_negatives=2"],
    "cosine": ["loss=cosine", "data=demo_sts"],
    "contrastive": ["loss=contrastive", "data=demo_sts", "data.train.binary_threshold=3.0"],
    "online_contrastive": ["loss=online_contrastive", "data=demo_sts", "data.train.binary_threshold=3.0"],
    "gist": ["loss=gist", "model@loss.guide=tiny", "loss.guide.model_name_or_path=${tiny_bert_path:1}"],
    "matryoshka_triplet": [
        "loss=matryoshka",
        "loss@loss.loss=triplet",
        "miner=random",
        "loss.dims=[32,16,8]",
        "eval.dims=[16,8]",
    ],
    "tsdae": ["loss=tsdae", "data=demo_sentences", "model.pooling=cls"],
    "gradcache_bf16_accumulate_clip": [
        "trainer.grad_cache.chunk_size=3",
        "trainer.precision=bf16-mixed",
        "trainer.accumulate_grad_batches=2",
        "trainer.gradient_clip_val=0.5",
    ],
    "gradcache_gist_matryoshka": [
        "loss=matryoshka",
        "loss@loss.loss=gist",
        "model@loss.loss.guide=tiny",
        "loss.loss.guide.model_name_or_path=${tiny_bert_path:1}",
        "loss.dims=[32,16]",
        "trainer.grad_cache.chunk_size=4",
    ],
}


def _cfg(out, overrides):
    register_resolvers()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(
            config_name="train",
            overrides=[
                "experiment=demo_tiny",
                f"paths.output_dir={out}",
                f"paths.cache_dir={out.parent / 'cache'}",
                "trainer.max_steps=3",
                "logger=none",
                FAST_STATS,  # these cases check the training and results.json, not the bootstrap's precision
                *overrides,
            ],
        )


@pytest.mark.parametrize("case", list(CASES))
def test_loss_trains_end_to_end(case, tmp_path, no_plots):
    from embedexp.train import train

    out = tmp_path / "out"
    train(_cfg(out, CASES[case]))
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 3
    metrics = results["metrics"]
    assert any(abs(r["delta"]) > 0 for r in metrics.values()), "training did not change the model"
    if "eval.dims=[16,8]" in CASES[case]:
        assert "demo_test/ndcg@10@dim8" in metrics and "demo_sts/spearman@dim16" in metrics
    if "loss=matryoshka" in CASES[case]:  # the folder records the dims it was trained for (mteb ModelMeta reads them)
        from embedexp.models import Encoder

        dims = [
            int(d) for d in next(o for o in CASES[case] if o.startswith("loss.dims=")).split("=")[1][1:-1].split(",")
        ]
        assert Encoder.from_exported(out / "model").matryoshka_dims == dims


def test_matryoshka_encodes_each_column_once_per_step(tiny_model_dir):
    from embedexp.data import ColumnCollator
    from embedexp.losses import InfoNCELoss, MatryoshkaLoss
    from embedexp.models import Encoder
    from embedexp.module import EmbeddingModule

    encoder = Encoder(str(tiny_model_dir))
    module = EmbeddingModule(encoder, MatryoshkaLoss(InfoNCELoss(), dims=[32, 16, 8, 4]))
    calls = []
    encoder.register_forward_hook(lambda *a: calls.append(1))
    items = [(("q one", "doc one", "neg one"), None), (("q two", "doc two", "neg two"), None)]
    batch = ColumnCollator(encoder.tokenize, ("query", "document", "document"))(items)
    loss = module.compute_loss(batch)
    loss.backward()
    assert len(calls) == 3  # one forward per column, not per dim
    assert torch.isfinite(loss)
