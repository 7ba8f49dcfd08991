"""`embedexp-train` / `python -m embedexp.train`: fine-tune an encoder and compare it with its base."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from embedexp.config import config_dir, register_resolvers
from embedexp.runtime import process_defaults, quiet_third_party

process_defaults()
register_resolvers()

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from embedexp.cli import cli_entry, one_line_errors  # noqa: E402
from embedexp.config import container  # noqa: E402
from embedexp.launch import hydra_job_command, launches_script_children  # noqa: E402
from embedexp.secrets import scrub_files, scrub_secrets  # noqa: E402
from embedexp.trainer.config import check_batches, split_trainer_cfg  # noqa: E402
from embedexp.validate import validate_config  # noqa: E402

log = logging.getLogger("embedexp.train")


def _fit(
    encoder,
    loss,
    datamodule,
    trainer_kwargs: dict,
    optim_kwargs: dict,
    out_dir: Path,
    callbacks,
    loggers,
    checkpoint: dict | None = None,
    ckpt_path: str | None = None,
):
    import lightning as L

    from embedexp.checkpointing import ResumableCheckpoint
    from embedexp.curves import CurveKeeper
    from embedexp.progress import resolved_mode

    if hasattr(loss, "attach"):  # losses that own model parts (TSDAE's decoder) build them from the encoder
        loss.attach(encoder)
    from embedexp.models.cross_encoder import CROSS_ENCODER, model_kind

    if model_kind(encoder) == CROSS_ENCODER:
        from embedexp.rerank_module import RerankModule

        datamodule.set_tokenizer(_no_column_tokens)  # pairs are tokenised together in RerankModule's step
        module = RerankModule(encoder, loss, **optim_kwargs)
    else:
        from embedexp.module import EmbeddingModule

        datamodule.set_tokenizer(encoder.tokenize)
        module = EmbeddingModule(encoder, loss, **optim_kwargs)
    from embedexp.trainer.progress import FinishBars, LineProgressBar

    callbacks = [CurveKeeper(), *callbacks, FinishBars()]  # CurveKeeper first: it starts the CSV file
    mode = resolved_mode()
    if trainer_kwargs.get("enable_progress_bar", True) and mode == "lines":
        callbacks.append(LineProgressBar())  # not a terminal: plain `step N/M loss=...` lines instead of a bar
    elif mode == "none":
        trainer_kwargs = {**trainer_kwargs, "enable_progress_bar": False}
    if checkpoint and checkpoint.get("enabled", True):
        callbacks.append(
            ResumableCheckpoint(out_dir / "checkpoints", checkpoint.get("every_n_steps"), datamodule=datamodule)
        )
    trainer = L.Trainer(
        **trainer_kwargs,
        logger=loggers or False,
        callbacks=callbacks,
        default_root_dir=str(out_dir),
        enable_checkpointing=False,
        use_distributed_sampler=False,  # EmbeddingDataModule splits rows per rank itself, resumably
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return trainer


def _no_column_tokens(texts, kind) -> dict:
    """A cross-encoder batch needs no per-column tokens: RerankModule tokenises (query, document) pairs."""
    return {}


def check_model_fits_loss(cfg: DictConfig, loss, optim_kwargs: dict) -> bool:
    """A cross-encoder model needs a cross-encoder loss and the reverse, checked before any data or weights load;
    a cross-encoder run also refuses the options only a bi-encoder run has. Returns True for a cross-encoder run.

    Raises:
        ConfigError: one line naming the model preset, the loss and what to choose instead.
    """
    from embedexp.errors import ConfigError
    from embedexp.losses.config import loss_attr
    from embedexp.models.cross_encoder import CROSS_ENCODER, model_kind

    model_name = cfg.model.get("name") or cfg.model.get("model_name_or_path")
    cross_model = model_kind(cfg.model) == CROSS_ENCODER
    cross_loss = loss_attr(loss, "kind") == CROSS_ENCODER
    if cross_model and not cross_loss:
        raise ConfigError(
            f"loss={type(loss).__name__} is a bi-encoder (embedding) loss, but model={model_name} is a cross-encoder; "
            "expected loss=rerank_listwise or loss=rerank_bce (or a bi-encoder model preset such as model=minilm)"
        )
    if cross_loss and not cross_model:
        raise ConfigError(
            f"loss={type(loss).__name__} trains a cross-encoder (reranker), but model={model_name} is a bi-encoder; "
            "expected model=cross_encoder_minilm or model=cross_encoder_tiny (or a bi-encoder loss such as loss=infonce)"
        )
    if not cross_model:
        return False
    if cfg.get("pretrain"):
        raise ConfigError(
            "pretrain: is a bi-encoder stage (TSDAE); a cross-encoder run has none: expected pretrain=null"
        )
    if optim_kwargs.get("grad_cache"):
        raise ConfigError(
            "trainer.grad_cache.chunk_size is set, but GradCache caches embeddings and a cross-encoder has none; "
            "expected trainer.grad_cache.chunk_size=null (use trainer.accumulate_grad_batches)"
        )
    if float(cfg.data.get("dev_fraction") or 0) > 0:
        raise ConfigError(
            f"data.dev_fraction={cfg.data.get('dev_fraction')}: dev-set model selection evaluates a bi-encoder; "
            "expected data.dev_fraction=0 for a cross-encoder run"
        )
    from embedexp.eval.reranker_run import check_reranker_eval

    check_reranker_eval(container(cfg.eval))
    return True


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _run_job_alone(out_dir: Path) -> dict:
    """Run this multirun job as a plain single run in fresh processes (rank 0 + Lightning's children) and wait.

    Lightning's subprocess DDP launcher starts ranks 1.. by re-running `sys.argv` with `hydra.run.dir=...`
    appended; under `-m` that re-runs the whole sweep (a second sweep folder, every job twice). It also leaves
    LOCAL_RANK/MASTER_PORT in os.environ and the process group alive, so a second DDP job in the same multirun
    process would start no children and join a dead group. So a DDP job of a multirun is re-run alone
    (`hydra_job_command`: the job's own overrides and folder) in a child process, whose Lightning then launches
    the other ranks the supported single-run way; the multirun process keeps no DDP state between jobs.

    Returns:
        the job's metric rows, read from `<out_dir>/results.json`.
    Raises:
        SystemExit(2): the run stopped on a user error (it printed the `embedexp: error: ...` line).
        RuntimeError: the run failed otherwise (exit status and log file named).
    """
    import json
    import subprocess

    from hydra.core.hydra_config import HydraConfig

    cmd, cwd = hydra_job_command("embedexp.train", HydraConfig.get(), out_dir)
    log.info("multirun job with subprocess DDP: running it alone in %s", out_dir)
    log.debug("command: %s (cwd %s)", cmd, cwd)
    proc = subprocess.Popen(cmd, cwd=cwd)
    try:
        rc = proc.wait()
    except BaseException:  # Ctrl-C, a signal turned into an exception: the job's processes stop with it
        proc.terminate()
        proc.wait()
        raise
    if rc == 2:
        raise SystemExit(2)
    if rc != 0:
        raise RuntimeError(
            f"job {HydraConfig.get().job.get('num', '?')}: its DDP run exited with status {rc}; "
            f"see {out_dir}/{HydraConfig.get().job.name}.log"
        )
    return json.loads((out_dir / "results.json").read_text(encoding="utf-8"))["metrics"]


def _is_rank_zero() -> bool:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


def _prepare_data(data_cfg, loss, miner_cfg, seed: int, name: str):
    from hydra.utils import instantiate

    from embedexp.losses.config import check_loss_fits_data

    datamodule = instantiate(data_cfg, seed=seed)
    datamodule.use_loss(loss)  # batch_sampler=auto and known-positive masking follow the loss
    train_set = datamodule.load()
    pending = None  # a miner that needs the model being trained runs once the model is built
    if miner_cfg is not None and miner_cfg.get("name", "none") != "none":
        miner = instantiate(miner_cfg)
        if getattr(miner, "needs_encoder", False):
            pending = miner
            if train_set.corpus is None and train_set.columns[:2] != ("anchor", "positive"):  # pairs: a view
                from embedexp.errors import ConfigError

                raise ConfigError(
                    f"miner={miner_cfg.name} needs retrieval data: a BEIR folder or (anchor, positive[, negatives]) "
                    f"rows; this data has columns {train_set.columns}"
                )
        else:
            train_set = miner.mine(train_set)
            datamodule.set_train_set(train_set)
    if pending is None:
        check_loss_fits_data(
            loss, train_set.columns, train_set.labels is not None, name, getattr(train_set, "has_scores", None)
        )
    log.info("%s data: %d rows, columns %s", name, len(train_set), train_set.columns)
    return datamodule, train_set, pending


def _selection(cfg: DictConfig, datamodule, evaluator):
    """The ModelSelection callback when a dev set exists (data.dev_fraction > 0), else None (checks select.*)."""
    from embedexp.eval import Evaluator
    from embedexp.eval.selection import ModelSelection
    from embedexp.eval.sets import pairs_retrieval_set

    sel = container(cfg.get("select")) or {}
    if not datamodule.dev_rows:
        if sel.get("interpolate"):
            from embedexp.errors import ConfigError

            raise ConfigError("select.interpolate=true needs a dev set; expected data.dev_fraction > 0 (e.g. 0.1)")
        return None
    name = f"{cfg.data.get('name', 'data')}_dev"
    dev_set = pairs_retrieval_set(name, datamodule.dev_rows, f"dev:{datamodule.fingerprint()}", datamodule.dev_corpus)
    dev = Evaluator([dev_set], batch_size=evaluator.batch_size, show_progress=False, **evaluator.ks)
    log.info(
        "dev set %s: %d queries held out of training, %d documents",
        name,
        len(dev.sets[0].query_ids),
        len(dev.sets[0].doc_ids),
    )
    specs = container(cfg.eval).get("sets") or {}
    general_sets = list(sel.get("general_sets") or [])
    missing = [g for g in general_sets if g not in specs]
    if missing:
        from embedexp.errors import ConfigError

        raise ConfigError(
            f"select.general_sets={general_sets}: {missing[0]} is not an eval set; expected one of {', '.join(specs)}"
        )
    general, general_metric = None, sel.get("general_metric")
    if general_sets:
        eval_cfg = container(cfg.eval)
        general = Evaluator(
            {g: specs[g] for g in general_sets},
            batch_size=evaluator.batch_size,
            show_progress=False,
            cache_dir=eval_cfg.get("cache_dir"),
            **evaluator.ks,
        )
        if general_metric is None:
            first = general_sets[0]
            general_metric = f"{first}/{'spearman' if specs[first].get('type') == 'sts' else 'ndcg@10'}"
    return ModelSelection(
        dev,
        sel.get("monitor") or f"{name}/ndcg@10",
        sel.get("mode", "max"),
        sel.get("every_n_steps"),
        sel.get("patience"),
        general,
        general_metric,
        bool(sel.get("interpolate")),
        sel.get("alphas") or (0.0, 0.25, 0.5, 0.75, 1.0),
        float(sel.get("max_general_drop", 0.01)),
    )


def _selection_markdown(selection, out_dir: Path) -> str:
    """results.md sections for the dev-set selection and the interpolation guard (with its Pareto plot)."""
    from embedexp.eval import interpolate as ip

    md = ""
    picked = selection.report.get("selection")
    if picked:
        md += (
            f"\n## Model selection (dev set)\n\n- monitor: {picked['monitor']} ({picked['mode']}); best "
            f"{picked['best']:.4f} at step {picked['best_step']} of {picked['last_step']}\n"
            + "".join(f"- step {h['step']}: {h[picked['monitor']]:.4f}\n" for h in picked["history"])
        )
    inter = selection.report.get("interpolation")
    if inter:
        chosen = {**inter["chosen"], "row": next(r for r in inter["rows"] if r["alpha"] == inter["chosen"]["alpha"])}
        md += "\n## Interpolation guard (WiSE-FT)\n\n" + ip.markdown(
            inter["rows"], chosen, selection.monitor, selection.general_metric
        )
        try:
            ip.plot_pareto(
                inter["rows"], chosen, selection.monitor, selection.general_metric, out_dir / "interpolation.png"
            )
            md += "\n![interpolation](interpolation.png)\n"
        except Exception as e:  # a plot must not cost the run its results
            log.warning("interpolation plot skipped: %s: %s", type(e).__name__, e)
    return md


def _memory_first(model_cfg) -> None:
    """LoRA and gradient checkpointing are chosen to save memory: let the allocator return freed blocks too."""
    from embedexp.runtime import prefer_low_memory

    peft = model_cfg.get("peft") if hasattr(model_cfg, "get") else None
    lora = bool(peft and peft.get("r"))
    if lora or model_cfg.get("gradient_checkpointing"):
        prefer_low_memory("model.peft.r" if lora else "model.gradient_checkpointing")


def train(cfg: DictConfig) -> dict:
    validate_config(cfg, "train")  # types, ranges, paths: before any data or model loads (or heavy import)
    from embedexp.progress import configure

    configure(**(container(cfg.get("progress")) or {}))  # checked: one line naming progress.<key>
    import lightning as L
    from hydra.utils import instantiate

    from embedexp.runtime import quiet_lightning

    quiet_lightning()  # lightning's import added its own console handler: one stream, no tips
    from embedexp.eval import EvaluationCallback, Evaluator
    from embedexp.eval.card import write_model_card
    from embedexp.eval.results import markdown_table, write_results
    from embedexp.loggers import log_results
    from embedexp.models.api import check_trainable

    out_dir = Path(cfg.paths.output_dir)
    scrub_files(out_dir, cfg)  # a key given on the command line must not stay in .hydra/*.yaml
    L.seed_everything(cfg.seed, workers=True)

    # 1. everything cheap and checkable first: config values, data files, eval files
    optim_kwargs, trainer_kwargs = split_trainer_cfg(cfg.trainer)
    if _in_multirun() and launches_script_children(trainer_kwargs):
        return _run_job_alone(out_dir)  # DDP ranks re-run the command line: give them this job's alone
    check_trainable(cfg.model)  # API embedding models can only be evaluated
    loss = instantiate(cfg.loss)
    cross = check_model_fits_loss(cfg, loss, optim_kwargs)  # model kind vs loss kind: one line, before any data
    data_name = f"data={cfg.data.get('name', '?')}"
    datamodule, train_set, pending_miner = _prepare_data(cfg.data, loss, cfg.miner, cfg.seed, data_name)
    if cross and pending_miner is not None:
        from embedexp.errors import ConfigError

        raise ConfigError(
            f"miner={cfg.miner.get('name')} with a null model mines with the model being trained, a cross-encoder "
            "here; expected a bi-encoder preset for the miner (+model@miner.model=minilm) or miner=bm25"
        )
    check_batches(cfg, len(train_set))
    pretrain = cfg.get("pretrain")
    if pretrain:
        pre_loss = instantiate(pretrain.loss)
        pre_data, _, _ = _prepare_data(pretrain.data, pre_loss, None, cfg.seed, "pretrain.data")
        pre_optim, pre_trainer = split_trainer_cfg(OmegaConf.merge(cfg.trainer, pretrain.get("trainer") or {}))
    if cross:
        from embedexp.eval.reranker_run import RerankerRunEvaluator

        evaluator = RerankerRunEvaluator(**container(cfg.eval))  # first stage alone / + base / + tuned reranker
        selection = None
    else:
        evaluator = Evaluator(**container(cfg.eval))
        selection = _selection(cfg, datamodule, evaluator)

    # 2. the model; its base results are computed (or read from cache) before any training
    _memory_first(cfg.model)
    encoder = instantiate(cfg.model)
    trainable, total = encoder.trainable_parameters()
    log.info("trainable parameters: %d of %d (%.2f%%)", trainable, total, 100.0 * trainable / max(total, 1))
    if pending_miner is not None:
        from embedexp.losses.config import check_loss_fits_data

        train_set = pending_miner.mine(train_set, encoder=encoder)
        datamodule.set_train_set(train_set)
        check_loss_fits_data(
            loss, train_set.columns, train_set.labels is not None, data_name, getattr(train_set, "has_scores", None)
        )
    dims = getattr(loss, "dims", None)
    if dims:
        from embedexp.losses.matryoshka import check_dims

        check_dims(dims, encoder.dim)
    loggers = [instantiate(lg) for lg in container(cfg.get("logger")).values() if lg]
    eval_cb = EvaluationCallback(evaluator)
    from embedexp.checkpointing import check_resume_data, resolve_ckpt_path

    checkpoint = container(cfg.get("checkpoint")) or {}
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), out_dir / "checkpoints")
    check_resume_data(ckpt_path, datamodule)  # changed batch size, seed or rows: fail before the base evaluation
    if _is_rank_zero():
        eval_cb.base = evaluator.evaluate(encoder, use_cache=True)
        eval_cb.units["base"] = evaluator.last_units
    t0 = time.perf_counter()
    stages = []
    if pretrain and ckpt_path:
        log.info("resuming the main stage: skipping the pretrain stage")
    elif pretrain:
        log.info("stage 1 (pretrain): %s", type(pre_loss).__name__)
        trainer = _fit(encoder, pre_loss, pre_data, pre_trainer, pre_optim, out_dir / "pretrain", [], loggers)
        stages.append(
            {
                "stage": "pretrain",
                "loss": type(pre_loss).__name__,
                "steps": trainer.global_step,
                "model_dir": str(encoder.save(out_dir / "pretrain" / "model")),
            }
        )
    trainer = _fit(
        encoder,
        loss,
        datamodule,
        trainer_kwargs,
        optim_kwargs,
        out_dir,
        [selection, eval_cb] if selection is not None else [eval_cb],
        loggers,
        checkpoint=checkpoint,
        ckpt_path=ckpt_path,
    )
    stages.append({"stage": "train", "loss": type(loss).__name__, "steps": trainer.global_step})
    train_seconds = time.perf_counter() - t0
    if not trainer.is_global_zero:
        return {}

    # 3. export, then results (results.json marks a finished run)
    if not cross:
        encoder.matryoshka_dims = [int(d) for d in getattr(loss, "dims", None) or []] or None
    model_dir = encoder.save(out_dir / "model")
    if not cross:
        what = "base vs fine-tuned"
    elif getattr(evaluator, "rerank_base", True):
        what = f"{evaluator.first_stage.name} top {evaluator.top_k} reranked by base vs fine-tuned"
    else:
        what = f"{evaluator.first_stage.name} alone vs its top {evaluator.top_k} reranked by the fine-tuned reranker"
    meta = {
        "title": f"{cfg.model.get('name', 'model')} on {cfg.data.get('name', 'data')}: {what}",
        "base_model": str(cfg.model.model_name_or_path),
        "model_dir": str(model_dir),
        "loss": type(loss).__name__,
        "steps": trainer.global_step,
        "train_rows": len(train_set),
        "mining": train_set.info.get("mining"),
        "fit_seconds_incl_eval": round(train_seconds, 1),
        "stages": stages,
        "resumed_from": ckpt_path,
        "config": scrub_secrets(container(cfg)),
    }
    if evaluator.mteb is not None:  # mteb's ModelMeta + results folder of the tuned model, ready to submit
        from embedexp.eval.mteb_export import export_run

        meta["mteb_results"] = export_run(
            out_dir, encoder, evaluator.mteb, meta["base_model"], cfg.data.get("name"), loss
        )
    extra_md = ""
    if cross:
        meta["first_stage"] = evaluator.summary(eval_cb.base, eval_cb.tuned, eval_cb.units)
        extra_md = evaluator.markdown(eval_cb.base, eval_cb.tuned, meta["first_stage"])
    if selection is not None:
        meta["selection"] = selection.report
        extra_md = _selection_markdown(selection, out_dir)
    rows = write_results(
        out_dir, eval_cb.base, eval_cb.tuned, meta, eval_cb.units, evaluator.texts(), evaluator.stats, extra_md
    )
    if cross:
        from embedexp.eval.reranker_run import write_reranker_card

        write_reranker_card(model_dir, rows, meta)
    else:
        write_model_card(model_dir, rows, meta, evaluator.stats)  # README.md in the model folder, same table
    log_results(loggers, rows, model_dir, meta)  # W&B: summary, table, model artifact; others: no-op
    if not checkpoint.get("keep", False):  # the run is finished: its resume checkpoint is dead weight
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    print("\n" + markdown_table(rows))
    print(f"results: {out_dir / 'results.json'}\nmodel:   {model_dir}")
    return rows


@cli_entry("train")
@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
@one_line_errors
def main(cfg: DictConfig) -> float | None:
    quiet_third_party()
    log.debug("config:\n%s", OmegaConf.to_yaml(cfg))
    from embedexp.sweep import check_objective, objective

    returns_objective = check_objective(cfg)  # hydra/sweeper=optuna: needs a dev set (ConfigError otherwise)
    train(cfg)
    return objective(cfg.paths.output_dir) if returns_objective else None  # the dev metric, for the sweeper


if __name__ == "__main__":
    main()
