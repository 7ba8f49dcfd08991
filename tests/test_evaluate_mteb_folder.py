"""`embedexp-evaluate ... tuned=<folder> eval=mteb` writes mteb's results folder (tuned and base model), in the layout
`embedexp-train` writes, and mteb's own reader loads it back with the scores of results.json."""

import json
import tempfile
from pathlib import Path

import pytest

from embedexp.eval.mteb_eval import prepare_environment

prepare_environment(Path(tempfile.gettempdir()) / "embedexp-test")  # before mteb is imported: no ~/.cache/mteb

pytest.importorskip("mteb.evaluate")

RERANK = "AskUbuntuDupQuestions"


def _files(tmp: Path) -> tuple[Path, Path]:
    sts = tmp / "sts.tsv"
    pairs = [(f"a cat sat {i}", f"the {'cat' if i % 2 else 'dog'} sat {i}", (i * 7) % 6) for i in range(10)]
    sts.write_text("score\tsentence1\tsentence2\n" + "".join(f"{s}\t{a}\t{b}\n" for a, b, s in pairs))
    rerank = tmp / "rerank.jsonl"
    rows = [
        {"query": f"question {q}", "positive": [f"answer {q}"], "negative": [f"other {q} {k}" for k in range(3)]}
        for q in range(5)
    ]
    rerank.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return sts, rerank


def _run(tmp: Path, out: str, tuned: Path, *overrides: str) -> tuple[dict, object]:
    """results.json of one `embedexp-evaluate` run (tiny model vs `tuned`, two local mteb tasks), and its config."""
    from hydra import compose, initialize_config_dir

    from embedexp.config import config_dir, register_resolvers
    from embedexp.evaluate import evaluate

    sts, rerank = _files(tmp)
    register_resolvers()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            config_name="evaluate",
            overrides=[
                "model=tiny",
                "data=demo",
                "eval=mteb",
                f"eval.mteb.tasks=[STSBenchmark,{RERANK}]",
                f"eval.mteb.local_data.STSBenchmark.path={sts}",
                f"+eval.mteb.local_data.{RERANK}={{type: reranking, path: '{rerank}'}}",
                "eval.show_progress=false",
                "~data.eval_sets.demo_test",  # one small eval set of our own beside the mteb tasks
                "eval.stats.n_resamples=200",
                f"tuned={tuned}",
                f"paths.output_dir={tmp / out}",
                f"paths.cache_dir={tmp / 'cache'}",
                *overrides,
            ],
        )
    evaluate(cfg)
    return json.loads((tmp / out / "results.json").read_text()), cfg


@pytest.fixture()
def tuned(tmp_path, monkeypatch):
    from embedexp.models import Encoder
    from embedexp.models.tiny import build_tiny_bert

    monkeypatch.setenv("MTEB_CACHE", str(tmp_path / "cache" / "mteb"))
    encoder = Encoder(str(build_tiny_bert(tmp_path / "other", seed=5)))
    encoder.matryoshka_dims = [16, 8]  # as embedexp-train records a Matryoshka loss's dims in the folder
    return encoder.save(tmp_path / "tuned")


def _loaded(folder: Path, model: str) -> dict[str, float]:
    import mteb

    loaded = mteb.ResultCache(folder).load_results(models=[model], tasks=["STSBenchmark", RERANK], include_remote=False)
    return {tr.task_name: tr.get_score() for m in loaded.model_results for tr in m.task_results}


def test_evaluate_tuned_writes_mtebs_results_folder_for_tuned_and_base(tmp_path, tuned):
    from hydra.utils import instantiate
    from mteb.models.model_meta import ModelMeta

    from embedexp.models import Encoder

    results, cfg = _run(tmp_path, "first", tuned)
    metrics, folders = results["metrics"], results["mteb_results"]
    base_fp = instantiate(cfg.model).fingerprint()
    tuned_fp = Encoder.from_exported(tuned).fingerprint()
    mteb_dir = tmp_path / "first" / "mteb"
    assert folders == {
        "tuned": str(mteb_dir / "results" / "embedexp__tiny-random-bert-tuned" / tuned_fp),
        "base": str(mteb_dir / "results" / "embedexp__tiny-random-bert" / base_fp),
    }
    for role, model in (("tuned", "embedexp/tiny-random-bert-tuned"), ("base", "embedexp/tiny-random-bert")):
        scores = _loaded(mteb_dir, model)  # mteb's own reader of the folder
        assert set(scores) == {"STSBenchmark", RERANK}
        for task, score in scores.items():
            assert score == pytest.approx(metrics[f"mteb/{task}/main_score"][role], abs=5e-6), (role, task)
    assert metrics["mteb/STSBenchmark/main_score"]["base"] != metrics["mteb/STSBenchmark/main_score"]["tuned"]
    meta = ModelMeta.model_validate(json.loads((Path(folders["tuned"]) / "model_meta.json").read_text()))
    assert meta.revision == tuned_fp and meta.adapted_from == results["base_model"]
    assert list(meta.embed_dim) == [Encoder.from_exported(tuned).dim, 16, 8]  # the folder's Matryoshka dims
    base_meta = json.loads((Path(folders["base"]) / "model_meta.json").read_text())
    assert base_meta["embed_dim"] == instantiate(cfg.model).dim  # the base model was not trained for them

    # a second evaluation: the base scores now come from embedexp's eval cache; mteb's result cache still has them
    again = _run(tmp_path, "second", tuned)[0]["mteb_results"]
    assert again["base"] == str(tmp_path / "second" / "mteb" / "results" / "embedexp__tiny-random-bert" / base_fp)
    assert _loaded(tmp_path / "second" / "mteb", "embedexp/tiny-random-bert") == _loaded(
        mteb_dir, "embedexp/tiny-random-bert"
    )
    # mteb's result cache off: the cached base has no mteb results to export (a log line), the tuned model still does
    third = _run(tmp_path, "third", tuned, "eval.mteb.result_cache=false")[0]["mteb_results"]
    assert third == {"tuned": folders["tuned"].replace("first", "third"), "base": None}
