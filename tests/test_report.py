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


# ---------------------------------------------------------------- the plots a person reads (embedexp/sweep_plots.py)
def _run(root, rel, overrides, metrics=None, config=None, base_model="tiny", selection=None):
    """A run folder as Hydra + embedexp-train leave it: .hydra/{overrides,config}.yaml and results.json."""
    d = root / rel
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config or {}))
    if metrics is not None:
        data = {"metrics": metrics, "base_model": base_model}
        if selection is not None:
            data["selection"] = selection
        (d / "results.json").write_text(json.dumps(data))
    return d


def _m(tuned, base=0.5, name="demo_test/ndcg@10"):
    return {name: {"base": base, "tuned": tuned, "delta": tuned - base}}


@pytest.fixture()
def figures(monkeypatch):
    """The matplotlib figures sweep_plots saves, by file name (drawn, so legend extents are known)."""
    from embedexp import sweep_plots

    seen = {}
    real = sweep_plots._save

    def spy(plt, fig, path):
        fig.canvas.draw()
        seen[path.name] = fig
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=50)
        return path

    monkeypatch.setattr(sweep_plots, "_save", spy)
    yield seen
    import matplotlib.pyplot as plt

    plt.close("all")
    del real


def _grid(tmp_path, keys_values, metric_fn, extra=()):
    sweep = tmp_path / "grid"
    for num, combo in enumerate(keys_values):
        over = [f"{k}={v}" for k, v in combo] + list(extra[num] if extra else [])
        _run(sweep, str(num), over, metric_fn(num, dict(combo)))
    return sweep


def test_plots_only_for_swept_hyperparameters(tmp_path, figures):
    combos = [(("loss", "infonce"), ("trainer.lr", "1e-05")), (("loss", "triplet"), ("trainer.lr", "1e-04"))]
    extra = [
        [f"hydra.run.dir=out/{n}", f"paths.output_dir=/tmp/o{n}", f"model.model_name_or_path=/m/{n}", f"seed={n}"]
        for n in range(2)
    ]
    sweep = _grid(tmp_path, combos, lambda n, c: _m(0.6 + n / 10), extra)
    summary = write_report(sweep)
    assert set(summary["swept_keys"]) >= {"loss", "trainer.lr", "seed", "paths.output_dir"}  # the table keeps them
    assert sorted(p.rsplit("/", 1)[-1] for p in summary["plots"]) == ["loss.png", "trainer.lr.png"]


def test_categorical_key_gets_grouped_bars_numeric_key_lines(tmp_path, figures):
    from matplotlib.patches import Rectangle

    combos = [(("loss", loss), ("trainer.lr", lr)) for loss in ("infonce", "triplet") for lr in ("1e-05", "1e-03")]
    tuned = {0: 0.61, 1: 0.72, 2: 0.55, 3: 0.66}
    sweep = _grid(tmp_path, combos, lambda n, c: _m(tuned[n]))
    write_report(sweep)
    ax = figures["loss.png"].axes[0]
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert sorted(round(b.get_height(), 2) for b in bars) == sorted(tuned.values())
    assert [t.get_text() for t in ax.get_xticklabels()] == ["infonce", "triplet"]
    assert not [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 1]  # no line joins categories
    ax = figures["trainer.lr.png"].axes[0]
    solid = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-"]
    assert sorted(tuple(ln.get_xdata()) for ln in solid) == [(1e-5, 1e-3), (1e-5, 1e-3)]
    assert ax.get_xscale() == "log"


def test_bounded_metrics_stay_inside_their_range(tmp_path, figures):
    combos = [(("loss", "infonce"),), (("loss", "triplet"),)]

    def metrics(n, c):
        return {
            **_m(1.0, 1.0, "demo_test/recall@10"),
            **_m(0.99 - n / 100, 0.98, "demo_sts/spearman"),
            **_m(-0.2, -0.3, "x/pearson"),
        }

    write_report(_grid(tmp_path, combos, metrics))
    recall, spearman, pearson = figures["loss.png"].axes[:3]
    assert recall.get_ylim()[1] == pytest.approx(1.0) and recall.get_ylim()[0] == 0.0
    assert spearman.get_ylim()[1] <= 1.0
    assert pearson.get_ylim()[0] >= -1.0


def test_two_categorical_keys_make_a_heatmap(tmp_path, figures):
    combos = [(("loss", loss), ("model", model)) for loss in ("infonce", "triplet") for model in ("tiny", "minilm")]
    summary = write_report(_grid(tmp_path, combos, lambda n, c: _m(0.5 + n / 10)))
    assert [p.rsplit("/", 1)[-1] for p in summary["plots"]] == ["loss_x_model.png"]
    image = figures["loss_x_model.png"].axes[0].get_images()[0].get_array()
    assert image.tolist() == [[pytest.approx(0.5), pytest.approx(0.6)], [pytest.approx(0.7), pytest.approx(0.8)]]


