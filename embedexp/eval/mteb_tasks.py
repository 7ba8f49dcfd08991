"""mteb tasks on local data: mteb's own task classes (metadata, main score, evaluator, seeds), our files.

Every task family mteb evaluates for text embeddings reads local files here, by subclassing the task's own
class and overriding only `load_data` (mteb's documented extension point for where data comes from):

| local `type`     | mteb task types                         | mteb's evaluation                                 |
|------------------|-----------------------------------------|---------------------------------------------------|
| `retrieval`      | Retrieval, InstructionRetrieval (Reranking: full-corpus search) | exact cosine search, nDCG@10 (pytrec_eval) |
| `reranking`      | Reranking                               | each query's own candidates ranked by cosine, MAP@1000 / MRR@10 |
| `sts`            | STS                                     | cosine Spearman against the gold scores           |
| `classification` | Classification                          | logistic-regression probe on the train split      |
| `clustering`     | Clustering (fast and legacy)            | mini-batch k-means, V-measure                     |

A multilingual task (STS17, SIB200ClusteringS2S) runs on one subset, named by `subset` in the local spec
(`en-en`, `eng_Latn`); mteb's task keeps that subset only (`filter_languages(hf_subsets=[...])`).

Reranking: mteb 2.x runs its Reranking tasks as retrieval tasks whose split carries `top_ranked` (query id -> the
candidate document ids); its `AbsTaskReranking` (deprecated there) only converts the old query/positive/negative
layout into that. A `reranking` file (`embedexp.eval.reranking_set`) is converted here into the same split, with
mteb's own ids (`<split>_query<i>`, `apositive_<query id>_<00000>`, `negative_<query id>_<00000>`), so ties break
as in mteb; the evaluator (search restricted to `top_ranked`, pytrec_eval scores) is mteb's.
"""

from __future__ import annotations

from pathlib import Path

from embedexp.errors import ConfigError
from embedexp.eval.labelled import ClassificationSet, ClusteringSet, load_classification_set, load_clustering_set
from embedexp.eval.mteb_units import LOCAL_DATA_ATTR, capture_per_query
from embedexp.eval.reranking_set import RerankingSet, load_reranking_set
from embedexp.eval.sets import RetrievalSet, STSSet, load_eval_set

LOCAL_TYPES = ("retrieval", "sts", "classification", "clustering", "reranking")
# mteb task type -> the local data type that feeds it
TYPE_FOR = {
    "Retrieval": "retrieval",
    "Reranking": "reranking",
    "InstructionRetrieval": "retrieval",
    "STS": "sts",
    "Classification": "classification",
    "Clustering": "clustering",
}
# other local types a task type also takes: a BEIR folder for a Reranking task is searched as a whole corpus
ALSO_ACCEPTS = {"Reranking": ("retrieval",)}


def local_path(spec: dict) -> str | None:
    """The file or folder a local-data spec reads (`root` for folders, `path` for files)."""
    return spec.get("root") if spec.get("type") in ("retrieval", "classification") else spec.get("path")


def load_local_data(name: str, spec: dict, key: str):
    """A local-data spec -> RetrievalSet | STSSet | ClassificationSet | ClusteringSet | RerankingSet.

    Raises:
        ConfigError: unknown `type` or missing keys. DataError: a bad file (named with its line).
    """
    kind = spec.get("type")
    if kind == "classification":
        return load_classification_set(name, spec, key)
    if kind == "clustering":
        return load_clustering_set(name, spec, key)
    if kind == "reranking":
        return load_reranking_set(name, spec, key)
    if kind in ("retrieval", "sts"):
        return load_eval_set(name, spec, key=key)
    raise ConfigError(f"{key}.type={kind!r}; expected one of {', '.join(LOCAL_TYPES)}")


