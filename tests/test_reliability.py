"""Reliability: NaN stop and skip-bad-batches, atomic writes under kill/crash, corrupt caches,
determinism on CPU, skip-bad-rows, safe loading and no secrets in anything a run saves."""

import gzip
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from embedexp.cli import one_line_errors
from embedexp.config import config_dir, register_resolvers
from embedexp.errors import NumericalError
from embedexp.io import atomic_write
from embedexp.losses import InfoNCELoss
from embedexp.secrets import scrub_secrets

from conftest import DEMO, FAST_STATS, REPO

# the in-process runs here check errors, weights and results.json's numbers: no PNGs (the no_plots fixture),
# 200 bootstrap resamples instead of 10,000 (seeded either way, so equal seeds still give equal metrics)
pytestmark = pytest.mark.usefixtures("no_plots")
FAST = ["logger=none", "trainer.enable_progress_bar=false", FAST_STATS]


class FlakyLoss(InfoNCELoss):
    """InfoNCE that goes bad on chosen calls (1-based): a NaN value, or a finite value with a NaN gradient."""

    def __init__(
        self,
        temperature: float = 0.05,
        symmetric: bool = False,
        mask_known_positives: bool = True,
        bad_calls=(),
        mode: str = "value",
    ) -> None:
        super().__init__(temperature, symmetric, mask_known_positives)
        self.bad_calls = set(bad_calls)
        self.mode = mode
        self.calls = 0
        FlakyLoss.last = self

    def forward(self, embeddings, labels=None, **kw):
        loss = super().forward(embeddings, labels, **kw)
        self.calls += 1
        if self.calls not in self.bad_calls:
            return loss
        if self.mode == "value":
            return loss + float("nan")
        x = embeddings[0][0, 0]
        return loss + 0.0 * torch.sqrt(x - x)  # value unchanged; d sqrt(u)/du at 0 is inf -> NaN gradient


def _cfg(out: Path, *overrides: str):
    register_resolvers()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                "experiment=demo_tiny",
                f"paths.output_dir={out}",
                f"paths.cache_dir={out.parent / 'cache'}",
                *FAST,
                *overrides,
            ],
        )


def _flaky(bad_calls, mode="value"):
    return [f"loss._target_={__name__}.FlakyLoss", f"+loss.bad_calls={list(bad_calls)}", f"+loss.mode={mode}"]


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


# ================================================================ numeric faults
def test_nan_loss_stops_with_step_and_last_checkpoint(tmp_path, capsys):
    from embedexp.train import train

    out = tmp_path / "out"
    cfg = _cfg(out, *_flaky([4]), "trainer.max_steps=5", "checkpoint.every_n_steps=1")
    with pytest.raises(SystemExit) as exc:
        one_line_errors(train)(cfg)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    line = err[err.index("embedexp: error: ") :]
    assert line.count("\n") == 1
    ckpt = out / "checkpoints" / "last.ckpt"
    assert "non-finite loss (NaN/inf) at global step 3 (epoch 0, batch 3)" in line
    assert f"last good checkpoint: {ckpt} (resume with ckpt_path=last)" in line
    assert ckpt.is_file()  # kept for the resume
    assert torch.load(ckpt, weights_only=True)["global_step"] == 3
    assert not (out / "results.json").exists() and not (out / "results.md").exists() and not (out / "model").exists()


def test_nan_loss_without_checkpoint_says_so(tmp_path):
    from embedexp.train import train

    out = tmp_path / "out"
    with pytest.raises(NumericalError, match=r"at global step 0 .*no checkpoint was saved before it"):
        train(_cfg(out, *_flaky([1]), "trainer.max_steps=3", "checkpoint.enabled=false"))
    assert not (out / "results.json").exists()


def test_skip_bad_batches_counts_and_finishes(tmp_path, caplog):
    from embedexp.train import train

    out = tmp_path / "out"
    train(_cfg(out, *_flaky([2, 4]), "trainer.max_steps=5", "trainer.skip_bad_batches=2"))
    assert FlakyLoss.last.calls == 5  # a skipped batch is a no-op step (no backward, no gradient) here
    skipped = [r.getMessage() for r in caplog.records if "skipping batch with non-finite loss" in r.getMessage()]
    assert len(skipped) == 2 and "(2 of trainer.skip_bad_batches=2)" in skipped[1]
    assert (out / "results.json").is_file()
    assert all(torch.isfinite(t).all() for t in _weights(out / "model").values())