def test_base_line_is_per_base_model_never_averaged(tmp_path, figures):
    runs = tmp_path / "outputs"
    _run(runs, "a", ["loss=infonce"], _m(0.7, 0.40), base_model="models/A")
    _run(runs, "b", ["loss=triplet"], _m(0.6, 0.40), base_model="models/A")
    _run(runs, "c", ["loss=infonce"], _m(0.9, 0.80), base_model="models/B")
    md = write_report(runs)["markdown"]
    assert "Base models differ between jobs" in md
    ax = figures["loss.png"].axes[0]
    ticks = sorted(round(seg[0][1], 3) for coll in ax.collections for seg in coll.get_segments())
    assert ticks == [0.4, 0.4, 0.8]  # each bar's own base; the mean 0.533 is drawn nowhere
    labels = [t.get_text() for t in figures["loss.png"].legends[0].get_texts()]
    assert any("base=A" in lb for lb in labels) and any("base=B" in lb for lb in labels)


def test_adhoc_runs_are_named_filled_from_config_and_legend_fits(tmp_path, figures, capsys):
    runs = tmp_path / "outputs"
    cfg = {"trainer": {"lr": 0.001}, "loss": {"name": "infonce", "temperature": 0.05}}
    first = _run(runs, "2026-11-29/10-00-00", [], _m(0.61), cfg)
    (first / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": {"loss": "gist"}}}}))
    _run(runs, "2026-11-29/10-05-00", ["trainer.lr=1e-4"], _m(0.65), cfg)
    _run(runs, "2026-11-30/09-00-00", ["trainer.lr=1e-4", "loss=triplet"], _m(0.58), cfg)
    _run(runs, "2026-11-30/09-30-00", ["trainer.lr=0.001"], _m(0.64), cfg)  # same lr as the default: not "swept"
    assert main([str(runs / "2026-11-29"), str(runs / "2026-11-30"), "--out", str(tmp_path / "rep")]) == 0
    head, rows = _table_rows((tmp_path / "rep" / "summary.md").read_text())
    assert head[:4] == ["job", "status", "trainer.lr", "loss"]
    assert [r["job"] for r in rows] == [
        "2026-11-29/10-00-00",
        "2026-11-29/10-05-00",
        "2026-11-30/09-00-00",
        "2026-11-30/09-30-00",
    ]
    assert [r["trainer.lr"] for r in rows] == ["0.001", "1e-4", "1e-4", "0.001"]  # the first from its config
    assert [r["loss"] for r in rows] == ["gist", "infonce", "triplet", "infonce"]  # group option, else loss.name
    fig = figures["trainer.lr.png"]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("2026-11-29/10-00-00" in lb for lb in labels)
    box, canvas = fig.legends[0].get_window_extent(), fig.bbox
    assert box.x0 >= canvas.x0 and box.y0 >= canvas.y0 and box.x1 <= canvas.x1 and box.y1 <= canvas.y1
    assert main([str(runs / "2026-11-29"), str(runs / "2026-11-30")]) == 2
    assert "--out is required" in capsys.readouterr().err


def test_dev_objective_listed_and_best_job_named(tmp_path, figures):
    sweep = tmp_path / "optuna"
    for num, (lr, dev) in enumerate([("1e-4", 0.31), ("3e-4", 0.52), ("1e-3", 0.47)]):
        selection = {"selection": {"monitor": "demo_dev/ndcg@10", "mode": "max", "best": dev, "best_step": 3}}
        _run(sweep, str(num), [f"trainer.lr={lr}"], _m(0.9 - dev, 0.25), selection=selection)
    # interpolation: the exported model is the chosen alpha's, so its dev value is the objective
    inter = {
        "selection": {"monitor": "demo_dev/ndcg@10", "mode": "max", "best": 0.60, "best_step": 3},
        "interpolation": {"rows": [{"alpha": 0.5, "demo_dev/ndcg@10": 0.45}], "chosen": {"alpha": 0.5}},
    }
    _run(sweep, "3", ["trainer.lr=2e-3"], _m(0.95, 0.25), selection=inter)
    summary = write_report(sweep)
    head, rows = _table_rows(summary["markdown"])
    assert "dev demo_dev/ndcg@10" in head
    assert [r["dev demo_dev/ndcg@10"] for r in rows] == ["0.3100", "**0.5200** (best)", "0.4700", "0.4500"]
    assert summary["best_job"] == "1"  # by the dev metric: job 3 has the best test ndcg but not the best dev value
    assert "**Best job: 1** (`trainer.lr=3e-4`): dev demo_dev/ndcg@10 = 0.5200" in summary["markdown"]
    assert "- demo_test/ndcg@10: 0.2500 -> 0.3800 (+0.1300)" in summary["markdown"]
    ax = figures["trainer.lr.png"].axes[0]  # the objective's own panel comes first
    assert ax.get_title() == "dev objective: demo_dev/ndcg@10"
    (points,) = ax.get_lines()
    assert sorted(points.get_ydata()) == [0.31, 0.45, 0.47, 0.52]
