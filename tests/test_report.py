"""embedexp-report: the table and summary.json from job dirs match each job's results.json; failed and
never-started jobs are listed; the sweep callback writes the same summary."""

import json
import random
import re

import pytest
import yaml
from omegaconf import OmegaConf

from embedexp.sweep import SweepSummary
from embedexp.sweep_report import main, write_report

METRICS = ["demo_test/ndcg@10", "demo_test/recall@10", "demo_sts/spearman"]


def _job(sweep, num, overrides, metrics=None, job_id=None):
    d = sweep / str(num)
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (d / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"id": job_id, "num": num}}}))
    if metrics is not None:
        (d / "results.json").write_text(json.dumps({"metrics": metrics, "steps": 3}))
    return d


def _metrics(rng):
    out = {}
    for m in METRICS:
        base, tuned = rng.random(), rng.random()
        out[m] = {"base": base, "tuned": tuned, "delta": tuned - base}
    return out


@pytest.fixture()
def sweep(tmp_path):
    """A 2x2 sweep as Hydra's basic sweeper lays it out: jobs 0 and 1 finished, 2 died, 3 never started."""
    rng = random.Random(0)
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text(
        yaml.safe_dump(
            {
                "hydra": {
                    "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "params": None},
                    "overrides": {"task": ["experiment=demo_tiny", "loss=infonce,triplet", "trainer.lr=1e-5,3e-5"]},
                }
            }
        )
    )
    # job dirs hold the overrides as Hydra writes them (floats normalised: 1e-5 -> 1e-05)
    combos = [("infonce", "1e-05"), ("infonce", "3e-05"), ("triplet", "1e-05"), ("triplet", "3e-05")]
    results = {}
    for num, (loss, lr) in enumerate(combos[:3]):
        metrics = _metrics(rng) if num < 2 else None
        _job(sweep, num, ["experiment=demo_tiny", f"loss={loss}", f"trainer.lr={lr}"], metrics, job_id=f"41_{num}")
        results[num] = metrics
    return sweep, combos, results


def _table_rows(md):
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return head, [dict(zip(head, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]


def test_table_matches_results_and_lists_failed_jobs(sweep, tmp_path):
    sweep_dir, combos, results = sweep
    summary = write_report(sweep_dir)
    head, rows = _table_rows((sweep_dir / "summary.md").read_text())
    assert head == ["job", "status", "loss", "trainer.lr", *METRICS]
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"]
    for row, (loss, lr) in zip(rows, combos):
        assert (row["loss"], row["trainer.lr"]) == (loss, lr)
    for num in (0, 1):
        assert rows[num]["status"] == "finished"
        for m in METRICS:
            tuned, delta = re.fullmatch(r"(-?\d+\.\d{4}) \(([+-]\d+\.\d{4})\)", rows[num][m]).groups()
            assert float(tuned) == pytest.approx(results[num][m]["tuned"], abs=5e-5)
            assert float(delta) == pytest.approx(results[num][m]["tuned"] - results[num][m]["base"], abs=5e-5)
    assert rows[2]["status"].startswith("failed or unfinished") and "41_2" in rows[2]["status"]
    assert rows[3]["status"].startswith("not started")
    assert all(rows[n][m] == "" for n in (2, 3) for m in METRICS)
    assert (
        "2 finished, 2 failed or unfinished" in summary["markdown"] and "`experiment=demo_tiny`" in summary["markdown"]
    )

    saved = json.loads((sweep_dir / "summary.json").read_text())
    assert [j["metrics"] for j in saved["jobs"][:2]] == [results[0], results[1]]
    assert [j["status"] for j in saved["jobs"]][2:] == [rows[2]["status"].split(";")[0], rows[3]["status"]]
    assert saved["swept_keys"] == ["loss", "trainer.lr"]
    for key in ("loss", "trainer.lr"):
        png = sweep_dir / "plots" / f"{key}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_writes_elsewhere_and_fails_cleanly(sweep, tmp_path, capsys):
    sweep_dir, _, _ = sweep
    assert main([str(sweep_dir), "--out", str(tmp_path / "rep"), "--no-plots"]) == 0
    assert (tmp_path / "rep" / "summary.md").exists() and not (tmp_path / "rep" / "plots").exists()
    assert "| 2 | failed or unfinished" in capsys.readouterr().out

    assert main([str(tmp_path / "missing")]) == 2
    assert "missing: not a directory" in capsys.readouterr().err
    (sweep_dir / "1" / "results.json").write_text("{not json")
    assert main([str(sweep_dir), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1/results.json: not valid JSON" in err


def test_sweep_callback_writes_the_summary(sweep):
    sweep_dir, _, results = sweep
    SweepSummary(plots=False).on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}}))
    saved = json.loads((sweep_dir / "summary.json").read_text())
    assert saved["jobs"][0]["metrics"] == results[0] and len(saved["jobs"]) == 4
