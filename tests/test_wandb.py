"""logger=wandb: offline without a key or a reachable server (and never hangs), the logged base/tuned
numbers equal results.json, embedexp-report reads the run back, and the API key is in no file."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from embedexp import loggers
from embedexp.loggers import choose_mode, find_api_key, reachable, read_wandb_run
from embedexp.sweep_report import main as report_main

REPO = Path(__file__).resolve().parent.parent
FAKE_KEY = "fake0wandb0key0" + "0123456789abcdef" * 2  # 47 characters, like a real key's length class
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once


@pytest.fixture()
def wandb_env(tmp_path, monkeypatch):
    """No W&B state of this machine leaks in: wandb dirs, netrc and cache under tmp_path; no mode, no key."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_PROJECT", "WANDB_ENTITY"):
        monkeypatch.delenv(name, raising=False)
    for name, sub in (
        ("WANDB_DIR", "wandb"),
        ("WANDB_CACHE_DIR", "wandb-cache"),
        ("WANDB_DATA_DIR", "wandb-data"),
        ("WANDB_CONFIG_DIR", "wandb-config"),
        ("EMBEDEXP_CACHE", "cache"),
    ):
        monkeypatch.setenv(name, str(tmp_path / sub))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path


def test_no_key_means_offline_without_touching_the_network(wandb_env, monkeypatch):
    monkeypatch.setattr(loggers, "reachable", lambda *a, **k: pytest.fail("network checked although there is no key"))
    assert find_api_key() is None
    assert choose_mode("auto")[0] == "offline"
    assert choose_mode("disabled")[0] == "disabled"
    monkeypatch.setenv("WANDB_MODE", "online")  # the user's explicit choice wins
    assert choose_mode("auto")[0] == "online"


