"""A real one-node Slurm (scripts/slurm/start.sh) runs a 2-job sweep through hydra/launcher=slurm_local whose
jobs are 2-task DDP jobs (srun starts both ranks, Lightning's SLURMEnvironment, gloo on CPU) that train exactly
like the same run under local DDP; a job requeued with `scontrol requeue` resumes from its checkpoint and ends
like an uninterrupted run; a job killed with SIGKILL makes the sweep fail within a minute, naming the job's state.

Needs root and apt (CI runs as root on Debian); the cluster is stopped at the end, also on failure.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SLURM = REPO / "scripts" / "slurm"
TRAIN = [sys.executable, "-m", "embedexp.train"]


def _why_no_slurm() -> str | None:
    if os.name != "posix" or os.geteuid() != 0:
        return "needs root: scripts/slurm/start.sh installs Debian packages and starts system daemons"
    if not shutil.which("apt-get") and not Path("/usr/sbin/slurmctld").exists():
        return "needs a Debian/Ubuntu machine (apt-get) to install Slurm"
    return None


@pytest.fixture(scope="module")
def slurm():
    reason = _why_no_slurm()
    if reason:
        pytest.skip(reason)
    try:
        start = subprocess.run(["bash", str(SLURM / "start.sh")], capture_output=True, text=True, timeout=600)
        assert start.returncode == 0, f"scripts/slurm/start.sh failed:\n{start.stdout}\n{start.stderr}"
        yield
    finally:
        pids = _daemon_pids()
        stop = subprocess.run(["bash", str(SLURM / "stop.sh")], capture_output=True, text=True, timeout=180)
        assert stop.returncode == 0, stop.stderr
    assert len(pids) == 5 and not [p for p in pids if _alive(p)], f"daemons left running: {stop.stdout}"


def _daemon_pids() -> list[int]:
    state = Path(os.environ.get("EMBEDEXP_SLURM_STATE", "/var/lib/embedexp-slurm"))
    files = [state / "run" / f"{d}.pid" for d in ("slurmd", "slurmctld", "slurmdbd")]
    files += [Path("/run/mysqld/mysqld.pid"), Path("/run/munge/munged.pid")]
    return [int(f.read_text()) for f in files if f.exists()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "EMBEDEXP_CACHE": str(tmp_path / "cache"), "HYDRA_FULL_ERROR": "0"}


FAST_POLL = "hydra.callbacks.sweep_summary.slurm_poll_interval_s=1"  # notice a finished job within ~1 s


def _local_run(tmp_path: Path, name: str, overrides: list[str]) -> Path:
    """The reference: the same job as a plain single run on this machine (no Slurm), in tmp_path/name."""
    out = tmp_path / name
    env = {k: v for k, v in _env(tmp_path).items() if not k.startswith("SLURM_")}
    run = subprocess.run(
        [*TRAIN, *overrides, f"hydra.run.dir={out}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out


def _tuned(results: dict) -> dict:
    return {m: row["tuned"] for m, row in results["metrics"].items()}


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(model_dir.rglob("*.safetensors"))
    assert files, f"no weights under {model_dir}"
    return {f"{f.relative_to(model_dir)}:{k}": v for f in files for k, v in load_file(str(f)).items()}


def _sacct_state(job_id: str, wait_s: float = 30.0) -> str:
    """The job's final accounting state; submitit can return the result while the job step is still exiting."""
    deadline = time.monotonic() + wait_s
    while True:
        out = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id], capture_output=True, text=True, timeout=30
        )
        state = out.stdout.strip()
        if state not in ("", "PENDING", "RUNNING", "COMPLETING") or time.monotonic() > deadline:
            return state
        time.sleep(0.5)


