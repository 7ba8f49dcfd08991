"""`embedexp-train` / `python -m embedexp.train`: fine-tune an encoder and compare it with its base."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from embedexp.config import config_dir, quiet_third_party, register_resolvers, set_offline_defaults

set_offline_defaults()
register_resolvers()

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from embedexp.run_utils import check_loss_fits_data, container, one_line_errors, split_trainer_cfg  # noqa: E402

log = logging.getLogger("embedexp.train")


def train(cfg: DictConfig) -> dict:
    import lightning as L
    from hydra.utils import instantiate

    from embedexp.eval import EvaluationCallback, Evaluator
    from embedexp.eval.report import markdown_table, write_results
    from embedexp.module import EmbeddingModule

    out_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)

    # 1. everything cheap and checkable first: config values, data files, eval files
    optim_kwargs, trainer_kwargs = split_trainer_cfg(cfg.trainer)
    loss = instantiate(cfg.loss)
    datamodule = instantiate(cfg.data, seed=cfg.seed)
    train_set = datamodule.load()
    if cfg.miner.get("name", "none") != "none":
        train_set = instantiate(cfg.miner).mine(train_set)
        datamodule.set_train_set(train_set)
    check_loss_fits_data(loss, train_set.columns, train_set.labels is not None, cfg.data.get("name", "?"))
    log.info("training data: %d rows, columns %s", len(train_set), train_set.columns)
    evaluator = Evaluator(**container(cfg.eval))

    # 2. the model
    encoder = instantiate(cfg.model)
    if hasattr(loss, "attach"):  # losses that own model parts (TSDAE's decoder) build them from the encoder
        loss.attach(encoder)
    datamodule.set_tokenizer(encoder.tokenize)
    module = EmbeddingModule(encoder, loss, **optim_kwargs)

    loggers = [instantiate(lg) for lg in container(cfg.get("logger")).values() if lg]
    eval_cb = EvaluationCallback(evaluator)
    trainer = L.Trainer(
        **trainer_kwargs,
        logger=loggers or False,
        callbacks=[eval_cb],
        default_root_dir=str(out_dir),
        enable_checkpointing=False,
    )
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    train_seconds = time.perf_counter() - t0
    if not trainer.is_global_zero:
        return {}

    # 3. export, then results (results.json marks a finished run)
    model_dir = encoder.save(out_dir / "model")
    meta = {
        "title": f"{cfg.model.get('name', 'model')} on {cfg.data.get('name', 'data')}: base vs fine-tuned",
        "base_model": str(cfg.model.model_name_or_path),
        "model_dir": str(model_dir),
        "steps": trainer.global_step,
        "train_rows": len(train_set),
        "fit_seconds_incl_eval": round(train_seconds, 1),
        "config": container(cfg),
    }
    rows = write_results(out_dir, eval_cb.base, eval_cb.tuned, meta)
    print("\n" + markdown_table(rows))
    print(f"results: {out_dir / 'results.json'}\nmodel:   {model_dir}")
    return rows


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
@one_line_errors
def main(cfg: DictConfig) -> None:
    quiet_third_party()
    log.debug("config:\n%s", OmegaConf.to_yaml(cfg))
    train(cfg)


if __name__ == "__main__":
    main()
