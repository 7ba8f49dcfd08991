"""Resume: a run SIGKILLed mid-training and resumed with `ckpt_path=last` ends exactly like an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

# Runs embedexp-train in this process and SIGKILLs it right after the optimiser step KILL_AT ends,
# i.e. between two checkpoints, so the work since the last checkpoint is lost and must be redone.
KILLER = """
import os, signal, sys
import embedexp.checkpointing as ck
kill_at = int(os.environ["KILL_AT"])
original = ck.ResumableCheckpoint.on_train_batch_end
def on_train_batch_end(self, trainer, *args, **kwargs):
    original(self, trainer, *args, **kwargs)
    if trainer.global_step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
ck.ResumableCheckpoint.on_train_batch_end = on_train_batch_end
from embedexp.train import main
sys.argv = ["embedexp-train", *sys.argv[1:]]
main()
"""

BASE_ARGS = [
    "experiment=demo_tiny",
    "logger=none",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "checkpoint.every_n_steps=3",
]


def _run(args: list[str], env: dict, kill_at: int | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", KILLER, *args] if kill_at else [sys.executable, "-m", "embedexp.train", *args]
    env = dict(env, KILL_AT=str(kill_at or 0))
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "model.safetensors"))


@pytest.mark.parametrize(
    "extra",
    # the GradCache case (~65 s) runs with -m slow: the plain case keeps the SIGKILL/resume path in the default run
    [[], pytest.param(["trainer.grad_cache.chunk_size=3"], marks=pytest.mark.slow)],
    ids=["plain", "grad_cache"],
)
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, isolated_cache, extra):
    env = dict(os.environ, EMBEDEXP_CACHE=str(isolated_cache))
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"

    full = _run([*BASE_ARGS, *extra, f"hydra.run.dir={full_dir}"], env)
    assert full.returncode == 0, full.stderr[-3000:]

    killed = _run([*BASE_ARGS, *extra, f"hydra.run.dir={killed_dir}"], env, kill_at=17)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (killed_dir / "checkpoints" / "last.ckpt").is_file()
    assert not (killed_dir / "results.json").exists()  # a killed run leaves nothing that looks finished
    saved = torch.load(killed_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    # 14 steps per epoch: killed in epoch 2, after the checkpoint of step 15; steps 16-17 are redone
    assert saved["global_step"] == 15 and saved["epoch"] == 1

    resumed = _run([*BASE_ARGS, *extra, f"hydra.run.dir={killed_dir}", "ckpt_path=last"], env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a, b = json.loads((full_dir / "results.json").read_text()), json.loads((killed_dir / "results.json").read_text())
    assert a["steps"] == b["steps"] == 28
    assert b["resumed_from"].endswith("last.ckpt")
    assert {k: v["tuned"] for k, v in a["metrics"].items()} == {k: v["tuned"] for k, v in b["metrics"].items()}
    wa, wb = _weights(full_dir), _weights(killed_dir)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    assert not (killed_dir / "checkpoints").exists()  # removed once results.json is written (checkpoint.keep=false)


def test_bad_ckpt_path_is_one_line_error(tmp_path, isolated_cache, capsys):
    """In this process (a subprocess costs a fresh torch/Lightning import): the entry point's one_line_errors
    wrapper around train(); the command line's exit-2 path is covered by test_bad_inputs' CLI tests."""
    from embedexp.cli import one_line_errors
    from embedexp.train import train

    from conftest import compose_demo_tiny

    out = tmp_path / "run"
    cfg = compose_demo_tiny(out, isolated_cache, *BASE_ARGS[1:], f"ckpt_path={tmp_path / 'nope.ckpt'}")
    with pytest.raises(SystemExit) as exc:
        one_line_errors(train)(cfg)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "ckpt_path=" in err and "no such checkpoint file" in err
    assert len([line for line in err.splitlines() if line.startswith("embedexp: error:")]) == 1
    assert not (out / "results.json").exists()


def test_sampler_skips_exactly_the_trained_batches():
    from embedexp.data.resumable import ResumableSampler

    full = ResumableSampler(50, 8, seed=3)
    full.set_epoch(1)
    order = list(full)
    resumed = ResumableSampler(50, 8, seed=3)
    resumed.skip_batches(1, 2)
    resumed.set_epoch(1)
    assert list(resumed) == order[16:]
    resumed.set_epoch(2)  # the skip belongs to epoch 1 only
    full.set_epoch(2)
    assert list(resumed) == list(full) and sorted(full) == list(range(50))
    # DDP: ranks get disjoint, equal shares of the same permutation
    shares = [ResumableSampler(50, 8, seed=3, rank=r, world=3) for r in range(3)]
    rows = [list(s) for s in shares]
    assert all(len(r) == 16 for r in rows) and len(set(sum(rows, []))) == 48


def test_resume_with_other_batch_size_fails_before_base_evaluation(tmp_path, isolated_cache):
    """Issue 14 item 6 through the CLI: a checkpoint saved with data.batch_size=8, resumed with 4, is one
    `embedexp: error:` line naming both values, before the base evaluation runs (its cache stays empty).
    Reference: before the fix this resume went ahead and trained rows of the first 2 batches a second time."""
    from embedexp.train import train

    from conftest import compose_demo_tiny

    run_dir = tmp_path / "run"
    env = dict(os.environ, EMBEDEXP_CACHE=str(isolated_cache))
    # the run that leaves the checkpoint: in this process (only the resume is about the command line)
    first = compose_demo_tiny(
        run_dir,
        isolated_cache,
        *BASE_ARGS[1:],
        "trainer.max_steps=2",
        "checkpoint.every_n_steps=1",
        "checkpoint.keep=true",
    )
    train(first)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    fresh_cache = tmp_path / "cache2"
    resumed = _run(
        [*BASE_ARGS, "data.batch_size=4", "ckpt_path=last", f"hydra.run.dir={run_dir}"],
        dict(env, EMBEDEXP_CACHE=str(fresh_cache)),
    )
    assert resumed.returncode == 2, resumed.stderr[-3000:]
    errors = [line for line in resumed.stderr.splitlines() if line.startswith("embedexp: error:")]
    assert len(errors) == 1 and "data.batch_size=8 in the checkpoint but 4 in this run" in errors[0], resumed.stderr[
        -2000:
    ]
    assert not list((fresh_cache / "eval").glob("*.json"))  # the base evaluation never ran
