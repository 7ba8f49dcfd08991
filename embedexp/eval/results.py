"""One run's results: results.json + results.md, every metric base vs fine-tuned, with the evidence. Written atomically.

With per-unit values (per query for retrieval metrics, per sentence pair for STS) each row also gets a 95%
paired bootstrap CI of the change, a paired randomisation p-value, its Holm-adjusted value (two families: each
eval set's headline metric, and the other rows), wins/losses/ties and a verdict (`embedexp.eval.stats`); `per_query.jsonl` keeps the values,
and results.md lists the queries that lost and gained the most.

(The comparison of many runs of a sweep is `embedexp.sweep_report`.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from embedexp.eval.plots import write_plots
from embedexp.eval.stats import compare_paired, verdicts
from embedexp.io import atomic_write

STATS_DEFAULTS = {"alpha": 0.05, "confidence": 0.95, "n_resamples": 10_000, "seed": 0}
STAT_KEYS = ("ci_low", "ci_high", "p", "p_holm", "wins", "losses", "ties", "n", "verdict", "primary")


def _aligned(b: dict, t: dict) -> tuple[list, list, list, list | None] | None:
    """The units both models were scored on, in base order: (ids, base values, tuned values, gold or None)."""
    key = "scores" if "scores" in b else "values"
    t_at = {u: i for i, u in enumerate(t.get("ids", []))}
    ids = [u for u in b.get("ids", []) if u in t_at]
    if not ids:
        return None
    b_at = {u: i for i, u in enumerate(b["ids"])}
    gold = [b["gold"][b_at[u]] for u in ids] if "gold" in b else None
    return ids, [b[key][b_at[u]] for u in ids], [t[key][t_at[u]] for u in ids], gold


def compare(
    base: dict[str, float], tuned: dict[str, float], units: dict[str, dict] | None = None, stats: dict | None = None
) -> dict[str, dict[str, Any]]:
    """{metric: {"base", "tuned", "delta"[, "ci_low", "ci_high", "p", "p_holm", "wins", "losses", "ties", "n", "verdict"]}}.

    Args:
        base, tuned: {"<set>/<metric>": value}; a model may lack a metric (None in its column).
        units: {"base": {metric: per-unit}, "tuned": {metric: per-unit}}, where per-unit is
            {"ids": [...], "values": [...]} (mean metrics) or {"ids", "scores", "gold", "method"} (STS correlations).
            Rows with per-unit values for both models get the statistics.
        stats: alpha, confidence, n_resamples, seed (see STATS_DEFAULTS). Holm's correction runs over two
            families: the headline metric of each eval set (first tested metric: nDCG@10, Spearman), and all other
            tested metrics.
    """
    settings = {**STATS_DEFAULTS, **(stats or {})}
    out: dict[str, dict[str, Any]] = {}
    for name in list(base) + [n for n in tuned if n not in base]:
        b, t = base.get(name), tuned.get(name)
        out[name] = {"base": b, "tuned": t, "delta": (t - b) if b is not None and t is not None else None}
    units = units or {}
    tested = {}
    for name in out:
        b_units, t_units = (units.get("base") or {}).get(name), (units.get("tuned") or {}).get(name)
        pair = _aligned(b_units, t_units) if b_units and t_units else None
        if pair is None:
            continue
        _, b_vals, t_vals, gold = pair
        tested[name] = compare_paired(
            b_vals,
            t_vals,
            gold=gold,
            method=(b_units.get("method") or "spearman"),
            n_resamples=int(settings["n_resamples"]),
            confidence=float(settings["confidence"]),
            seed=int(settings["seed"]),
        )
    primary = _primary(tested)
    for family in ([n for n in tested if n in primary], [n for n in tested if n not in primary]):
        judged = verdicts([tested[n] for n in family], float(settings["alpha"]))
        for name, (p_holm, verdict) in zip(family, judged):
            c = tested[name]
            out[name].update(
                ci_low=c.ci_low,
                ci_high=c.ci_high,
                p=c.p,
                p_holm=p_holm,
                wins=c.wins,
                losses=c.losses,
                ties=c.ties,
                n=c.n,
                verdict=verdict,
                primary=name in primary,
            )
    return out


def _group(name: str) -> str:
    """The eval set of a row: `<set>` of `<set>/<metric>`, `mteb/<Task>[/<split>][/<subset>]` of an mteb row."""
    return name.rsplit("/", 1)[0] if name.startswith("mteb/") else name.split("/")[0]


def _primary(names) -> set[str]:
    """The headline metric of each eval set: its first tested metric (nDCG@10 for retrieval, Spearman for STS)."""
    seen, out = set(), set()
    for name in names:
        ds = _group(name)
        if ds not in seen:
            seen.add(ds)
            out.add(name)
    return out


def _fmt(v: Any, sign: bool = False) -> str:
    return "" if v is None else (f"{v:+.4f}" if sign else f"{v:.4f}")


def _p(v: float | None) -> str:
    return "" if v is None else ("<0.0001" if v < 1e-4 else f"{v:.4f}")


def markdown_table(
    rows: dict[str, dict[str, Any]], base_name: str = "base", tuned_name: str = "fine-tuned", confidence: float = 0.95
) -> str:
    """The results table; with statistics: CI of the change, p (Holm-adjusted in brackets), wins/losses/ties, verdict."""
    with_stats = any("verdict" in r for r in rows.values())
    head = f"| metric | {base_name} | {tuned_name} | delta |"
    rule = "|---|---:|---:|---:|"
    if with_stats:
        head += f" {confidence:.0%} CI | p (Holm) | W/L/T | verdict |"
        rule += "---|---:|---|---|"
    lines = [head, rule]
    for name, r in rows.items():
        line = f"| {name} | {_fmt(r['base'])} | {_fmt(r['tuned'])} | {_fmt(r['delta'], True)} |"
        if with_stats:
            if "verdict" in r:
                verdict = f"**{r['verdict']}**" if r["verdict"] != "no significant difference" else r["verdict"]
                line += (
                    f" [{_fmt(r['ci_low'], True)}, {_fmt(r['ci_high'], True)}] | {_p(r['p'])} ({_p(r['p_holm'])}) |"
                    f" {r['wins']}/{r['losses']}/{r['ties']} | {verdict} |"
                )
            else:
                line += " | | | |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def summary_lines(rows: dict[str, dict[str, Any]], alpha: float) -> str:
    """One line per set: its first metric with statistics (nDCG@10 / Spearman first in each set's order)."""
    seen, lines = set(), []
    for name, r in rows.items():
        ds = _group(name)
        if not r.get("primary") or ds in seen:
            continue
        seen.add(ds)
        lines.append(
            f"- **{name}**: {r['verdict']} ({_fmt(r['base'])} -> {_fmt(r['tuned'])}, {_fmt(r['delta'], True)}, "
            f"CI [{_fmt(r['ci_low'], True)}, {_fmt(r['ci_high'], True)}], p={_p(r['p'])}, Holm p={_p(r['p_holm'])}, "
            f"{r['wins']} better / {r['losses']} worse / {r['ties']} tied)"
        )
    if not lines:
        return ""
    return (
        f"## Verdict\n\nPaired tests over queries (retrieval) / sentence pairs (STS); alpha={alpha} after Holm's "
        "correction over the headline metrics below (the other rows of the table are corrected as a second family)."
        "\n\n" + "\n".join(lines) + "\n\n"
    )


def per_query_records(units: dict[str, dict] | None, texts: dict[str, dict[str, str]] | None = None) -> list[dict]:
    """per_query.jsonl rows: {"set", "id", "text", "base": {metric: v}, "tuned": {metric: v}} per query or pair."""
    if not units:
        return []
    records: dict[tuple[str, str], dict] = {}
    for side in ("base", "tuned"):
        for name, u in (units.get(side) or {}).items():
            ds = _group(name)
            metric = name[len(ds) + 1 :]
            key = "scores" if "scores" in u else "values"
            metric = "similarity" if key == "scores" else metric
            for i, uid in enumerate(u.get("ids", [])):
                rec = records.setdefault((ds, str(uid)), {"set": ds, "id": str(uid), "base": {}, "tuned": {}})
                rec[side][metric] = u[key][i]
                if "gold" in u:
                    rec["gold"] = u["gold"][i]
    for (ds, uid), rec in records.items():
        text = (texts or {}).get(ds, {}).get(uid)
        if text is not None:
            rec["text"] = text
    return list(records.values())


def largest_changes(
    rows: dict[str, dict],
    units: dict[str, dict] | None,
    texts: dict[str, dict[str, str]] | None,
    n: int = 5,
    width: int = 80,
) -> str:
    """Markdown: for each retrieval set's first tested metric, the queries that lost and gained the most."""
    if not units:
        return ""
    out, seen = [], set()
    for name, r in rows.items():
        ds = _group(name)
        b, t = (units.get("base") or {}).get(name), (units.get("tuned") or {}).get(name)
        if "verdict" not in r or ds in seen or not b or not t or "values" not in b:
            continue
        seen.add(ds)
        ids, bv, tv, _ = _aligned(b, t)
        changes = sorted(zip([y - x for x, y in zip(bv, tv)], ids, bv, tv))

        def line(d, uid, x, y, ds=ds):
            text = (texts or {}).get(ds, {}).get(str(uid), "")
            text = text if len(text) <= width else text[: width - 3] + "..."
            return f"| {uid} | {x:.4f} | {y:.4f} | {d:+.4f} | {text} |"

        losses = [line(*c) for c in changes[:n] if c[0] < 0]
        gains = [line(*c) for c in reversed(changes[-n:]) if c[0] > 0]
        head = "| query | base | fine-tuned | delta | text |\n|---|---:|---:|---:|---|\n"
        out.append(
            f"### {name}: largest losses\n\n"
            + (head + "\n".join(losses) + "\n" if losses else "none\n")
            + f"\n### {name}: largest gains\n\n"
            + (head + "\n".join(gains) + "\n" if gains else "none\n")
        )
    return "\n## Per-query changes\n\n" + "\n".join(out) if out else ""


def write_results(
    out_dir: str | Path,
    base: dict,
    tuned: dict,
    meta: dict[str, Any],
    units: dict | None = None,
    texts: dict[str, dict[str, str]] | None = None,
    stats: dict | None = None,
    extra_md: str = "",
) -> dict:
    """Write per_query.jsonl, results.md and the plots, then results.json (the file that marks a finished run).

    Args:
        out_dir: the run folder.
        base, tuned: {"<set>/<metric>": value}.
        meta: run facts listed under the table and stored in results.json (`title` heads results.md).
        units: per-unit values of both models (see `compare`); texts: {set: {query id: text}} for results.md.
        stats: alpha, confidence, n_resamples, seed.
        extra_md: more markdown sections (model selection, interpolation) placed after the run facts.
    Returns:
        the rows of `compare`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {**STATS_DEFAULTS, **(stats or {})}
    rows = compare(base, tuned, units, settings)
    records = per_query_records(units, texts)
    if records:
        atomic_write(out_dir / "per_query.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    title = meta.get("title", "base vs fine-tuned")
    md = (
        f"# {title}\n\n"
        + summary_lines(rows, settings["alpha"])
        + markdown_table(rows, confidence=settings["confidence"])
        + "\n"
        + "".join(f"- {k}: {v}\n" for k, v in meta.items() if k != "title" and not isinstance(v, dict))
        + extra_md
        + largest_changes(rows, units, texts)
    )
    atomic_write(out_dir / "results.md", md)
    write_plots(out_dir, rows, units)  # PNGs + Matryoshka retention table appended to results.md; never raises
    stats_meta = {"statistics": settings} if any("verdict" in r for r in rows.values()) else {}
    atomic_write(
        out_dir / "results.json", json.dumps({"metrics": rows, **stats_meta, **meta}, indent=2, default=str) + "\n"
    )
    return rows
