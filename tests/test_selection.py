"""Model selection: the dev split never shares a query with training; the best dev step is the one kept; early
stopping; the interpolation guard end to end (its choice is the exported model)."""

import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from embedexp.data.dev_split import split_by_query
from embedexp.data.train_sets import TrainSet
from embedexp.errors import ConfigError
from embedexp.eval.selection import ModelSelection

from conftest import compose_demo_tiny


@pytest.mark.parametrize("seed", range(20))
def test_dev_split_never_shares_a_query_with_training(seed):
    rng = random.Random(seed)
    anchors = [f"query {i}" for i in range(rng.randint(2, 40))]
    rows = [(rng.choice(anchors), f"doc {rng.randint(0, 50)}") for _ in range(rng.randint(len(anchors), 120))]
    ts = TrainSet(("anchor", "positive"), ("query", "document"), rows, query_ids=[r[0] for r in rows])
    fraction = rng.choice([0.05, 0.1, 0.3, 0.9])
    train, dev = split_by_query(ts, fraction, seed)
    assert not {r[0] for r in train.rows} & {r[0] for r in dev}
    assert sorted(train.rows + dev) == sorted(rows) and dev and train.rows
    assert train.query_ids == [r[0] for r in train.rows]
    assert split_by_query(ts, fraction, seed)[1] == dev  # seeded


def test_dev_split_refuses_labelled_pairs():
    ts = TrainSet(("text_a", "text_b"), ("document", "document"), [("a", "b"), ("c", "d")], labels=[0.1, 0.9])
    with pytest.raises(ConfigError, match=r"^data.dev_fraction=0.5: a dev split needs \(anchor, positive\) rows"):
        split_by_query(ts, 0.5, 0)


class _Dev:
    """Dev 'evaluator' whose metric is a known function of the weights: the best step is known in advance."""

    def __init__(self, score_of_weight):
        self.score_of_weight = score_of_weight

    def evaluate(self, encoder, use_cache=False):
        return {"dev/ndcg@10": self.score_of_weight(float(encoder.backbone.weight.item()))}


def _run(scores: list[float], patience=None):
    """Simulate len(scores) optimiser steps: weight = step, dev metric at step s = scores[s - 1]."""
    backbone = nn.Linear(1, 1, bias=False)
    module = SimpleNamespace(encoder=SimpleNamespace(backbone=backbone))
    sel = ModelSelection(_Dev(lambda w: scores[int(w) - 1]), "dev/ndcg@10", every_n_steps=1, patience=patience)
    trainer = SimpleNamespace(global_step=0, loggers=[], should_stop=False, world_size=1)
    sel.on_fit_start(trainer, module)
    for step in range(1, len(scores) + 1):
        with torch.no_grad():
            backbone.weight.fill_(step)  # "training" moved the weights
        trainer.global_step = step
        sel.on_train_batch_end(trainer, module)
        if trainer.should_stop:
            break
    sel.on_fit_end(trainer, module)
    return sel, float(backbone.weight.item()), trainer


def test_best_dev_step_is_the_model_kept():
    sel, weight, _ = _run([0.2, 0.5, 0.9, 0.4, 0.6])
    assert sel.best_step == 3 and sel.best == 0.9
    assert weight == 3.0  # the weights of step 3 are loaded at the end, not the last step's
    assert [h["step"] for h in sel.history] == [1, 2, 3, 4, 5]


def test_early_stopping_after_patience_evaluations_without_improvement():
    sel, weight, trainer = _run([0.2, 0.7, 0.6, 0.5, 0.9, 1.0], patience=2)
    assert trainer.should_stop and trainer.global_step == 4  # steps 3 and 4 did not improve on step 2
    assert sel.best_step == 2 and weight == 2.0


def _cfg(out: Path, *overrides: str):
    return compose_demo_tiny(out, out.parent / "cache", "logger=none", *overrides)


def test_interpolation_guard_end_to_end(tmp_path):
    from embedexp.eval import interpolate as ip
    from embedexp.models import Encoder
    from embedexp.train import train

    out = tmp_path / "out"
    train(
        _cfg(
            out,
            "data.dev_fraction=0.2",
            "select.every_n_steps=4",
            "select.interpolate=true",
            "select.general_sets=[demo_sts]",
            "select.max_general_drop=0.0",
        )
    )
    results = json.loads((out / "results.json").read_text())
    inter = results["selection"]["interpolation"]
    rows = {r["alpha"]: r for r in inter["rows"]}
    assert sorted(rows) == [0.0, 0.25, 0.5, 0.75, 1.0]
    floor = rows[0.0]["demo_sts/spearman"]
    allowed = [a for a, r in rows.items() if r["demo_sts/spearman"] >= floor - 1e-9]
    best = max(allowed, key=lambda a: (rows[a]["demo_dev/ndcg@10"], rows[a]["demo_sts/spearman"], -a))
    assert inter["chosen"]["alpha"] == best  # the rule, recomputed from the table
    # the exported model is the chosen one: its general metric is the chosen row's
    assert results["metrics"]["demo_sts/spearman"]["tuned"] == pytest.approx(rows[best]["demo_sts/spearman"], abs=1e-6)
    assert Encoder.from_exported(out / "model").dim == 32
    assert "## Interpolation guard (WiSE-FT)" in (out / "results.md").read_text()
    assert (out / "interpolation.png").read_bytes()[:4] == b"\x89PNG"
    assert ip.DEFAULT_ALPHAS == (0.0, 0.25, 0.5, 0.75, 1.0)


def test_interpolation_needs_a_dev_set(tmp_path):
    from embedexp.train import train

    with pytest.raises(ConfigError, match=r"^select.interpolate=true needs a dev set"):
        train(_cfg(tmp_path / "out", "select.interpolate=true"))
