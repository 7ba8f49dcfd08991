"""Peak memory of building a training set from a line-oriented file (issue 17: formats on the Arrow layer).

Writes an N-line pairs jsonl (anchor, positive, one negative; about 10 / 60 / 60 words) into a temp folder and,
in a fresh child process each (peak RSS = the child's own VmHWM, scripts/_rss.py), runs

- `import`: the imports only (embedexp.data.train_sets, datasets, pyarrow): the floor;
- `cold`: `build_train_set({"format": "pairs", ...})` with an empty Arrow cache, then reads every row once;
- `warm`: the same again (the cache holds the Arrow file of that content).

Prints one JSON line per phase (imported, built, read every row): peak RSS so far (MiB, VmHWM), the resident
anonymous and file-backed memory now (RssAnon: Python objects and heap; RssFile: pages of mapped files, e.g. the
Arrow rows a pass has read, which the kernel can drop), the child's CPU seconds (user + system; load does not
change it) and wall seconds (inflated on a loaded machine).

    .venv/bin/python scripts/rss_line_formats.py [--rows 200000]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
from _rss import peak_rss_of  # noqa: E402

CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
sys.path.insert(0, sys.argv[4])
from _rss import own_peak_mib, rss_now
mode, path, cache = sys.argv[1], sys.argv[2], sys.argv[3]
import datasets, pyarrow
from embedexp.data.train_sets import build_train_set

def phase(name, **extra):
    cpu, now = os.times(), rss_now()
    out = {"mode": mode, "phase": name, "peak_rss_mib": round(own_peak_mib(), 1),
           "anon_mib": round(now.get("RssAnon", 0), 1), "file_mib": round(now.get("RssFile", 0), 1),
           "cpu_s": round(cpu.user + cpu.system, 2), "wall_s": round(time.perf_counter() - t0, 2), **extra}
    print(json.dumps(out), flush=True)

phase("imported")
if mode != "import":
    ts = build_train_set({"format": "pairs", "path": path, "cache_dir": cache})
    phase("built", rows=len(ts), rows_type=type(ts.rows).__name__)
    n = 0
    for i in range(len(ts)):
        n += len(ts.get(i)[1])
    phase("read every row")
"""

WORDS = [f"w{i}" for i in range(5000)]


def write_pairs(path: Path, n: int, seed: int = 0) -> None:
    """n jsonl lines {"anchor", "positive", "negatives": [one text]} of random words."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            row = {
                "anchor": f"q{i} " + " ".join(rng.choices(WORDS, k=10)),
                "positive": f"p{i} " + " ".join(rng.choices(WORDS, k=60)),
                "negatives": [f"n{i} " + " ".join(rng.choices(WORDS, k=60))],
            }
            f.write(json.dumps(row) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pairs.jsonl"
        write_pairs(path, args.rows)
        print(json.dumps({"file_mib": round(path.stat().st_size / 2**20, 1), "lines": args.rows}))
        for mode in ("import", "cold", "warm"):
            cmd = [sys.executable, "-c", CHILD, mode, str(path), str(Path(tmp) / "cache"), str(REPO / "scripts")]
            rc, out, err, _ = peak_rss_of(cmd, cwd=str(REPO))
            if rc != 0:
                raise SystemExit(f"{mode}: exit {rc}: {err[-2000:]}")
            print(out.strip())
            sys.stdout.flush()


if __name__ == "__main__":
    main()
