"""Checks of the `data` config group: the training data preset (format, files, batch settings)."""

from __future__ import annotations

from typing import Any

from embedexp.checks import check_bool, check_choice, check_dir, check_file, check_int, check_number
from embedexp.data.formats import POSITIVES, SHORT_NEGATIVES
from embedexp.data.readers import ON_ERROR
from embedexp.data.train_sets import FORMATS
from embedexp.errors import ConfigError

TABLE_WHAT = {
    "table": "a table file (.csv, .tsv, .json, .jsonl, .parquet, .arrow), a dataset folder or a hub name",
    "pairs": "a pairs file (.jsonl, or any table file), or a dataset folder",
    "labeled_pairs": "a labeled pairs file (.jsonl, or any table file), or a dataset folder",
}


def check_table_source(key: str, train: dict, fmt: str) -> None:
    """`path` (a local file or folder that exists; anything else is a hub name), the column mapping and the
    draw settings of a table-backed source.

    Raises:
        ConfigError: naming the key, its value and what is expected.
    """
    from pathlib import Path

    path = train.get("path")
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(f"{key}.path={path!r}; expected the path of {TABLE_WHAT[fmt]}")
    p = Path(path).expanduser()
    local = fmt != "table" or path.startswith(("/", ".", "~")) or bool(p.suffix)
    if local and not p.exists():
        raise ConfigError(f"{key}.path={path}: file does not exist; expected {TABLE_WHAT[fmt]}")
    columns = train.get("columns")
    if columns is not None and not isinstance(columns, dict):
        raise ConfigError(f"{key}.columns={columns!r}; expected a mapping of role to column, e.g. {{anchor: question}}")
    check_int(f"{key}.negatives_per_row", train.get("negatives_per_row"), 0, optional=True)
    check_choice(f"{key}.short_negatives", train.get("short_negatives", "repeat"), SHORT_NEGATIVES)
    check_choice(f"{key}.positives", train.get("positives", "first"), POSITIVES)


def check_data_config(prefix: str, data: Any) -> None:
    """Checks a `data` preset (types, ranges, the training files exist) before any row is read.

    Raises:
        ConfigError: naming the key (`{prefix}.batch_size`, `{prefix}.train.path`, ...), its value and what is expected.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}={data!r}; expected a data preset (e.g. data=demo)")
    from embedexp.data.mixture import check_mixture_data  # batch_sampler; several sources: each one, mixture

    if check_mixture_data(prefix, data, check_data_config):
        return
    check_int(f"{prefix}.batch_size", data.get("batch_size", 32), 1)
    check_int(f"{prefix}.num_workers", data.get("num_workers", 0), 0)
    check_choice(f"{prefix}.on_error", data.get("on_error", "raise"), ON_ERROR)
    for k in ("shuffle", "drop_last"):
        check_bool(f"{prefix}.{k}", data.get(k))
    check_number(
        f"{prefix}.dev_fraction",
        data.get("dev_fraction", 0.0),
        0,
        1,
        high_open=True,
        why=" (the share of training queries held out as a dev set)",
    )
    train = data.get("train")
    if not isinstance(train, dict):
        raise ConfigError(f"{prefix}.train={train!r}; expected a mapping with format and root/path")
    fmt = train.get("format")
    check_choice(f"{prefix}.train.format", fmt, FORMATS)
    check_choice(f"{prefix}.train.on_error", train.get("on_error", "raise"), ON_ERROR)
    if fmt == "beir" or (fmt == "sentences" and train.get("root")):
        check_dir(f"{prefix}.train.root", train.get("root"), "a BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    elif fmt == "sentences" and not train.get("path"):
        raise ConfigError(f"{prefix}.train needs root (a BEIR folder) or path (a text file) for format=sentences")
    elif fmt in ("table", "pairs", "labeled_pairs"):
        check_table_source(f"{prefix}.train", train, fmt)
    else:
        what = {
            "pairs": "a pairs jsonl file",
            "labeled_pairs": "a labeled pairs jsonl file",
            "sts": "an STS tsv file",
            "sentences": "a text file, one text per line",
        }[fmt]
        check_file(f"{prefix}.train.path", train.get("path"), what)
    if fmt == "sts":
        check_number(f"{prefix}.train.max_score", train.get("max_score", 5.0), 0, low_open=True)
        check_number(f"{prefix}.train.binary_threshold", train.get("binary_threshold"), optional=True)
    if fmt == "sentences":
        check_number(f"{prefix}.train.deletion_ratio", train.get("deletion_ratio", 0.6), 0, 1, high_open=True)
        check_int(f"{prefix}.train.min_words", train.get("min_words", 4), 0)
        check_int(f"{prefix}.train.max_rows", train.get("max_rows"), 1, optional=True)
    if fmt == "beir":
        check_int(f"{prefix}.train.min_grade", train.get("min_grade", 1), 0)
