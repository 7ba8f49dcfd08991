"""Matryoshka retention table and plots, base-vs-tuned chart, and their hook in write_results."""

import json
import logging

import pytest

from embedexp.eval import plots
from embedexp.eval.results import compare, write_results

PNG = b"\x89PNG\r\n\x1a\n"
BASE = {
    "demo/ndcg@10": 0.50,
    "demo/ndcg@10@dim128": 0.45,
    "demo/ndcg@10@dim64": 0.40,
    "demo/recall@10": 0.80,
    "demo/recall@10@dim128": 0.80,
    "demo/recall@10@dim64": 0.60,
    "sts/spearman": 0.70,
    "sts/spearman@dim128": 0.63,
    "sts/spearman@dim64": 0.56,
    "demo/rerank/ndcg@10": 0.55,
    "rerank/ms_per_query": 12.5,
}
TUNED = {
    "demo/ndcg@10": 0.60,
    "demo/ndcg@10@dim128": 0.60,
    "demo/ndcg@10@dim64": 0.57,
    "demo/recall@10": 0.90,
    "demo/recall@10@dim128": 0.81,
    "demo/recall@10@dim64": 0.72,
    "sts/spearman": 0.80,
    "sts/spearman@dim128": 0.76,
    "sts/spearman@dim64": 0.60,
    "demo/rerank/ndcg@10": 0.66,
    "rerank/ms_per_query": 13.0,
}


def test_retention_matches_hand_computation():
    table = plots.retention(compare(BASE, TUNED))
    assert list(table) == ["demo/ndcg@10", "demo/recall@10", "sts/spearman"]  # metrics without dims are left out
    # by hand: 0.40 / 0.50 = 80 %, 0.45 / 0.50 = 90 %, 0.57 / 0.60 = 95 %, 0.72 / 0.90 = 80 %, 0.56 / 0.70 = 80 %
    assert table["demo/ndcg@10"]["base"][64] == (0.40, pytest.approx(80.0))
    assert table["demo/ndcg@10"]["base"][128] == (0.45, pytest.approx(90.0))
    assert table["demo/ndcg@10"]["tuned"][64] == (0.57, pytest.approx(95.0))
    assert table["demo/ndcg@10"]["tuned"][128] == (0.60, pytest.approx(100.0))
    assert table["demo/recall@10"]["tuned"][64] == (0.72, pytest.approx(80.0))
    assert table["sts/spearman"]["base"][64] == (0.56, pytest.approx(80.0))
    assert table["sts/spearman"]["base"]["full"] == (0.70, 100.0)
    assert list(table["sts/spearman"]["tuned"]) == ["full", 128, 64]


def test_retention_edge_cases():
    rows = compare({"a/x": 0.0, "a/x@dim8": 0.0, "b/y": 0.5}, {})
    table = plots.retention(rows)
    assert table == {"a/x": {"base": {"full": (0.0, None), 8: (0.0, None)}}}  # no % of a zero score
    assert "tuned" not in table["a/x"]
    md = plots.retention_markdown(table)
    assert "| a/x | base | 0.0000 | 0.0000 |" in md


def test_retention_markdown_rows():
    md = plots.retention_markdown(plots.retention(compare(BASE, TUNED)))
    lines = md.splitlines()
    assert lines[0] == "| metric | model | full | 128 | 64 |"
    assert "| demo/ndcg@10 | base | 0.5000 | 0.4500 (90.0%) | 0.4000 (80.0%) |" in lines
    assert "| demo/ndcg@10 | fine-tuned | 0.6000 | 0.6000 (100.0%) | 0.5700 (95.0%) |" in lines
    assert len(lines) == 2 + 3 * 2


def test_write_results_with_dims(tmp_path):
    write_results(tmp_path, BASE, TUNED, {"title": "t"})
    for name in ("matryoshka.png", "base_vs_tuned.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == PNG and len(data) > 1000, name
    md = (tmp_path / "results.md").read_text()
    assert md.startswith("# t\n") and "## Matryoshka retention" in md and "0.4000 (80.0%)" in md
    assert "![matryoshka](matryoshka.png)" in md and "![base_vs_tuned](base_vs_tuned.png)" in md
    assert json.loads((tmp_path / "results.json").read_text())["metrics"]["demo/ndcg@10@dim64"]["base"] == 0.40
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_no_matryoshka_plot_without_dims(tmp_path):
    base = {k: v for k, v in BASE.items() if "@dim" not in k}
    tuned = {k: v for k, v in TUNED.items() if "@dim" not in k}
    write_results(tmp_path, base, tuned, {"title": "t"})
    assert not (tmp_path / "matryoshka.png").exists()
    assert (tmp_path / "base_vs_tuned.png").read_bytes()[:8] == PNG
    assert "Matryoshka" not in (tmp_path / "results.md").read_text()


def test_base_only_run_has_no_bar_chart(tmp_path):
    write_results(tmp_path, BASE, {}, {"title": "t"})
    assert not (tmp_path / "base_vs_tuned.png").exists()
    assert (tmp_path / "matryoshka.png").read_bytes()[:8] == PNG  # base-only retention still plotted
    assert "| demo/ndcg@10 | base | 0.5000 | 0.4500 (90.0%) | 0.4000 (80.0%) |" in (tmp_path / "results.md").read_text()


def test_bar_chart_leaves_out_latencies(tmp_path, monkeypatch):
    seen = {}
    real = plots._save

    def spy(fig, path):
        seen[path.name] = [t.get_text() for ax in fig.axes for t in ax.get_yticklabels()]
        return real(fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    plots.plot_base_vs_tuned(compare(BASE, TUNED), tmp_path / "bars.png")
    assert seen["bars.png"] == ["demo/ndcg@10", "demo/recall@10", "sts/spearman", "demo/rerank/ndcg@10"]


def test_plot_failure_does_not_kill_the_run(tmp_path, monkeypatch, caplog):
    def boom(*a, **k):
        raise RuntimeError("no fonts today")

    monkeypatch.setattr(plots, "_figure", boom)
    with caplog.at_level(logging.WARNING, logger="embedexp.eval.plots"):
        write_results(tmp_path, BASE, TUNED, {"title": "t"})
    assert (tmp_path / "results.json").is_file()
    assert not list(tmp_path.glob("*.png"))
    assert "no fonts today" in caplog.text
    md = (tmp_path / "results.md").read_text()
    assert "0.4000 (80.0%)" in md and "![" not in md  # the table still made it, no broken image links
