"""scripts/gpu_smoke.sh: its wiring (which commands each part runs with and without a GPU), its summary and exit
status, checked with a stand-in `python` that records the calls (seconds); the real `--cpu-only --quick` run (a
tiny-decoder LoRA training run end to end) is behind the slow marker."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_smoke.sh"

# Stand-in python: records its arguments; `-c` is the GPU probe / name print ($FAKE_GPU=1: a GPU "is there");
# `-m embedexp.train` writes what a finished run writes (unless $FAKE_TRAIN says otherwise); `-m pytest` and
# scripts/bench.py exit $FAKE_RC; anything else (the results check read from stdin) goes to the real python.
FAKE = """#!/usr/bin/env bash
echo "$*" >> "$FAKE_CALLS"
if [ "$1" = "-c" ]; then
  case "$2" in *sys.exit*) [ "${FAKE_GPU:-0}" = 1 ]; exit $? ;; *) echo "Fake GPU x 1"; exit 0 ;; esac
fi
if [ "$1 $2" = "-m embedexp.train" ]; then
  [ "${FAKE_TRAIN:-ok}" = fail ] && exit 3
  for a in "$@"; do case "$a" in paths.output_dir=*) out="${a#paths.output_dir=}" ;; esac; done
  mkdir -p "$out/model"
  [ "${FAKE_TRAIN:-ok}" = no_adapter ] || mkdir -p "$out/model/adapter"
  echo '{"metrics": [{"metric": "demo_test/ndcg@10"}]}' > "$out/results.json"
  exit 0
fi
if [ "$1 $2" = "-m pytest" ] || [ "$1" = "scripts/bench.py" ]; then exit "${FAKE_RC:-0}"; fi
exec "$REAL_PYTHON" "$@"
"""


def _run(tmp_path, *args, **env):
    fake = tmp_path / "python"
    fake.write_text(FAKE)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    calls = tmp_path / "calls.txt"
    calls.write_text("")
    full_env = {
        **os.environ,
        "PYTHON": str(fake),
        "REAL_PYTHON": sys.executable,
        "FAKE_CALLS": str(calls),
        "GPU_SMOKE_OUT": str(tmp_path / "out"),
        **env,
    }
    proc = subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full_env, timeout=120, cwd=tmp_path
    )
    log = (tmp_path / "out" / "smoke.log").read_text()
    return proc, log, calls.read_text().splitlines()


def test_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_cpu_only_quick_runs_the_cpu_part_and_says_what_it_skipped(tmp_path):
    proc, log, calls = _run(tmp_path, "--cpu-only", "--quick")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert log.splitlines()[0].startswith("gpu_smoke: --cpu-only: running only the CPU-runnable parts")
    train = [c for c in calls if c.startswith("-m embedexp.train")]
    assert len(train) == 1
    for arg in ("model=tiny_qwen2", "model.peft.r=8", "model.gradient_checkpointing=true", "trainer=cpu"):
        assert arg in train[0].split()
    assert "part a: PASS" in log and "part b: SKIPPED" in log and "part c: SKIPPED" in log
    assert log.rstrip().endswith("gpu_smoke: OK")
    assert not any(c.startswith(("-m pytest", "scripts/bench.py")) for c in calls)


def test_with_a_gpu_every_part_runs_on_it(tmp_path):
    proc, log, calls = _run(tmp_path, FAKE_GPU="1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gpu_smoke: GPU found: Fake GPU x 1" in log
    train = next(c for c in calls if c.startswith("-m embedexp.train")).split()
    assert "trainer=gpu" in train and "trainer.max_steps=2" not in train
    assert any(c.startswith("-m pytest") and c.endswith("tests/test_distributed_cuda.py") for c in calls)
    bench = next(c for c in calls if c.startswith("scripts/bench.py"))
    assert "--precisions bf16" in bench and "--embedexp-override trainer.accelerator=gpu" in bench
    assert log.count("PASS") == 2 * 3  # each part's line, and again in the summary


@pytest.mark.parametrize(
    "env, failed",
    [
        ({"FAKE_TRAIN": "fail"}, "part a: FAIL (exit 3"),
        ({"FAKE_TRAIN": "no_adapter"}, "part a: FAIL"),
        ({"FAKE_GPU": "1", "FAKE_RC": "1"}, "part b: FAIL"),
    ],
)
def test_a_failing_part_fails_the_script(tmp_path, env, failed):
    proc, log, _ = _run(tmp_path, "--quick", **env)
    assert proc.returncode == 1
    assert failed in log and log.rstrip().endswith("gpu_smoke: FAILED")
    if env.get("FAKE_TRAIN") == "no_adapter":
        assert "the export has no adapter/ folder" in log


def test_unknown_argument_is_refused(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), "--gpu"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown argument --gpu; expected --cpu-only, --quick, --log FILE" in proc.stderr


@pytest.mark.slow
def test_cpu_only_quick_for_real(tmp_path):
    env = {**os.environ, "GPU_SMOKE_OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(SCRIPT), "--cpu-only", "--quick"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = (tmp_path / "out" / "smoke.log").read_text()
    assert "part a: PASS" in log and "results.json with" in log
