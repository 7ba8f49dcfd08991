"""A wheel (non-editable install) carries conf/ and finds it: `embedexp-train --cfg job` works outside a checkout."""

import shutil
import subprocess
import sys
import zipfile

from conftest import REPO


def test_wheel_ships_and_finds_the_configs(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("embedexp", "conf"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(src),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("embedexp-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    conf_files = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "conf").rglob("*.yaml"))
    assert conf_files and all(f"embedexp/{f}" in names for f in conf_files)

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}
    probe = subprocess.run(
        [sys.executable, "-c", "import embedexp.config as c; print(c.config_dir())"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert probe.stdout.strip() == str(site / "embedexp" / "conf")
    run = subprocess.run(
        [sys.executable, "-m", "embedexp.train", "--cfg", "job", "model=minilm", "loss=triplet"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "TripletLoss" in run.stdout and "all-MiniLM-L6-v2" in run.stdout