def test_more_bad_batches_than_allowed_fails(tmp_path):
    from embedexp.train import train

    out = tmp_path / "out"
    with pytest.raises(NumericalError, match=r"at global step 2 .*after 1 skipped bad batch\(es\)"):
        train(_cfg(out, *_flaky([2, 3]), "trainer.max_steps=5", "trainer.skip_bad_batches=1"))
    assert not (out / "results.json").exists()


def test_grad_cache_nan_gradient_stops(tmp_path):
    from embedexp.train import train

    out = tmp_path / "out"
    with pytest.raises(NumericalError, match=r"non-finite gradient \(NaN/inf\) at global step 1 "):
        train(_cfg(out, *_flaky([2], mode="grad"), "trainer.max_steps=4", "trainer.grad_cache.chunk_size=4"))
    assert not (out / "results.json").exists()


def test_grad_cache_skips_bad_gradient(tmp_path, caplog):
    from embedexp.train import train

    out = tmp_path / "out"
    train(
        _cfg(
            out,
            *_flaky([2], mode="grad"),
            "trainer.max_steps=3",
            "trainer.grad_cache.chunk_size=4",
            "trainer.skip_bad_batches=1",
        )
    )
    assert any("skipping batch with non-finite gradient" in r.getMessage() for r in caplog.records)
    assert json.loads((out / "results.json").read_text())["steps"] == 3
    assert FlakyLoss.last.calls == 4  # 3 updates took 4 batches: the bad one made no optimiser step
    assert all(torch.isfinite(t).all() for t in _weights(out / "model").values())


# ================================================================ determinism
def test_same_seed_same_metrics_and_weights_other_seed_differs(tmp_path):
    from embedexp.train import train

    runs = {}
    for name, seed in (("a", 42), ("b", 42), ("c", 7)):
        train(_cfg(tmp_path / name, f"seed={seed}", "trainer.max_steps=3"))
        runs[name] = (
            json.loads((tmp_path / name / "results.json").read_text())["metrics"],
            _weights(tmp_path / name / "model"),
        )
    (m_a, w_a), (m_b, w_b), (m_c, w_c) = runs["a"], runs["b"], runs["c"]
    assert m_a == m_b
    assert w_a.keys() == w_b.keys() and all(torch.equal(w_a[k], w_b[k]) for k in w_a)
    assert any(not torch.equal(w_a[k], w_c[k]) for k in w_a)
    assert {k: v["tuned"] for k, v in m_a.items()} != {k: v["tuned"] for k, v in m_c.items()}


# ================================================================ atomic writes
WRITER = """
import sys, time
from embedexp.io import atomic_write

def slow(f):
    f.write("new " * 250_000)
    f.flush()
    print("half written", flush=True)
    time.sleep(120)
    f.write("end")

atomic_write(sys.argv[1], slow)
"""


def test_kill_during_atomic_write_leaves_previous_file(tmp_path):
    target = tmp_path / "results.json"
    target.write_text('{"previous": true}\n')
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == "half written"
        partial = list(tmp_path.glob(".results.json.tmp*"))
        assert partial and partial[0].stat().st_size >= 1_000_000  # the new content was really being written
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert target.read_text() == '{"previous": true}\n'
    atomic_write(target, '{"next": true}\n')  # a stale temp file does not get in the way
    assert json.loads(target.read_text()) == {"next": True}


def _crash(*a, **k):
    raise OSError("simulated crash before the rename")


def test_results_json_survives_a_crashed_write(tmp_path, monkeypatch):
    from embedexp import io
    from embedexp.eval import results as report

    report.write_results(tmp_path, {"m": 0.1}, {"m": 0.2}, {"title": "first"})
    before = (tmp_path / "results.json").read_text()
    monkeypatch.setattr(io.os, "replace", _crash)
    with pytest.raises(OSError):
        report.write_results(tmp_path, {"m": 0.5}, {"m": 0.9}, {"title": "second"})
    assert (tmp_path / "results.json").read_text() == before


