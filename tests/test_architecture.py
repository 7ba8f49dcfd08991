"""Hydra owns composition (search path, --config-dir, hydra.searchpath); each package checks its own config.

- A group option that lives only in a `hydra.searchpath` folder (or a `--config-dir`) composes and trains
  (it was refused with "no such option in conf/data/" while Hydra itself composed it fine).
- Typos there still get the closest option, from Hydra's own list of the options it found.
- A loss added from outside the package (one module + one yaml in the user's config folder) is checked by
  building it: its constructor's rule is reported under the key the user wrote, with nothing else to edit.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from embedexp.cli import check_overrides
from embedexp.config import register_resolvers
from embedexp.errors import ConfigError

from conftest import REPO

PREFIX = "embedexp: error: "

LOSS_MODULE = '''
import torch
from torch import nn

from embedexp.errors import ConfigError


class CentroidLoss(nn.Module):
    """Test fixture: squared distance of anchor and positive. Inputs (B, d) each; output a scalar."""

    columns = ("anchor", "positive")
    needs_labels = False

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        if not (isinstance(weight, (int, float)) and weight > 0):
            raise ConfigError(f"loss.weight={weight!r}; expected a number > 0")
        self.weight = float(weight)

    def forward(self, embeddings, labels=None):
        a, p = list(embeddings.values())[:2] if isinstance(embeddings, dict) else embeddings[:2]
        return self.weight * (a - p).pow(2).sum(-1).mean()
'''


def _user_conf(tmp_path: Path) -> Path:
    """A user's config folder: a data preset (the packaged demo under another name) and a loss of their own."""
    conf = tmp_path / "my_conf"
    (conf / "data").mkdir(parents=True)
    demo = (REPO / "conf" / "data" / "demo.yaml").read_text()
    (conf / "data" / "my_preset.yaml").write_text(demo.replace("name: demo", "name: my_preset"))
    (conf / "loss").mkdir()
    (conf / "loss" / "centroid.yaml").write_text("_target_: centroid_loss.CentroidLoss\nweight: 1.0\n")
    pkg = tmp_path / "userloss"
    pkg.mkdir()
    (pkg / "centroid_loss.py").write_text(textwrap.dedent(LOSS_MODULE))
    return conf


def _train(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    out = tmp_path / "out"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "embedexp.train",
            *args,
            "experiment=demo_tiny",
            f"hydra.run.dir={out}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            "trainer.max_steps=1",
            "eval.sets={}",
            "logger=none",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "userloss")},
    )


def test_hydra_searchpath_options_compose_and_train(tmp_path):
    """A data preset and a new loss (one module + one yaml, nothing else edited) from the user's search path."""
    conf = _user_conf(tmp_path)
    proc = _train(tmp_path, f"hydra.searchpath=[file://{conf}]", "data=my_preset", "loss=centroid")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["config"]["data"]["name"] == "my_preset"
    assert results["loss"] == "CentroidLoss" and results["steps"] == 1


def test_config_dir_typo_names_the_option_found_there(tmp_path):
    conf = _user_conf(tmp_path)
    proc = _train(tmp_path, f"--config-dir={conf}", "data=my_prest")
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = proc.stderr[proc.stderr.index(PREFIX) :]
    assert line.count("\n") == 1 and "Traceback" not in proc.stderr
    assert line.startswith(f"{PREFIX}data=my_prest: no such option in config group data; did you mean data=my_preset?")
    assert not (tmp_path / "out" / "results.json").exists()


def test_searchpath_typo_names_closest_in_process(tmp_path):
    conf = _user_conf(tmp_path)
    register_resolvers()
    check_overrides("train", [f"hydra.searchpath=[file://{conf}]", "data=my_preset"])  # composes: no error
    with pytest.raises(
        ConfigError, match=r"^data=my_prset: no such option in config group data; did you mean data=my_preset\?"
    ):
        check_overrides("train", [f"hydra.searchpath=[file://{conf}]", "data=my_prset"])
    with pytest.raises(ConfigError, match=r"^data=my_preset: no such option in config group data"):
        check_overrides("train", ["data=my_preset"])  # without the search path it really is not there


def _compose_with(conf: Path, *overrides: str):
    from hydra import compose, initialize_config_dir

    from embedexp.config import config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(
            config_name="train", overrides=[f"hydra.searchpath=[file://{conf}]", "experiment=demo_tiny", *overrides]
        )


def test_new_loss_checked_by_its_own_constructor(tmp_path, monkeypatch):
    from embedexp.validate import validate_config

    conf = _user_conf(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path / "userloss"))
    validate_config(_compose_with(conf, "loss=centroid"), "train")
    with pytest.raises(ConfigError, match=r"^loss.weight=-1; expected a number > 0$"):
        validate_config(_compose_with(conf, "loss=centroid", "loss.weight=-1"), "train")
    with pytest.raises(
        ConfigError, match=r"^loss.wieght is not an argument of CentroidLoss; did you mean loss.weight\?"
    ):
        validate_config(_compose_with(conf, "loss=centroid", "+loss.wieght=2"), "train")
    with pytest.raises(ConfigError, match=r"^pretrain.loss.weight=0; expected a number > 0$"):  # the key the user wrote
        validate_config(
            _compose_with(
                conf,
                "loss=centroid",
                "+pretrain.loss._target_=centroid_loss.CentroidLoss",
                "+pretrain.loss.weight=0",
                "+pretrain.data=${data}",
            ),
            "train",
        )


def test_config_checks_need_no_weights(tmp_path, monkeypatch):
    """Checking a bad loss value reads no model weights: the check fails before any encoder is built."""
    from hydra import compose, initialize_config_dir

    from embedexp.config import config_dir
    from embedexp.models import encoder
    from embedexp.validate import validate_config

    def boom(*a, **k):
        raise AssertionError("model weights loaded during config checks")

    monkeypatch.setattr(encoder.Encoder, "__init__", boom)
    register_resolvers()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                "experiment=demo_tiny",
                "loss=gist",
                "model@loss.guide=tiny",
                "loss.margin_strategy=relative",
                "loss.margin=1.5",
                f"paths.output_dir={tmp_path}",
            ],
        )
    with pytest.raises(ConfigError, match=r"^loss.margin=1.5; expected a number in \[0, 1.0\]"):
        validate_config(cfg, "train")
