"""`embedexp-mine` / `python -m embedexp.mine`: mine (hard) negatives alone and write them as a pairs file.

Output, in the run folder: `mined.jsonl` (rows {"anchor", "positive", "negatives": [...]}, what `data=pairs`
reads; with `miner.teacher_scores=true` FlagEmbedding rows {"query", "pos", "neg", "pos_scores", "neg_scores"},
what `data=table` reads with the scores) and `mining_stats.json` (what every filter removed, short rows, cache use,
timings, the config).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from embedexp.config import config_dir, register_resolvers
from embedexp.runtime import process_defaults, quiet_third_party

process_defaults()
register_resolvers()

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from embedexp.cli import cli_entry, one_line_errors  # noqa: E402
from embedexp.config import container  # noqa: E402
from embedexp.io import atomic_write  # noqa: E402
from embedexp.secrets import scrub_files, scrub_secrets  # noqa: E402
from embedexp.validate import validate_config  # noqa: E402

log = logging.getLogger("embedexp.mine")


def write_pairs(path: Path, train_set) -> Path:
    """Rows (anchor, positive, negative_1..n) -> jsonl, written atomically; rows with teacher scores as
    FlagEmbedding rows (query, pos, neg, pos_scores, neg_scores; a NaN score as null)."""
    from embedexp.data.scored_rows import nan_to_none

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    scored = bool(getattr(train_set, "has_scores", False))
    with open(tmp, "w", encoding="utf-8") as f:
        for i, row in enumerate(train_set.rows):
            if scored:
                s = nan_to_none(train_set.scores(i))
                obj = {"query": row[0], "pos": [row[1]], "neg": list(row[2:]), "pos_scores": s[:1], "neg_scores": s[1:]}
            else:
                obj = {"anchor": row[0], "positive": row[1], "negatives": list(row[2:])}
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def mine(cfg: DictConfig) -> dict:
    from hydra.utils import instantiate

    from embedexp.errors import ConfigError

    if cfg.miner is None or "_target_" not in cfg.miner:
        raise ConfigError(
            f"miner={cfg.miner.get('name', 'none') if cfg.miner else 'none'} has nothing to mine; "
            "choose miner=bm25, dense, cross_encoder or random"
        )
    out_dir = Path(cfg.paths.output_dir)
    validate_config(cfg, "mine")
    scrub_files(out_dir, cfg)
    train_set = instantiate(cfg.data, seed=cfg.seed).load()
    miner = instantiate(cfg.miner)
    encoder = instantiate(cfg.model) if getattr(miner, "needs_encoder", False) else None
    mined = miner.mine(train_set, encoder=encoder)
    pairs = write_pairs(out_dir / f"{cfg.output_name}.jsonl", mined)
    stats = {
        "rows": len(mined),
        "columns": list(mined.columns),
        "pairs_file": str(pairs),
        "mining": mined.info.get("mining", {"miner": mined.info.get("miner")}),
        "config": scrub_secrets(container(cfg)),
    }
    stats_path = out_dir / "mining_stats.json"
    atomic_write(stats_path, json.dumps(stats, indent=2) + "\n")
    m = stats["mining"]
    if "removed" in m:
        print("removed by filter: " + ", ".join(f"{k}={v}" for k, v in m["removed"].items()))
        print(
            f"rows: {m['rows_in']} in, {m['rows_out']} out; {m['rows_short']} rows ({m['queries_short']} queries) "
            f"got fewer than {cfg.miner.get('n_negatives')} negatives; cache: {m.get('cache')}"
        )
    print(f"mined: {pairs}\nstats: {stats_path}")
    if getattr(mined, "has_scores", False):
        print(f"train on it: embedexp-train data=table data.train.path={pairs} loss=distill_kl")
    else:
        print(f"train on it: embedexp-train data=pairs data.train.path={pairs}")
    return stats


@cli_entry("mine")
@hydra.main(version_base="1.3", config_path=config_dir(), config_name="mine")
@one_line_errors
def main(cfg: DictConfig) -> None:
    quiet_third_party()
    mine(cfg)


if __name__ == "__main__":
    main()
