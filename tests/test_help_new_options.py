"""--help lists the options added for rerankers, distillation, the decision table and big models (issue 19),
and every option it names exists in the composed config (no help line for a key that is not there)."""

from __future__ import annotations

import importlib
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from embedexp.config import config_dir, register_resolvers

LISTED = {
    "train": [
        "model=cross_encoder_minilm",
        "cross_encoder_tiny",
        "loss=rerank_listwise",
        "rerank_bce",
        "loss=distill_kl",
        "margin_mse",
        "miner.teacher_scores=true",
        "eval.first_stage=bm25",
        "eval.rerank.top_k=",
        "eval.rerank.batch_size=",
        "++eval.rerank_base=false",
        "model.peft.r=8",
        "model.peft.alpha",
        "model.gradient_checkpointing=true",
        "model.torch_dtype=bfloat16",
    ],
    "evaluate": [
        "eval.decision.reranker=",
        "eval.decision.enabled=",
        "eval.decision.top_k=",
        "eval.decision.batch_sizes=",
        "eval.decision.max_queries_for_latency=",
        "eval.decision.bm25=",
        "eval.decision.rerank_batch_size=",
        "eval.decision.max_length=",
        "eval.rerank.model=",
        "eval.rerank.top_k=",
        "eval.precision=fp32|bf16|auto",
        "model.torch_dtype=",
    ],
    "mine": ["miner=cross_encoder", "miner.teacher_scores=true", "loss=distill_kl"],
}
ENTRIES = {"train": "embedexp.train", "evaluate": "embedexp.evaluate", "mine": "embedexp.mine"}
# (command config, overrides, keys that must exist) for the keys the help pages name
KEYS = [
    ("evaluate", [], [f"eval.decision.{k}" for k in ("reranker", "enabled", "top_k", "batch_sizes", "bm25")]),
    ("evaluate", [], ["eval.decision.max_queries_for_latency", "eval.decision.rerank_batch_size"]),
    ("evaluate", [], ["eval.decision.max_length", "eval.rerank.model", "eval.precision", "model.torch_dtype"]),
    ("train", ["experiment=scifact_reranker"], ["eval.first_stage", "eval.rerank.top_k", "eval.rerank.batch_size"]),
    ("train", ["miner=cross_encoder"], ["miner.teacher_scores", "miner.model_path"]),
    ("train", ["model=minilm"], ["model.peft.r", "model.peft.alpha", "model.gradient_checkpointing"]),
]


def _help(command: str, monkeypatch, capsys) -> str:
    entry = importlib.import_module(ENTRIES[command]).main
    monkeypatch.setattr(sys, "argv", [f"embedexp-{command}", "--help"])
    try:
        entry()
    except SystemExit as e:
        assert not e.code
    return capsys.readouterr().out


@pytest.mark.parametrize("command", sorted(LISTED))
def test_help_lists_the_new_options(command, monkeypatch, capsys):
    out = _help(command, monkeypatch, capsys)
    missing = [option for option in LISTED[command] if option not in out]
    assert not missing, f"embedexp-{command} --help lacks {missing}"


def test_the_keys_the_help_names_exist():
    register_resolvers()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        for command, overrides, keys in KEYS:
            cfg = compose(config_name=command, overrides=overrides)
            for key in keys:
                assert OmegaConf.select(cfg, key, default="<absent>") != "<absent>", (command, overrides, key)
