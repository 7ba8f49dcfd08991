"""mteb-ready output of a fine-tuned model: its `ModelMeta` and its results in mteb's results-folder layout.

Written through mteb's own `ResultCache.save_to_cache`, so the folder is what mteb reads back
(`mteb.ResultCache(folder).load_results(...)`, `TaskResult.from_disk`) and what the public
`embeddings-benchmark/results` repository takes in a pull request:

    <folder>/results/<org>__<model>/<revision>/<Task>.json    one TaskResult per task
    <folder>/results/<org>__<model>/<revision>/model_meta.json  the ModelMeta
    <folder>/results/<org>__<model>/<revision>/run_settings.jsonl

The revision is the model's weight fingerprint (the one embedexp's evaluator and the exported folder use).
`embedexp-train` writes `<run>/mteb` for the fine-tuned model (`export_run`); `embedexp-evaluate ... tuned=<folder>`
writes `<run>/mteb` for the tuned model and the base model (`export_evaluation`), in the same layout.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from embedexp.io import atomic_write

log = logging.getLogger(__name__)


def tuned_model_meta(
    encoder,
    revision: str,
    name: str,
    *,
    base_model: str | None = None,
    training_datasets: list[str] | None = None,
    matryoshka_dims: list[int] | None = None,
):
    """mteb's ModelMeta of a fine-tuned Encoder (no hub lookups).

    Args:
        encoder: the embedexp Encoder (its backbone gives n_parameters; `dim`, `max_seq_length`, prefixes).
        revision: the weight fingerprint.
        name: `organisation/model` (mteb requires the slash).
        base_model: what it was fine-tuned from (ModelMeta.adapted_from).
        training_datasets: names of the data it was trained on.
        matryoshka_dims: the Matryoshka loss's dims; embed_dim becomes [full dim, *smaller dims]. None: the
            encoder's own `matryoshka_dims` (what a folder written by embedexp-train with a Matryoshka loss records).
    Returns:
        mteb.models.model_meta.ModelMeta.
    """
    from mteb.models.model_meta import ModelMeta

    backbone = getattr(encoder, "backbone", None)
    if matryoshka_dims is None:
        matryoshka_dims = getattr(encoder, "matryoshka_dims", None)
    dims = sorted({int(encoder.dim), *(int(d) for d in matryoshka_dims or [] if int(d) <= encoder.dim)}, reverse=True)
    return ModelMeta(
        loader=None,
        name=name,
        revision=revision,
        release_date=None,
        languages=None,
        n_parameters=sum(p.numel() for p in backbone.parameters()) if backbone is not None else None,
        memory_usage_mb=(
            round(sum(p.numel() * p.element_size() for p in backbone.parameters()) / 2**20, 2)
            if backbone is not None
            else None
        ),
        max_tokens=getattr(encoder, "max_seq_length", None),
        embed_dim=dims if len(dims) > 1 else dims[0],
        license=None,
        open_weights=True,
        public_training_code=None,
        public_training_data=None,
        framework=["PyTorch", "Sentence Transformers"],
        reference=None,
        similarity_fn_name="cosine",
        use_instructions=bool(encoder.prefixes["query"] or encoder.prefixes["document"]),
        training_datasets=set(training_datasets) if training_datasets else None,
        adapted_from=base_model,
    )


def export_results(folder: str | Path, meta, task_results) -> Path:
    """Write `task_results` (mteb TaskResults of one model) and `meta` into mteb's results layout under `folder`.

    Returns:
        the revision folder (`<folder>/results/<model>/<revision>`).
    """
    import mteb

    cache = mteb.ResultCache(Path(folder))
    for tr in task_results:
        cache.save_to_cache(tr, meta)
    out = Path(folder) / "results" / meta.model_name_as_path() / str(meta.revision)
    if not isinstance(meta.embed_dim, int) and meta.embed_dim is not None:
        # mteb's ModelMeta.to_dict keeps only max(embed_dim); keep every Matryoshka dim (the field's list form,
        # which ModelMeta.model_validate reads back)
        path = out / "model_meta.json"
        data = json.loads(path.read_text(encoding="utf-8"))
        data["embed_dim"] = [int(d) for d in meta.embed_dim]
        atomic_write(path, json.dumps(data, indent=4, default=str))
    log.info("mteb results of %s (%d task(s)) in %s", meta.name, len(task_results), out)
    return out


def export_tuned(folder: str | Path, encoder, evaluation, *, name: str | None = None, **meta_kwargs) -> Path | None:
    """Export the last mteb run of `evaluation` (an MtebEvaluation that just scored `encoder`); None if it ran no
    named mteb task. Our own eval sets run as mteb tasks (`local_sets`) are not mteb tasks and are left out.
    """
    from embedexp.eval.mteb_eval import model_name

    results = named_task_results(evaluation.last_task_results)
    if not results:
        return None
    meta = tuned_model_meta(encoder, encoder.fingerprint(), name or model_name(encoder), **meta_kwargs)
    return export_results(folder, meta, results)


def named_task_results(task_results) -> list:
    """The TaskResults of named mteb tasks (`mteb.get_task` knows them); our own eval sets run as tasks are left out."""
    import mteb

    known = set()
    for tr in task_results:
        try:
            mteb.get_task(tr.task_name)
            known.add(tr.task_name)
        except (KeyError, ValueError):
            pass
    return [tr for tr in task_results if tr.task_name in known]


def export_run(out_dir: str | Path, encoder, evaluation, base_model: str, data_name: str | None, loss) -> str | None:
    """`embedexp-train`'s export: `<out_dir>/mteb` for the fine-tuned encoder after its final evaluation.

    Name and training datasets come from `eval.mteb.export` (`name`, `training_datasets`), by default
    `embedexp/<model name>-<data name>` and `[<data name>]`; Matryoshka dims from the loss (`loss.dims`).
    Returns the revision folder as a string, or None (no named mteb task ran). Never raises: a failed export is
    logged and the run keeps its results.
    """
    from embedexp.eval.mteb_eval import model_name

    settings = dict(getattr(evaluation, "export", None) or {})
    if settings.get("enabled") is False:
        return None
    name = settings.get("name") or model_name(encoder) + (f"-{data_name}" if data_name else "")
    datasets = settings.get("training_datasets") or ([data_name] if data_name else None)
    try:
        out = export_tuned(
            Path(out_dir) / "mteb",
            encoder,
            evaluation,
            name=name,
            base_model=base_model,
            training_datasets=list(datasets) if datasets else None,
            matryoshka_dims=list(getattr(loss, "dims", None) or []) or None,
        )
    except Exception as e:  # the results of a finished run must not be lost to an export problem
        log.warning("mteb results export skipped: %s: %s", type(e).__name__, e)
        return None
    return str(out) if out is not None else None


def export_evaluation(
    out_dir: str | Path, evaluation, base_encoder, tuned_encoder=None, base_model: str | None = None
) -> dict[str, str | None]:
    """`embedexp-evaluate`'s export: `<out_dir>/mteb` with the tuned model's and the base model's mteb results.

    The same layout as `export_run` (one revision folder per model). Names: the tuned model is `eval.mteb.export.name`
    or `<base model name>-tuned` (its ModelMeta's adapted_from is `base_model`, training datasets from
    `eval.mteb.export.training_datasets`); the base model keeps its own `embedexp/<name>`. A base model whose scores
    came from embedexp's eval cache is exported from mteb's result cache (`eval.mteb.result_cache: true`, the
    default); with that cache off it is skipped with a log line.

    Returns:
        {"tuned": revision folder or None, "base": ...} (only the models given); {} when `export.enabled` is false.
        Never raises: a failed export is logged and the evaluation keeps its results.
    """
    from embedexp.eval.mteb_eval import model_name

    settings = dict(getattr(evaluation, "export", None) or {})
    if settings.get("enabled") is False:
        return {}
    folder = Path(out_dir) / "mteb"
    out: dict[str, str | None] = {}
    for role, encoder in (("tuned", tuned_encoder), ("base", base_encoder)):
        if encoder is None:
            continue
        out[role] = None
        try:
            revision = encoder.fingerprint()
            found = evaluation.task_results_for(encoder, revision)
            if found is None:
                log.warning(
                    "mteb results of the %s model not exported: its scores came from embedexp's eval cache and mteb's "
                    "result cache does not hold them (eval.mteb.result_cache=true keeps them)",
                    role,
                )
                continue
            results = named_task_results(found)
            if not results:
                log.info("mteb results of the %s model not exported: no named mteb task ran", role)
                continue
            if role == "tuned":
                datasets = settings.get("training_datasets")
                meta = tuned_model_meta(
                    encoder,
                    revision,
                    settings.get("name") or model_name(base_encoder) + "-tuned",
                    base_model=base_model,
                    training_datasets=list(datasets) if datasets else None,
                )
            else:
                meta = tuned_model_meta(encoder, revision, model_name(encoder))
            out[role] = str(export_results(folder, meta, results))
        except Exception as e:  # the evaluation's results must not be lost to an export problem
            log.warning("mteb results export of the %s model skipped: %s: %s", role, type(e).__name__, e)
    return out
