"""Re-encode a corpus into a faiss index tied to the model that built it, and search it."""

from embedexp.index.store import Index, model_spec, read_manifest

__all__ = ["Index", "model_spec", "read_manifest"]
