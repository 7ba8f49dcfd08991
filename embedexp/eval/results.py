"""One run's results: results.json + results.md, every metric base vs fine-tuned with the delta. Written atomically.

(The comparison of many runs of a sweep is `embedexp.sweep_report`.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from embedexp.eval.plots import write_plots
from embedexp.io import atomic_write


def compare(base: dict[str, float], tuned: dict[str, float]) -> dict[str, dict[str, float | None]]:
    out = {}
    for name in list(base) + [n for n in tuned if n not in base]:
        b, t = base.get(name), tuned.get(name)
        out[name] = {"base": b, "tuned": t, "delta": (t - b) if b is not None and t is not None else None}
    return out


def markdown_table(rows: dict[str, dict[str, float | None]], base_name: str = "base", tuned_name: str = "fine-tuned") -> str:
    fmt = lambda v, sign=False: "" if v is None else (f"{v:+.4f}" if sign else f"{v:.4f}")  # noqa: E731
    lines = [f"| metric | {base_name} | {tuned_name} | delta |", "|---|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {fmt(r['base'])} | {fmt(r['tuned'])} | {fmt(r['delta'], True)} |")
    return "\n".join(lines) + "\n"


def write_results(out_dir: str | Path, base: dict, tuned: dict, meta: dict[str, Any]) -> dict:
    """Write results.md then results.json (the file that marks a finished run) and return the table."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = compare(base, tuned)
    title = meta.get("title", "base vs fine-tuned")
    md = f"# {title}\n\n" + markdown_table(rows) + "\n" + "".join(f"- {k}: {v}\n" for k, v in meta.items() if k != "title" and not isinstance(v, dict))
    atomic_write(out_dir / "results.md", md)
    write_plots(out_dir, rows)  # PNGs + Matryoshka retention table appended to results.md; never raises
    atomic_write(out_dir / "results.json", json.dumps({"metrics": rows, **meta}, indent=2, default=str) + "\n")
    return rows