def test_mining_cache_and_pairs_survive_a_crashed_write(tmp_path, monkeypatch):
    from embedexp import mine as mine_mod
    from embedexp.data.train_sets import TrainSet
    from embedexp.mine import write_pairs
    from embedexp.miners import cache

    cache.write_cache(tmp_path, "k", "mined", {"negatives": [[1]], "stats": {}})
    pairs = write_pairs(tmp_path / "mined.jsonl", TrainSet(("anchor", "positive"), ("query", "document"), [("a", "b")]))
    monkeypatch.setattr(cache.os, "replace", _crash)
    monkeypatch.setattr(mine_mod.os, "replace", _crash)
    with pytest.raises(OSError):
        cache.write_cache(tmp_path, "k", "mined", {"negatives": [[2]], "stats": {}})
    with pytest.raises(OSError):
        write_pairs(pairs, TrainSet(("anchor", "positive"), ("query", "document"), [("c", "d")] * 3))
    assert cache.read_cache(tmp_path, "k", "mined")["negatives"] == [[1]]
    assert pairs.read_text() == '{"anchor": "a", "positive": "b", "negatives": []}\n'
    assert not list(tmp_path.glob(".*.tmp"))  # the mining cache cleans its temp file up


def test_exported_model_survives_a_crashed_export(tmp_path, monkeypatch, tiny_model_dir):
    from embedexp.models import Encoder
    from embedexp.models import encoder as encoder_mod

    enc = Encoder(str(tiny_model_dir))
    model_dir = enc.save(tmp_path / "model")
    before = _weights(model_dir)
    with torch.no_grad():
        next(enc.backbone.parameters()).add_(1.0)
    monkeypatch.setattr(encoder_mod, "_write_json", _crash)
    with pytest.raises(OSError):
        enc.save(tmp_path / "model")
    after = _weights(model_dir)
    assert all(torch.equal(before[k], after[k]) for k in before)
    Encoder.from_exported(model_dir)  # still a complete, loadable model


