"""embedexp-index / search: round trip vs brute force, the model check, damaged index folders."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from embedexp.config import config_dir, register_resolvers
from embedexp.errors import ConfigError, DataError, ModelError
from embedexp.index import Index, cli
from embedexp.models import Encoder

DEMO = Path(__file__).resolve().parent.parent / "embedexp" / "data" / "demo"
K = 10


def _demo():
    """Document ids/texts and query texts read straight from the jsonl files (title + " " + text)."""
    docs = [json.loads(line) for line in (DEMO / "corpus.jsonl").read_text().splitlines() if line.strip()]
    queries = [json.loads(line)["text"] for line in (DEMO / "queries.jsonl").read_text().splitlines() if line.strip()]
    return [d["_id"] for d in docs], [f"{d.get('title', '')} {d['text']}".strip() for d in docs], queries


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return Encoder(str(tiny_model_dir), query_prefix="query: ", document_prefix="passage: ")


@pytest.fixture(scope="module")
def built(encoder, tmp_path_factory):
    ids, texts, _ = _demo()
    path = tmp_path_factory.mktemp("index") / "demo-index"
    Index.build(encoder, ids, texts, batch_size=16).save(path)
    return path


def _brute_force(tiny_model_dir, k):
    """Top-k by a torch matmul over embeddings from a fresh encoder (not the index's code path)."""
    ids, texts, queries = _demo()
    enc = Encoder(str(tiny_model_dir), query_prefix="query: ", document_prefix="passage: ")
    scores = enc.encode(queries, "query") @ enc.encode(texts, "document").T
    top = torch.topk(scores, k, dim=1)
    return queries, [[(ids[j], float(s)) for s, j in zip(srow, jrow)] for srow, jrow in zip(top.values, top.indices)]


def _same_hits(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert [i for i, _ in g] == [i for i, _ in w]
        assert [s for _, s in g] == pytest.approx([s for _, s in w], abs=1e-5)


def test_round_trip_equals_brute_force(built, encoder, tiny_model_dir):
    queries, want = _brute_force(tiny_model_dir, K)
    index = Index.load(built, encoder=encoder)
    assert len(index) == 120 and index.manifest["dim"] == 32 and index.manifest["count"] == 120
    assert index.manifest["normalize"] is True and index.fingerprint == encoder.fingerprint()
    _same_hits(index.search(queries, K), want)
    # query embeddings instead of texts give the same answer
    _same_hits(index.search(encoder.encode(queries, "query"), K), want)


def test_model_rebuilt_from_manifest(built, tiny_model_dir):
    queries, want = _brute_force(tiny_model_dir, 3)
    _same_hits(Index.load(built).search(queries[:5], 3), want[:5])


def test_k_larger_than_corpus_and_bad_k(built, encoder):
    index = Index.load(built, encoder=encoder)
    hits = index.search("tides", 1000)[0]
    assert len(hits) == 120 and len({i for i, _ in hits}) == 120
    with pytest.raises(ConfigError, match="k=0"):
        index.search("tides", 0)


def test_other_model_is_refused(built, tmp_path, tiny_model_dir):
    from embedexp.models.tiny import build_tiny_bert

    other = Encoder(
        str(build_tiny_bert(tmp_path / "other", seed=1)), query_prefix="query: ", document_prefix="passage: "
    )
    with pytest.raises(ModelError, match="was built with model .* not with"):
        Index.load(built, encoder=other)
    same_weights_other_prefix = Encoder(str(tiny_model_dir), query_prefix="q: ", document_prefix="passage: ")
    with pytest.raises(ModelError, match="fingerprint"):
        Index.load(built).attach(same_weights_other_prefix)
    with pytest.raises(ModelError, match="dim 16"):
        Index.load(built).search(torch.zeros(1, 16), 3)


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda p: (p / "manifest.json").unlink(), "no manifest.json; not an embedexp index"),
        (lambda p: (p / "manifest.json").write_text("{not json"), "manifest.json: not valid JSON"),
        (
            lambda p: (p / "manifest.json").write_text(json.dumps({"format": "embedexp-index"})),
            "missing version, model, dim",
        ),
        (lambda p: (p / "ids.json").unlink(), "ids.json is missing"),
        (
            lambda p: (p / "index.faiss").write_bytes((p / "index.faiss").read_bytes()[:-8] + b"\0" * 8),
            "index.faiss: does not match the checksum",
        ),
        (lambda p: (p / "ids.json").write_text(json.dumps(["a"])), "ids.json: does not match the checksum"),
    ],
    ids=["missing-manifest", "bad-json", "missing-keys", "missing-ids", "corrupt-index", "changed-ids"],
)
def test_damaged_index_is_a_clear_error(built, tmp_path, damage, message):
    path = _copy(built, tmp_path / "copy")
    damage(path)
    with pytest.raises(DataError, match=message):
        Index.load(path)


