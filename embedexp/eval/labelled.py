"""Labelled-text data for mteb's classification and clustering tasks, read from local files.

- `classification`: a folder with `<split>.tsv` files (header naming `label` and `text`, tab separated), e.g.
  `banking77/train.tsv` + `test.tsv`. mteb fits its linear probe (logistic regression) on the train split's
  embeddings and scores the eval split.
- `clustering`: a `.jsonl` file, one set per line `{"sentences": [...], "labels": [...]}` (mteb's clustering
  layout), or a `.tsv` file with `label` and `text` columns (one set). mteb clusters the embeddings
  (mini-batch k-means, k = number of labels) and reports the V-measure against the labels.

`unescape_newlines: true` turns the two characters `\\n` in a text back into a newline (files that store
multi-line texts on one line, as `../shared/data/banking77` does).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from embedexp.errors import ConfigError, DataError
from embedexp.eval.sets import _hash_files


@dataclass
class ClassificationSet:
    """Texts with class labels per split: `splits[split] = (texts, labels)`; mteb trains on `train_split`."""

    name: str
    splits: dict[str, tuple[list[str], list[str]]]
    train_split: str
    eval_split: str
    fingerprint: str


@dataclass
class ClusteringSet:
    """One or more sets of (sentences, labels) to cluster; `sets[i] = (texts, labels)`."""

    name: str
    sets: list[tuple[list[str], list[str]]] = field(default_factory=list)
    fingerprint: str = ""


def read_label_text_tsv(path: Path, unescape_newlines: bool = False) -> tuple[list[str], list[str]]:
    """(texts, labels) of a tab-separated file whose header names `label` and `text` (other columns ignored).

    Raises:
        DataError: missing file, header without label/text, a row with too few columns or an empty text or label
            (file and line named).
    """
    if not path.is_file():
        raise DataError(f"{path} does not exist; expected a tab-separated file with label and text columns")
    texts, labels = [], []
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n").lstrip("\ufeff").split("\t")
        try:
            i_label, i_text = header.index("label"), header.index("text")
        except ValueError:
            raise DataError(
                f"{path}: line 1: header must name the columns label and text (tab separated); got {header}"
            ) from None
        for lineno, line in enumerate(f, start=2):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            cols = line.split("\t")
            if len(cols) <= max(i_label, i_text):
                raise DataError(
                    f"{path}: line {lineno}: expected at least {max(i_label, i_text) + 1} tab-separated columns, "
                    f"got {len(cols)}"
                )
            label, text = cols[i_label], cols[i_text]
            if not label.strip() or not text.strip():
                raise DataError(f"{path}: line {lineno}: empty {'label' if not label.strip() else 'text'}")
            labels.append(label)
            texts.append(text.replace("\\n", "\n") if unescape_newlines else text)
    if not texts:
        raise DataError(f"{path}: no rows; expected label<TAB>text lines after the header")
    return texts, labels


def load_classification_set(name: str, spec: dict, key: str) -> ClassificationSet:
    """`{type: classification, root, split: test, train_split: train, unescape_newlines}` -> ClassificationSet.

    Raises:
        ConfigError: no root, or train and eval split are the same. DataError: a bad file (see read_label_text_tsv).
    """
    if not spec.get("root"):
        raise ConfigError(f"{key}.root is missing; expected a folder with <split>.tsv files (label<TAB>text)")
    root = Path(str(spec["root"])).expanduser()
    split, train_split = str(spec.get("split", "test")), str(spec.get("train_split", "train"))
    if split == train_split:
        raise ConfigError(f"{key}.split={split!r} equals train_split; expected a held-out split (e.g. test)")
    unescape = bool(spec.get("unescape_newlines", False))
    paths = [root / f"{train_split}.tsv", root / f"{split}.tsv"]
    splits = {s: read_label_text_tsv(p, unescape) for s, p in zip((train_split, split), paths)}
    unseen = sorted(set(splits[split][1]) - set(splits[train_split][1]))
    if unseen:
        raise DataError(f"{paths[1]}: label {unseen[0]!r} never occurs in {paths[0]}; a linear probe cannot predict it")
    return ClassificationSet(name, splits, train_split, split, _hash_files(paths, f"classification:{unescape}"))


def load_clustering_set(name: str, spec: dict, key: str) -> ClusteringSet:
    """`{type: clustering, path}`: a jsonl of {"sentences", "labels"} sets, or a label/text tsv (one set).

    Raises:
        ConfigError: no path. DataError: a bad line (file and line named), sentences and labels of unequal length.
    """
    if not spec.get("path"):
        raise ConfigError(f"{key}.path is missing; expected a clustering .jsonl or .tsv file")
    path = Path(str(spec["path"])).expanduser()
    unescape = bool(spec.get("unescape_newlines", False))
    if path.suffix == ".tsv":
        sets = [read_label_text_tsv(path, unescape)]
    else:
        if not path.is_file():
            raise DataError(f"{path} does not exist; expected a clustering jsonl file")
        sets = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    texts, labels = row["sentences"], row["labels"]
                except (ValueError, KeyError, TypeError):
                    raise DataError(
                        f'{path}: line {lineno}: expected a JSON object {{"sentences": [...], "labels": [...]}}'
                    ) from None
                if not isinstance(texts, list) or not isinstance(labels, list) or len(texts) != len(labels):
                    raise DataError(
                        f"{path}: line {lineno}: sentences and labels must be lists of equal length; got "
                        f"{len(texts) if isinstance(texts, list) else type(texts).__name__} and "
                        f"{len(labels) if isinstance(labels, list) else type(labels).__name__}"
                    )
                sets.append(
                    ([str(t).replace("\\n", "\n") if unescape else str(t) for t in texts], [str(x) for x in labels])
                )
        if not sets:
            raise DataError(f"{path}: no sets; expected one JSON line per set")
    for i, (_, labels) in enumerate(sets):
        if len(set(labels)) < 2:
            raise DataError(f"{path}: set {i + 1} has {len(set(labels))} label(s); clustering needs at least 2")
    return ClusteringSet(name, sets, _hash_files([path], f"clustering:{unescape}"))