def test_key_but_no_server_means_offline(wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", UNREACHABLE)
    (wandb_env / "no-netrc").write_text(f"machine 127.0.0.1 login user password {FAKE_KEY}\n")  # the key of that host
    assert find_api_key() == FAKE_KEY
    assert choose_mode("auto") == ("offline", f"{UNREACHABLE} is not reachable")


def test_reachability_check_is_time_bounded():
    import socket

    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        t0 = time.perf_counter()
        assert not reachable(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout_s=1.0)
        assert 0.9 < time.perf_counter() - t0 < 2.5
    t0 = time.perf_counter()
    assert not reachable("https://10.255.255.1:443", timeout_s=1.0)  # non-routable
    assert not reachable(UNREACHABLE, timeout_s=1.0)
    assert time.perf_counter() - t0 < 5


def test_secret_overrides_are_scrubbed_from_run_names():
    assert loggers._scrub_override("+db.password=hunter2", []) == "+db.password=***"
    assert loggers._scrub_override("model.tokenizer=x", []) == "model.tokenizer=x"
    assert loggers._scrub_override(f"note={FAKE_KEY}!", [FAKE_KEY]) == "note=***!"


def test_logger_without_key_writes_an_offline_run(wandb_env, tmp_path):
    from embedexp.loggers import log_results, wandb_logger

    rows = {
        "x/ndcg@10": {"base": 0.25, "tuned": 0.5, "delta": 0.25},
        "x/spearman": {"base": 0.1, "tuned": None, "delta": None},
    }
    t0 = time.perf_counter()
    logger = wandb_logger(save_dir=str(tmp_path / "out"), init_timeout_s=20)
    logger.log_metrics({"train/loss": 1.5}, step=1)
    log_results([logger, object()], rows, None, {"config": {"seed": 1, "hf_token": "abc"}})  # non-W&B loggers: skipped
    assert time.perf_counter() - t0 < 60
    assert "WANDB_MODE" not in os.environ  # restored: the next job of an in-process sweep decides anew
    (run_dir,) = (tmp_path / "out" / "wandb").glob("offline-run-*")
    deadline = time.time() + 20  # wandb's service may still be writing the file when finish() returns
    while not (run := read_wandb_run(run_dir))["finished"] and time.time() < deadline:
        time.sleep(0.2)
    assert run["summary"]["base/x/ndcg@10"] == 0.25 and run["summary"]["tuned/x/ndcg@10"] == 0.5
    assert run["summary"]["delta/x/ndcg@10"] == 0.25 and "tuned/x/spearman" not in run["summary"]
    assert run["summary"]["train/loss"] == 1.5
    assert run["config"]["seed"] == 1 and run["config"]["hf_token"] == "***"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny training with logger=wandb, a fake API key and no reachable W&B server, as a CLI run."""
    tmp = tmp_path_factory.mktemp("wandb_run")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        {
            "WANDB_API_KEY": FAKE_KEY,
            "WANDB_BASE_URL": UNREACHABLE,
            "NETRC": str(tmp / "no-netrc"),
            "WANDB_DIR": str(tmp / "wandb"),
            "WANDB_CACHE_DIR": str(tmp / "wandb-cache"),
            "WANDB_DATA_DIR": str(tmp / "wandb-data"),
            "WANDB_CONFIG_DIR": str(tmp / "wandb-config"),
            "EMBEDEXP_CACHE": str(tmp / "cache"),
        }
    )
    out = tmp / "run"
    cmd = [
        sys.executable,
        "-m",
        "embedexp.train",
        "experiment=demo_tiny",
        "logger=wandb",
        "trainer.max_steps=3",
        f"hydra.run.dir={out}",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp, out, seconds, proc.stdout + proc.stderr


def test_offline_run_holds_the_results_json_numbers(trained):
    _, out, seconds, output = trained
    assert seconds < 180
    assert "W&B mode offline (http://127.0.0.1:9 is not reachable)" in (out / "train.log").read_text()
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    run = read_wandb_run(run_dir)
    assert run["finished"]
    results = json.loads((out / "results.json").read_text())
    for metric, row in results["metrics"].items():
        for part in ("base", "tuned", "delta"):
            assert run["summary"][f"{part}/{metric}"] == row[part], f"{part}/{metric}"
    table = json.loads((run_dir / "files" / run["summary"]["results/path"]).read_text())
    assert table["columns"] == ["metric", "base", "tuned", "delta"]
    assert table["data"] == [[m, r["base"], r["tuned"], r["delta"]] for m, r in results["metrics"].items()]
    assert run["config"]["trainer"]["max_steps"] == 3 and run["config"]["seed"] == results["config"]["seed"]
    (model,) = [a for a in run["artifacts"] if a["type"] == "model"]
    assert model["files"] == sorted(
        str(p.relative_to(out / "model")) for p in (out / "model").rglob("*") if p.is_file()
    )


def test_api_key_is_in_no_file(trained):
    tmp, _, _, output = trained
    assert FAKE_KEY not in output
    leaks = [p for p in tmp.rglob("*") if p.is_file() and FAKE_KEY.encode() in p.read_bytes()]
    assert not leaks


def test_report_reads_the_wandb_run_and_checks_it(trained, tmp_path, capsys):
    import shutil

    _, out, _, _ = trained
    assert report_main([str(out), "--wandb", "--no-plots", "--out", str(tmp_path / "rep")]) == 0
    assert "W&B runs: agree with results.json" in capsys.readouterr().out
    saved = json.loads((tmp_path / "rep" / "summary.json").read_text())
    results = json.loads((out / "results.json").read_text())
    assert saved["jobs"][0]["wandb"]["metrics"] == results["metrics"]

    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("model"))
    results["metrics"]["demo_test/ndcg@10"]["tuned"] += 0.01
    (copy / "results.json").write_text(json.dumps(results))
    assert report_main([str(copy), "--wandb", "--no-plots"]) == 1
    assert "tuned/demo_test/ndcg@10 is" in capsys.readouterr().out
