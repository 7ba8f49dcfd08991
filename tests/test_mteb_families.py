"""Every mteb task family on local files (classification, clustering beside retrieval/STS), checked against sklearn;
missing tasks in one line; the optional-extra check; the mteb results folder read back by mteb's own reader."""

import json
import random
import tempfile
from pathlib import Path

import numpy as np
import pytest

from embedexp.errors import ConfigError
from embedexp.eval.mteb_eval import prepare_environment

prepare_environment(Path(tempfile.gettempdir()) / "embedexp-test")  # before mteb is imported: no ~/.cache/mteb

pytest.importorskip("mteb.evaluate")

TOPICS = {
    "sport": ["the team won the match", "a late goal in the final", "the runner broke the record", "tennis players"],
    "food": ["a bowl of hot soup", "bread baked this morning", "fresh fruit salad", "the chef cooked rice"],
    "money": ["the bank raised rates", "my card payment failed", "a transfer to savings", "the loan was approved"],
}


def _rows(per_label: int, offset: int) -> list[tuple[str, str]]:
    rows = []
    for label, phrases in TOPICS.items():
        for i in range(per_label):
            rows.append((label, f"{phrases[(i + offset) % len(phrases)]} {i + offset}"))
    random.Random(offset).shuffle(rows)
    return rows


def _tsv(path: Path, rows) -> Path:
    path.write_text("label\ttext\n" + "".join(f"{lab}\t{text}\n" for lab, text in rows))
    return path


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    from embedexp.models import Encoder

    return Encoder(str(tiny_model_dir))


def _write_files(tmp_path: Path) -> dict:
    root = tmp_path / "cls"
    root.mkdir()
    train, test = _rows(6, 0), _rows(5, 100)  # <= 8 per label: mteb's undersampling keeps every train text
    _tsv(root / "train.tsv", train)
    _tsv(root / "test.tsv", test)
    clustering = _rows(10, 200)
    (tmp_path / "clusters.jsonl").write_text(
        json.dumps({"sentences": [t for _, t in clustering], "labels": [lab for lab, _ in clustering]}) + "\n"
    )
    sts = tmp_path / "sts.tsv"
    pairs = [(f"{a} {i}", f"{b} {i}", s) for i, (a, b, s) in enumerate(_sts_pairs())]
    sts.write_text("score\tsentence1\tsentence2\n" + "".join(f"{s}\t{a}\t{b}\n" for a, b, s in pairs))
    return {
        "root": root,
        "train": train,
        "test": test,
        "clustering": clustering,
        "clusters_path": tmp_path / "clusters.jsonl",
        "sts": sts,
        "pairs": pairs,
    }


@pytest.fixture()
def files(tmp_path, monkeypatch):
    monkeypatch.setenv("MTEB_CACHE", str(tmp_path / "mteb"))
    return _write_files(tmp_path)


@pytest.fixture(scope="module")
def family_run(encoder, tmp_path_factory):
    """One mteb run of the three local tasks on the tiny model: (evaluation, scores, units, files)."""
    import os

    from embedexp.eval.mteb_eval import MtebEvaluation

    tmp = tmp_path_factory.mktemp("families")
    old = os.environ.get("MTEB_CACHE")
    os.environ["MTEB_CACHE"] = str(tmp / "mteb")
    try:
        files = _write_files(tmp)
        ev = MtebEvaluation(
            tasks=["Banking77Classification", "SIB200ClusteringS2S", "STS17"],
            local_data=_local(files),
            metrics=None,
            summary="general/mean_main_score",
        )
        r = ev.run(encoder)
    finally:
        if old is None:
            os.environ.pop("MTEB_CACHE", None)
        else:
            os.environ["MTEB_CACHE"] = old
    return ev, r, ev.last_units, files


def _sts_pairs():
    phrases = [p for ps in TOPICS.values() for p in ps]
    return [(phrases[i], phrases[(i * 5 + 1) % len(phrases)], round((i * 7 % 11) / 2, 1)) for i in range(12)]


def _local(files):
    return {
        "Banking77Classification": {"type": "classification", "root": str(files["root"])},
        "SIB200ClusteringS2S": {"type": "clustering", "path": str(files["clusters_path"]), "subset": "eng_Latn"},
        "STS17": {"type": "sts", "path": str(files["sts"]), "subset": "en-en"},
    }


def _embed(encoder, texts, kind="document"):
    return encoder.encode(list(texts), kind, 64).numpy()


