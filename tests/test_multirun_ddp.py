"""Hydra multirun (`-m`) whose jobs use subprocess DDP (`trainer=ddp_cpu`, 2 gloo processes per job).

Lightning starts DDP ranks 1.. by re-running `sys.argv`; under `-m` that re-ran the whole sweep (issue 14, item 12):
a second sweep folder appeared whose summary said "2 jobs: 0 finished, 2 failed or unfinished". Now a DDP job of a
multirun runs alone (its own overrides, its own folder) in fresh processes. The reference for the trained weights
is a plain single run with the same overrides (`trainer=ddp_cpu` outside a sweep: Lightning's supported path, the
one tests/test_distributed.py checks against one process on the concatenated batch).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

TRAIN = [sys.executable, "-m", "embedexp.train"]
SMALL = ["experiment=demo_tiny", "trainer=ddp_cpu", "trainer.max_steps=2", "trainer.enable_progress_bar=false"]


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "EMBEDEXP_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}


def _run(cmd: list[str], cwd: Path, log: Path) -> subprocess.CompletedProcess:
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=cwd, env=_env(cwd), stdout=f, stderr=subprocess.STDOUT, timeout=600)
    assert proc.returncode == 0, log.read_text()[-3000:]
    return proc


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(model_dir.rglob("*.safetensors"))
    assert files, f"no weights under {model_dir}"
    return {f"{f.relative_to(model_dir)}:{k}": v for f in files for k, v in load_file(str(f)).items()}


@pytest.mark.slow  # ~150 s; test_slurm.py::test_two_job_sweep_runs_on_slurm runs a DDP sweep in the default run
def test_multirun_with_ddp_jobs_makes_one_complete_sweep(tmp_path):
    import torch

    t0 = time.perf_counter()
    # ${now:...%f}: a sweep folder per launch (a re-run of `-m` by a DDP child would get a folder of its own)
    _run(
        [*TRAIN, "-m", *SMALL, "trainer.lr=1e-3,2e-3", "hydra.sweep.dir=sweeps/${now:%H-%M-%S-%f}"],
        tmp_path,
        tmp_path / "multirun.log",
    )
    sweep_seconds = time.perf_counter() - t0

    sweeps = sorted((tmp_path / "sweeps").iterdir())
    assert len(sweeps) == 1, f"expected one sweep folder, got {[s.name for s in sweeps]}"
    assert not (tmp_path / "multirun").exists() and not (tmp_path / "outputs").exists()
    sweep = sweeps[0]
    summary = json.loads((sweep / "summary.json").read_text())
    assert [(j["num"], j["status"], j["overrides"]["trainer.lr"]) for j in summary["jobs"]] == [
        (0, "finished", "0.001"),
        (1, "finished", "0.002"),
    ]
    assert "2 jobs: 2 finished, 0 failed or unfinished." in (sweep / "summary.md").read_text()
    for num, lr in ((0, 1e-3), (1, 2e-3)):
        job = sweep / str(num)
        results = json.loads((job / "results.json").read_text())
        assert results["config"]["trainer"]["lr"] == lr and results["config"]["trainer"]["devices"] == 2
        assert results["steps"] == 2 and Path(results["model_dir"]) == job.resolve() / "model"
        assert (job / "results.md").is_file() and (job / "model").is_dir()
        # the multirun's own record of the job stays (the DDP run must not rewrite it as a RUN-mode job)
        assert yaml.safe_load((job / ".hydra" / "hydra.yaml").read_text())["hydra"]["mode"] == "MULTIRUN"
        assert f"trainer.lr={lr}" in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        assert (job / "train_ddp_process_1.log").is_file(), f"rank 1 of job {num} did not run in {job}"
    assert not (sweep / "0" / "checkpoints").exists()

    # reference: the same job as a plain single run (no -m) gives the same trained weights
    ref = tmp_path / "single"
    _run([*TRAIN, *SMALL, "trainer.lr=1e-3", f"hydra.run.dir={ref}"], tmp_path, tmp_path / "single.log")
    ours, theirs = _weights(sweep / "0" / "model"), _weights(ref / "model")
    assert ours.keys() == theirs.keys()
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], rtol=0, atol=1e-6, msg=k)
    other = _weights(sweep / "1" / "model")
    assert any(not torch.equal(ours[k], other[k]) for k in ours)  # job 1 trained with its own lr
    print(f"2-job DDP multirun: {sweep_seconds:.1f}s")


def test_job_command_reruns_exactly_one_job(tmp_path):
    """The command that re-runs one job: RUN mode, the job's overrides, the job's folder; reference: Hydra's own
    composition (`--cfg all`) of that command compared with the job's saved values."""
    from embedexp.config import config_dir
    from embedexp.launch import hydra_job_command

    job_dir = tmp_path / "sweep dir" / "1"
    hydra_cfg = OmegaConf.create(
        {
            "mode": "MULTIRUN",
            "runtime": {
                "cwd": str(tmp_path),
                "config_sources": [
                    {"path": "hydra.conf", "schema": "pkg", "provider": "hydra"},
                    {"path": config_dir(), "schema": "file", "provider": "main"},
                    {"path": str(tmp_path / "extra"), "schema": "file", "provider": "command-line"},
                    {"path": "", "schema": "structured", "provider": "schema"},
                ],
            },
            "job": {"config_name": "train", "num": 1, "id": "1", "name": "train"},
            "overrides": {
                "task": ["experiment=demo_tiny", "trainer=ddp_cpu", 'model.query_prefix="q: a, b"', "trainer.lr=0.002"],
                "hydra": ["hydra.mode=MULTIRUN", "hydra.sweep.dir=x", "hydra/launcher=basic", "hydra.job.chdir=false"],
            },
        }
    )
    (tmp_path / "extra").mkdir()
    cmd, cwd = hydra_job_command("embedexp.train", hydra_cfg, job_dir)
    assert cwd == str(tmp_path) and cmd[:3] == [sys.executable, "-m", "embedexp.train"]
    assert "-m" not in cmd[3:] and "--multirun" not in cmd
    assert not any(c.startswith(("hydra.mode", "hydra.sweep", "hydra/launcher")) for c in cmd)
    assert ["--config-dir", str(tmp_path / "extra")] == cmd[cmd.index("--config-dir") : cmd.index("--config-dir") + 2]

    out = subprocess.run(
        [*cmd, "--cfg", "all"], cwd=cwd, env=_env(tmp_path), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    composed = yaml.safe_load(out.stdout)
    assert composed["hydra"]["run"]["dir"] == str(job_dir.resolve())
    assert composed["hydra"]["mode"] in (None, "RUN") and composed["hydra"]["output_subdir"] is None
    assert composed["hydra"]["job"]["num"] == 1 and composed["hydra"]["job"]["chdir"] is False
    assert composed["trainer"]["lr"] == 0.002 and composed["trainer"]["devices"] == 2
    assert composed["model"]["query_prefix"] == "q: a, b" and composed["model"]["name"] == "tiny-random-bert"


@pytest.mark.parametrize(
    "trainer, expected",
    [
        ({"accelerator": "cpu", "devices": 1}, False),
        ({"accelerator": "cpu", "devices": 2, "strategy": "ddp_find_unused_parameters_true"}, True),
        ({"accelerator": "cpu", "devices": 2, "strategy": "ddp_spawn"}, False),
    ],
)
def test_launches_script_children_asks_lightning(trainer, expected, monkeypatch):
    """Reference: Lightning's own launcher choice (subprocess script for ddp, spawn for ddp_spawn); an outside
    launcher (LOCAL_RANK set, as torchrun does) starts the ranks itself."""
    import torch

    from embedexp.launch import launches_script_children

    before = torch.are_deterministic_algorithms_enabled()
    assert launches_script_children({**trainer, "deterministic": not before}) is expected
    assert torch.are_deterministic_algorithms_enabled() is before  # the probe Trainer left torch's flags alone
    if expected:
        monkeypatch.setenv("LOCAL_RANK", "0")
        assert launches_script_children(trainer) is False