def test_two_job_sweep_runs_on_slurm(slurm, tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [
        *TRAIN,
        "-m",
        "experiment=demo_tiny",
        "hydra/launcher=slurm_local",
        "hydra.launcher.tasks_per_node=2",  # 2-task DDP: srun starts both ranks (Lightning's SLURMEnvironment)
        "trainer=ddp_cpu",
        "trainer.enable_progress_bar=false",
        "trainer.lr=1e-3,2e-3",
        "trainer.max_steps=3",
        FAST_POLL,
        f"hydra.sweep.dir={sweep}",
    ]
    t0 = time.perf_counter()
    run = subprocess.run(cmd, cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    print(f"2-job sweep of 2-task DDP jobs on Slurm: {time.perf_counter() - t0:.1f} s")

    summary = json.loads((sweep / "summary.json").read_text())
    assert summary["swept_keys"] == ["trainer.lr"]
    assert [j["num"] for j in summary["jobs"]] == [0, 1]
    for num, lr in ((0, "0.001"), (1, "0.002")):
        job_dir = sweep / str(num)
        results = json.loads((job_dir / "results.json").read_text())
        assert results["config"]["trainer"]["lr"] == float(lr) and results["steps"] == 3
        job = summary["jobs"][num]
        assert job["status"] == "finished" and job["overrides"]["trainer.lr"] == lr
        assert job["metrics"] == results["metrics"]
        # it really ran as a Slurm job: Hydra recorded the Slurm job id, and accounting says it completed
        assert job["job_id"] and "_" in job["job_id"]
        assert _sacct_state(job["job_id"]) == "COMPLETED"
    md = (sweep / "summary.md").read_text()
    assert "2 finished, 0 failed" in md and (sweep / "plots" / "trainer.lr.png").stat().st_size > 1000

    for num in (0, 1):
        # rank 1 was Slurm's task 1 (its own log file from srun), not a child Lightning started from task 0
        job_id = summary["jobs"][num]["job_id"]
        logs = sweep / ".submitit" / job_id
        rank1 = "".join((logs / f"{job_id}_1_log.{ext}").read_text() for ext in ("out", "err"))
        assert "GLOBAL_RANK: 1, MEMBER: 2/2" in rank1, rank1[-2000:]
        assert not (sweep / str(num) / "train_ddp_process_1.log").exists()
    # the same job under local DDP (devices=2 without Slurm: Lightning starts rank 1 itself) trains the same
    t0 = time.perf_counter()
    ref = _local_run(
        tmp_path, "local_ddp", ["experiment=demo_tiny", "trainer=ddp_cpu", "trainer.lr=1e-3", "trainer.max_steps=3"]
    )
    print(f"local DDP reference run: {time.perf_counter() - t0:.1f} s")
    assert (ref / "train_ddp_process_1.log").exists()  # it really was a 2-process run
    ours = json.loads((sweep / "0" / "results.json").read_text())
    theirs = json.loads((ref / "results.json").read_text())
    assert ours["steps"] == theirs["steps"] == 3
    assert _tuned(ours) == pytest.approx(_tuned(theirs), abs=1e-6)
    a, b = _weights(sweep / "0" / "model"), _weights(ref / "model")
    assert a.keys() == b.keys()
    assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a) < 1e-5


def _requeue_when_checkpointed(job_dir: Path, job_id: str, deadline: float) -> int:
    """Freeze the job's task as soon as checkpoints/last.ckpt exists (so it cannot finish first), then
    `scontrol requeue` it; returns the optimiser step of the checkpoint it had written."""
    import torch

    ckpt = job_dir / "checkpoints" / "last.ckpt"
    while not ckpt.exists():
        assert time.time() < deadline, f"job {job_id} wrote no checkpoint"
        time.sleep(0.05)
    pid = _task_pid(job_id, deadline)
    os.kill(pid, signal.SIGSTOP)
    time.sleep(0.5)  # a save in progress is atomic (tmp + rename): last.ckpt is always complete
    step = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
    requeue = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=30)
    assert requeue.returncode == 0, requeue.stderr
    os.kill(pid, signal.SIGCONT)  # let Slurm's SIGTERM/SIGKILL end it
    # Slurm holds a requeued batch job for 120 s (Reason=BeginTime); a test need not wait for that
    while subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%r"], capture_output=True, text=True).stdout.strip() != (
        "BeginTime"
    ):
        assert time.time() < deadline, f"job {job_id} did not return to the queue after scontrol requeue"
        time.sleep(0.2)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True, timeout=30)
    return step