# ---------------------------------------------------------------- data in mteb's layouts
def _retrieval_split(s: RetrievalSet) -> dict:
    """Our retrieval set as mteb's RetrievalSplitData (documents are already `title + " " + text`)."""
    from datasets import Dataset

    return {
        "corpus": Dataset.from_dict({"id": list(s.doc_ids), "title": [""] * len(s.docs), "text": list(s.docs)}),
        "queries": Dataset.from_dict({"id": list(s.query_ids), "text": list(s.queries)}),
        "relevant_docs": {q: dict(d) for q, d in s.qrels.items()},
        "top_ranked": None,
    }


def _reranking_split(s: RerankingSet, split: str) -> dict:
    """Our reranking set as mteb's RetrievalSplitData with `top_ranked`: every query ranks only its own candidates.

    Ids as mteb's `AbsTaskReranking._process_example` writes them (positives first, then negatives), so tie order and
    per-query ids equal mteb's own conversion of the same rows.
    """
    from datasets import Dataset

    doc_ids, docs, query_ids, queries = [], [], [], []
    relevant: dict[str, dict[str, int]] = {}
    top_ranked: dict[str, list[str]] = {}
    for i, (query, positives, negatives) in enumerate(s.rows):
        qid = f"{split}_query{i}"
        ids = [f"apositive_{qid}_{j:05d}" for j in range(len(positives))]
        ids += [f"negative_{qid}_{j:05d}" for j in range(len(negatives))]
        query_ids.append(qid)
        queries.append(query)
        doc_ids += ids
        docs += positives + negatives
        relevant[qid] = {d: int(d.startswith("apositive_")) for d in ids}
        top_ranked[qid] = ids
    return {
        "corpus": Dataset.from_dict({"id": doc_ids, "title": [""] * len(docs), "text": docs}),
        "queries": Dataset.from_dict({"id": query_ids, "text": queries}),
        "relevant_docs": relevant,
        "top_ranked": top_ranked,
    }


def _sts_split(s: STSSet):
    from datasets import Dataset

    return Dataset.from_dict({"sentence1": list(s.text_a), "sentence2": list(s.text_b), "score": list(s.scores)})


def _class_ids(labels: list[str], names: list[str]) -> list[int]:
    at = {n: i for i, n in enumerate(names)}
    return [at[x] for x in labels]


def _classification_splits(s: ClassificationSet, task) -> dict:
    """{train_split, eval_split} Datasets with mteb's columns; labels as ids in sorted-name order (HF ClassLabel)."""
    from datasets import Dataset, DatasetDict

    names = sorted(set(s.splits[s.train_split][1]))
    text_col, label_col = task.input_column_name, task.label_column_name
    return DatasetDict(
        {
            split: Dataset.from_dict({text_col: texts, label_col: _class_ids(labels, names)})
            for split, (texts, labels) in s.splits.items()
        }
    )


def _clustering_split(s: ClusteringSet, task):
    """Fast clustering tasks take one row per text (all sets concatenated); legacy ones one row per set."""
    from datasets import Dataset
    from mteb.abstasks.clustering_legacy import AbsTaskClusteringLegacy

    text_col, label_col = task.input_column_name, task.label_column_name
    if isinstance(task, AbsTaskClusteringLegacy):
        return Dataset.from_dict({text_col: [t for t, _ in s.sets], label_col: [lab for _, lab in s.sets]})
    texts = [t for texts, _ in s.sets for t in texts]
    labels = [x for _, labels in s.sets for x in labels]
    return Dataset.from_dict({text_col: texts, label_col: _class_ids(labels, sorted(set(labels)))})


def _payload(data_set, task, split: str):
    """The dataset of one subset in the layout `task` reads: {split: ...} (or a DatasetDict)."""
    if isinstance(data_set, RetrievalSet):
        return {split: _retrieval_split(data_set)}
    if isinstance(data_set, RerankingSet):
        return {split: _reranking_split(data_set, split)}
    if isinstance(data_set, STSSet):
        return {split: _sts_split(data_set)}
    if isinstance(data_set, ClassificationSet):
        return _classification_splits(data_set, task)
    from datasets import DatasetDict

    return DatasetDict({split: _clustering_split(data_set, task)})


