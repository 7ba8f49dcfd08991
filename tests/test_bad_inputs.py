"""Bad input fails early: exit status 2, one line naming the file/line or key, and no results file.

Most cases run `train` in-process through `one_line_errors` (the wrapper the CLI uses), so each one
checks the exit status and the printed line in well under a second; a few run the real CLI in a
subprocess to prove the same from the outside.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from embedexp.cli import check_overrides, one_line_errors
from embedexp.config import config_dir, register_resolvers
from embedexp.errors import ConfigError

from conftest import DEMO, write_beir

CORPUS = {"d1": ("Bread", "Knead the dough."), "d2": ("Stars", "A star is a ball of plasma.")}
QUERIES = {"q1": "how to knead", "q2": "what is a star"}
PREFIX = "embedexp: error: "


def _compose(name: str, tmp_path: Path, overrides) -> object:
    register_resolvers()
    base = ["experiment=demo_tiny"] if name == "train" else []
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(
            config_name=name,
            overrides=[
                *base,
                f"paths.output_dir={tmp_path / 'out'}",
                f"paths.cache_dir={tmp_path / 'cache'}",
                *overrides,
            ],
        )


def _fails(tmp_path: Path, capsys, *overrides: str, entry: str = "train") -> str:
    """Run the entry point in-process; assert exit 2, exactly one error line, no results; return the message."""
    from embedexp.evaluate import evaluate
    from embedexp.mine import mine
    from embedexp.train import train

    fn = {"train": train, "evaluate": evaluate, "mine": mine}[entry]
    cfg = _compose(entry, tmp_path, overrides)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        one_line_errors(fn)(cfg)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count(PREFIX) == 1, err[-2000:]
    tail = err[err.index(PREFIX) :]
    assert tail.count("\n") == 1 and tail.endswith("\n"), tail  # one line, nothing after it
    out = tmp_path / "out"
    for name in ("results.json", "results.md", "model", "mined.jsonl"):
        assert not (out / name).exists(), name
    return tail[len(PREFIX) :].strip()


def _cli(tmp_path: Path, *overrides: str) -> str:
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "embedexp.train",
            "experiment=demo_tiny",
            f"hydra.run.dir={out}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            *overrides,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.count(PREFIX) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr[proc.stderr.index(PREFIX) :]
    assert line.count("\n") == 1, line
    assert not (out / "results.json").exists() and not (out / "results.md").exists() and not (out / "model").exists()
    return line[len(PREFIX) :].strip()


def _beir(tmp_path: Path, corpus=CORPUS, queries=QUERIES, qrels=None, split="train") -> Path:
    return write_beir(tmp_path / "beir", corpus, queries, qrels or {"q1": {"d1": 1}, "q2": {"d2": 1}}, split=split)


def _model_copy(src: Path, dst: Path, drop=(), edit_config=None) -> Path:
    shutil.copytree(src, dst)
    for f in drop:
        (dst / f).unlink()
    if edit_config:
        cfg = json.loads((dst / "config.json").read_text())
        edit_config(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


# ================================================================ command line (real subprocesses)
def test_cli_group_option_typo_names_closest(tmp_path):
    line = _cli(tmp_path, "loss=infonc")
    assert line.startswith("loss=infonc: no such option in config group loss; did you mean loss=infonce?")


def test_cli_key_typo_names_closest(tmp_path):
    line = _cli(tmp_path, "loss.temprature=0.1")
    assert line.startswith("loss.temprature is not a key of loss; did you mean loss.temperature?")


def test_cli_data_error_names_file_and_line(tmp_path):
    root = _beir(tmp_path, qrels={"q1": {"d1": 1}, "q2": {"d9": 1}})
    line = _cli(tmp_path, f"data.train.root={root}")
    assert line == f"{root / 'qrels' / 'train.tsv'}: line 3: corpus id 'd9' is not in the corpus"


# ================================================================ command-line overrides (in-process)
def test_experiment_typo():
    with pytest.raises(
        ConfigError,
        match=r"^experiment=demo_tny: no such option in config group experiment; did you mean experiment=demo_tiny\?",
    ):
        check_overrides("train", ["experiment=demo_tny"])


def test_packaged_group_typo_names_the_package():
    with pytest.raises(ConfigError, match=r"^model@loss.guide=tinny: .*did you mean model@loss.guide=tiny\?"):
        check_overrides("train", ["loss=gist", "model@loss.guide=tinny"])


def test_sweep_value_typo():
    with pytest.raises(ConfigError, match=r"^loss=triplt: .*did you mean loss=triplet\?"):
        check_overrides("train", ["loss=infonce,triplt"])


def test_unparsable_override():
    with pytest.raises(ConfigError, match=r"^cannot parse the command line: "):
        check_overrides("train", ["trainer.lr=["])


def test_valid_overrides_pass():
    check_overrides(
        "train", ["experiment=demo_tiny", "loss=matryoshka", "loss@loss.loss=triplet", "trainer.skip_bad_batches=2"]
    )


# ================================================================ config values
@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["loss=gist", "model@loss.guide=tiny", "loss.temperature=-1"], "loss.temperature=-1; expected a number > 0"),
        (
            ["data=demo_sts", "loss=contrastive", "loss.margin=3"],
            "loss.margin=3; expected a number in (0, 2.0] (cosine distances lie in [0, 2])",
        ),
        (["loss=triplet", "loss.margin=-0.1"], "loss.margin=-0.1; expected a number in [0, 2.0]"),
        (["loss=matryoshka", "loss.dims=[16,32]"], "loss.dims=[16, 32]; expected strictly descending order"),
        (
            ["loss=matryoshka", "loss.dims=[64,32]"],
            "loss.dims=[64, 32]; the largest, 64, exceeds the model's embedding dimension 32",
        ),
        (["trainer.lr=0"], "trainer.lr=0; expected a number > 0"),
        (["trainer.warmup_ratio=1.5"], "trainer.warmup_ratio=1.5; expected a number in [0, 1)"),
        (["trainer.max_epochs=0"], "trainer.max_epochs=0; expected at least 1"),
        (["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0; expected an integer >= 1"),
        (["trainer.skip_bad_batches=-1"], "trainer.skip_bad_batches=-1; expected an integer >= 0"),
        (["trainer.precision=fp16"], "trainer.precision='fp16'; expected one of"),
        (["trainer.devices=0"], "trainer.devices=0; expected a positive integer, -1, 'auto' or a list"),
        (["trainer.grad_cache.chunk_size=64"], "trainer.grad_cache.chunk_size=64 exceeds data.batch_size=8"),
        (
            ["+trainer.max_epoch=2"],
            "trainer.max_epoch is not a lightning.Trainer argument (did you mean trainer.max_epochs?)",
        ),
        (["data.batch_size=0"], "data.batch_size=0; expected an integer >= 1"),
        (["data.on_error=ignore"], "data.on_error='ignore'; expected one of raise, skip"),
        (
            ["data.train.format=jsonl"],
            "data.train.format='jsonl'; expected one of beir, pairs, labeled_pairs, sts, sentences",
        ),
        (["data=pairs"], "data.train.path is required (it is ??? in the preset)"),
        (["model.pooling=maxx"], "model.pooling='maxx'; expected one of mean, cls, last_token"),
        (["model.max_seq_length=0"], "model.max_seq_length=0; expected an integer >= 1"),
        (["model.trust_remote_code=yes"], "model.trust_remote_code='yes'; expected true or false"),
        (["model=local"], "model.model_name_or_path is required (it is ??? in the preset)"),
        (["eval.recall_at=[0,10]"], "eval.recall_at=[0, 10]; expected a list of positive integers"),
        (["eval.dims=[64]"], "eval.dims=[64]; 64 exceeds the model's embedding dimension 32"),
        (["seed=abc"], "seed='abc'; expected an integer"),
        (
            ["data.drop_last=true", "data.batch_size=500"],
            "data.batch_size=500 x 1 device(s) = 500 rows per step, but the training data has 108 rows",
        ),
        (
            ["trainer=ddp_cpu", "data.drop_last=true", "data.batch_size=60"],
            "data.batch_size=60 x 2 device(s) = 120 rows per step",
        ),
        (["loss=triplet"], "needs columns ('anchor', 'positive', 'negative_1')"),
    ],
)
def test_bad_config_value(tmp_path, capsys, overrides, expected):
    line = _fails(tmp_path, capsys, *overrides)
    assert expected in line


def test_eval_sets_come_from_config_key(tmp_path, capsys):
    line = _fails(tmp_path, capsys, "data.eval_sets.demo_sts.path=/nowhere/sts.tsv")
    assert line == "data.eval_sets.demo_sts.path=/nowhere/sts.tsv: file does not exist; expected an STS tsv file"


def test_gpu_trainer_without_gpu(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert "trainer.accelerator=gpu; no CUDA GPU is visible here" in _fails(tmp_path, capsys, "trainer=gpu")


def test_missing_data_folder(tmp_path, capsys):
    line = _fails(tmp_path, capsys, "data=scifact", f"paths.data_root={tmp_path / 'nowhere'}")
    assert line.startswith(f"data.train.root={tmp_path / 'nowhere' / 'scifact'}: folder does not exist")


def test_loss_needs_columns_data_cannot_give(tmp_path, capsys):
    sts = tmp_path / "sts.tsv"
    sts.write_text((DEMO / "sts.tsv").read_text())
    line = _fails(tmp_path, capsys, "data=stsb", f"data.train.path={sts}", f"data.eval_sets.stsb_test.path={sts}")
    assert "needs columns ('anchor', 'positive')" in line and "data=stsb" in line


def test_evaluate_tuned_folder_missing(tmp_path, capsys):
    line = _fails(tmp_path, capsys, "model=tiny", f"tuned={tmp_path / 'nope'}", entry="evaluate")
    assert line.startswith(f"tuned={tmp_path / 'nope'}: folder does not exist; expected an exported model folder")


def test_mine_n_negatives_zero(tmp_path, capsys):
    line = _fails(tmp_path, capsys, "miner=bm25", "miner.n_negatives=0", entry="mine")
    assert line == "miner.n_negatives=0; expected an integer >= 1"


# ================================================================ data files (file:line)
def _jsonl(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.mark.parametrize(
    "corpus_lines, expected",
    [
        (['{"_id": "d1", "text": "a"}', '{"title": "no id", "text": "b"}'], "line 2: missing '_id'"),
        (
            ['{"_id": "d1", "text": "a"}', '{"_id": "d2", "title": "no text"}'],
            "line 2: document 'd2' has no string 'text'",
        ),
        (['{"_id": "d1", "text": "a"}', '{"_id": "d1", "text": "again"}'], "line 2: duplicate document id 'd1'"),
        (
            ['{"_id": "d1", "text": "a"}', '{"_id": "d2", "title": "", "text": "  "}'],
            "line 2: document 'd2' has empty title and text",
        ),
        (['{"_id": "d1", "text": "a"}', '["not", "an", "object"]'], "line 2: expected a JSON object"),
        (['{"_id": "d1", "text": "a"}', '{"_id": "d2", "text": '], "line 2: not valid JSON"),
        ([], "empty file"),
    ],
)
def test_bad_corpus(tmp_path, capsys, corpus_lines, expected):
    root = _beir(tmp_path)
    _jsonl(root / "corpus.jsonl", *corpus_lines)
    line = _fails(tmp_path, capsys, f"data.train.root={root}")
    assert line.startswith(f"{root / 'corpus.jsonl'}: {expected}"), line


def test_corpus_not_utf8(tmp_path, capsys):
    root = _beir(tmp_path)
    with open(root / "corpus.jsonl", "ab") as f:
        f.write('{"_id": "d3", "text": "caf\u00e9"}\n'.encode("latin-1"))
    line = _fails(tmp_path, capsys, f"data.train.root={root}")
    assert line.startswith(f"{root / 'corpus.jsonl'}: line 3: not UTF-8 text")


def test_empty_query_text(tmp_path, capsys):
    root = _beir(tmp_path, queries={"q1": "how to knead", "q2": "   "})
    line = _fails(tmp_path, capsys, f"data.train.root={root}")
    assert line == f"{root / 'queries.jsonl'}: line 2: query 'q2' has empty or missing 'text'"


@pytest.mark.parametrize(
    "qrels_text, expected",
    [
        ("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td9\t1\n", "line 3: corpus id 'd9' is not in the corpus"),
        ("query-id\tcorpus-id\tscore\nq7\td1\t1\n", "line 2: query id 'q7' is not in queries.jsonl"),
        (
            "query-id\tcorpus-id\tscore\nq1\td1\n",
            "line 2: expected 3 tab-separated columns (query-id, corpus-id, score), got 2",
        ),
        ("query-id\tcorpus-id\tscore\nq1\td1\thigh\n", "line 2: score 'high' is not a number"),
        ("query-id\tcorpus-id\tscore\n", "no valid qrels rows"),
    ],
)
def test_bad_qrels(tmp_path, capsys, qrels_text, expected):
    root = _beir(tmp_path)
    (root / "qrels" / "train.tsv").write_text(qrels_text)
    line = _fails(tmp_path, capsys, f"data.train.root={root}")
    assert line == f"{root / 'qrels' / 'train.tsv'}: {expected}"


def test_eval_corpus_bad_json_line(tmp_path, capsys):
    root = _beir(tmp_path, qrels={"q1": {"d1": 1}}, split="test")
    with open(root / "corpus.jsonl", "a") as f:
        f.write('{"_id": "d3", "text": \n')
    line = _fails(tmp_path, capsys, f"data.eval_sets.demo_test.root={root}")
    assert line.startswith(f"{root / 'corpus.jsonl'}: line 3: not valid JSON")


@pytest.mark.parametrize(
    "sts_text, expected",
    [
        ("score\tsentence1\tsentence2\n3.0\ta cat\ta dog\n7.5\tone\ttwo\n", "line 3: score 7.5 outside [0, 5.0]"),
        ("score\tsentence1\tsentence2\nhigh\ta cat\ta dog\n", "line 2: score 'high' is not a number"),
        ("score\tsentence1\tsentence2\nnan\ta cat\ta dog\n", "line 2: score nan outside [0, 5.0]"),
        ("score\tsentence1\tsentence2\n3.0\ta cat\t \n", "line 2: empty sentence"),
        ("label\ts1\ts2\n3.0\ta\tb\n", "line 1: header must name the columns score, sentence1, sentence2"),
        ("", "empty file"),
    ],
)
def test_bad_sts_eval_file(tmp_path, capsys, sts_text, expected):
    sts = tmp_path / "sts.tsv"
    sts.write_text(sts_text)
    line = _fails(tmp_path, capsys, f"data.eval_sets.demo_sts.path={sts}")
    assert line.startswith(f"{sts}: {expected}"), line


def test_sts_train_file_not_utf8(tmp_path, capsys):
    sts = tmp_path / "sts.tsv"
    sts.write_bytes("score\tsentence1\tsentence2\n3.0\tna\u00efve\tb\n".encode("latin-1"))
    line = _fails(tmp_path, capsys, "data=demo_sts", "loss=cosine", f"data.train.path={sts}")
    assert line.startswith(f"{sts}: line 2: not UTF-8 text")


@pytest.mark.parametrize(
    "rows, expected",
    [
        (
            ['{"anchor": "a", "positive": "b"}', '{"anchor": "c"}'],
            "line 2: expected non-empty strings 'anchor' (or 'query'), 'positive'",
        ),
        (
            [
                '{"anchor": "a", "positive": "b", "negatives": ["x"]}',
                '{"anchor": "c", "positive": "d", "negatives": []}',
            ],
            "line 2: 0 negatives, but earlier rows have 1",
        ),
    ],
)
def test_bad_pairs_file(tmp_path, capsys, rows, expected):
    pairs = _jsonl(tmp_path / "pairs.jsonl", *rows)
    line = _fails(tmp_path, capsys, "data=pairs", f"data.train.path={pairs}", "~data.eval_sets.stsb_test")
    assert line.startswith(f"{pairs}: {expected}"), line


def test_skip_mode_with_no_valid_row_still_fails(tmp_path, capsys):
    root = _beir(tmp_path)
    _jsonl(root / "corpus.jsonl", '{"title": "x"}', '{"text": "y"}')
    line = _fails(tmp_path, capsys, f"data.train.root={root}", "data.on_error=skip")
    assert line == f"{root / 'corpus.jsonl'}: no valid documents (2 bad rows skipped; first at line 1: missing '_id')"


# ================================================================ model folders
@pytest.mark.parametrize(
    "drop, expected",
    [
        (("model.safetensors",), "has no weights; expected one of model.safetensors"),
        (("tokenizer.json", "vocab.txt"), "has no tokenizer; expected one of tokenizer.json"),
        (("config.json",), "has no config.json; expected a Hugging Face model folder"),
    ],
)
def test_model_folder_missing_files(tmp_path, capsys, tiny_model_dir, drop, expected):
    folder = _model_copy(tiny_model_dir, tmp_path / "m", drop=drop)
    line = _fails(tmp_path, capsys, "model=local", f"model.model_name_or_path={folder}")
    assert line == f"model folder {folder} {expected}" or line.startswith(f"model folder {folder} {expected}")


def test_model_folder_does_not_exist(tmp_path, capsys):
    line = _fails(tmp_path, capsys, "model=local", f"model.model_name_or_path={tmp_path / 'none'}")
    assert line == f"model folder {tmp_path / 'none'} does not exist (model.model_name_or_path)"


def test_model_weights_truncated(tmp_path, capsys, tiny_model_dir):
    folder = _model_copy(tiny_model_dir, tmp_path / "m")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    line = _fails(tmp_path, capsys, "model=local", f"model.model_name_or_path={folder}")
    assert line.startswith(f"cannot load model '{folder}': the weights file is corrupt or truncated")


def test_model_dim_differs_from_preset(tmp_path, capsys, tiny_model_dir):
    line = _fails(
        tmp_path, capsys, "model=local", f"model.model_name_or_path={tiny_model_dir}", "+model.expected_dim=384"
    )
    assert line.startswith(f"model folder {tiny_model_dir} has hidden size 32, but model.expected_dim=384")


def test_tokenizer_larger_than_embedding_table(tmp_path, capsys, tiny_model_dir):
    from transformers import BertConfig, BertModel

    folder = tmp_path / "small-vocab"
    BertModel(
        BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(folder)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(tiny_model_dir / f, folder / f)
    line = _fails(tmp_path, capsys, "model=local", f"model.model_name_or_path={folder}")
    assert line == f"model '{folder}': tokenizer has 30522 tokens but the model's embedding table has 1000"


def test_remote_code_is_not_run_without_opt_in(tmp_path, capsys, tiny_model_dir):
    marker = tmp_path / "ran"

    def remote(cfg):
        cfg["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}

    folder = _model_copy(tiny_model_dir, tmp_path / "m", edit_config=remote)
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    line = _fails(tmp_path, capsys, "model=local", f"model.model_name_or_path={folder}")
    assert line.startswith(
        f"model folder {folder} ships its own Python code (auto_map in config.json); it is not run "
        "unless model.trust_remote_code=true"
    )
    assert not marker.exists()


def test_encoder_does_not_run_remote_code_by_default(tmp_path, tiny_model_dir):
    import inspect

    from embedexp.errors import ModelError
    from embedexp.models import Encoder

    assert inspect.signature(Encoder.__init__).parameters["trust_remote_code"].default is False
    marker = tmp_path / "ran"

    def remote(cfg):
        cfg["auto_map"] = {"AutoModel": "modeling_evil.EvilModel", "AutoConfig": "modeling_evil.EvilConfig"}
        cfg["model_type"] = "evil-bert"

    folder = _model_copy(tiny_model_dir, tmp_path / "m", edit_config=remote)
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    with pytest.raises(ModelError, match="cannot load model"):
        Encoder(str(folder))
    assert not marker.exists()