def test_requeued_job_resumes_and_ends_like_an_uninterrupted_run(slurm, tmp_path):
    sweep = tmp_path / "sweep"
    overrides = [
        "experiment=demo_tiny",
        "trainer.max_steps=12",
        "trainer.max_epochs=100",
        "checkpoint.every_n_steps=4",
        "trainer.enable_progress_bar=false",
    ]
    cmd = [*TRAIN, "-m", *overrides, "hydra/launcher=slurm_local", "seed=7", FAST_POLL, f"hydra.sweep.dir={sweep}"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.time() + 300
        job_id = None
        while job_id is None:
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
            time.sleep(0.2)
            job_id = _job_id(sweep / "0")
        step = _requeue_when_checkpointed(sweep / "0", job_id, deadline)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    print(f"requeued Slurm job: {time.perf_counter() - t0:.1f} s (requeued at step {step})")
    assert proc.returncode == 0, out[-3000:]
    assert 0 < step < 12
    assert _sacct_state(job_id) == "COMPLETED"  # waits for the job step to finish exiting
    restarts = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-D", "-o", "State", "-j", job_id], capture_output=True, text=True, timeout=30
    ).stdout.split()
    assert restarts == ["REQUEUED", "COMPLETED"], restarts  # -D: every run of the job
    results = json.loads((sweep / "0" / "results.json").read_text())
    assert results["resumed_from"] == str(sweep / "0" / "checkpoints" / "last.ckpt") and results["steps"] == 12

    t0 = time.perf_counter()
    ref = json.loads((_local_run(tmp_path, "uninterrupted", [*overrides, "seed=7"]) / "results.json").read_text())
    print(f"uninterrupted reference run: {time.perf_counter() - t0:.1f} s")
    assert ref["resumed_from"] is None and ref["steps"] == 12
    assert _tuned(results) == _tuned(ref)  # identical, not merely close


def _job_id(job_dir: Path) -> str | None:
    import yaml

    try:
        return str(yaml.safe_load((job_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"]["id"])
    except (OSError, TypeError, KeyError, yaml.YAMLError):
        return None


def _task_pid(job_id: str, deadline: float) -> int:
    """PID of the job's task (step 0, the training process), once it is running."""
    while time.time() < deadline:
        out = subprocess.run(["scontrol", "listpids", job_id], capture_output=True, text=True, timeout=30).stdout
        for line in out.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 4 and fields[2] == "0" and fields[3] == "0":
                return int(fields[0])
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} never started its task")


def test_sigkilled_job_fails_the_sweep_within_a_minute(slurm, tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [
        *TRAIN,
        "-m",
        "experiment=demo_tiny",
        "hydra/launcher=slurm_local",
        "seed=5",
        "trainer.max_epochs=10000",
        f"hydra.sweep.dir={sweep}",
    ]  # runs until killed
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.time() + 120
        job_id = None
        while job_id is None and time.time() < deadline:  # the job has started: Hydra wrote its Slurm id
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            time.sleep(0.5)
            job_id = _job_id(sweep / "0")
        os.kill(_task_pid(job_id, deadline), signal.SIGKILL)
        killed = time.time()
        out, _ = proc.communicate(timeout=90)
        took = time.time() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    print(f"sweep failed {took:.1f} s after the job's task was SIGKILLed")
    assert proc.returncode != 0
    assert took < 60, f"the sweep noticed the dead job after {took:.0f}s"
    assert f"Job {job_id} " in out and "state: FAILED" in out, out[-3000:]
    assert _sacct_state(job_id) == "FAILED"
    # the report lists the killed job rather than dropping it
    from embedexp.sweep_report import find_jobs

    (job,) = find_jobs(sweep)
    assert job.num == 0 and job.status.startswith("failed or unfinished") and job.job_id == job_id
