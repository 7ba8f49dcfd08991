"""`embedexp-report SWEEP_DIR`: compare the jobs of a sweep (or any folders of runs) in one table.

One row per job: the overrides that differ between jobs, then for every metric the fine-tuned value
and its delta vs the job's base model, read from each job's results.json. A job without results.json
(failed, killed, still running) is listed with its status, never dropped; with Hydra's basic sweeper
the jobs a sweep should have produced are known from multirun.yaml, so jobs that never started are
listed too. Runs gathered by hand (`embedexp-report outputs/2026-11-29 outputs/other-run --out rep/`) are
found below the given folders and named by their path. Writes summary.md, summary.json and plots/ (see
embedexp/sweep_plots.py: only for swept hyperparameters). With a dev set (data.dev_fraction > 0) each job's
dev objective (select.monitor, the value an Optuna sweep maximises) is listed and the best job is named.
`--wandb` also reads the jobs' W&B run dirs (offline or synced) and checks they agree with results.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

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
    name: str = ""  # shown in every table row and plot legend: the job number, or the run's folder path
    base_model: str | None = None  # results.json's base_model: base lines are never shared across base models
    objective: dict[str, Any] | None = None  # {"monitor", "mode", "value"}: the dev metric of the exported model


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


def dev_objective(results: dict) -> dict[str, Any] | None:
    """The dev-set value of the model a run exported, from its results.json (None without a dev set).

    That is the model-selection monitor (select.monitor, e.g. `demo_dev/ndcg@10`) at the selected step or,
    with select.interpolate=true, at the chosen alpha (the exported weights). Test sets never enter it.

    Returns:
        {"monitor": name, "mode": "max" | "min", "value": float}, or None when the run had no dev set.
    """
    report = results.get("selection") or {}
    picked = report.get("selection")
    if not picked or picked.get("best") is None:
        return None
    value, monitor = float(picked["best"]), picked["monitor"]
    inter = report.get("interpolation") or {}
    alpha = (inter.get("chosen") or {}).get("alpha")
    row = next((r for r in inter.get("rows") or [] if r.get("alpha") == alpha), None)
    if row is not None and row.get(monitor) is not None:
        value = float(row[monitor])
    return {"monitor": monitor, "mode": picked.get("mode", "max"), "value": value}


def read_job(job_dir: Path, num: int | None, name: str | None = None) -> Job:
    overrides = parse_overrides(_read_yaml(job_dir / ".hydra" / "overrides.yaml") or [])
    results = job_dir / "results.json"
    job = Job(num=num, dir=str(job_dir), status=NO_RESULTS, overrides=overrides, job_id=_job_id(job_dir))
    job.name = name if name is not None else (str(num) if num is not None else job_dir.name)
    if results.exists():
        try:
            data = json.loads(results.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{results}: not valid JSON ({e})") from e
        if not isinstance(data.get("metrics"), dict):
            raise ConfigError(f"{results}: no 'metrics' object; expected an embedexp results.json")
        job.metrics, job.status = data["metrics"], FINISHED
        job.base_model = data.get("base_model")
        job.objective = dev_objective(data)
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


def _run_dirs(root: Path, depth: int = 4) -> list[Path]:
    """Run folders (with .hydra/overrides.yaml) at or below `root`, not looking inside a run folder."""
    if (root / ".hydra" / "overrides.yaml").exists():
        return [root]
    if depth == 0:
        return []
    subs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [run for sub in subs for run in _run_dirs(sub, depth - 1)]


def find_jobs(sweep_dir: str | Path) -> list[Job]:
    """Every job of a sweep dir (numbered subdirs), the run itself when the dir is one run, or else every run
    folder below the dir (ad-hoc runs such as outputs/<date>/<time>), named by its path under the dir."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise ConfigError(f"{root}: not a directory; expected a sweep dir (multirun/<date>/<time>) or a run dir")
    if (root / ".hydra" / "overrides.yaml").exists():
        return [read_job(root, None, root.name)]
    found: dict[int | str, Path] = {}
    for sub in sorted(p for p in root.iterdir() if (p / ".hydra" / "overrides.yaml").exists()):
        found[int(sub.name) if sub.name.isdigit() else sub.name] = sub
    expected = expected_jobs(root)
    jobs = []
    if expected is not None:
        for num, overrides in enumerate(expected):
            sub = found.pop(num, None)
            if sub:
                jobs.append(read_job(sub, num))
            else:
                jobs.append(Job(num, None, NOT_STARTED, parse_overrides(overrides), name=str(num)))
    for key, sub in sorted(found.items(), key=lambda kv: (isinstance(kv[0], str), kv[0])):
        jobs.append(read_job(sub, key if isinstance(key, int) else None))
    if not jobs:
        jobs = [read_job(run, None, str(run.relative_to(root))) for run in _run_dirs(root)]
    if not jobs:
        raise ConfigError(f"{root}: no job dirs (subfolders with .hydra/overrides.yaml) and no multirun.yaml")
    return jobs