def test_classification_clustering_and_sts_local_tasks_give_sklearn_numbers(encoder, family_run):
    """One mteb run on tiny files: the linear probe's accuracy equals sklearn's LogisticRegression, the V-measure
    equals sklearn's v_measure_score on mteb's bootstrap draws, STS17 en-en equals scipy's Spearman; the summary
    row is the mean of the main scores; per-item units average to the scores; a second run repeats the numbers."""
    from scipy.stats import spearmanr
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import v_measure_score

    ev, r, units, files = family_run
    kinds = {t.name: type(t.task).__mro__[1].__name__ for t in ev.tasks}
    assert kinds == {  # mteb's own task classes, only load_data replaced
        "Banking77Classification": "Banking77Classification",
        "SIB200ClusteringS2S": "SIB200ClusteringFast",
        "STS17": "STS17Crosslingual",
    }

    # classification: mteb's probe = sklearn LogisticRegression(max_iter=100) with mteb's seed (42)
    x_train = _embed(encoder, [t for _, t in files["train"]])
    x_test = _embed(encoder, [t for _, t in files["test"]])
    probe = LogisticRegression(max_iter=100, random_state=42).fit(x_train, [lab for lab, _ in files["train"]])
    accuracy = float(np.mean(probe.predict(x_test) == np.array([lab for lab, _ in files["test"]])))
    assert r["mteb/Banking77Classification/accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert r["mteb/Banking77Classification/main_score"] == r["mteb/Banking77Classification/accuracy"]
    assert 0.2 < accuracy < 1.0  # a real probe on a tiny random model, not a degenerate score

    # clustering: the same draws as mteb (random.Random(42): a sample of the documents, then 10 bootstraps of 16384)
    texts = [t for _, t in files["clustering"]]
    labels = np.array([lab for lab, _ in files["clustering"]])
    rng = random.Random(42)
    keep = rng.sample(range(len(texts)), k=len(texts))  # max_document_to_embed=1004 > 30: all, shuffled
    emb, lab = _embed(encoder, [texts[i] for i in keep]), labels[keep]
    scores = []
    for _ in range(10):
        idx = rng.choices(range(len(keep)), k=16384)
        km = MiniBatchKMeans(n_clusters=3, batch_size=512, init="k-means++", n_init=1, random_state=42)
        scores.append(v_measure_score(lab[idx], km.fit_predict(emb[idx])))
    assert r["mteb/SIB200ClusteringS2S/eng_Latn/v_measure"] == pytest.approx(np.mean(scores), abs=1e-6)
    assert r["mteb/SIB200ClusteringS2S/eng_Latn/main_score"] == r["mteb/SIB200ClusteringS2S/eng_Latn/v_measure"]

    # STS17 en-en: cosine Spearman against the gold scores (scipy)
    a = _embed(encoder, [p[0] for p in files["pairs"]])
    b = _embed(encoder, [p[1] for p in files["pairs"]])
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    rho = spearmanr(cos, [p[2] for p in files["pairs"]])[0]
    assert r["mteb/STS17/en-en/main_score"] == pytest.approx(rho, abs=1e-6)

    mains = [v for k, v in r.items() if k.endswith("/main_score")]
    assert len(mains) == 3 and r["general/mean_main_score"] == pytest.approx(np.mean(mains))

    # per-item values for the statistics: classification and STS have them, clustering none
    acc_units = units["mteb/Banking77Classification/main_score"]["values"]
    assert len(acc_units) == len(files["test"]) and np.mean(acc_units) == pytest.approx(accuracy, abs=1e-9)
    sts_units = units["mteb/STS17/en-en/main_score"]
    assert sts_units["method"] == "spearman" and sts_units["scores"] == pytest.approx(list(cos), abs=1e-5)
    assert not any(k.startswith("mteb/SIB200") for k in units)

    again = ev.run(encoder)  # mteb's task rng is re-seeded per run: the tuned model sees the same draws
    assert again == r

    from embedexp.eval.results import compare

    rows = compare(r, again, {"base": units, "tuned": ev.last_units})
    assert rows["mteb/Banking77Classification/main_score"]["n"] == len(files["test"])
    assert rows["mteb/STS17/en-en/main_score"]["verdict"] == "no significant difference"  # same model twice
    assert "verdict" not in rows["mteb/SIB200ClusteringS2S/eng_Latn/main_score"]  # V-measure: no per-item scores
    primary = {k for k, row in rows.items() if row.get("primary")}  # one headline row per mteb task: its main score
    assert primary == {"mteb/STS17/en-en/main_score", "mteb/Banking77Classification/main_score"}


def test_local_task_specs_are_checked_in_one_line(files, tmp_path):
    from embedexp.eval.mteb_eval import MtebEvaluation

    local = _local(files)
    with pytest.raises(ConfigError, match=r"local_data\.STS17\.subset is missing; task STS17 is multilingual"):
        MtebEvaluation(
            tasks=["STS17"], local_data={"STS17": {k: v for k, v in local["STS17"].items() if k != "subset"}}
        )
    with pytest.raises(ConfigError, match=r"local_data\.STS17.*subset='xx-yy' is not a subset of mteb task STS17"):
        MtebEvaluation(tasks=["STS17"], local_data={"STS17": {**local["STS17"], "subset": "xx-yy"}})
    with pytest.raises(
        ConfigError, match=r"Banking77Classification\.type='clustering'.*expected type 'classification'"
    ):
        MtebEvaluation(
            tasks=["Banking77Classification"],
            local_data={
                "Banking77Classification": {"type": "clustering", "path": local["SIB200ClusteringS2S"]["path"]}
            },
        )
    bad = tmp_path / "bad"
    bad.mkdir()
    _tsv(bad / "train.tsv", files["train"])
    (bad / "test.tsv").write_text("label\ttext\nsport\tok\nfood\n")
    from embedexp.errors import DataError

    with pytest.raises(DataError, match=r"test\.tsv: line 3: expected at least 2 tab-separated columns"):
        MtebEvaluation(
            tasks=["Banking77Classification"],
            local_data={"Banking77Classification": {"type": "classification", "root": str(bad)}},
        )


def test_every_task_without_data_is_listed_in_one_line(tmp_path, monkeypatch):
    from embedexp.eval.mteb_eval import MtebEvaluation

    monkeypatch.setenv("MTEB_CACHE", str(tmp_path / "mteb"))
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError) as err:
        MtebEvaluation(
            tasks=["ArguAna", "Banking77Classification", "STS17"],
            local_data={"Banking77Classification": {"type": "classification", "root": str(missing)}},
        )
    msg = str(err.value)
    assert "\n" not in msg
    for entry in (
        "eval.mteb.local_data.ArguAna={type: retrieval, root: <BEIR folder>}",
        "eval.mteb.local_data.Banking77Classification={type: classification",
        "eval.mteb.local_data.STS17={type: sts, path: <score/sentence1/sentence2 tsv>, subset: <one of its subsets>}",
    ):
        assert entry in msg, msg
    assert f"(no {missing})" in msg


