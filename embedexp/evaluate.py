"""`embedexp-evaluate`: evaluate a model (and optionally an exported fine-tuned one beside it)."""

from __future__ import annotations

import logging
from pathlib import Path

from embedexp.config import config_dir, register_resolvers
from embedexp.runtime import process_defaults, quiet_third_party

process_defaults()
register_resolvers()

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from embedexp.cli import cli_entry, one_line_errors  # noqa: E402
from embedexp.config import container  # noqa: E402
from embedexp.secrets import scrub_files, scrub_secrets  # noqa: E402
from embedexp.validate import validate_config  # noqa: E402

log = logging.getLogger("embedexp.evaluate")


def evaluate(cfg: DictConfig) -> dict:
    from hydra.utils import instantiate

    from embedexp.errors import ModelError
    from embedexp.eval import Evaluator
    from embedexp.eval.config import decision_enabled
    from embedexp.eval.results import markdown_table, write_results
    from embedexp.models import Encoder

    out_dir = Path(cfg.paths.output_dir)
    validate_config(cfg, "evaluate")
    from embedexp.models.cross_encoder import check_bi_encoder

    check_bi_encoder(cfg.model, "embedexp-evaluate")  # a reranker preset: one line, not a traceback
    scrub_files(out_dir, cfg)
    eval_cfg = container(cfg.eval)
    decision_cfg = eval_cfg.pop("decision", None) or {}  # the decision table is this command's option
    evaluator = Evaluator(**eval_cfg)
    from embedexp.eval.decision import EncodeRecorder

    # the decision table reuses the embeddings computed here: each corpus is encoded once per command
    recorder = EncodeRecorder(evaluator.sets if decision_enabled(decision_cfg) else [])
    base_encoder = instantiate(cfg.model)
    with recorder.watch("bi-encoder base", base_encoder):
        base = evaluator.evaluate(base_encoder, use_cache=True)
    units = {"base": evaluator.last_units, "tuned": {}}
    tuned: dict[str, float] = {}
    tuned_encoder = None
    if cfg.get("tuned"):
        tuned_path = Path(cfg.tuned).expanduser()
        if not (tuned_path / "modules.json").is_file():
            raise ModelError(f"tuned={tuned_path}: not an exported model folder (no modules.json)")
        tuned_encoder = Encoder.from_exported(tuned_path)
        with recorder.watch("bi-encoder tuned", tuned_encoder):
            tuned = evaluator.evaluate(tuned_encoder)
        units["tuned"] = evaluator.last_units
    meta = {
        "title": f"{cfg.model.get('name', 'model')} on {cfg.data.get('name', 'data')}"
        + (": base vs fine-tuned" if tuned else ""),
        "base_model": str(cfg.model.model_name_or_path),
        "tuned_model": str(cfg.tuned) if tuned else None,
    }
    if evaluator.mteb is not None:  # <out_dir>/mteb: mteb's results folder of tuned and base, as train writes
        from embedexp.eval.mteb_export import export_evaluation

        meta["mteb_results"] = export_evaluation(
            out_dir, evaluator.mteb, base_encoder, tuned_encoder, meta["base_model"]
        )
    extra_md = ""
    if decision_enabled(decision_cfg):
        bi_encoders = [("bi-encoder base", base_encoder)] + (
            [("bi-encoder tuned", tuned_encoder)] if tuned_encoder is not None else []
        )
        meta["decision"], extra_md = _decision(out_dir, evaluator, bi_encoders, decision_cfg, recorder)
    meta["config"] = scrub_secrets(container(cfg))
    rows = write_results(out_dir, base, tuned, meta, units, evaluator.texts(), evaluator.stats, extra_md=extra_md)
    print("\n" + markdown_table(rows))
    if extra_md:
        print(extra_md)
    print(f"results: {out_dir / 'results.json'}")
    return rows


def _decision(out_dir: Path, evaluator, bi_encoders: list, settings: dict, recorder=None) -> tuple[dict, str]:
    """The bi-encoder vs cross-encoder decision table (embedexp/eval/decision.py): results.json's `decision`,
    the results.md section (with decision.png when it could be drawn); `recorder`: the evaluation's embeddings,
    reused; eval.precision applies."""
    from embedexp.eval.decision import as_json, environment, markdown, run_decision
    from embedexp.eval.decision_plot import plot_decision

    tables = run_decision(
        evaluator.sets,
        bi_encoders,
        settings,
        evaluator.batch_size,
        evaluator.stats,
        evaluator.show_progress,
        evaluator.precision,
        recorder,
    )
    env = environment(bi_encoders)
    md = markdown(tables, settings, env, float((evaluator.stats or {}).get("confidence", 0.95)))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        png = plot_decision(tables, settings.get("batch_sizes", [1, 32]), out_dir / "decision.png")
    except Exception as e:  # a plot must not cost the run its results
        log.warning("decision.png skipped: %s: %s", type(e).__name__, e)
        png = None
    if png is not None:
        md += f"\n![decision]({png.name})\n"
    return as_json(tables, settings, env), md


@cli_entry("evaluate")
@hydra.main(version_base="1.3", config_path=config_dir(), config_name="evaluate")
@one_line_errors
def main(cfg: DictConfig) -> None:
    quiet_third_party()
    evaluate(cfg)


if __name__ == "__main__":
    main()
