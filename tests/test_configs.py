"""Every config in conf/ composes, and every interpolation resolves."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from embedexp.config import config_dir, register_resolvers

CONF = Path(config_dir())
GROUPS = ["model", "loss", "miner", "data", "trainer", "eval", "logger"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def _compose(config_name: str, overrides: list[str]):
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides + ["paths.output_dir=/tmp/embedexp-test-out"])
    return cfg


def _resolve_all(cfg):
    """Resolve every interpolation; values the user must set (???) are allowed to stay missing."""
    for key in _leaf_keys(OmegaConf.to_container(cfg, resolve=False)):
        try:
            OmegaConf.select(cfg, key, throw_on_missing=False)
        except Exception as e:
            raise AssertionError(f"{key}: {e}") from e


def _leaf_keys(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaf_keys(v, f"{prefix}{k}.")
    else:
        yield prefix.rstrip(".")


def test_groups_mirror_packages():
    pkg = Path(__file__).resolve().parent.parent / "embedexp"
    for group in ["model", "loss", "miner", "data", "eval"]:
        folder = {"model": "models", "loss": "losses", "miner": "miners"}.get(group, group)
        assert (pkg / folder).is_dir(), f"conf/{group} has no package embedexp/{folder}"
    for group in GROUPS + ["experiment"]:
        assert (CONF / group).is_dir()


@pytest.mark.parametrize("group,option", OPTIONS)
def test_every_group_option_composes(group, option, isolated_cache):
    cfg = _compose("train", [f"{group}={option}"])
    assert cfg[group] is not None
    _resolve_all(cfg)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment, isolated_cache):
    cfg = _compose("train", [f"experiment={experiment}"])
    _resolve_all(cfg)
    expected = {"scifact_reranker": "embedexp.models.cross_encoder.CrossEncoderModel"}
    assert cfg.model._target_ == expected.get(experiment, "embedexp.models.Encoder")


def test_evaluate_config_composes(isolated_cache):
    cfg = _compose("evaluate", ["data=scifact"])
    _resolve_all(cfg)
    assert cfg.tuned is None


def test_defaults_are_the_documented_ones(isolated_cache):
    cfg = _compose("train", [])
    assert cfg.data.name == "helpdesk" and cfg.model.name == "all-MiniLM-L6-v2"
    assert cfg.loss._target_.endswith("InfoNCELoss") and cfg.loss.temperature == 0.05
    assert cfg.miner.name == "none" and cfg.trainer.accelerator == "cpu"