def test_manifest_count_disagreeing_with_files(built, tmp_path):
    path = _copy(built, tmp_path / "copy")
    m = json.loads((path / "manifest.json").read_text())
    m["count"] = 7
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="disagree with manifest.json"):
        Index.load(path)


def test_save_is_atomic_and_never_clobbers_other_folders(encoder, tmp_path):
    ids, texts, _ = _demo()
    small = Index.build(encoder, ids[:5], texts[:5])
    path = small.save(tmp_path / "ix")
    assert len(Index.load(path)) == 5
    Index.build(encoder, ids[:9], texts[:9]).save(path)  # replaces the older index
    assert len(Index.load(path)) == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ix"]  # no temp folders left behind
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not an embedexp index; refusing to overwrite"):
        small.save(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(DataError, match="duplicate document ids"):
        Index.build(encoder, ["a", "a"], ["x", "y"])


def _compose(name, overrides):
    register_resolvers()
    with initialize_config_dir(config_dir=str(Path(config_dir())), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def test_cli_build_and_search(tmp_path, tiny_model_dir, isolated_cache, capsys):
    out = tmp_path / "cli-index"
    cfg = _compose(
        "index",
        [
            "model=tiny",
            f"model.model_name_or_path={tiny_model_dir}",
            f"out={out}",
            f"paths.output_dir={tmp_path}",
            "show_progress=false",
        ],
    )
    manifest = cli.build(cfg)
    assert manifest["count"] == 120 and (out / "manifest.json").is_file()
    capsys.readouterr()
    cfg = _compose("search", [f"index={out}", "query=how do tides work", "k=3", f"paths.output_dir={tmp_path}"])
    results = cli.search(cfg)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "query: how do tides work" and len(printed) == 4
    assert [line.split()[-1] for line in printed[1:]] == [i for i, _ in results[0]]
    enc = Encoder(str(tiny_model_dir), max_seq_length=64)
    assert [i for i, _ in results[0]] == [i for i, _ in Index.load(out, encoder=enc).search("how do tides work", 3)[0]]
    queries = tmp_path / "q.txt"
    queries.write_text("tides\n\nbread\n")
    cfg = _compose("search", [f"index={out}", f"queries={queries}", f"paths.output_dir={tmp_path}"])
    assert len(cli.search(cfg)) == 2


def test_cli_refuses_another_model_in_one_line(tmp_path, tiny_model_dir, isolated_cache):
    from embedexp.models.tiny import build_tiny_bert

    out = tmp_path / "ix"
    Index.build(Encoder(str(tiny_model_dir)), ["a", "b"], ["alpha", "beta"]).save(out)
    other = Encoder(str(build_tiny_bert(tmp_path / "other", seed=1))).save(tmp_path / "exported")
    env = {**os.environ, "EMBEDEXP_CACHE": str(isolated_cache)}
    script = Path(sys.executable).parent / "embedexp-search"  # the console script of pyproject's [project.scripts]
    assert script.is_file(), "pip install -e . installs embedexp-search"
    proc = subprocess.run(
        [str(script), f"index={out}", "query=x", f"model_dir={other}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("embedexp: error:")]
    assert len(errors) == 1 and "was built with model" in errors[0] and "Traceback" not in proc.stderr
    assert proc.stdout == "" and not (tmp_path / "outputs").exists()
