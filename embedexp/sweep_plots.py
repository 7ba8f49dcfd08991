"""The PNGs of a sweep report (`embedexp-report`, the multirun summary): one figure per swept hyperparameter.

Rules, so that a figure reads at a glance:
- only keys that vary between jobs and are hyperparameters get a figure: not `hydra.*`, not paths (output
  dirs, data roots, model folders), not seeds or logging/checkpoint settings (`plot_keys`);
- a numeric key (lr, temperature, batch size) is an x axis with one line per setting of the other keys (log
  axis when its values span 10x or more); a categorical key (loss, model) gets grouped bars, one bar per
  setting of the other keys; two categorical keys and nothing else swept give one heatmap per metric;
- the base model is drawn per job (a dotted line or a black tick on each bar), never averaged across jobs
  with different base models; series are split by base model when the jobs have more than one;
- metric axes stay inside the metric's range ([0, 1] for nDCG/recall/MAP/MRR/..., [-1, 1] for correlations);
- every legend entry names its runs (job numbers, or folder names for ad-hoc runs) and sits inside the image.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from embedexp.sweep_report import Job

# keys that change where or how a run is written, not what is trained (never a plot axis; still in the table)
NOT_HYPERPARAMETERS = (
    "hydra",
    "paths",
    "seed",
    "logger",
    "checkpoint",
    "ckpt_path",
    "eval.show_progress",
    "eval.cache_dir",
    "data.num_workers",
)
_PATHLIKE_KEY = re.compile(r"(^|[._])(dir|path|root|file|name_or_path|output_dir|cache_dir)$")
_UNIT_METRICS = ("ndcg", "recall", "map", "mrr", "precision", "accuracy", "hit", "success", "f1", "ap")
_CORRELATIONS = ("spearman", "pearson", "cosine", "kendall")
MAX_LABEL = 100  # legend entries: the runs first (never cut unless very long), then the other keys
DEV_PREFIX = "dev objective: "


def is_hyperparameter(key: str, values: list[str]) -> bool:
    """False for keys that are not a training choice: hydra.*, paths, seeds, logging; or any value a path."""
    bare = key.lstrip("+~")
    if any(bare == p or bare.startswith(p + ".") or bare.startswith(p + "/") for p in NOT_HYPERPARAMETERS):
        return False
    if _PATHLIKE_KEY.search(bare):
        return False
    return not any(v.startswith(("/", "./", "../", "~")) or "/" in v.strip("'\"") for v in values if v)


def plot_keys(jobs: list[Job]) -> list[str]:
    """The swept keys that get a figure (see `is_hyperparameter`), in first-seen order."""
    from embedexp.sweep_report import swept_keys, value_of

    return [k for k in swept_keys(jobs) if is_hyperparameter(k, [value_of(j, k) for j in jobs])]


def metric_bounds(metric: str) -> tuple[float, float] | None:
    """The range a metric lives in: (0, 1) for rank metrics, (-1, 1) for correlations, None if unbounded."""
    metric = metric.removeprefix(DEV_PREFIX)
    leaf = metric.rsplit("/", 1)[-1].split("@", 1)[0].lower()
    if leaf.startswith(_CORRELATIONS):
        return (-1.0, 1.0)
    if leaf.startswith(_UNIT_METRICS):
        return (0.0, 1.0)
    return None


def y_limits(metric: str, values: list[float], from_zero: bool) -> tuple[float, float]:
    """Axis limits that show `values` with a margin, starting at 0 for bars, never outside `metric_bounds`."""
    lo, hi = min(values), max(values)
    if from_zero:
        lo = min(0.0, lo)
    pad = 0.08 * (hi - lo) if hi > lo else max(0.02, 0.05 * abs(hi))
    lo, hi = (lo if from_zero else lo - pad), hi + pad
    bounds = metric_bounds(metric)
    if bounds:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
        if hi <= lo:
            lo = max(bounds[0], hi - 0.1)
    return lo, hi


def _numbers(values: list[str]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


def _short(text: str, limit: int = MAX_LABEL) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _runs(members: list[Job]) -> str:
    names = [m.name for m in members]
    return ("run " if len(names) == 1 else "runs ") + ", ".join(names)


def _series(jobs: list[Job], others: list[str]) -> dict[str, list[Job]]:
    """Jobs grouped by the values of the other plotted keys (and by base model when there are several)."""
    from embedexp.sweep_report import value_of

    split_base = len({j.base_model for j in jobs}) > 1
    groups: dict[str, list[Job]] = {}
    for j in jobs:
        label = " ".join(f"{k}={value_of(j, k)}" for k in others)
        if split_base:
            label = f"{label} base={Path(str(j.base_model)).name}".strip()
        groups.setdefault(label, []).append(j)
    return groups


def _value(job: Job, metric: str, part: str) -> float | None:
    if metric.startswith(DEV_PREFIX):  # the sweep's objective panel: the exported model's dev value, no base
        obj = job.objective or {}
        ok = part == "tuned" and obj.get("monitor") == metric[len(DEV_PREFIX) :]
        return float(obj["value"]) if ok else None
    row = job.metrics.get(metric) or {}
    value = row.get(part)
    return None if value is None or not math.isfinite(float(value)) else float(value)


def _figure(n_panels: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = min(3, n_panels)
    nrows = math.ceil(n_panels / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.6 * ncols, 3.4 * nrows + 0.8), squeeze=False, layout="constrained"
    )
    for ax in list(axes.flat)[n_panels:]:
        ax.axis("off")
    return plt, fig, list(axes.flat)[:n_panels]


def _legend(fig, handles, labels) -> None:
    if handles:
        ncol = 1 if max(len(lb) for lb in labels) > 40 else min(3, len(labels))
        fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=8, frameon=False)


def _save(plt, fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_numeric(jobs: list[Job], key: str, others: list[str], metrics: list[str], path: Path) -> Path:
    """Fine-tuned metric vs a numeric key, one line per series; each series' base values dotted in its colour."""
    from matplotlib.lines import Line2D

    from embedexp.sweep_report import value_of

    plt, fig, axes = _figure(len(metrics))
    xs = [float(value_of(j, key)) for j in jobs]
    log_x = min(xs) > 0 and max(xs) / min(xs) >= 10
    groups = _series(jobs, others)
    # every setting of the other keys tried once (a random/TPE search): points named by run, nothing joined
    scatter = len(groups) > 1 and all(len(m) == 1 for m in groups.values())
    if scatter:
        groups = {"each point one run; other keys differ": list(jobs)}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes, metrics):
        seen = []
        for i, members in enumerate(groups.values()):
            color = colors[i % len(colors)]
            for part, style in (("tuned", "none" if scatter else "-"), ("base", "none" if scatter else ":")):
                pts = sorted(
                    (float(value_of(j, key)), _value(j, metric, part), j.name)
                    for j in members
                    if _value(j, metric, part) is not None
                )
                if not pts:
                    continue
                x, y, names = zip(*pts)
                marker = "o" if part == "tuned" else ("_" if scatter else None)
                ax.plot(x, y, linestyle=style, marker=marker, markersize=10 if marker == "_" else 6, color=color)
                if scatter and part == "tuned":
                    for xi, yi, name in pts:
                        ax.annotate(name, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
                seen += list(y)
        if seen:
            ax.set_ylim(*y_limits(metric, seen, from_zero=False))
        if log_x:
            ax.set_xscale("log")
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel(key, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colors[i % len(colors)], marker="o") for i in range(len(groups))]
    labels = [_short(f"{_runs(m)}: {label or key}") for label, m in groups.items()]
    if scatter:
        handles.append(Line2D([], [], color="gray", linestyle="none", marker="_", markersize=10))
        labels.append("dash: that run's base model (not fine-tuned)")
    else:
        handles.append(Line2D([], [], color="gray", linestyle=":"))
        labels.append("dotted: that series' base model (not fine-tuned)")
    _legend(fig, handles, labels)
    fig.suptitle(f"fine-tuned metric vs {key}", fontsize=10)
    return _save(plt, fig, path)


