"""`decision.png`: quality vs latency of the decision table's pipelines, one panel per retrieval set.

x: ms/query on a log scale; y: nDCG@10. One labelled point per row at the first batch size of
`eval.decision.batch_sizes` (filled; batch 1 by default: one query at a time, the interactive latency), and a
hollow marker at the largest batch size joined to it by a thin line (the same pipeline, batched). Rows of the
same first stage share a colour; reranked rows are squares. Drawn like embedexp.eval.plots (Agg canvas, no pyplot).
"""

from __future__ import annotations

import math
from pathlib import Path

from embedexp.eval.plots import _figure, _save

COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")


def plot_decision(tables: dict[str, dict], batch_sizes: list[int], path: Path) -> Path | None:
    """Write the scatter to `path`; None when no row has a latency."""
    sizes = [int(b) for b in batch_sizes]
    if not tables or not sizes:
        return None
    first_b, last_b = sizes[0], max(sizes)
    fig = _figure(7.2 * len(tables), 5.0)
    for i, (name, t) in enumerate(tables.items()):
        ax = fig.add_subplot(1, len(tables), i + 1)
        stages = list(dict.fromkeys(r.first_stage for r in t["rows"]))
        ys = [r.ndcg for r in t["rows"]]
        near_y = 0.04 * ((max(ys) - min(ys)) or 1.0)
        placed: list[tuple[float, float]] = []  # label anchors so far (log10 ms, nDCG@10)
        for r in t["rows"]:
            x, y = r.ms_per_query.get(first_b), r.ndcg
            if x is None or x <= 0:
                continue
            colour = COLOURS[stages.index(r.first_stage) % len(COLOURS)]
            marker = "s" if r.reranker else "o"
            ax.scatter([x], [y], color=colour, marker=marker, s=46, zorder=3)
            xb = r.ms_per_query.get(last_b)
            if last_b != first_b and xb and xb > 0:
                ax.plot([x, xb], [y, y], color=colour, linewidth=0.8, alpha=0.6)
                ax.scatter([xb], [y], facecolors="none", edgecolors=colour, marker=marker, s=46, zorder=3)
            crowd = sum(abs(math.log10(x) - lx) < 0.6 and abs(y - ly) < near_y for lx, ly in placed)
            placed.append((math.log10(x), y))  # a label near earlier ones goes below them, not on top
            ax.annotate(r.name, (x, y), textcoords="offset points", xytext=(6, 4 - 10 * crowd), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel(
            f"ms/query (filled: batch {first_b}" + (f", hollow: batch {last_b})" if last_b != first_b else ")")
        )
        ax.set_ylabel("nDCG@10")
        ax.set_title(f"{name}: quality vs latency", fontsize=10)
        ax.grid(alpha=0.3)
        ax.margins(x=0.25, y=0.12)
    return _save(fig, path)
