"""Pictures and tables of a finished evaluation, next to results.md.

- Matryoshka retention: every metric reported at truncated dims (`<set>/<metric>@dim<N>`, from
  `eval.dims`) as a % of its full-dim score, as a markdown table appended to results.md and a line
  plot `matryoshka.png` (score vs dim, base and fine-tuned).
- `base_vs_tuned.png`: a bar chart of every full-dim score, base beside fine-tuned.
- `deltas.png` (when per-unit statistics exist): each metric's change with its confidence interval around a
  zero line, coloured by verdict, so one glance says better / worse / unclear.
- `per_query.png`: per-query base vs fine-tuned values of each retrieval set's first tested metric (points
  above the diagonal improved), and per-pair similarities of STS sets coloured by the gold score.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend switch, no display).
A failure here is logged and never fails the run.
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path

from embedexp.io import atomic_write

log = logging.getLogger(__name__)
DIM_KEY = re.compile(r"^(?P<metric>.+)@dim(?P<dim>\d+)$")
NOT_A_SCORE = re.compile(r"(ms_per|seconds|latency|_time|/time)", re.I)
MODELS = (("base", "base"), ("tuned", "fine-tuned"))
FULL = "full"


def retention(rows: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """{metric: {"base"|"tuned": {"full" | dim: (score, % of the full-dim score or None)}}} for metrics with dims.

    `rows` is report.compare's output: {name: {"base": x, "tuned": y, "delta": z}}. Dims are in
    descending order after "full"; a model without a full-dim score (or a score of 0) has no %.
    """
    dims: dict[str, set[int]] = {}
    for name in rows:
        m = DIM_KEY.match(name)
        if m and m.group("metric") in rows:
            dims.setdefault(m.group("metric"), set()).add(int(m.group("dim")))
    out: dict[str, dict[str, dict]] = {}
    for metric in rows:
        if metric not in dims:
            continue
        per_model = {}
        for model, _ in MODELS:
            full = rows[metric].get(model)
            if full is None:
                continue
            series = {FULL: (full, 100.0 if _finite(full) and full != 0 else None)}
            for d in sorted(dims[metric], reverse=True):
                value = rows[f"{metric}@dim{d}"].get(model)
                pct = 100.0 * value / full if value is not None and _finite(full) and full != 0 else None
                series[d] = (value, pct)
            per_model[model] = series
        if per_model:
            out[metric] = per_model
    return out


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def retention_markdown(table: dict[str, dict[str, dict]]) -> str:
    """The retention table as markdown: one row per metric and model, "score (retention %)" per dim."""
    if not table:
        return ""
    dims = [FULL] + sorted({d for per in table.values() for s in per.values() for d in s if d != FULL}, reverse=True)
    lines = ["| metric | model | " + " | ".join(str(d) for d in dims) + " |", "|---|---|" + "---:|" * len(dims)]
    for metric, per_model in table.items():
        for model, label in MODELS:
            if model not in per_model:
                continue
            cells = []
            for d in dims:
                value, pct = per_model[model].get(d, (None, None))
                cell = "" if value is None else f"{value:.4f}"
                if value is not None and d != FULL and pct is not None:
                    cell += f" ({pct:.1f}%)"
                cells.append(cell)
            lines.append(f"| {metric} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    fig.savefig(tmp, format="png", bbox_inches="tight")
    os.replace(tmp, path)
    return path


def plot_matryoshka(table: dict[str, dict[str, dict]], path: Path) -> Path:
    """One panel per metric: score vs embedding dim (smallest left, full right), base and fine-tuned."""
    n = len(table)
    cols = min(3, n)
    nrows = math.ceil(n / cols)
    fig = _figure(4.2 * cols, 3.2 * nrows)
    for i, (metric, per_model) in enumerate(table.items()):
        ax = fig.add_subplot(nrows, cols, i + 1)
        labels = None
        for (model, label), style in zip(MODELS, ("o-", "s--")):
            series = per_model.get(model)
            if not series:
                continue
            order = sorted((d for d in series if d != FULL)) + [FULL]
            labels = [str(d) for d in order]
            ys = [series[d][0] if series[d][0] is not None else float("nan") for d in order]
            ax.plot(range(len(order)), ys, style, label=label)
        ax.set_xticks(range(len(labels or [])))
        ax.set_xticklabels(labels or [])
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("embedding dim")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Matryoshka: score vs embedding dim")
    return _save(fig, path)


def plot_base_vs_tuned(rows: dict[str, dict], path: Path) -> Path | None:
    """Horizontal bars of every full-dim score, base and fine-tuned; None when there is nothing to compare."""
    names = [
        n
        for n, r in rows.items()
        if not DIM_KEY.match(n) and not NOT_A_SCORE.search(n) and _finite(r.get("base")) and _finite(r.get("tuned"))
    ]
    if not names:
        return None
    fig = _figure(8, 1.0 + 0.45 * len(names))
    ax = fig.add_subplot(1, 1, 1)
    ys = list(range(len(names)))
    h = 0.4
    ax.barh([y - h / 2 for y in ys], [rows[n]["base"] for n in names], height=h, label="base")
    ax.barh([y + h / 2 for y in ys], [rows[n]["tuned"] for n in names], height=h, label="fine-tuned")
    ax.set_yticks(ys)
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("score")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("base vs fine-tuned")
    return _save(fig, path)


VERDICT_COLOURS = {"better": "#2a9d4b", "worse": "#d1342f", "no significant difference": "#8a8a8a"}


def plot_deltas(rows: dict[str, dict], path: Path) -> Path | None:
    """Change (tuned - base) of every tested metric with its CI, a zero line, colour by verdict; None if no stats."""
    names = [n for n, r in rows.items() if "verdict" in r and not DIM_KEY.match(n)]
    if not names:
        return None
    fig = _figure(8, 1.2 + 0.42 * len(names))
    ax = fig.add_subplot(1, 1, 1)
    for y, n in enumerate(names):
        r = rows[n]
        colour = VERDICT_COLOURS.get(r["verdict"], "black")
        ax.errorbar(
            [r["delta"]],
            [y],
            xerr=[[r["delta"] - r["ci_low"]], [r["ci_high"] - r["delta"]]],
            fmt="o",
            color=colour,
            ecolor=colour,
            capsize=4,
            markersize=6,
        )
    ax.axvline(0.0, color="black", linewidth=1)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels([f"{n}  (Holm p={rows[n]['p_holm']:.3g})" for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("fine-tuned - base (95% paired bootstrap CI)")
    ax.grid(axis="x", alpha=0.3)
    handles = [ax.plot([], [], "o", color=c, label=v)[0] for v, c in VERDICT_COLOURS.items()]
    fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncol=3, frameon=False)
    ax.set_title(
        "change vs base: right of the line is better; a bar across it is no significant difference", fontsize=9
    )
    return _save(fig, path)


def _first_tested(rows: dict[str, dict], units: dict) -> list[str]:
    seen, names = set(), []
    for n, r in rows.items():
        ds = n.split("/")[0]
        if "verdict" in r and ds not in seen and n in (units.get("base") or {}) and n in (units.get("tuned") or {}):
            seen.add(ds)
            names.append(n)
    return names


def plot_per_query(rows: dict[str, dict], units: dict | None, path: Path) -> Path | None:
    """One panel per eval set: base vs fine-tuned per query (retrieval) or per pair (STS); None without units."""
    if not units:
        return None
    names = _first_tested(rows, units)
    if not names:
        return None
    import numpy as np

    fig = _figure(4.4 * len(names), 4.4)
    for i, n in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        b, t = units["base"][n], units["tuned"][n]
        at, b_at = {u: j for j, u in enumerate(t["ids"])}, {u: j for j, u in enumerate(b["ids"])}
        ids = [u for u in b["ids"] if u in at]
        key = "scores" if "scores" in b else "values"
        x = np.array([b[key][b_at[u]] for u in ids])
        y = np.array([t[key][at[u]] for u in ids])
        if key == "scores":
            gold = np.array([b["gold"][b_at[u]] for u in ids])
            sc = ax.scatter(x, y, c=gold, cmap="viridis", s=8, alpha=0.7)
            fig.colorbar(sc, ax=ax, label="gold score")
            ax.set_xlabel("base similarity")
            ax.set_ylabel("fine-tuned similarity")
        else:
            jitter = np.random.default_rng(0).uniform(-0.01, 0.01, (2, len(ids)))
            colours = np.where(
                y > x + 1e-12, VERDICT_COLOURS["better"], np.where(y < x - 1e-12, VERDICT_COLOURS["worse"], "#8a8a8a")
            )
            ax.scatter(x + jitter[0], y + jitter[1], c=colours, s=10, alpha=0.6)
            ax.set_xlabel(f"base {n.split('/', 1)[1]}")
            ax.set_ylabel(f"fine-tuned {n.split('/', 1)[1]}")
        lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.8)
        r = rows[n]
        counts = (
            f"{r['wins']} pairs nearer the gold rank / {r['losses']} further"
            if key == "scores"
            else f"{r['wins']} better / {r['losses']} worse / {r['ties']} tied"
        )
        ax.set_title(f"{n}\n{counts}", fontsize=9)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def write_plots(out_dir: str | Path, rows: dict[str, dict], units: dict | None = None) -> list[Path]:
    """Append the retention table to results.md (when dims were evaluated) and write the PNGs; returns them.

    Called by results.write_results after results.md and before results.json; never raises.
    """
    out_dir = Path(out_dir)
    written: list[Path] = []
    try:
        table = retention(rows)
    except Exception as e:  # a malformed row must not cost the run its results.json
        log.warning("Matryoshka retention table skipped: %s: %s", type(e).__name__, e)
        table = {}
    images = []
    for name, draw in (
        ("matryoshka.png", (lambda p: plot_matryoshka(table, p)) if table else None),
        ("deltas.png", lambda p: plot_deltas(rows, p)),
        ("per_query.png", lambda p: plot_per_query(rows, units, p)),
        ("base_vs_tuned.png", lambda p: plot_base_vs_tuned(rows, p)),
    ):
        if draw is None:
            continue
        try:
            path = draw(out_dir / name)
        except Exception as e:
            log.warning("plot %s skipped: %s: %s", name, type(e).__name__, e)
            continue
        if path is not None:
            written.append(path)
            images.append(path.name)
    md = ""
    if table:
        md += (
            "\n## Matryoshka retention\n\nscore (and % of the full-dim score) at each embedding dim\n\n"
            + retention_markdown(table)
        )
    if images:
        md += "\n" + "".join(f"![{Path(i).stem}]({i})\n" for i in images)
    if md:
        try:
            results_md = out_dir / "results.md"
            atomic_write(results_md, (results_md.read_text() if results_md.is_file() else "") + md)
        except Exception as e:
            log.warning("could not append the plots to results.md: %s: %s", type(e).__name__, e)
    return written
