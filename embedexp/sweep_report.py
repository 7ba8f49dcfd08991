"""`embedexp-report SWEEP_DIR`: compare the jobs of a sweep (or any folders of runs) in one table.

One row per job: the overrides that differ between jobs, then for every metric the fine-tuned value
and its delta vs the job's base model, read from each job's results.json. A job without results.json
(failed, killed, still running) is listed with its status, never dropped; with Hydra's basic sweeper
the jobs a sweep should have produced are known from multirun.yaml, so jobs that never started are
listed too. Writes summary.md, summary.json and plots/<key>.png (every metric vs each swept key).
`--wandb` also reads the jobs' W&B run dirs (offline or synced) and checks they agree with results.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from embedexp.errors import ConfigError, EmbedexpError

FINISHED = "finished"
NO_RESULTS = "failed or unfinished (no results.json)"
NOT_STARTED = "not started (no job dir)"


@dataclass
class Job:
    num: int | None
    dir: str | None
    status: str
    overrides: dict[str, str]
    metrics: dict[str, dict[str, float | None]] = field(default_factory=dict)
    job_id: str | None = None  # the scheduler's id (SLURM: logs under <sweep>/.submitit/<job_id>/)
    wandb: dict[str, Any] | None = None


def parse_overrides(lines: list[str]) -> dict[str, str]:
    """['loss=triplet', '+x.y=1'] -> {'loss': 'triplet', 'x.y': '1'} (in order)."""
    out = {}
    for line in lines:
        key, sep, value = str(line).partition("=")
        out[key.lstrip("+~")] = value if sep else ""
    return out


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read ({e})") from e


def _job_id(job_dir: Path) -> str | None:
    hydra_yaml = job_dir / ".hydra" / "hydra.yaml"
    if not hydra_yaml.exists():
        return None
    job = ((_read_yaml(hydra_yaml) or {}).get("hydra") or {}).get("job") or {}
    return str(job["id"]) if job.get("id") not in (None, "???") else None


def read_job(job_dir: Path, num: int | None) -> Job:
    overrides = parse_overrides(_read_yaml(job_dir / ".hydra" / "overrides.yaml") or [])
    results = job_dir / "results.json"
    job = Job(num=num, dir=str(job_dir), status=NO_RESULTS, overrides=overrides, job_id=_job_id(job_dir))
    if results.exists():
        try:
            data = json.loads(results.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{results}: not valid JSON ({e})") from e
        if not isinstance(data.get("metrics"), dict):
            raise ConfigError(f"{results}: no 'metrics' object; expected an embedexp results.json")
        job.metrics, job.status = data["metrics"], FINISHED
    return job


def expected_jobs(sweep_dir: Path) -> list[list[str]] | None:
    """The override lists Hydra's basic sweeper made from multirun.yaml (job num = position), else None."""
    path = sweep_dir / "multirun.yaml"
    if not path.exists():
        return None
    hydra = (_read_yaml(path) or {}).get("hydra") or {}
    if not str((hydra.get("sweeper") or {}).get("_target_", "")).endswith("BasicSweeper"):
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    task = list((hydra.get("overrides") or {}).get("task") or [])
    params = (hydra.get("sweeper") or {}).get("params") or {}
    task += [f"{k}={v}" for k, v in params.items()]
    try:
        parsed = OverridesParser.create().parse_overrides(task)
        batches = BasicSweeper.split_arguments(parsed, None)
    except Exception:  # an override syntax this parser version does not know: fall back to the job dirs
        return None
    return [list(job) for batch in batches for job in batch]


