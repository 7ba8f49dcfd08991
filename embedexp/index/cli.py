"""`embedexp-index` (encode a corpus into an index folder) and `embedexp-search` (query one)."""

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

log = logging.getLogger("embedexp.index")


def _load_model(cfg: DictConfig):
    """(encoder, spec) from `model_dir=` (an exported folder) or the `model` preset; (None, None) if neither."""
    from hydra.utils import instantiate

    from embedexp.errors import ModelError
    from embedexp.models import Encoder

    if cfg.get("model_dir"):
        path = Path(cfg.model_dir).expanduser().resolve()
        if not (path / "modules.json").is_file():
            raise ModelError(f"model_dir={path}: not an exported model folder (no modules.json)")
        encoder = Encoder.from_exported(path)
        return encoder, None  # an Encoder describes itself (store.model_spec)
    if cfg.get("model") is not None:
        return instantiate(cfg.model), container(cfg.model)
    return None, None


def _corpus_root(corpus: str) -> Path:
    from embedexp.errors import DataError

    path = Path(corpus).expanduser()
    if path.is_file():
        if path.name not in ("corpus.jsonl", "corpus.jsonl.gz"):
            raise DataError(f"corpus={path}: expected a BEIR folder or its corpus.jsonl[.gz]")
        return path.parent
    return path


def build(cfg: DictConfig) -> dict:
    """Read the corpus, encode it with the model and write the index folder; returns its manifest."""
    from embedexp.data.readers import doc_text, load_corpus
    from embedexp.index.store import Index

    corpus = load_corpus(_corpus_root(str(cfg.corpus)), on_error=cfg.get("on_error", "raise"))
    encoder, spec = _load_model(cfg)
    if encoder is None:
        from embedexp.errors import ConfigError

        raise ConfigError("no model: choose a preset (model=minilm) or an exported folder (model_dir=...)")
    index = Index.build(
        encoder,
        list(corpus),
        [doc_text(d) for d in corpus.values()],
        batch_size=cfg.batch_size,
        show_progress=cfg.show_progress,
        spec=spec,
        source=str(Path(cfg.corpus).expanduser().resolve()),
    )
    path = index.save(cfg.out)
    m = index.manifest
    print(f"indexed {m['count']} documents ({m['dim']} dims, normalize={m['normalize']}) with {m['model']['name']}")
    print(f"index: {path}")
    print(f'search it: embedexp-search index={path} query="..."')
    return m


def search(cfg: DictConfig) -> list:
    """Load the index, check the model, print the top-k documents of each query."""
    from embedexp.errors import ConfigError, DataError
    from embedexp.index.store import Index

    queries = [cfg.query] if cfg.get("query") else []
    if cfg.get("queries"):
        qfile = Path(cfg.queries).expanduser()
        if not qfile.is_file():
            raise DataError(f"queries={qfile}: file not found (expected one query per line)")
        queries += [line.strip() for line in qfile.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not queries:
        raise ConfigError('nothing to search: give query="..." or queries=FILE (one query per line)')
    if not cfg.get("index"):
        raise ConfigError("index=PATH is required (a folder written by embedexp-index)")
    index = Index.load(cfg.index)
    encoder, _ = _load_model(cfg)
    if encoder is not None:
        index.attach(encoder, rebuild=_rebuild_command(cfg, index))
    results = index.search(queries, int(cfg.k))
    for query, hits in zip(queries, results):
        print(f"query: {query}")
        for rank, (doc_id, score) in enumerate(hits, start=1):
            print(f"{rank:>4}  {score:.4f}  {_snippet(index.text(doc_id)):<{SNIPPET}}  {doc_id}")
    return results


SNIPPET = 100  # characters of document text shown per hit


def _snippet(text: str | None, width: int = SNIPPET) -> str:
    """One line of at most `width` characters (whitespace collapsed, `…` where cut); `-` when unknown."""
    if text is None:
        return "-"
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def _rebuild_command(cfg: DictConfig, index) -> str:
    """The embedexp-index command that rebuilds `index` with the model named on this command line."""
    corpus = index.manifest.get("source") or "<corpus folder>"
    out = Path(cfg.index).expanduser().resolve()
    if cfg.get("model_dir"):
        model = f"model_dir={Path(cfg.model_dir).expanduser().resolve()}"
    else:
        try:
            from hydra.core.hydra_config import HydraConfig

            preset = HydraConfig.get().runtime.choices.get("model")
        except Exception:  # composed outside a Hydra run (tests)
            preset = None
        model = f"model={preset}" if preset else f"model.model_name_or_path={cfg.model.model_name_or_path}"
    return f"embedexp-index corpus={corpus} {model} out={out}"


@cli_entry("index")
@hydra.main(version_base="1.3", config_path=config_dir(), config_name="index")
@one_line_errors
def index_main(cfg: DictConfig) -> None:
    quiet_third_party()
    build(cfg)


@cli_entry("search")
@hydra.main(version_base="1.3", config_path=config_dir(), config_name="search")
@one_line_errors
def search_main(cfg: DictConfig) -> None:
    quiet_third_party()
    search(cfg)
