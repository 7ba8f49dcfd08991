"""Issue 17, item 7: time to first training step and peak memory, 1,000,000 vs 10,000 pairs rows.

Writes two pairs parquet files of the same shape (anchor, positive, negative; about 10-20 words each) into
a temp folder; for each, a fresh child process goes from the config to one training step: compose the
`train` config (experiment=demo_tiny data=table data.train.path=...), build the DataModule (the table is
opened with `datasets`, converted once to Arrow in an empty cache and memory-mapped), tokenise one batch
with the tiny model's tokenizer, encode it and take one optimizer step of the InfoNCE loss. A `base` child
does the same with a 10-row file: the imports' and the model's own footprint. Peak RSS is the child's
VmHWM, its own peak (not ru_maxrss, which holds the parent's: scripts/_rss.py; anonymous + file-backed pages: the memory-mapped Arrow table's pages that were read count too; the
split at the end of the run is reported beside it); the 1M-row run is also repeated with the Arrow cache warm (a second run on the same data).

    .venv/bin/python scripts/bench_data.py [--rows 1000000 10000] [--write-docs docs/data.md] [--phases]

`--phases` also prints, per run, each phase's own peak (VmHWM reset at its start: open_table, files_digest,
TableRows' row checks, model, row_hashes, plan_no_duplicates, sampler + first batch, first step), the
anonymous / file-backed RSS at its end and its CPU seconds; the run's peak is then the largest of them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MARK_BEGIN, MARK_END = "<!-- bench_data:begin -->", "<!-- bench_data:end -->"

CHILD = r"""
import json, os, resource, sys, time
t0 = time.perf_counter()
path, cache, model, extra = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
import torch
from embedexp.config import config_dir, register_resolvers
from embedexp.models import Encoder
from embedexp.losses.infonce import InfoNCELoss
import datasets, embedexp.data.datamodule  # imports counted apart from the data work
register_resolvers()
PHASES = []
if os.environ.get("BENCH_DATA_PHASES"):  # --phases: each phase's own peak (VmHWM reset before it), RSS split after
    import functools, pyarrow as pa
    sys.path.insert(0, "scripts")
    from _rss import reset_peak, rss_now

    def phase(name, fn):
        @functools.wraps(fn)
        def run(*a, **k):
            SEEN[0] = max(SEEN[0], rss_now()["VmHWM"])  # the peak so far, before this reset lowers VmHWM
            reset_peak()
            t, c = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **k)
            finally:
                r = rss_now()
                PHASES.append({"phase": name, "s": time.perf_counter() - t, "cpu_s": time.process_time() - c,
                               "peak_mb": r["VmHWM"], "anon_mb": r["RssAnon"], "file_mb": r["RssFile"],
                               "arrow_pool_mb": pa.total_allocated_bytes() / 2**20})
        return run

    import embedexp.data.tables as _tables, embedexp.data.table_rows as _tr, embedexp.data.no_duplicates as _nd
    _tables.open_table = phase("open_table (datasets: parquet -> Arrow cache, mmap)", _tables.open_table)
    _tables.files_digest = phase("files_digest (source file bytes)", _tables.files_digest)
    _tr.TableRows.__init__ = phase("TableRows (row checks)", _tr.TableRows.__init__)
    _tr.TableRows.row_hashes = phase("row_hashes (text hashing or .npy cache)", _tr.TableRows.row_hashes)
    _nd.plan_no_duplicates = phase("plan_no_duplicates", _nd.plan_no_duplicates)
    r = rss_now()
    SEEN = [r["VmHWM"]]
    reset_peak()
    PHASES.append({"phase": "imports", "s": time.perf_counter() - t0, "cpu_s": time.process_time(),
                   "peak_mb": r["VmHWM"], "anon_mb": r["RssAnon"], "file_mb": r["RssFile"], "arrow_pool_mb": 0.0})
else:
    SEEN = [0.0]

    def phase(name, fn):
        return fn
with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
    cfg = compose(config_name="train", overrides=["experiment=demo_tiny", "data=table", f"data.train.path={path}",
                  f"paths.cache_dir={cache}", "data.batch_size=32", *extra])
t_cfg = time.perf_counter()
dm = instantiate(cfg.data, seed=0)
ts = dm.load()
t_data = time.perf_counter()
enc = phase("model", Encoder)(model)
dm.set_tokenizer(enc.tokenize)
batch = phase("sampler + first batch", lambda: next(iter(dm.train_dataloader())))()
loss_fn = InfoNCELoss()
opt = torch.optim.AdamW(enc.parameters(), lr=1e-3)

def step():
    loss = loss_fn([enc(f) for f in batch["features"]])
    loss.backward()
    opt.step()
    return loss

loss = phase("first step", step)()
t_step = time.perf_counter()
ru = resource.getrusage(resource.RUSAGE_SELF)
status = dict(l.split(":", 1) for l in open("/proc/self/status") if l.startswith(("RssAnon", "RssFile", "VmHWM")))
print(json.dumps({"rss_anon_mb": int(status["RssAnon"].split()[0]) / 1024, "rss_file_mb": int(status["RssFile"].split()[0]) / 1024,"rows": len(ts), "imports_and_config_s": t_cfg - t0, "load_s": t_data - t_cfg,
                  "cpu_s": ru.ru_utime + ru.ru_stime,
                  "first_step_s": t_step - t0, "peak_rss_mb": max(SEEN[0], int(status["VmHWM"].split()[0]) / 1024),  # own peak, not the parent's (scripts/_rss.py)
                  "fingerprint": ts.fingerprint(), "loss": float(loss), "phases": PHASES}))