def find_jobs(sweep_dir: str | Path) -> list[Job]:
    """Every job of a sweep dir (numbered subdirs), or the run itself when the dir is one run."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise ConfigError(f"{root}: not a directory; expected a sweep dir (multirun/<date>/<time>) or a run dir")
    if (root / ".hydra" / "overrides.yaml").exists():
        return [read_job(root, None)]
    found: dict[int | str, Path] = {}
    for sub in sorted(p for p in root.iterdir() if (p / ".hydra" / "overrides.yaml").exists()):
        found[int(sub.name) if sub.name.isdigit() else sub.name] = sub
    expected = expected_jobs(root)
    jobs = []
    if expected is not None:
        for num, overrides in enumerate(expected):
            sub = found.pop(num, None)
            jobs.append(read_job(sub, num) if sub else Job(num, None, NOT_STARTED, parse_overrides(overrides)))
    for key, sub in sorted(found.items(), key=lambda kv: (isinstance(kv[0], str), kv[0])):
        jobs.append(read_job(sub, key if isinstance(key, int) else None))
    if not jobs:
        raise ConfigError(f"{root}: no job dirs (subfolders with .hydra/overrides.yaml) and no multirun.yaml")
    return jobs


def swept_keys(jobs: list[Job]) -> list[str]:
    """Override keys whose value is not the same in every job, in first-seen order."""
    keys = list(dict.fromkeys(k for j in jobs for k in j.overrides))
    return [k for k in keys if len({j.overrides.get(k) for j in jobs}) > 1]


def metric_names(jobs: list[Job]) -> list[str]:
    return list(dict.fromkeys(m for j in jobs for m in j.metrics))


def _cell(row: dict[str, float | None] | None) -> str:
    if not row or row.get("tuned") is None:
        return ""
    delta = row.get("delta")
    return f"{row['tuned']:.4f}" + (f" ({delta:+.4f})" if delta is not None else "")


def markdown(jobs: list[Job], title: str = "Sweep") -> str:
    keys, metrics = swept_keys(jobs), metric_names(jobs)
    common = {k: v for k, v in jobs[0].overrides.items() if k not in keys}
    done = sum(j.status == FINISHED for j in jobs)
    lines = [f"# {title}", "", f"{len(jobs)} jobs: {done} finished, {len(jobs) - done} failed or unfinished."]
    if common:
        lines.append("Common overrides: " + " ".join(f"`{k}={v}`" for k, v in common.items()))
    lines += ["Metric cells: fine-tuned value (delta vs the job's base model).", ""]
    head = ["job", "status", *keys, *metrics]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * (2 + len(keys)) + "---:|" * len(metrics))
    for j in jobs:
        status = j.status if j.job_id is None or j.status == FINISHED else f"{j.status}; job id {j.job_id}"
        cells = [
            "" if j.num is None else str(j.num),
            status,
            *(j.overrides.get(k, "") for k in keys),
            *(_cell(j.metrics.get(m)) for m in metrics),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _as_number(values: list[str]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


def plot(jobs: list[Job], out_dir: Path) -> list[Path]:
    """plots/<key>.png per swept key: one panel per metric, fine-tuned value vs the key's value, one line
    per combination of the other swept keys; the dotted line is the base model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finished = [j for j in jobs if j.status == FINISHED]
    keys, metrics = swept_keys(jobs), metric_names(finished)
    if not finished or not metrics:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for key in keys:
        values = list(dict.fromkeys(j.overrides.get(key, "") for j in jobs))
        numbers = _as_number(values)
        order = sorted(values, key=lambda v: float(v)) if numbers else values
        xpos = {v: (float(v) if numbers else i) for i, v in enumerate(order)}
        log_x = bool(numbers) and min(numbers) > 0 and max(numbers) / min(numbers) >= 10
        ncols = min(4, len(metrics))
        nrows = math.ceil(len(metrics) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.2 * nrows), squeeze=False)
        others = [k for k in keys if k != key]
        groups: dict[str, list[Job]] = {}
        for j in finished:
            groups.setdefault(" ".join(f"{k}={j.overrides.get(k, '')}" for k in others) or "jobs", []).append(j)
        for ax, metric in zip(axes.flat, metrics):
            for label, members in groups.items():
                pts = sorted(
                    (xpos[j.overrides.get(key, "")], j.metrics[metric]["tuned"])
                    for j in members
                    if metric in j.metrics and j.metrics[metric].get("tuned") is not None
                )
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=label)
            bases = [
                j.metrics[metric]["base"]
                for j in finished
                if metric in j.metrics and j.metrics[metric].get("base") is not None
            ]
            if bases:
                ax.axhline(sum(bases) / len(bases), color="gray", linestyle=":", label="base")
            ax.set_title(metric, fontsize=9)
            ax.set_xlabel(key, fontsize=8)
            if log_x:
                ax.set_xscale("log")
            if not numbers:
                ax.set_xticks(range(len(order)), order, fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(metrics) :]:
            ax.axis("off")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=7)
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        path = out_dir / f"{_safe(key)}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-@" else "_" for c in name)