def plot_categorical(jobs: list[Job], key: str, others: list[str], metrics: list[str], path: Path) -> Path:
    """Grouped bars: one group per value of `key`, one bar per series; a black tick marks each bar's base model."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from embedexp.sweep_report import value_of

    plt, fig, axes = _figure(len(metrics))
    categories = list(dict.fromkeys(value_of(j, key) for j in jobs))
    groups = _series(jobs, others)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    width = 0.8 / len(groups)
    for ax, metric in zip(axes, metrics):
        seen = []
        for i, members in enumerate(groups.values()):
            for c, category in enumerate(categories):
                cell = [j for j in members if value_of(j, key) == category]
                tuned = [v for v in (_value(j, metric, "tuned") for j in cell) if v is not None]
                if not tuned:
                    continue
                x = c - 0.4 + width * (i + 0.5)
                ax.bar(x, sum(tuned) / len(tuned), width * 0.9, color=colors[i % len(colors)])
                if len(tuned) > 1:  # replicates (seeds): the mean is the bar, each run a dot
                    ax.plot([x] * len(tuned), tuned, "k.", markersize=4)
                bases = [v for v in (_value(j, metric, "base") for j in cell) if v is not None]
                for b in dict.fromkeys(bases):  # one tick per distinct base value, never an average
                    ax.hlines(b, x - width * 0.45, x + width * 0.45, colors="black", linestyles=":", linewidth=2)
                seen += tuned + bases
        if seen:
            ax.set_ylim(*y_limits(metric, seen, from_zero=True))
        ax.set_xticks(range(len(categories)), [_short(c, 24) for c in categories], fontsize=8)
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel(key, fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    handles = [Patch(color=colors[i % len(colors)]) for i in range(len(groups))]
    labels = [_short(f"{_runs(m)}: {label or 'fine-tuned'}") for label, m in groups.items()]
    handles.append(Line2D([], [], color="black", linestyle=":", linewidth=2))
    labels.append("dotted tick: that bar's base model (not fine-tuned)")
    _legend(fig, handles, labels)
    fig.suptitle(f"fine-tuned metric by {key}", fontsize=10)
    return _save(plt, fig, path)


def plot_heatmap(jobs: list[Job], keys: list[str], metrics: list[str], path: Path) -> Path:
    """Two categorical keys: one heatmap per metric, rows = keys[0], columns = keys[1]; cells "tuned (delta)"."""
    from embedexp.sweep_report import value_of

    plt, fig, axes = _figure(len(metrics))
    rows = list(dict.fromkeys(value_of(j, keys[0]) for j in jobs))
    cols = list(dict.fromkeys(value_of(j, keys[1]) for j in jobs))
    for ax, metric in zip(axes, metrics):
        grid = [[math.nan] * len(cols) for _ in rows]
        text = [[""] * len(cols) for _ in rows]
        for r, rv in enumerate(rows):
            for c, cv in enumerate(cols):
                cell = [j for j in jobs if value_of(j, keys[0]) == rv and value_of(j, keys[1]) == cv]
                tuned = [v for v in (_value(j, metric, "tuned") for j in cell) if v is not None]
                deltas = [v for v in (_value(j, metric, "delta") for j in cell) if v is not None]
                if tuned:
                    grid[r][c] = sum(tuned) / len(tuned)
                    delta = f"\n({sum(deltas) / len(deltas):+.3f})" if deltas else ""
                    text[r][c] = f"{grid[r][c]:.3f}{delta}\n{_short(_runs(cell), 20)}"
        bounds = metric_bounds(metric)
        finite = [v for row in grid for v in row if not math.isnan(v)]
        lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
        if bounds:
            lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
        image = ax.imshow(grid, cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1e-9, aspect="auto")
        for r in range(len(rows)):
            for c in range(len(cols)):
                ax.text(c, r, text[r][c], ha="center", va="center", fontsize=7, color="white")
        ax.set_xticks(range(len(cols)), [_short(c, 20) for c in cols], fontsize=8)
        ax.set_yticks(range(len(rows)), [_short(r, 20) for r in rows], fontsize=8)
        ax.set_xlabel(keys[1], fontsize=8)
        ax.set_ylabel(keys[0], fontsize=8)
        ax.set_title(metric, fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle(f"fine-tuned metric (delta vs base) by {keys[0]} and {keys[1]}", fontsize=10)
    return _save(plt, fig, path)


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-@" else "_" for c in name)


def plot_jobs(jobs: list[Job], out_dir: Path) -> list[Path]:
    """Write the report's figures under `out_dir` (see the module docstring); returns their paths."""
    from embedexp.sweep_report import FINISHED, metric_names, value_of

    finished = [j for j in jobs if j.status == FINISHED]
    monitors = list(dict.fromkeys(j.objective["monitor"] for j in finished if j.objective))
    metrics = [DEV_PREFIX + m for m in monitors] + metric_names(finished)
    keys = plot_keys(jobs)
    if not finished or not metrics or not keys:
        return []
    numeric = {k for k in keys if _numbers([value_of(j, k) for j in finished]) is not None}
    if len(keys) == 2 and not numeric:
        return [plot_heatmap(finished, keys, metrics, out_dir / f"{safe_name(keys[0])}_x_{safe_name(keys[1])}.png")]
    paths = []
    for key in keys:
        others = [k for k in keys if k != key]
        draw = plot_numeric if key in numeric else plot_categorical
        paths.append(draw(finished, key, others, metrics, out_dir / f"{safe_name(key)}.png"))
    return paths
