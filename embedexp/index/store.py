"""A vector index of a corpus on disk: faiss IndexFlatIP + document ids + a manifest naming the model.

Folder layout (written to a temporary sibling, then renamed into place):

    index.faiss     faiss IndexFlatIP over the document embeddings (inner product = cosine when normalised)
    ids.json        document ids, in index row order
    texts.jsonl     document texts (one JSON string a line, in index row order), shown by embedexp-search
    manifest.json   model fingerprint and how to rebuild the model, dim, count, normalisation, file checksums

An index only answers queries embedded by the model that built it: `Index.load(path, encoder=...)`
and `Index.search` compare fingerprints and refuse another model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from embedexp.errors import ConfigError, DataError, ModelError

log = logging.getLogger(__name__)
FORMAT = "embedexp-index"
VERSION = 1
MANIFEST, INDEX_FILE, IDS_FILE, TEXTS_FILE = "manifest.json", "index.faiss", "ids.json", "texts.jsonl"
REQUIRED = ("format", "version", "model", "dim", "count", "normalize", "files")


def _faiss():
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is noise
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss-cpu is a core dependency
        raise ConfigError("the index needs faiss: pip install faiss-cpu") from e
    return faiss


def _file_hash(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_spec(encoder: Any) -> dict | None:
    """How to rebuild `encoder` later (a config for hydra's instantiate), when it is an embedexp Encoder."""
    from embedexp.models.encoder import Encoder

    if not isinstance(encoder, Encoder):
        return None
    return {
        "_target_": "embedexp.models.Encoder",
        "model_name_or_path": encoder.model_name_or_path,
        "name": encoder.name,
        "trust_remote_code": encoder.trust_remote_code,
        **encoder.settings(),
    }


class Index:
    """Document embeddings searchable by inner product; see the module docstring for the folder layout."""

    def __init__(
        self, index: Any, ids: list[str], manifest: dict, path: Path | None = None, encoder: Any = None
    ) -> None:
        self.index = index
        self.ids = ids
        self.manifest = manifest
        self.path = path
        self._encoder = None
        self._texts: list[str] | None = None  # loaded on first use (`text`)
        if encoder is not None:
            self.attach(encoder)

    # ---------------------------------------------------------------- build / save
    @classmethod
    def build(
        cls,
        encoder: Any,
        doc_ids: Sequence[str],
        texts: Sequence[str],
        batch_size: int = 64,
        show_progress: bool = False,
        spec: dict | None = None,
        source: str | None = None,
    ) -> "Index":
        """Encode `texts` as documents with `encoder`; `spec` (default: derived from an Encoder) rebuilds the model."""
        if len(doc_ids) != len(texts):
            raise ValueError(f"{len(doc_ids)} ids for {len(texts)} texts")
        if not texts:
            raise DataError(f"{source or 'corpus'}: no documents to index")
        if len(set(doc_ids)) != len(doc_ids):
            raise DataError(f"{source or 'corpus'}: duplicate document ids")
        t0 = time.perf_counter()
        emb = encoder.encode(list(texts), "document", batch_size, show_progress, desc="index: documents")
        emb = np.ascontiguousarray(
            emb.float().cpu().numpy() if isinstance(emb, torch.Tensor) else emb, dtype=np.float32
        )
        index = _faiss().IndexFlatIP(emb.shape[1])
        index.add(emb)
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "model": {
                "name": getattr(encoder, "name", None),
                "model_name_or_path": getattr(encoder, "model_name_or_path", None),
                "fingerprint": encoder.fingerprint(),
                "settings": encoder.settings() if hasattr(encoder, "settings") else {},
                "spec": spec if spec is not None else model_spec(encoder),
            },
            "dim": int(emb.shape[1]),
            "count": int(emb.shape[0]),
            "normalize": bool(getattr(encoder, "normalize", False)),
            "metric": "inner_product",
            "source": source,
            "encode_seconds": round(time.perf_counter() - t0, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "files": {},
        }
        idx = cls(index, list(map(str, doc_ids)), manifest)
        idx._encoder = encoder
        idx._texts = list(texts)
        return idx

    def save(self, path: str | Path) -> Path:
        """Write the folder atomically: a temporary sibling, renamed over `path` (an older index there is replaced)."""
        path = Path(path).expanduser()
        if path.exists() and not (path / MANIFEST).is_file() and (not path.is_dir() or any(path.iterdir())):
            raise ConfigError(
                f"{path} exists and is not an embedexp index; refusing to overwrite it (choose another out=)"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            _faiss().write_index(self.index, str(tmp / INDEX_FILE))
            (tmp / IDS_FILE).write_text(json.dumps(self.ids, ensure_ascii=False) + "\n", encoding="utf-8")
            names = [INDEX_FILE, IDS_FILE]
            if self._texts is not None:
                with open(tmp / TEXTS_FILE, "w", encoding="utf-8") as f:
                    f.writelines(json.dumps(t, ensure_ascii=False) + "\n" for t in self._texts)
                names.append(TEXTS_FILE)
            files = {name: {"bytes": (tmp / name).stat().st_size, "blake2b": _file_hash(tmp / name)} for name in names}
            self.manifest = {**self.manifest, "files": files}
            (tmp / MANIFEST).write_text(
                json.dumps(self.manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
            )
            old = path.with_name(f".{path.name}.old{os.getpid()}")
            if path.exists():
                os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.path = path
        return path

    # ---------------------------------------------------------------- load
    @classmethod
    def load(cls, path: str | Path, encoder: Any = None) -> "Index":
        """Read and verify an index folder; with `encoder`, refuse it unless it is the model that built the index."""
        path = Path(path).expanduser()
        if not path.is_dir():
            raise DataError(f"index folder {path} does not exist (build one with embedexp-index)")
        manifest = read_manifest(path)
        for name in (INDEX_FILE, IDS_FILE, *([TEXTS_FILE] if TEXTS_FILE in manifest["files"] else [])):
            f = path / name
            if not f.is_file():
                raise DataError(f"{path}: {name} is missing; the index is incomplete, rebuild it with embedexp-index")
            want = manifest["files"].get(name) or {}
            if f.stat().st_size != want.get("bytes") or _file_hash(f) != want.get("blake2b"):
                raise DataError(
                    f"{f}: does not match the checksum in {MANIFEST} (corrupt or changed); rebuild the index"
                )
        try:
            ids = json.loads((path / IDS_FILE).read_text(encoding="utf-8"))
            index = _faiss().read_index(str(path / INDEX_FILE))
        except (ValueError, RuntimeError) as e:
            raise DataError(f"{path}: cannot read the index ({str(e).strip().splitlines()[0]})") from e
        if (
            not isinstance(ids, list)
            or len(ids) != manifest["count"]
            or index.ntotal != manifest["count"]
            or index.d != manifest["dim"]
        ):
            raise DataError(
                f"{path}: {INDEX_FILE}/{IDS_FILE} disagree with {MANIFEST} (count {manifest['count']}, dim {manifest['dim']})"
            )
        return cls(index, [str(i) for i in ids], manifest, path=path, encoder=encoder)

    # ---------------------------------------------------------------- the model
    @property
    def fingerprint(self) -> str:
        return self.manifest["model"]["fingerprint"]

    def attach(self, encoder: Any, rebuild: str | None = None) -> None:
        """Use `encoder` for text queries; ModelError unless its fingerprint is the one that built the index.

        The refusal names both models by their full paths and ends with a command that rebuilds the index with
        `encoder`: `rebuild` when given (the CLI knows how the model was named), else one with its folder.
        """
        got = encoder.fingerprint()
        if got != self.fingerprint:
            model = self.manifest["model"]
            built = _model_path(model.get("model_name_or_path")) or model.get("name")
            name = _model_path(getattr(encoder, "model_name_or_path", None)) or getattr(
                encoder, "name", type(encoder).__name__
            )
            where = str(Path(self.path).resolve()) if self.path else "(not saved)"
            if rebuild is None:
                corpus = self.manifest.get("source") or "<corpus folder>"
                rebuild = f"embedexp-index corpus={corpus} model.model_name_or_path={name} out={where}"
            raise ModelError(
                f"index {where} was built with model {built} (fingerprint {self.fingerprint[:12]}), "
                f"not with {name} (fingerprint {got[:12]}); search without model=/model_dir= to use the model that "
                f"built it, or rebuild the index with this model: {rebuild}"
            )
        self._encoder = encoder

    def text(self, doc_id: str) -> str | None:
        """The stored text of a document (None for an index written before texts were stored)."""
        if self._texts is None and self.path is not None and (self.path / TEXTS_FILE).is_file():
            with open(self.path / TEXTS_FILE, encoding="utf-8") as f:
                self._texts = [json.loads(line) for line in f]
        if self._texts is None:
            return None
        if not hasattr(self, "_row_of"):
            self._row_of = {d: i for i, d in enumerate(self.ids)}
        row = self._row_of.get(str(doc_id))
        return self._texts[row] if row is not None and row < len(self._texts) else None

    @property
    def encoder(self) -> Any:
        """The model that built the index: the attached one, else rebuilt from the manifest (and verified)."""
        if self._encoder is None:
            spec = self.manifest["model"].get("spec")
            if not spec:
                raise ConfigError(
                    f"index {self.path}: the manifest does not say how to rebuild its model; pass encoder="
                )
            from hydra.utils import instantiate

            from embedexp.cli import find_user_error

            try:
                encoder = instantiate(spec)
            except Exception as e:
                raise (find_user_error(e) or e) from e
            self.attach(encoder)
        return self._encoder

    # ---------------------------------------------------------------- search
    def search(
        self, queries: str | Sequence[str] | torch.Tensor | np.ndarray, k: int = 10
    ) -> list[list[tuple[str, float]]]:
        """Top-k (document id, score) per query, best first; queries are texts or (n, dim) query embeddings."""
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"k={k!r}; expected a positive integer")
        if isinstance(queries, str):
            queries = [queries]
        if isinstance(queries, (torch.Tensor, np.ndarray)):
            emb = queries.float().cpu().numpy() if isinstance(queries, torch.Tensor) else queries
        else:
            emb = self.encoder.encode(list(queries), "query").float().cpu().numpy()
        emb = np.ascontiguousarray(np.atleast_2d(emb), dtype=np.float32)
        if emb.shape[1] != self.manifest["dim"]:
            raise ModelError(f"query embeddings have dim {emb.shape[1]}, the index has dim {self.manifest['dim']}")
        scores, rows = self.index.search(emb, min(k, self.index.ntotal))
        return [[(self.ids[r], float(s)) for s, r in zip(srow, rrow) if r >= 0] for srow, rrow in zip(scores, rows)]

    def __len__(self) -> int:
        return int(self.index.ntotal)


def _model_path(name_or_path: Any) -> str | None:
    """A model folder as an absolute path (a hub-style name as it is)."""
    if not name_or_path:
        return None
    p = Path(str(name_or_path)).expanduser()
    return str(p.resolve()) if p.exists() else str(name_or_path)


def read_manifest(path: Path) -> dict:
    """manifest.json of an index folder, checked for the keys and format this version writes."""
    f = path / MANIFEST
    if not f.is_file():
        raise DataError(f"{path}: no {MANIFEST}; not an embedexp index (build one with embedexp-index)")
    try:
        manifest = json.loads(f.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{f}: not valid JSON ({getattr(e, 'msg', e)}); the index is corrupt, rebuild it") from e
    if not isinstance(manifest, dict):
        raise DataError(f"{f}: expected a JSON object")
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise DataError(f"{f}: missing {', '.join(missing)}; the index is corrupt or from another tool, rebuild it")
    if manifest["format"] != FORMAT or manifest["version"] != VERSION:
        raise DataError(
            f"{f}: format {manifest['format']!r} version {manifest['version']!r}; expected {FORMAT!r} version {VERSION}"
        )
    if not isinstance(manifest["model"], dict) or not manifest["model"].get("fingerprint"):
        raise DataError(f"{f}: 'model.fingerprint' is missing; cannot tell which model built the index")
    return manifest