def _close(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=1e-12)


def attach_wandb(jobs: list[Job]) -> list[str]:
    """Read each job's newest W&B run dir (<job>/wandb/offline-run-* or run-*); fill the metrics of jobs
    without results.json from it; return every disagreement between the two (empty: they agree)."""
    from embedexp.eval.results import STAT_KEYS
    from embedexp.loggers import read_wandb_run

    problems = []
    for j in jobs:
        if j.dir is None:
            continue
        name = f"job {j.num if j.num is not None else j.dir}"
        runs = sorted(Path(j.dir).glob("wandb/*run-*"), key=lambda p: p.name.split("-", 1)[-1])
        if not runs:
            if j.status == FINISHED:
                problems.append(f"{name}: finished but has no W&B run dir under {j.dir}/wandb")
            continue
        try:
            run = read_wandb_run(runs[-1])
        except (OSError, ValueError) as e:
            problems.append(f"{name}: cannot read W&B run {runs[-1]}: {e}")
            continue
        summary = run["summary"]
        logged = {}
        for key, value in summary.items():
            part, _, metric = key.partition("/")
            if part in ("base", "tuned", "delta", *STAT_KEYS) and metric and isinstance(value, (int, float, str)):
                logged.setdefault(metric, {"base": None, "tuned": None, "delta": None})[part] = value
        j.wandb = {"dir": run["dir"], "id": run["id"], "metrics": logged}
        if j.status != FINISHED:
            if logged:
                j.metrics, j.status = logged, "finished (W&B only; no results.json)"
            continue
        for metric, row in j.metrics.items():
            for part in ("base", "tuned", "delta"):
                ours, theirs = row.get(part), logged.get(metric, {}).get(part)
                if not _close(ours, theirs):
                    problems.append(
                        f"{name}: {part}/{metric} is {ours} in results.json but {theirs} in W&B run {run['id']}"
                    )
    return problems


def write_report(
    sweep_dir: str | Path, out_dir: str | Path | None = None, plots: bool = True, wandb: bool = False
) -> dict:
    """summary.md, summary.json and plots/ in out_dir (default: the sweep dir); returns the summary."""
    root = Path(sweep_dir)
    out = Path(out_dir) if out_dir else root
    jobs = find_jobs(root)
    mismatches: list[str] = []
    if wandb:
        mismatches = attach_wandb(jobs)
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(jobs, title=f"Sweep {root}")
    plot_paths = plot(jobs, out / "plots") if plots else []
    if plot_paths:
        md += "\nPlots: " + ", ".join(f"[{p.stem}]({p.relative_to(out)})" for p in plot_paths) + "\n"
    if wandb:
        md += "\nW&B runs: " + (
            "agree with results.json\n"
            if not mismatches
            else "DISAGREE with results.json:\n" + "".join(f"- {m}\n" for m in mismatches)
        )
    summary = {
        "sweep_dir": str(root),
        "swept_keys": swept_keys(jobs),
        "metrics": metric_names(jobs),
        "jobs": [asdict(j) for j in jobs],
        "plots": [str(p) for p in plot_paths],
        "wandb_mismatches": mismatches if wandb else None,
    }
    (out / "summary.md").write_text(md, encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    summary["markdown"] = md
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="embedexp-report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="a multirun sweep dir (or a single run dir)")
    parser.add_argument("--out", help="where summary.md/json and plots/ go (default: the sweep dir)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument(
        "--wandb",
        action="store_true",
        help="also read each job's W&B run dir (wandb/offline-run-*) and check it agrees with results.json",
    )
    args = parser.parse_args(argv)
    try:
        summary = write_report(args.sweep_dir, args.out, plots=not args.no_plots, wandb=args.wandb)
    except EmbedexpError as e:
        print(f"embedexp: error: {e}", file=sys.stderr)
        return 2
    print(summary["markdown"])
    out = Path(args.out or args.sweep_dir)
    print(f"summary: {out / 'summary.md'}, {out / 'summary.json'}")
    return 1 if summary["wandb_mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
