"""Checks of the `eval` config group: metric settings and eval sets, before any file or model loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from embedexp.checks import check_bool, check_choice, check_dir, check_file, check_int, check_int_list, check_number
from embedexp.data.readers import ON_ERROR
from embedexp.errors import ConfigError
from embedexp.eval.sets import SET_TYPES
from embedexp.extras import require_extra

K_LISTS = ("ndcg_at", "recall_at", "mrr_at", "map_at")


RERANKER_RUN_KEYS = ("first_stage", "rerank_base")  # keys only a cross-encoder (reranker) training run reads


def check_eval_config(ev: Any, model_dim: int | None, sets_key: str = "eval.sets", cross_encoder: bool = False) -> None:
    """Checks an `eval` preset (batch size, metric cut-offs, Matryoshka dims, each eval set's files) before any load.

    Args:
        ev: the resolved eval config.
        model_dim: the model's embedding size when known (`eval.dims` must not exceed it).
        sets_key: the key the user edits for the eval sets (`data.eval_sets` when eval.sets points there).
        cross_encoder: the run trains a cross-encoder (eval.first_stage / eval.rerank_base apply to it only).
    Raises:
        ConfigError: naming the key, its value and what is expected.
    """
    if not isinstance(ev, dict):
        raise ConfigError(f"eval={ev!r}; expected an eval preset (e.g. eval=default)")
    check_int("eval.batch_size", ev.get("batch_size", 64), 1)
    for key in RERANKER_RUN_KEYS:
        if key in ev and not cross_encoder:
            raise ConfigError(
                f"eval.{key}={ev[key]!r} applies to reranker training runs only (model=cross_encoder_*); this run "
                f"evaluates a bi-encoder: remove eval.{key} (to rerank a bi-encoder's top-k use eval.rerank.model)"
            )
    ks = {k: check_int_list(f"eval.{k}", ev[k]) for k in K_LISTS if k in ev}
    dims = check_int_list("eval.dims", ev.get("dims"), optional=True)
    if dims and model_dim is not None and max(dims) > model_dim:
        raise ConfigError(
            f"eval.dims={dims}; {max(dims)} exceeds the model's embedding dimension {model_dim}; "
            f"expected dims <= {model_dim}"
        )
    if ev.get("mteb") is not None:  # eval=mteb / eval=general: the optional extra, before any data loads
        require_extra("mteb", "mteb", "eval.mteb (eval=mteb, eval=general)")
    stats = ev.get("stats")
    if stats is not None:
        check_section(
            stats, "eval.stats", ("alpha", "confidence", "n_resamples", "seed"), "alpha, confidence, n_resamples, seed"
        )
        check_number("eval.stats.alpha", stats.get("alpha", 0.05), 0, 1, low_open=True, high_open=True)
        check_number("eval.stats.confidence", stats.get("confidence", 0.95), 0, 1, low_open=True, high_open=True)
        check_int("eval.stats.n_resamples", stats.get("n_resamples", 10000), 100)
        check_int("eval.stats.seed", stats.get("seed", 0), 0)
    if ev.get("decision") is not None:
        check_decision_config(ev["decision"])
    sets = ev.get("sets") or {}
    if not isinstance(sets, dict):
        raise ConfigError(f"{sets_key}={sets!r}; expected a mapping name -> {{type, root/path}}")
    for name, spec in sets.items():
        key = f"{sets_key}.{name}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{key}={spec!r}; expected a mapping with type and root/path")
        check_choice(f"{key}.type", spec.get("type"), SET_TYPES)
        check_choice(f"{key}.on_error", spec.get("on_error", "raise"), ON_ERROR)
        if spec["type"] == "retrieval":
            check_dir(f"{key}.root", spec.get("root"), "a BEIR folder")
            check_bool(f"{key}.ignore_identical_ids", spec.get("ignore_identical_ids", False), optional=False)
            if ks and not any(ks.values()):
                raise ConfigError(
                    f"eval: every metric cut-off list ({', '.join(ks)}) is empty; expected at least one k"
                )
        elif spec["type"] == "pairs":
            check_file(f"{key}.path", spec.get("path"), "a pairs jsonl file (anchor, positive[, negatives])")
        else:
            check_file(f"{key}.path", spec.get("path"), "an STS tsv file")
            check_number(f"{key}.max_score", spec.get("max_score", 5.0), 0, low_open=True)


DECISION_KEYS = (
    "enabled",
    "reranker",
    "top_k",
    "batch_sizes",
    "max_queries_for_latency",
    "bm25",
    "rerank_batch_size",
    "max_length",
)


def decision_enabled(dc: Any) -> bool:
    """`eval.decision.enabled`, where null (the default) means: on when a reranker is given."""
    if not isinstance(dc, dict):
        return False
    enabled = dc.get("enabled")
    return bool(dc.get("reranker")) if enabled is None else bool(enabled)


def check_decision_config(dc: Any) -> None:
    """`eval.decision` (the bi-encoder vs cross-encoder table, embedexp/eval/decision.py); folders only when enabled.

    Raises:
        ConfigError: an unknown key, a value of the wrong kind, or (enabled) a reranker that is not a model folder.
    """
    check_section(dc, "eval.decision", DECISION_KEYS, "enabled, reranker, top_k, batch_sizes, ...")
    check_bool("eval.decision.enabled", dc.get("enabled"))
    check_bool("eval.decision.bm25", dc.get("bm25", True), optional=False)
    for key, default in (
        ("top_k", 100),
        ("max_queries_for_latency", 50),
        ("rerank_batch_size", 32),
        ("max_length", 256),
    ):
        check_int(f"eval.decision.{key}", dc.get(key, default), 1)
    check_int_list("eval.decision.batch_sizes", dc.get("batch_sizes", [1, 32]), allow_empty=False)
    rerankers = dc.get("reranker")
    if isinstance(rerankers, (list, tuple)) and not rerankers:
        rerankers = None
    if rerankers is not None:
        many = isinstance(rerankers, (list, tuple))
        for i, path in enumerate(rerankers if many else [rerankers]):
            key = f"eval.decision.reranker[{i}]" if many else "eval.decision.reranker"
            if not isinstance(path, str) or not path.strip():
                raise ConfigError(
                    f"{key}={path!r}; expected the folder of a cross-encoder (a sequence-classification model) "
                    "or a list of them"
                )
            if decision_enabled(dc):
                check_dir(key, path, "a cross-encoder folder (a sequence-classification model)")
                if not (Path(path).expanduser() / "config.json").is_file():
                    raise ConfigError(
                        f"{key}={path}: not a model folder (no config.json); expected a cross-encoder folder "
                        "(a sequence-classification model)"
                    )


def check_section(cfg: Any, name: str, keys: tuple[str, ...], shape: str) -> None:
    """An optional config section (`eval.mteb`, `eval.rerank`): a mapping whose keys are all known settings.

    Raises:
        ConfigError: `cfg` is not a mapping, or has a key outside `keys`.
    """
    if not isinstance(cfg, dict):
        raise ConfigError(f"{name}={cfg!r}; expected a mapping ({shape}) or null")
    unknown = sorted(set(cfg) - set(keys))
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]} is not a setting; expected one of {', '.join(keys)}")