def task_on(base_cls, data_set, split: str, subset: str = "default", **attrs):
    """An instance of a subclass of `base_cls` (an mteb task class) whose `load_data` serves `data_set`.

    Args:
        base_cls: mteb's task class (e.g. `type(mteb.get_task("Banking77Classification"))`) or an abstract one.
        data_set: RetrievalSet | STSSet | ClassificationSet | ClusteringSet | RerankingSet.
        split: the eval split name the data is served as.
        subset: the hf subset (a multilingual task's language pair, e.g. "en-en"); "default" otherwise.
        attrs: class attributes to set (metadata, ignore_identical_ids, min_score/max_score, ...).
    Raises:
        ConfigError: `subset` is not one of the task's subsets.
    """

    def load_data(self, num_proc=None, **kwargs) -> None:
        if not self.data_loaded:
            self.dataset = {subset: _payload(data_set, self, split)}
            self.data_loaded = True

    from mteb.abstasks.retrieval import AbsTaskRetrieval

    hooks = capture_per_query(base_cls) if issubclass(base_cls, AbsTaskRetrieval) else {}
    body = {"load_data": load_data, "__module__": __name__, LOCAL_DATA_ATTR: data_set, **hooks, **attrs}
    cls = type(f"Local{base_cls.__name__}", (base_cls,), body)
    task = cls()
    if task.metadata.is_multilingual or subset != "default":
        known = list(task.metadata.hf_subsets or [])
        if subset not in known:
            raise ConfigError(
                f"subset={subset!r} is not a subset of mteb task {task.metadata.name}; expected one of "
                + ", ".join(known[:20])
                + (" ..." if len(known) > 20 else "")
            )
        task = task.filter_languages(None, hf_subsets=[subset])
    return task.filter_eval_splits([split])


def local_named_task(task, name: str, local: dict, key: str):
    """mteb's task `task` (named `name`) reading the local spec `local`; (task, fingerprint, source).

    Raises:
        ConfigError: the spec's type does not fit the task's mteb type, or a multilingual task without `subset`.
    """
    mteb_type = task.metadata.type
    want = TYPE_FOR.get(mteb_type)
    got = local.get("type")
    if want is None:
        raise ConfigError(
            f"{key}: task {name} is of mteb type {mteb_type}; local files feed only "
            f"{', '.join(sorted(TYPE_FOR))} tasks (drop it from local_data to use mteb's loader)"
        )
    if got != want and got not in ALSO_ACCEPTS.get(mteb_type, ()):
        also = "".join(f" (or {a!r})" for a in ALSO_ACCEPTS.get(mteb_type, ()))
        raise ConfigError(f"{key}.type={got!r}; task {name} is of mteb type {mteb_type}, expected type {want!r}{also}")
    subset = str(local.get("subset", "default"))
    if task.metadata.is_multilingual and subset == "default":
        subsets = list(task.metadata.hf_subsets or [])
        raise ConfigError(
            f"{key}.subset is missing; task {name} is multilingual, expected one of its subsets "
            f"({', '.join(subsets[:12])}{' ...' if len(subsets) > 12 else ''})"
        )
    data_set = load_local_data(name, local, key)
    split = str(local.get("split", task.metadata.eval_splits[0] if task.metadata.eval_splits else "test"))
    attrs = {"metadata": task.metadata}
    if isinstance(data_set, RetrievalSet) and "ignore_identical_ids" in local:
        attrs["ignore_identical_ids"] = bool(data_set.ignore_identical_ids)  # else mteb's own task setting
    if isinstance(data_set, STSSet):
        attrs.update(min_score=0, max_score=float(local.get("max_score", task.max_score)))
    if isinstance(data_set, ClassificationSet):
        attrs["train_split"] = data_set.train_split
    try:
        local_task = task_on(type(task), data_set, split, subset, **attrs)
    except ConfigError as e:
        raise ConfigError(f"{key}.{e}") from None
    return local_task, data_set.fingerprint, str(Path(str(local_path(local))))
