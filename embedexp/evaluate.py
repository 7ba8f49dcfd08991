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
    from embedexp.eval.results import markdown_table, write_results
    from embedexp.models import Encoder

    out_dir = Path(cfg.paths.output_dir)
    validate_config(cfg, "evaluate")
    scrub_files(out_dir, cfg)
    evaluator = Evaluator(**container(cfg.eval))
    base = evaluator.evaluate(instantiate(cfg.model), use_cache=True)
    units = {"base": evaluator.last_units, "tuned": {}}
    tuned: dict[str, float] = {}
    if cfg.get("tuned"):
        tuned_path = Path(cfg.tuned).expanduser()
        if not (tuned_path / "modules.json").is_file():
            raise ModelError(f"tuned={tuned_path}: not an exported model folder (no modules.json)")
        tuned = evaluator.evaluate(Encoder.from_exported(tuned_path))
        units["tuned"] = evaluator.last_units
    meta = {
        "title": f"{cfg.model.get('name', 'model')} on {cfg.data.get('name', 'data')}"
        + (": base vs fine-tuned" if tuned else ""),
        "base_model": str(cfg.model.model_name_or_path),
        "tuned_model": str(cfg.tuned) if tuned else None,
        "config": scrub_secrets(container(cfg)),
    }
    rows = write_results(out_dir, base, tuned, meta, units, evaluator.texts(), evaluator.stats)
    print("\n" + markdown_table(rows))
    print(f"results: {out_dir / 'results.json'}")
    return rows


@cli_entry("evaluate")
@hydra.main(version_base="1.3", config_path=config_dir(), config_name="evaluate")
@one_line_errors
def main(cfg: DictConfig) -> None:
    quiet_third_party()
    evaluate(cfg)


if __name__ == "__main__":
    main()
