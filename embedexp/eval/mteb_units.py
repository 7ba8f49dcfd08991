"""Per-item values of mteb tasks, for the paired statistics of the base-vs-tuned table (`embedexp.eval.stats`).

From mteb's own outputs of one run (its `prediction_folder` files, and for retrieval the per-query scores mteb
passes to `task_specific_scores`, its documented per-task hook):

| family         | unit           | rows that get statistics                                        |
|----------------|----------------|-----------------------------------------------------------------|
| retrieval, reranking | query    | main_score, ndcg_at_k, map_at_k, recall_at_k, precision_at_k (pytrec_eval per query) |
| STS            | sentence pair  | main_score, cosine_spearman, cosine_pearson (the correlation is recomputed per resample) |
| classification | test text      | main_score (accuracy), accuracy: the fraction of mteb's probe experiments that got it right |
| clustering     | none           | V-measure is a property of the whole clustering; no per-item score exists |

Means of these per-item values equal mteb's scores (up to mteb's rounding to 5 decimals).
Retrieval tasks read by mteb's own loader (not local data) have no per-query hook, so no statistics.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable

import numpy as np

UNITS_VERSION = 1
PER_QUERY_ATTR = "_embedexp_per_query"
LOCAL_DATA_ATTR = "_embedexp_local_data"  # the local data set a task subclass serves (embedexp.eval.mteb_tasks)
_TREC = {"ndcg_at_": "ndcg_cut_", "map_at_": "map_cut_", "recall_at_": "recall_", "precision_at_": "P_"}


def reset_seed(task) -> None:
    """Re-seed a task's random state as mteb's constructor does, so every model sees the same random draws."""
    task.rng_state, task.np_rng = random.Random(task.seed), np.random.default_rng(task.seed)


def capture_per_query(base_cls) -> dict:
    """Class attributes for a subclass of an mteb retrieval task: keep mteb's per-query scores of each run."""

    def task_specific_scores(self, scores, qrels, results, hf_split, hf_subset):
        self.__dict__.setdefault(PER_QUERY_ATTR, {})[(hf_split, hf_subset)] = scores
        return base_cls.task_specific_scores(self, scores, qrels, results, hf_split, hf_subset)

    return {"task_specific_scores": task_specific_scores}


def _trec_name(metric: str) -> str | None:
    for ours, trec in _TREC.items():
        if metric.startswith(ours):
            return trec + metric[len(ours) :]
    return None


def _gold(task, split: str):
    """Gold scores (STS) or label ids (classification) of the local data `task` serves; None for mteb-loaded data
    (mteb frees a task's dataset after evaluating it, so the local data object is the source)."""
    from embedexp.eval.labelled import ClassificationSet
    from embedexp.eval.sets import STSSet

    data = getattr(task, LOCAL_DATA_ATTR, None)
    if isinstance(data, STSSet):
        return [float(x) for x in data.scores]
    if isinstance(data, ClassificationSet) and split == data.eval_split:
        names = sorted(set(data.splits[data.train_split][1]))
        return [names.index(x) for x in data.splits[split][1]]
    return None


def task_units(task, folder: Path, prefix: Callable[[str, str], str]) -> dict[str, dict]:
    """{"<prefix>/<metric>": per-unit values} of one task's last run; {} for tasks without per-item scores.

    Args:
        task: the mteb task that ran (its dataset loaded).
        folder: mteb's prediction_folder of the run.
        prefix: (split, subset) -> the row prefix the flattened scores use (`mteb/<Task>[/split][/subset]`).
    """
    kind = task.metadata.type
    main = task.metadata.main_score
    out: dict[str, dict] = {}
    if kind in ("Retrieval", "Reranking", "InstructionRetrieval"):
        for (split, subset), per_query in task.__dict__.pop(PER_QUERY_ATTR, {}).items():
            ids = sorted(per_query)
            names = {m: _trec_name(m) for m in {main, "ndcg_at_10", "map_at_10", "recall_at_10", "recall_at_100"}}
            for metric, trec in names.items():
                if trec is None or not ids or trec not in per_query[ids[0]]:
                    continue
                unit = {"ids": ids, "values": [float(per_query[q][trec]) for q in ids]}
                out[f"{prefix(split, subset)}/{metric}"] = unit
                if metric == main:
                    out[f"{prefix(split, subset)}/main_score"] = unit
        return out
    path = folder / task.prediction_file_name
    if kind not in ("STS", "Classification") or not path.is_file():
        return out
    predictions = json.loads(path.read_text(encoding="utf-8"))
    for subset, by_split in predictions.items():
        if subset == "mteb_model_meta":
            continue
        for split, pred in by_split.items():
            gold = _gold(task, split)
            if gold is None:
                continue
            head = prefix(split, subset)
            ids = [str(i) for i in range(len(gold))]
            if kind == "STS":
                for metric, method in (("cosine_spearman", "spearman"), ("cosine_pearson", "pearson")):
                    unit = {"ids": ids, "scores": [float(x) for x in pred["cosine_scores"]], "gold": gold}
                    out[f"{head}/{metric}"] = {**unit, "method": method}
                    if metric == main:
                        out[f"{head}/main_score"] = {**unit, "method": method}
            elif main == "accuracy" and pred:
                correct = np.mean([np.asarray(p) == np.asarray(gold) for p in pred], axis=0)
                unit = {"ids": ids, "values": [float(x) for x in correct]}
                out[f"{head}/accuracy"] = out[f"{head}/main_score"] = unit
    return out