def test_missing_optional_extras_fail_at_config_time_in_one_line(monkeypatch):
    """No mteb / no wandb: one ConfigError naming the pip extra, from the config check (before any data loads)."""
    import importlib.util

    from embedexp.eval.config import check_eval_config
    from embedexp.extras import require_extra

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("mteb", "wandb") else real(name, *a)
    )
    with pytest.raises(ConfigError) as err:
        check_eval_config({"batch_size": 8, "sets": {}, "mteb": {"tasks": ["SciFact"]}}, None)
    assert str(err.value) == "eval.mteb (eval=mteb, eval=general) needs the mteb package: pip install 'embedexp[mteb]'"
    check_eval_config({"batch_size": 8, "sets": {}, "mteb": None}, None)  # no mteb section: no need for the package
    with pytest.raises(ConfigError, match=r"^logger=wandb needs the wandb package: pip install 'embedexp\[wandb\]'$"):
        require_extra("wandb", "wandb", "logger=wandb")


def test_wandb_logger_without_wandb_stops_at_validate(tmp_path, monkeypatch):
    import importlib.util

    from embedexp.validate import validate_config

    from conftest import compose_demo_tiny

    cfg = compose_demo_tiny(tmp_path / "run", tmp_path / "cache", "logger=wandb")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"^logger=wandb needs the wandb package"):
        validate_config(cfg, "train")


def test_mteb_results_folder_loads_back_with_mtebs_reader(encoder, family_run, tmp_path):
    import mteb
    from mteb.models.model_meta import ModelMeta
    from mteb.results import TaskResult

    from embedexp.eval.mteb_export import export_run

    ev, r, _, _ = family_run

    class Loss:
        dims = [16, 8]

    out = export_run(tmp_path / "run", encoder, ev, "tiny-base", "demo", Loss())
    revision = encoder.fingerprint()
    assert out == str(tmp_path / "run" / "mteb" / "results" / "embedexp__tiny-bert-demo" / revision)
    meta = ModelMeta.model_validate(json.loads((Path(out) / "model_meta.json").read_text()))
    n_params = sum(p.numel() for p in encoder.backbone.parameters())
    assert meta.name == "embedexp/tiny-bert-demo" and meta.revision == revision
    assert meta.n_parameters == n_params and list(meta.embed_dim) == [encoder.dim, 16, 8]
    assert meta.max_tokens == encoder.max_seq_length and meta.training_datasets == {"demo"}
    assert meta.adapted_from == "tiny-base"

    loaded = mteb.ResultCache(tmp_path / "run" / "mteb").load_results(
        models=["embedexp/tiny-bert-demo"], tasks=["STS17", "Banking77Classification"], include_remote=False
    )
    scores = {
        tr.task_name: tr.get_score() for model in loaded.model_results for tr in model.task_results
    }  # mteb's own aggregation of main_score over splits/subsets
    assert scores["STS17"] == pytest.approx(r["mteb/STS17/en-en/main_score"], abs=5e-6)  # files: 5 decimals
    assert scores["Banking77Classification"] == pytest.approx(r["mteb/Banking77Classification/main_score"], abs=5e-6)
    from_disk = TaskResult.from_disk(Path(out) / "STS17.json")
    assert from_disk.scores["test"][0]["hf_subset"] == "en-en"