def gather_jobs(dirs: list[str | Path]) -> list[Job]:
    """The jobs of several sweep or run folders, each named by its path relative to the folders' common parent."""
    if len(dirs) == 1:
        return find_jobs(dirs[0])
    paths = [Path(d).resolve() for d in dirs]
    parent = Path(os.path.commonpath(paths))
    jobs = []
    for given, path in zip(dirs, paths):
        prefix = str(path.relative_to(parent)) if path != parent else str(given)
        for job in find_jobs(path):
            job.name = prefix if Path(job.dir or "") == path else f"{prefix}/{job.name}"
            jobs.append(job)
    return jobs


def _canonical(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


@functools.lru_cache(maxsize=4096)
def _composed(job_dir: str) -> Any:
    path = Path(job_dir) / ".hydra" / "config.yaml"
    return OmegaConf.load(path) if path.exists() else None


@functools.lru_cache(maxsize=4096)
def _choices(job_dir: str) -> dict:
    """The config-group options the run was composed from (hydra.runtime.choices: {"loss": "infonce", ...})."""
    path = Path(job_dir) / ".hydra" / "hydra.yaml"
    if not path.exists():
        return {}
    hydra = (_read_yaml(path) or {}).get("hydra") or {}
    return dict((hydra.get("runtime") or {}).get("choices") or {})


def value_of(job: Job, key: str) -> str:
    """The job's value for an override key: its override, else the config-group option it was composed with
    (.hydra/hydra.yaml), else its composed config's value (.hydra/config.yaml), else ""."""
    if key in job.overrides:
        return job.overrides[key]
    if job.dir is None or key.startswith("hydra"):
        return ""
    choice = _choices(job.dir).get(key)
    if choice is not None:
        return str(choice)
    cfg = _composed(job.dir)
    node = OmegaConf.select(cfg, key, default=None) if cfg is not None else None
    if OmegaConf.is_config(node):
        node = node.get("name") if OmegaConf.is_dict(node) else None
    return "" if node is None or OmegaConf.is_config(node) else str(node)


def swept_keys(jobs: list[Job]) -> list[str]:
    """Override keys whose value is not the same in every job (1e-3 and 0.001 are the same), first-seen order."""
    keys = list(dict.fromkeys(k for j in jobs for k in j.overrides))
    return [k for k in keys if len({_canonical(value_of(j, k)) for j in jobs}) > 1]


def metric_names(jobs: list[Job]) -> list[str]:
    return list(dict.fromkeys(m for j in jobs for m in j.metrics))


def _cell(row: dict[str, float | None] | None) -> str:
    if not row or row.get("tuned") is None:
        return ""
    delta = row.get("delta")
    return f"{row['tuned']:.4f}" + (f" ({delta:+.4f})" if delta is not None else "")


def _short_number(value: str) -> str:
    """A long float an Optuna trial proposed (8.468008575248323e-05) as 4 significant digits; others unchanged."""
    if len(value) <= 10:
        return value
    try:
        return f"{float(value):.4g}"
    except ValueError:
        return value


def best_job(jobs: list[Job]) -> Job | None:
    """The finished job with the best dev objective (its select.mode), or None when no job has one."""
    scored = [j for j in jobs if j.status == FINISHED and j.objective is not None]
    if not scored:
        return None
    sign = -1.0 if scored[0].objective["mode"] == "min" else 1.0
    return max(scored, key=lambda j: sign * j.objective["value"])


def _best_lines(best: Job, keys: list[str], metrics: list[str]) -> list[str]:
    obj = best.objective
    setting = " ".join(f"`{k}={_short_number(value_of(best, k))}`" for k in keys) or "(no swept keys)"
    lines = [
        f"**Best job: {best.name}** ({setting}): dev {obj['monitor']} = {obj['value']:.4f} "
        f"({'highest' if obj['mode'] != 'min' else 'lowest'} of the jobs; chosen on the dev set, not on test sets).",
        "Its evidence, base model vs fine-tuned (test sets):",
        "",
    ]
    for m in metrics:
        row = best.metrics.get(m) or {}
        if row.get("tuned") is None:
            continue
        base = "" if row.get("base") is None else f"{row['base']:.4f} -> "
        delta = "" if row.get("delta") is None else f" ({row['delta']:+.4f})"
        verdict = f"; {row['verdict']}" if row.get("verdict") else ""
        lines.append(f"- {m}: {base}{row['tuned']:.4f}{delta}{verdict}")
    return lines


def markdown(jobs: list[Job], title: str = "Sweep") -> str:
    keys, metrics = swept_keys(jobs), metric_names(jobs)
    common = {k: v for k, v in jobs[0].overrides.items() if k not in keys}
    done = sum(j.status == FINISHED for j in jobs)
    lines = [f"# {title}", "", f"{len(jobs)} jobs: {done} finished, {len(jobs) - done} failed or unfinished."]
    if common:
        lines.append("Common overrides: " + " ".join(f"`{k}={v}`" for k, v in common.items()))
    bases = sorted({j.base_model for j in jobs if j.base_model})
    if len(bases) > 1:
        lines.append("Base models differ between jobs: " + ", ".join(f"`{b}`" for b in bases) + ".")
    lines += ["Metric cells: fine-tuned value (delta vs the job's base model).", ""]
    monitors = list(dict.fromkeys(j.objective["monitor"] for j in jobs if j.objective))
    objective_col = [f"dev {monitors[0]}" if len(monitors) == 1 else "dev objective"] if monitors else []
    head = ["job", "status", *keys, *objective_col, *metrics]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * (2 + len(keys)) + "---:|" * (len(objective_col) + len(metrics)))
    best = best_job(jobs)
    for j in jobs:
        status = j.status if j.job_id is None or j.status == FINISHED else f"{j.status}; job id {j.job_id}"
        objective = []
        if objective_col:
            value = "" if j.objective is None else f"{j.objective['value']:.4f}"
            objective = [f"**{value}** (best)" if j is best else value]
        cells = [
            j.name,
            status,
            *(_short_number(value_of(j, k)) for k in keys),
            *objective,
            *(_cell(j.metrics.get(m)) for m in metrics),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if best is not None:
        lines += ["", *_best_lines(best, keys, metrics)]
    return "\n".join(lines) + "\n"


def plot(jobs: list[Job], out_dir: Path) -> list[Path]:
    """The sweep's PNGs (embedexp/sweep_plots.py): one per swept hyperparameter, or a heatmap for two categorical ones."""
    from embedexp.sweep_plots import plot_jobs

    return plot_jobs(jobs, out_dir)


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
    sweep_dir: str | Path | list[str | Path],
    out_dir: str | Path | None = None,
    plots: bool = True,
    wandb: bool = False,
) -> dict:
    """summary.md, summary.json and plots/ in out_dir (default: the sweep dir); returns the summary.

    Raises:
        ConfigError: a folder is missing or holds no runs; several folders without out_dir; unreadable files.
    """
    roots = [Path(d) for d in (sweep_dir if isinstance(sweep_dir, (list, tuple)) else [sweep_dir])]
    if len(roots) > 1 and not out_dir:
        raise ConfigError(f"{len(roots)} folders given: --out is required (where summary.md and plots/ go)")
    root = roots[0]
    out = Path(out_dir) if out_dir else root
    jobs = gather_jobs(roots)
    mismatches: list[str] = []
    if wandb:
        mismatches = attach_wandb(jobs)
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(jobs, title=f"Sweep {root}" if len(roots) == 1 else f"Runs under {os.path.commonpath(roots)}")
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
        "best_job": None if best_job(jobs) is None else best_job(jobs).name,
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
    parser.add_argument(
        "sweep_dir", nargs="+", help="a multirun sweep dir, a run dir, or folders of runs (e.g. outputs/2026-11-29)"
    )
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
    out = Path(args.out or args.sweep_dir[0])
    print(f"summary: {out / 'summary.md'}, {out / 'summary.json'}")
    return 1 if summary["wandb_mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
