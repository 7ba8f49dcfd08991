"""`hydra/sweeper=optuna_tpe` (conf/hydra/sweeper/optuna_tpe.yaml): Optuna's TPE search maximises the dev-set metric of
model selection that each embedexp-train job returns, never a test-set metric; without a dev set it is refused
before any training; the sweep report lists every trial and names the best one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")

REPO = Path(__file__).resolve().parent.parent
TRAIN = [sys.executable, "-m", "embedexp.train", "-m", "hydra/sweeper=optuna_tpe", "experiment=demo_tiny"]


def _run(args: list[str], tmp_path: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "EMBEDEXP_CACHE": str(tmp_path / "cache"), "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([*TRAIN, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_optuna_without_dev_set_is_refused_before_training(tmp_path):
    sweep = tmp_path / "sweep"
    run = _run(["hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert run.returncode == 2, run.stderr[-2000:]
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("embedexp: error:")]
    assert errors == [
        "embedexp: error: hydra/sweeper=optuna maximises the dev-set metric of model selection, but "
        "data.dev_fraction=0.0 holds out no dev set; expected data.dev_fraction > 0 (e.g. data.dev_fraction=0.2)"
    ]
    assert not list(sweep.glob("*/results.json")) and not list(sweep.glob("*/model"))


@pytest.mark.slow  # two full tiny training jobs plus Optuna's import: beyond the default run's budget
def test_two_trial_search_returns_the_dev_metric_and_names_the_best(tmp_path):
    sweep = tmp_path / "sweep"
    args = [
        "hydra.sweeper.n_trials=2",
        "data.dev_fraction=0.2",
        "trainer.max_steps=2",
        "trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={sweep}",
    ]
    run = _run(args, tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    trials = []
    for num in (0, 1):
        results = json.loads((sweep / str(num) / "results.json").read_text())
        picked = results["selection"]["selection"]
        assert picked["monitor"] == "demo_dev/ndcg@10"  # the dev set held out of training, not demo_test
        # the objective is the selected step's dev value: the best of the dev evaluations in its history
        assert picked["best"] == max(h["demo_dev/ndcg@10"] for h in picked["history"])
        overrides = yaml.safe_load((sweep / str(num) / ".hydra" / "overrides.yaml").read_text())
        trials.append((picked["best"], num, overrides))
    # TPE proposed the searched keys, inside conf/hydra/sweeper/optuna_tpe.yaml's ranges
    for _, _, overrides in trials:
        params = dict(o.split("=", 1) for o in overrides)
        assert 1e-5 <= float(params["trainer.lr"]) <= 3e-3 and 0.01 <= float(params["loss.temperature"]) <= 0.1
        assert params["data.batch_size"] in ("8", "16", "32")

    best_value, best_num, best_overrides = max(trials)
    found = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert found["best_value"] == pytest.approx(best_value, abs=1e-12)  # what the jobs returned to Optuna
    assert {f"{k}={v}" for k, v in found["best_params"].items()} <= set(best_overrides)

    summary = json.loads((sweep / "summary.json").read_text())
    assert [j["name"] for j in summary["jobs"]] == ["0", "1"] and summary["best_job"] == str(best_num)
    md = (sweep / "summary.md").read_text()
    assert f"**Best job: {best_num}**" in md and f"dev demo_dev/ndcg@10 = {best_value:.4f}" in md
    assert "demo_test/ndcg@10: " in md.split("**Best job")[1]  # its base-vs-tuned evidence on the test set


def test_objective_checks_and_value(tmp_path, monkeypatch):
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from embedexp.errors import ConfigError
    from embedexp.sweep import check_objective, objective

    optuna_target = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    saved = HydraConfig.instance().cfg
    HydraConfig.instance().cfg = OmegaConf.create({"hydra": {"sweeper": {"_target_": optuna_target}}})
    try:
        HydraConfig.get().sweeper.direction = "maximize"
        cfg = OmegaConf.create({"data": {"dev_fraction": 0.2}, "select": {"mode": "min"}})
        with pytest.raises(ConfigError, match=r"select.mode=min but hydra.sweeper.direction=maximize"):
            check_objective(cfg)
        cfg.select.mode = "max"
        assert check_objective(cfg) is True
        HydraConfig.get().sweeper._target_ = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
        assert check_objective(OmegaConf.create({"data": {"dev_fraction": 0.0}})) is False  # a grid needs no dev set
    finally:
        HydraConfig.instance().cfg = saved
    history = [{"step": 2, "demo_dev/ndcg@10": 0.4}, {"step": 4, "demo_dev/ndcg@10": 0.5}]
    picked = {"monitor": "demo_dev/ndcg@10", "mode": "max", "best": 0.5, "best_step": 4, "history": history}
    (tmp_path / "results.json").write_text(json.dumps({"metrics": {}, "selection": {"selection": picked}}))
    assert objective(tmp_path) == 0.5
    (tmp_path / "results.json").write_text(json.dumps({"metrics": {}}))
    with pytest.raises(RuntimeError, match="no dev-set selection result"):
        objective(tmp_path)
