"""Memory and speed of training a ~100M-parameter decoder: full fine-tuning vs LoRA vs LoRA + gradient checkpointing.

    python scripts/bench_big.py                # the table in docs/big_models.md (~100M Qwen2, seq 256, batch 8)
    python scripts/bench_big.py --quick        # a tiny decoder, seconds: the smoke test (outputs/bench_big_quick.md)
    python scripts/bench_big.py --steps 5 --batch 16 --seq-len 512 --out outputs/bench_big.md
    python scripts/bench_big.py --phases --rows lora --batch 4 --steps 1   # where the memory goes, per phase

The model is a Qwen2 decoder with random weights built offline (the tiny Qwen2 tokenizer of
`embedexp.models.tiny.build_tiny_decoder`, whose vocabulary is small, so nearly every parameter is in the 12
transformer blocks): hidden 768, 12 layers, 12 query heads, 2 key/value heads (grouped-query attention, as in
Qwen2), MLP 3072 -> 101.8M parameters. Every row trains through embedexp's own path, the code users run: the
composed Hydra config (`model=local`, last-token pooling, `loss=infonce`, `trainer=cpu`), `embedexp.train._fit`
(EmbeddingModule + lightning.Trainer, AdamW over the trainable parameters), on the same batches: `--batch` rows x
2 columns (query, positive), every text truncated to exactly `--seq-len` tokens (no padding).

Rows (`model.*` overrides):
    full      every parameter trains
    lora      model.peft: LoRA r=16, alpha=32, dropout 0.0 on the attention and MLP projections (target 'auto')
    lora_gc   LoRA as above + model.gradient_checkpointing=true (Hugging Face's, non-reentrant)

Memory: each row runs in its OWN fresh subprocess and its peak resident set size is the kernel's `ru_maxrss` of
that one child (`os.wait4`, the per-child form of getrusage(RUSAGE_CHILDREN): weights, gradients, optimiser
state, activations, allocator caches, the Python and torch runtime: what the machine must have), started from a
small launcher process so that no parent's memory is folded into it (`peak_rss_of`, scripts/_rss.py); this script itself
imports no torch and builds the model in a child too. A `load` child
imports the same modules and builds the same Encoder, then exits: "training increment" = row peak - load peak, the
memory training itself adds. Ratios are to full fine-tuning. Step time: median of `--steps` optimiser steps after
`--warmup` warm-up steps (wall time between the ends of consecutive steps), in seconds; on a machine shared with
other processes the times are inflated (memory is not).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _rss import peak_rss_of  # noqa: E402  (the launcher shared by the bench scripts)

RESULTS_MARK = "bench_big.py results"
ROWS = ("full", "lora", "lora_gc")
FULL_SIZE = {"hidden_size": 768, "layers": 12, "heads": 12, "kv_heads": 2, "intermediate_size": 3072}
QUICK_SIZE = {"hidden_size": 64, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate_size": 128}
WORDS = (
    "protein cell gene tumour virus brain heart drug dose trial mouse patient risk blood liver kidney lung "
    "therapy cancer signal receptor enzyme vaccine immune sample cohort outcome marker"
).split()


# ---------------------------------------------------------------- the model
def decoder_config(path: Path, size: dict):
    """The Qwen2Config of `size` (see FULL_SIZE), with the vocabulary and special tokens of the folder at `path`."""
    from transformers import Qwen2Config

    config = Qwen2Config.from_pretrained(path)
    config.hidden_size = size["hidden_size"]
    config.intermediate_size = size["intermediate_size"]
    config.num_hidden_layers = size["layers"]
    config.num_attention_heads = size["heads"]
    config.num_key_value_heads = size["kv_heads"]
    config.head_dim = size["hidden_size"] // size["heads"]
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = ["full_attention"] * size["layers"]
    return config


def build_decoder(path: Path, size: dict, seed: int = 0) -> Path:
    """A random-weight Qwen2 decoder folder of `size` (see FULL_SIZE) with the tiny offline Qwen2 tokenizer.

    `build_tiny_decoder` writes the tokenizer (and a 1-layer model); the model is then replaced by one of the
    requested size, seeded. Returns `path`.
    """
    import torch
    from transformers import Qwen2Model

    from embedexp.models.tiny import build_tiny_decoder

    build_tiny_decoder(path, family="qwen2", seed=seed, hidden_size=32, layers=1)
    config = decoder_config(path, size)
    torch.manual_seed(seed)
    Qwen2Model(config).save_pretrained(path, safe_serialization=True)
    return path


def bench_rows(n: int, seq_len: int, seed: int = 0) -> list[tuple[str, str]]:
    """`n` distinct (query, positive) pairs, each text long enough to be truncated to `seq_len` tokens.

    The tiny Qwen2 tokenizer makes about one token per character, so 1.5 x seq_len characters always suffice.
    """
    rng = random.Random(seed)

    def text(tag: str) -> str:
        words = [tag]
        while sum(len(w) + 1 for w in words) < int(1.5 * seq_len) + 16:
            words.append(rng.choice(WORDS))
        return " ".join(words)

    return [(text(f"q{i}"), text(f"p{i}")) for i in range(n)]


def row_overrides(row: str, r: int) -> list[str]:
    """The `model.*` Hydra overrides of a bench row (`load` = the full model, no training)."""
    lora = [
        "++model.peft.method=lora",
        f"++model.peft.r={r}",
        f"++model.peft.alpha={2 * r}",
        "++model.peft.dropout=0.0",
        "++model.peft.target_modules=auto",
    ]
    return {
        "load": [],
        "full": [],
        "lora": lora,
        "lora_gc": lora + ["++model.gradient_checkpointing=true"],
    }[row]


# ---------------------------------------------------------------- one row, in a fresh process
class PhaseLog:
    """RSS at the phases of one row (`--phases`): each record is (phase, RSS now, peak since the previous record,
    anonymous / file-backed RSS, in MiB); the peak is reset after each record (`_rss.reset_peak`), so it is the
    peak *within* that phase. `saved` records the bytes of the distinct tensors autograd saved for backward in
    one forward (activations; parameters excluded), via `torch.autograd.graph.saved_tensors_hooks`.
    """

    def __init__(self) -> None:
        from _rss import reset_peak

        self.records: list[dict] = []
        self.max_peak = 0.0
        self.resettable = reset_peak()

    def mark(self, phase: str, **extra) -> None:
        from _rss import malloc_info, reset_peak, rss_now

        now, heap = rss_now(), malloc_info()
        self.max_peak = max(self.max_peak, now.get("VmHWM", 0.0))
        self.records.append(
            {
                "phase": phase,
                "rss": now.get("VmRSS"),
                "peak": now.get("VmHWM"),
                "anon": now.get("RssAnon"),
                **heap,
                **extra,
            }
        )
        if self.resettable:
            reset_peak()

    def callback(self, params):
        """A Lightning callback marking the training phases; `params`: the module's parameters (not counted as
        saved activations)."""
        import lightning as L
        import torch

        log = self
        param_ptrs = {p.untyped_storage().data_ptr() for p in params}

        class Phases(L.Callback):
            def __init__(self) -> None:
                self.saved: dict[int, int] = {}
                self.hooks = None

            def _pack(self, t):
                ptr = t.untyped_storage().data_ptr()
                if ptr not in param_ptrs:
                    self.saved[ptr] = t.untyped_storage().nbytes()
                return t

            def on_train_start(self, trainer, module):
                log.mark("train start (optimizer built)")

            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                log.mark(f"step {batch_idx + 1}: before forward")
                self.saved = {}
                self.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
                self.hooks.__enter__()

            def on_before_backward(self, trainer, module, loss):
                if self.hooks is not None:
                    self.hooks.__exit__(None, None, None)
                    self.hooks = None
                log.mark(f"step {trainer.global_step + 1}: forward", saved_mib=sum(self.saved.values()) / 2**20)

            def on_after_backward(self, trainer, module):
                grads = sum(p.grad.numel() * p.grad.element_size() for p in module.parameters() if p.grad is not None)
                log.mark(f"step {trainer.global_step + 1}: backward", grads_mib=grads / 2**20)

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                opt = trainer.optimizers[0]
                state = sum(
                    v.numel() * v.element_size()
                    for st in opt.state.values()
                    for v in st.values()
                    if isinstance(v, torch.Tensor)
                )
                log.mark(f"step {batch_idx + 1}: optimizer step", optimizer_state_mib=state / 2**20)

            def on_train_end(self, trainer, module):
                log.mark("train end")

        return Phases()


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    import embedexp.train  # noqa: F401  (registers the resolvers, sets the offline defaults)
    from embedexp.config import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=overrides)


def worker(job: dict) -> dict:
    """One row: compose the config, build the Encoder (and for a training row: train `warmup + steps` steps)."""
    import resource

    import lightning as L
    import torch
    from hydra.utils import instantiate

    from embedexp.data.train_sets import TrainSet
    from embedexp.train import _fit, _memory_first
    from embedexp.trainer.config import split_trainer_cfg

    steps = job["warmup"] + job["steps"]
    cfg = _compose(
        [
            "model=local",
            f"model.model_name_or_path={job['model_dir']}",
            "model.pooling=last_token",
            f"model.max_seq_length={job['seq_len']}",
            "loss=infonce",
            "data=demo",
            "logger=none",
            "trainer=cpu",
            f"data.batch_size={job['batch']}",
            "data.shuffle=false",
            f"trainer.max_steps={steps}",
            "trainer.lr=1e-4",
            "trainer.warmup_ratio=0.0",
            "trainer.enable_progress_bar=false",
            f"paths.output_dir={job['tmp']}",
        ]
        + row_overrides(job["row"], job["r"])
    )
    phases = PhaseLog() if job.get("phases") else None
    if phases:
        phases.mark("imports + config")
    L.seed_everything(cfg.seed, workers=True)
    optim_kwargs, trainer_kwargs = split_trainer_cfg(cfg.trainer)
    _memory_first(cfg.model)  # as embedexp.train.train: LoRA / checkpointing rows return freed blocks to the kernel
    encoder = instantiate(cfg.model)
    if phases:
        phases.mark("Encoder built (LoRA wrap included)")
    with torch.no_grad():  # every weight resident, also in the `load` row (safetensors may map them lazily)
        touched = sum(float(p.float().sum()) for p in encoder.parameters())
    out = {
        "weights_sum": touched,
        "row": job["row"],
        "params": sum(p.numel() for p in encoder.parameters()),
        "trainable": sum(p.numel() for p in encoder.parameters() if p.requires_grad),
    }
    if job["row"] != "load":
        rows = bench_rows(job["batch"] * steps, job["seq_len"])
        datamodule = instantiate(cfg.data, seed=cfg.seed)
        datamodule.set_train_set(TrainSet(("anchor", "positive"), ("query", "document"), rows))
        loss = instantiate(cfg.loss)

        class StepClock(L.Callback):
            def __init__(self) -> None:
                self.marks, self.losses, self.shapes = [time.perf_counter()], [], []

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                value = outputs["loss"] if isinstance(outputs, dict) else outputs
                self.losses.append(float(value))
                self.shapes.append([list(f["input_ids"].shape) for f in batch["features"]])
                self.marks.append(time.perf_counter())

        clock = StepClock()
        callbacks = [clock] + ([phases.callback(list(encoder.parameters()))] if phases else [])
        if phases:
            phases.mark("weights touched, data + loss built")
        _fit(encoder, loss, datamodule, trainer_kwargs, optim_kwargs, Path(job["tmp"]), callbacks, [])
        times = [b - a for a, b in zip(clock.marks, clock.marks[1:])][job["warmup"] :]
        out.update(
            step_s=statistics.median(times),
            step_times=times,
            losses=clock.losses,
            shapes=clock.shapes[0],
            gradient_checkpointing=bool(getattr(encoder.backbone, "is_gradient_checkpointing", False)),
        )
    out["self_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    if phases:
        phases.mark("end")
        out["phases"] = phases.records
        out["phases_max_peak_mib"] = phases.max_peak  # ru_maxrss is lowered by the resets: this is the row's peak
    out["threads"] = torch.get_num_threads()
    out["torch"] = torch.__version__
    return out


def run_row(job: dict) -> dict:
    """Run `worker(job)` in a fresh interpreter; its result plus `peak_rss_mib`, that child's own peak RSS.

    Raises:
        RuntimeError: the child failed (its stderr's tail is in the message).
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    rc, out, err, peak = peak_rss_of([sys.executable, __file__, "--worker", json.dumps(job)], env, str(ROOT))
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if rc != 0 or not lines:
        raise RuntimeError(f"bench row {job['row']} failed (exit {rc}):\n{err[-3000:]}")
    res = json.loads(lines[-1])
    # --phases resets VmHWM (and so ru_maxrss) after each phase: the row's peak is then the largest phase peak
    return {**res, "peak_rss_mib": max(peak, res.get("phases_max_peak_mib", 0.0))}


# ---------------------------------------------------------------- table
def render(res: dict) -> str:
    """The markdown table (+ settings) of a results dict written by `main`."""
    s, rows = res["settings"], res["rows"]
    base, full = rows["load"], rows["full"]
    inc_full = full["peak_rss_mib"] - base["peak_rss_mib"]
    lines = [
        f"Model: Qwen2 decoder, random weights, {base['params'] / 1e6:.1f}M parameters (hidden {s['size']['hidden_size']}, "
        f"{s['size']['layers']} layers, {s['size']['heads']} heads / {s['size']['kv_heads']} KV heads, MLP "
        f"{s['size']['intermediate_size']}); batch {s['batch']} x 2 columns x {s['seq_len']} tokens, InfoNCE, "
        f"AdamW, fp32 (`trainer=cpu`); step time = median of {s['steps']} steps after {s['warmup']} warm-up.",
        f"Machine: {res['machine']['cpu']}, {res['machine']['cores']} cores, torch {base['torch']} "
        f"({base['threads']} threads), load average {res['machine']['load_avg']} at the start "
        "(other processes share it: step times are inflated, memory is not).",
        "",
        f"Model loaded, no training (`load` child): peak RSS {base['peak_rss_mib']:.0f} MiB.",
        "",
        "| row | trainable params | peak RSS (MiB) | x full | training increment (MiB) | x full | step (s) | x full |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ROWS:
        r = rows.get(name)
        if r is None:
            continue
        inc = r["peak_rss_mib"] - base["peak_rss_mib"]
        lines.append(
            f"| {s['labels'][name]} | {r['trainable']:,} ({100 * r['trainable'] / r['params']:.2f}%) | "
            f"{r['peak_rss_mib']:.0f} | {r['peak_rss_mib'] / full['peak_rss_mib']:.2f} | {inc:.0f} | "
            f"{inc / inc_full:.2f} | {r['step_s']:.2f} | {r['step_s'] / full['step_s']:.2f} |"
        )
    gc = rows.get("lora_gc")
    if gc is not None:
        total = gc["peak_rss_mib"] / full["peak_rss_mib"]
        inc = (gc["peak_rss_mib"] - base["peak_rss_mib"]) / inc_full
        verdict = "meets" if total <= 0.5 else "misses"
        lines += [
            "",
            f"LoRA + gradient checkpointing vs full fine-tuning: {total:.2f}x the peak RSS ({verdict} the <= 0.5x "
            f"target), {inc:.2f}x the training increment.",
        ]
    lines += ["", f"Command: `{res['command']}` ({res['date']})."]
    return "\n".join(lines)


def phase_table(records: list[dict]) -> str:
    """`PhaseLog` records as a markdown table (MiB): RSS at the end of each phase, the peak within it, glibc's
    live (`in_use`) and freed-but-kept (`free_kept`) heap bytes, and what was counted there (saved activations,
    gradients, optimiser state)."""
    lines = [
        "| phase | RSS | peak in phase | malloc in use | malloc free, kept | counted |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for p in records:
        counted = ", ".join(f"{k[:-4]} {v:.0f}" for k, v in p.items() if k.endswith("_mib"))
        lines.append(
            f"| {p['phase']} | {p['rss'] or 0:.0f} | {p['peak'] or 0:.0f} | {p.get('in_use', float('nan')):.0f} | "
            f"{p.get('free_kept', float('nan')):.0f} | {counted} |"
        )
    return "\n".join(lines)


def machine_info() -> dict:
    """CPU model, cores and load average (torch's version and threads come from the rows' own processes)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_avg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3, help="timed optimiser steps per row (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps before them (default 1)")
    ap.add_argument("--batch", type=int, default=8, help="rows per batch; each row has 2 columns (default 8)")
    ap.add_argument("--seq-len", type=int, default=256, help="tokens per text (default 256)")
    ap.add_argument("--lora-r", type=int, default=16, help="LoRA rank (alpha = 2r; default 16)")
    ap.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    ap.add_argument("--quick", action="store_true", help="a tiny decoder, seq 32, batch 4, 2 steps: a smoke test")
    ap.add_argument("--model-dir", default=None, help="reuse (or build here) the decoder folder")
    ap.add_argument("--out", default=None, help="default docs/big_models.md (--quick: outputs/bench_big_quick.md)")
    ap.add_argument(
        "--phases",
        action="store_true",
        help="diagnostics: print each row's RSS / malloc in-use / saved activations per phase (phase_table); "
        "the docs page is not written",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--build", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.build:
        build_decoder(Path(args.build[0]), json.loads(args.build[1]))
        return 0
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    size = QUICK_SIZE if args.quick else FULL_SIZE
    if args.quick:
        args.steps, args.warmup, args.batch, args.seq_len = min(args.steps, 2), min(args.warmup, 1), 4, 32
    sys.path.insert(0, str(ROOT))
    out = Path(args.out or ROOT / ("outputs/bench_big_quick.md" if args.quick else "docs/big_models.md"))
    res = {
        "command": " ".join(["python scripts/bench_big.py"] + (sys.argv[1:] if argv is None else argv)),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine_info(),
        "settings": {
            "size": size,
            "batch": args.batch,
            "seq_len": args.seq_len,
            "steps": args.steps,
            "warmup": args.warmup,
            "lora_r": args.lora_r,
            "labels": {
                "full": "full fine-tuning",
                "lora": f"LoRA r={args.lora_r}",
                "lora_gc": f"LoRA r={args.lora_r} + gradient checkpointing",
            },
        },
        "rows": {},
    }
    rows = ["load"] + (["full"] if "full" not in args.rows else []) + list(args.rows)  # full: the ratios' base
    with tempfile.TemporaryDirectory(prefix="embedexp-bench-big-") as tmp:
        model_dir = Path(args.model_dir) if args.model_dir else Path(tmp) / "decoder"
        if not (model_dir / "model.safetensors").is_file():
            print(f"building the decoder in {model_dir} ...", flush=True)  # in a child: this process stays small
            subprocess.run(
                [sys.executable, __file__, "--build", str(model_dir), json.dumps(size)], check=True, cwd=str(ROOT)
            )
        for row in dict.fromkeys(rows):
            job = {
                "row": row,
                "model_dir": str(model_dir),
                "batch": args.batch,
                "seq_len": args.seq_len,
                "steps": args.steps,
                "warmup": args.warmup,
                "r": args.lora_r,
                "tmp": str(Path(tmp) / row),
                "phases": args.phases,
            }
            r = run_row(job)
            if args.phases:
                print(
                    f"{row} (peak RSS {r['peak_rss_mib']:.0f} MiB):\n{phase_table(r.get('phases', []))}\n", flush=True
                )
            res["rows"][row] = r
            step = (
                f", step {r['step_s']:.2f} s, loss {r['losses'][0]:.4f} -> {r['losses'][-1]:.4f}"
                if "step_s" in r
                else ""
            )
            print(
                f"  {row:8s} peak RSS {r['peak_rss_mib']:8.0f} MiB, trainable {r['trainable']:,} of {r['params']:,}{step}",
                flush=True,
            )
    if args.phases:
        return 0
    text = render(res)
    print("\n" + text)
    write_results(out, text, res)
    return 0


def write_results(out: Path, text: str, res: dict) -> None:
    """Put the table into `out` between this script's markers (the rest of a docs page is kept), atomically."""
    begin, end = f"<!-- {RESULTS_MARK} begin -->", f"<!-- {RESULTS_MARK} end -->"
    block = f"{begin}\n{text}\n<!-- {json.dumps(res)} -->\n{end}"
    old = out.read_text() if out.is_file() else ""
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end) :]
    else:
        new = (old.rstrip() + "\n\n" if old.strip() else "") + block + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(new)
    os.replace(tmp, out)


if __name__ == "__main__":
    sys.exit(main())
