"""Bad input fails early: exit status 2, one line naming the file/key, and no results file."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DEMO, write_beir

CORPUS = {"d1": ("Bread", "Knead the dough."), "d2": ("Stars", "A star is a ball of plasma.")}
QUERIES = {"q1": "how to knead", "q2": "what is a star"}


def _run(tmp_path: Path, *overrides: str):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "embedexp.train", "experiment=demo_tiny", f"hydra.run.dir={out}",
         f"paths.cache_dir={tmp_path / 'cache'}", *overrides],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not (out / "results.json").exists() and not (out / "results.md").exists()
    assert not (out / "model").exists()
    return errors[0]


def test_missing_data_folder(tmp_path):
    line = _run(tmp_path, "data=scifact", f"paths.data_root={tmp_path / 'nowhere'}")
    assert line.startswith("embedexp: error:")
    assert f"{tmp_path / 'nowhere' / 'scifact'} does not exist" in line


def test_qrels_reference_unknown_id(tmp_path):
    root = write_beir(tmp_path / "beir", CORPUS, QUERIES, {"q1": {"d1": 1}, "q2": {"d9": 1}}, split="train")
    line = _run(tmp_path, f"data.train.root={root}")
    assert f"{root / 'qrels' / 'train.tsv'}: line 3: corpus id 'd9' is not in the corpus" in line


def test_empty_query_text(tmp_path):
    root = write_beir(tmp_path / "beir", CORPUS, {"q1": "how to knead", "q2": "   "}, {"q1": {"d1": 1}}, split="train")
    line = _run(tmp_path, f"data.train.root={root}")
    assert f"{root / 'queries.jsonl'}: line 2: query 'q2' has empty or missing 'text'" in line


def test_unknown_pooling(tmp_path):
    line = _run(tmp_path, "model.pooling=maxx")
    assert "model.pooling='maxx' is not a pooling mode; expected one of mean, cls, last_token" in line


def test_model_folder_without_weights(tmp_path, tiny_model_dir):
    folder = tmp_path / "no-weights"
    folder.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        (folder / f).write_bytes((tiny_model_dir / f).read_bytes())
    line = _run(tmp_path, "model=local", f"model.model_name_or_path={folder}")
    assert f"model folder {folder} has no weights" in line


def test_eval_set_with_bad_json_line(tmp_path):
    root = write_beir(tmp_path / "beir", CORPUS, QUERIES, {"q1": {"d1": 1}}, split="test")
    with open(root / "corpus.jsonl", "a") as f:
        f.write('{"_id": "d3", "text": \n')
    line = _run(tmp_path, f"data.eval_sets.demo_test.root={root}")
    assert f"{root / 'corpus.jsonl'}: line 3: not valid JSON" in line


def test_loss_temperature_must_be_positive(tmp_path):
    line = _run(tmp_path, "loss.temperature=0")
    assert "loss.temperature=0" in line and "> 0" in line


def test_unknown_trainer_key_suggests_closest(tmp_path):
    line = _run(tmp_path, "+trainer.max_epoch=2")
    assert "trainer.max_epoch is not a lightning.Trainer argument (did you mean trainer.max_epochs?)" in line


def test_infonce_on_sts_data_is_refused(tmp_path):
    sts = tmp_path / "sts.tsv"
    sts.write_text((DEMO / "sts.tsv").read_text())
    line = _run(tmp_path, "data=stsb", f"data.train.path={sts}", f"data.eval_sets.stsb_test.path={sts}")
    assert "needs columns ('anchor', 'positive')" in line and "data=stsb" in line


def test_sts_score_out_of_range(tmp_path):
    sts = tmp_path / "sts.tsv"
    sts.write_text("score\tsentence1\tsentence2\n3.0\ta cat\ta dog\n7.5\tone\ttwo\n")
    line = _run(tmp_path, f"data.eval_sets.demo_sts.path={sts}")
    assert f"{sts}: line 3: score 7.5 outside [0, 5.0]" in line


def test_triplet_on_pairs_without_miner_is_refused(tmp_path):
    line = _run(tmp_path, "loss=triplet")
    assert "needs columns ('anchor', 'positive', 'negative_1')" in line and "data=demo gives ('anchor', 'positive')" in line


def test_matryoshka_dims_larger_than_model(tmp_path):
    line = _run(tmp_path, "loss=matryoshka", "loss.dims=[64,32]")
    assert "loss.dims" in line and "64" in line