# ================================================================ corrupt caches
@pytest.mark.parametrize(
    "corrupt",
    [
        lambda p: p.write_text(p.read_text()[: len(p.read_text()) // 2]),  # truncated
        lambda p: p.write_text('{"metrics": {"demo_sts/spearman": "high"}}'),  # not numbers
        lambda p: p.write_text('{"metrics": {}}'),  # empty
        lambda p: p.write_bytes(b"\xff\xfe\x00garbage"),  # not text
    ],
    ids=["truncated", "non-numeric", "empty", "binary"],
)
def test_corrupt_eval_cache_is_recomputed(tmp_path, monkeypatch, tiny_model_dir, corrupt):
    from embedexp.eval import Evaluator
    from embedexp.models import Encoder

    sets = {"demo_sts": {"type": "sts", "path": str(DEMO / "sts.tsv")}}
    evaluator = Evaluator(sets, cache_dir=str(tmp_path), show_progress=False)
    enc = Encoder(str(tiny_model_dir))
    fresh = evaluator.evaluate(enc, use_cache=True)
    (path,) = (tmp_path / "eval").glob("*.json")
    corrupt(path)
    calls = []
    original = Evaluator._sts
    monkeypatch.setattr(Evaluator, "_sts", lambda self, e, s: calls.append(1) or original(self, e, s))
    assert evaluator.evaluate(enc, use_cache=True) == fresh
    assert calls == [1]  # recomputed, not trusted
    assert json.loads(path.read_text())["metrics"] == fresh  # and the cache repaired


@pytest.mark.parametrize("corrupt", ["truncated", "missing-fields", "other-key"])
def test_corrupt_mining_cache_is_recomputed(tmp_path, corrupt):
    from embedexp.data.train_sets import beir_pairs
    from embedexp.miners import BM25Miner

    train_set = beir_pairs(str(DEMO), "train")
    miner = BM25Miner(n_negatives=1, cache_dir=str(tmp_path), show_progress=False)
    first = miner.mine(train_set)
    files = sorted(tmp_path.glob("*.json.gz"))
    assert len(files) == 2
    for f in files:
        if corrupt == "truncated":
            f.write_bytes(f.read_bytes()[:100])
        else:
            obj = json.loads(gzip.decompress(f.read_bytes()))
            if corrupt == "missing-fields":
                for k in ("negatives", "indices"):
                    obj.pop(k, None)
            else:
                obj["key"] = "something-else"
            f.write_bytes(gzip.compress(json.dumps(obj).encode()))
    again = miner.mine(train_set)
    assert again.rows == first.rows
    assert again.info["mining"]["cache"] == "miss"
    assert miner.mine(train_set).info["mining"]["cache"] == "hit"  # rewritten, now trusted


# ================================================================ bad rows skipped with a count
def _lines(path: Path, *lines: str) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def _skips(caplog, path) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped ") and str(path) in r.getMessage()
    ]


def test_on_error_skip_corpus_queries_qrels(tmp_path, caplog):
    from embedexp.data.train_sets import beir_pairs

    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    _lines(
        root / "corpus.jsonl",
        '{"_id": "d1", "text": "a"}',
        "{broken",
        '{"_id": "d2", "text": "b"}',
        '{"_id": "d1", "text": "dup"}',
        '{"text": "no id"}',
    )
    _lines(
        root / "queries.jsonl", '{"_id": "q1", "text": "x"}', '{"_id": "q2", "text": ""}', '{"_id": "q3", "text": "z"}'
    )
    _lines(
        root / "qrels" / "train.tsv",
        "query-id\tcorpus-id\tscore",
        "q1\td1\t1",
        "q2\td2\t1",
        "q3\td9\t1",
        "q3\td2\tx",
        "q3\td2\t1",
    )
    ts = beir_pairs(str(root), "train", on_error="skip")
    assert ts.rows == [("x", "a"), ("z", "b")]
    assert _skips(caplog, root / "corpus.jsonl") == [
        f"skipped 3 bad rows in {root / 'corpus.jsonl'}: first at line 2: not valid JSON (Expecting property name enclosed in double quotes)"
    ]
    assert _skips(caplog, root / "queries.jsonl") == [
        f"skipped 1 bad row in {root / 'queries.jsonl'}: first at line 2: query 'q2' has empty or missing 'text'"
    ]
    assert _skips(caplog, root / "qrels" / "train.tsv") == [
        f"skipped 3 bad rows in {root / 'qrels' / 'train.tsv'}: first at line 3: query id 'q2' is not in queries.jsonl"
    ]


def test_on_error_skip_sts_pairs_labeled(tmp_path, caplog):
    from embedexp.data.readers import load_pairs, load_sts
    from embedexp.data.train_sets import labeled_pair_rows

    sts = tmp_path / "sts.tsv"
    sts.write_bytes(
        b"score\tsentence1\tsentence2\n4.0\ta\tb\n9\tc\td\nhigh\te\tf\n1.0\tg\t\n2.0\tcaf\xe9\th\n3.0\ti\tj\n"
    )
    assert load_sts(sts, on_error="skip") == [("a", "b", 4.0), ("i", "j", 3.0)]
    assert _skips(caplog, sts) == [f"skipped 4 bad rows in {sts}: first at line 3: score 9.0 outside [0, 5.0]"]
    pairs = _lines(
        tmp_path / "pairs.jsonl",
        '{"anchor": "a", "positive": "b"}',
        '{"anchor": "c"}',
        "[]",
        '{"query": "e", "positive": "f"}',
    )
    assert load_pairs(pairs, on_error="skip") == [("a", "b"), ("e", "f")]
    assert _skips(caplog, pairs)[0].startswith(
        f"skipped 2 bad rows in {pairs}: first at line 2: expected non-empty strings"
    )
    labeled = _lines(
        tmp_path / "labeled.jsonl",
        '{"text_a": "a", "text_b": "b", "label": 1}',
        '{"text_a": "a", "text_b": "b", "label": "yes"}',
    )
    ts = labeled_pair_rows(labeled, on_error="skip")
    assert ts.rows == [("a", "b")] and ts.labels == [1.0]
    assert _skips(caplog, labeled)[0].startswith(f"skipped 1 bad row in {labeled}: first at line 2: expected non-empty")


def test_on_error_skip_through_the_data_config(tmp_path, caplog):
    from embedexp.train import train

    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    corpus = (DEMO / "corpus.jsonl").read_text().splitlines()
    _lines(root / "corpus.jsonl", *corpus[:16], "not json", *corpus[16:])
    (root / "queries.jsonl").write_text((DEMO / "queries.jsonl").read_text())
    (root / "qrels" / "train.tsv").write_text((DEMO / "qrels" / "train.tsv").read_text())
    out = tmp_path / "out"
    train(_cfg(out, f"data.train.root={root}", "data.on_error=skip", "trainer.max_steps=2"))
    assert _skips(caplog, root / "corpus.jsonl")[0].startswith(
        f"skipped 1 bad row in {root / 'corpus.jsonl'}: first at line 17: not valid JSON"
    )
    assert (out / "results.json").is_file()


# ================================================================ safe loading
def test_every_torch_load_is_weights_only():
    calls = []
    for folder in ("embedexp", "scripts"):
        for f in (REPO / folder).rglob("*.py"):
            for m in re.finditer(r"torch\.load\((.*)", f.read_text()):
                calls.append((f, m.group(1)))
    assert all("weights_only=True" in args for _, args in calls), [
        str(f) for f, a in calls if "weights_only=True" not in a
    ]
    assert not [f for f in (REPO / "embedexp").rglob("*.py") if re.search(r"pickle\.loads?\(", f.read_text())]


# ================================================================ no secrets
def test_scrub_secrets_replaces_env_values_and_secret_keys(monkeypatch):
    monkeypatch.setenv("VOYAGE_API_KEY", "pa-voyage-123456")
    monkeypatch.setenv("HF_TOKEN", "hf_tokenvalue99")
    obj = {
        "logger": {"api_key": "literal-key", "note": "key=pa-voyage-123456"},
        "l": ["hf_tokenvalue99"],
        "model": {"api_key_env": "VOYAGE_API_KEY", "pad_token": "<pad>"},
    }
    assert scrub_secrets(obj) == {
        "logger": {"api_key": "***", "note": "key=***"},
        "l": ["***"],
        "model": {"api_key_env": "VOYAGE_API_KEY", "pad_token": "<pad>"},
    }


def test_no_secret_in_any_saved_file(tmp_path):
    secrets = {
        "WANDB_API_KEY": "wandb-fake-key-0123456789",
        "OPENAI_API_KEY": "sk-fake-openai-abcdef",
        "MY_SERVICE_TOKEN": "tok-fake-zyxwvu",
    }
    literal = "literal-secret-on-cmdline"
    out = tmp_path / "out"
    env = {**os.environ, **secrets, "EMBEDEXP_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "embedexp.train",
            "experiment=demo_tiny",
            f"hydra.run.dir={out}",
            "trainer.max_steps=2",
            "trainer.enable_progress_bar=false",
            "+notes.wandb=${oc.env:WANDB_API_KEY}",
            "+notes.openai=prefix-${oc.env:OPENAI_API_KEY}",
            f"+tracker.api_key={literal}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = [f for f in out.rglob("*") if f.is_file()]
    assert (out / "results.json").is_file() and (out / ".hydra" / "config.yaml").is_file() and len(files) > 8
    for f in files:
        data = f.read_bytes()
        for value in [*secrets.values(), literal]:
            assert value.encode() not in data, f"{value} in {f}"
    for value in [*secrets.values(), literal]:
        assert value not in proc.stdout and value not in proc.stderr
    cfg = json.loads((out / "results.json").read_text())["config"]
    assert cfg["notes"] == {"wandb": "***", "openai": "prefix-***"} and cfg["tracker"]["api_key"] == "***"
    assert "${oc.env:WANDB_API_KEY}" in (out / ".hydra" / "config.yaml").read_text()  # the reference, not the key