"""


def write_pairs(path: Path, n: int, chunk: int = 100_000) -> Path:
    """A pairs parquet of n rows (anchor, positive, negative), written in chunks; same shape for every n."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    words = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega river stone cloud".split()
    writer = None
    for start in range(0, n, chunk):
        ids = range(start, min(n, start + chunk))
        anchor = [f"what is item {i} in {words[i % 14]} and {words[(i // 14) % 14]}" for i in ids]
        positive = [
            f"item {i} is a {words[(i * 7) % 14]} {words[(i * 3) % 14]} thing found near the {words[i % 14]} river"
            for i in ids
        ]
        negative = [f"item {i + 1} is a {words[(i * 5) % 14]} thing with no {words[(i * 11) % 14]} at all" for i in ids]
        table = pa.table({"anchor": anchor, "positive": positive, "negative": negative})
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()
    return path


def run_child(path: Path, cache: Path, model: Path, extra: list[str], phases: bool = False) -> dict:
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if phases:
        env["BENCH_DATA_PHASES"] = "1"
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(cache), str(model), *extra],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    if proc.returncode != 0:
        raise SystemExit(f"child failed for {path}:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_s"] = time.perf_counter() - t
    return out


def table(results: list[dict]) -> str:
    base = next(r for r in results if r["name"] == "base")
    ref = next(r for r in results if r["name"] == "small")
    lines = [
        "| run | rows | file MB | time to first step s (of it: data load s) | CPU s | peak RSS MB "
        "| RSS beyond base MB | peak RSS / small run | RSS at the end: anonymous / file-backed MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        beyond = r["peak_rss_mb"] - base["peak_rss_mb"]
        lines.append(
            f"| {r['name']} | {r['rows']:,} | {r['file_mb']:.1f} | {r['first_step_s']:.1f} ({r['load_s']:.1f}) | "
            f"{r['cpu_s']:.1f} | "
            f"{r['peak_rss_mb']:.0f} | {beyond:.0f} | {r['peak_rss_mb'] / ref['peak_rss_mb']:.2f}x | "
            f"{r['rss_anon_mb']:.0f} / {r['rss_file_mb']:.0f} |"
        )
    return "\n".join(lines)


def phase_table(results: list[dict]) -> str:
    """Per run and phase (--phases): the phase's own peak RSS (VmHWM reset at its start), the anonymous /
    file-backed RSS at its end, Arrow's memory pool in use at its end, and its CPU seconds."""
    lines = [
        "| run | phase | peak RSS MB | at its end: anonymous / file-backed MB | Arrow pool MB | CPU s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        for p in r.get("phases", []):
            lines.append(
                f"| {r['name']} | {p['phase']} | {p['peak_mb']:.0f} | {p['anon_mb']:.0f} / {p['file_mb']:.0f} | "
                f"{p['arrow_pool_mb']:.0f} | {p['cpu_s']:.1f} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs=2, default=[1_000_000, 10_000], metavar=("LARGE", "SMALL"))
    ap.add_argument("--write-docs", default=None, help="replace the bench table in this markdown file")
    ap.add_argument("--no-warm", action="store_true", help="skip the second (warm cache) run on the large file")
    ap.add_argument(
        "--phases",
        action="store_true",
        help="also print each phase's own peak RSS and anonymous/file-backed split (resets VmHWM per phase)",
    )
    ap.add_argument("override", nargs="*", help="config overrides for every child, e.g. data.batch_sampler=random")
    args = ap.parse_args()
    from embedexp.models.tiny import build_tiny_bert

    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        tmp = Path(tmp)
        model = build_tiny_bert(tmp / "tiny-bert", seed=0)
        large, small = args.rows
        runs = [
            ("base", 10, "base"),
            ("small", small, "small"),
            ("large", large, "large"),
        ]
        if not args.no_warm:
            runs.append(("large, warm cache", large, "large"))
        files: dict[str, Path] = {}
        results = []
        for name, n, key in runs:
            if key not in files:
                t = time.perf_counter()
                files[key] = write_pairs(tmp / f"pairs_{key}.parquet", n)
                print(f"wrote {n:,} rows in {time.perf_counter() - t:.1f} s", file=sys.stderr)
            cache = tmp / f"cache_{key}"  # empty for the first run on each file; reused by "warm cache"
            r = run_child(files[key], cache, model, args.override, args.phases)
            r.update(name=name, file_mb=files[key].stat().st_size / 2**20)
            results.append(r)
            print(json.dumps(r), file=sys.stderr)
    md = table(results)
    cpus = len(os.sched_getaffinity(0))
    note = (
        f"\n\n{cpus} CPU cores, load average {os.getloadavg()[0]:.1f} at the end; the tiny random BERT "
        "(32-dim); batch 32; child processes started fresh; base = a 10-row file (imports + model); CPU s = the child's user + system time."
    )
    if args.override:
        note += f" Overrides: `{' '.join(args.override)}`."
    print(md + note)
    if args.phases:
        print("\n" + phase_table(results))
    if args.write_docs:
        doc = Path(args.write_docs)
        text = doc.read_text()
        i, j = text.index(MARK_BEGIN) + len(MARK_BEGIN), text.index(MARK_END)
        doc.write_text(text[:i] + "\n" + text[i:j].strip("\n") + "\n\n" + md + note + "\n" + text[j:])


if __name__ == "__main__":
    main()
