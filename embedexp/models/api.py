"""Embedding models behind an HTTP API (OpenAI-compatible `/v1/embeddings`, Voyage), for evaluation only.

`APIEncoder` has the surface the evaluators use from `Encoder` (`encode`, `fingerprint`, `dim`,
`settings`), so a vendor model can be scored beside a local one. It has no weights, so it cannot be
trained: `check_trainable` turns that into a ConfigError before a training run loads anything.

The API key is read from the environment variable named by `api_key_env` when each request is sent;
it is never stored on the object, in the config, in the fingerprint or in a log line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import urllib.error
import urllib.request
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from embedexp.errors import ConfigError, ModelError

log = logging.getLogger(__name__)
KINDS = ("query", "document")
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


def check_trainable(model_cfg: Any) -> None:
    """Raise ConfigError if the `model` config names an eval-only (API) model; call before a training run."""
    target = str((model_cfg or {}).get("_target_", ""))
    if target.rsplit(".", 1)[-1] == APIEncoder.__name__:
        name = (model_cfg or {}).get("name") or (model_cfg or {}).get("model_name_or_path")
        raise ConfigError(
            f"model={name} is an API embedding model: it can only be evaluated (embedexp-evaluate model=...), "
            "not fine-tuned; choose a local model preset for training"
        )


class APIEncoder:
    """Text -> embedding by POSTing batches to `{base_url}/embeddings`.

    Args:
        model_name_or_path: the vendor's model name, sent as "model".
        base_url: API root, e.g. https://api.openai.com/v1 (any OpenAI-compatible server).
        api_key_env: name of the environment variable holding the key (the key itself never goes in a config).
        input_type_field: request field that says query vs document (Voyage: "input_type"); null to omit.
        dimensions: ask the API for shortened embeddings (OpenAI text-embedding-3 "dimensions"); null to omit.
        expected_dim: the embedding size the preset promises; a response of another size is a ModelError.
        max_batch_size: most texts per request (the call's batch_size is used when smaller).
        max_retries / backoff / max_backoff: retries on 408/409/429/5xx and network errors, waiting
            backoff * 2**attempt seconds (or the server's Retry-After), at most max_backoff.
        timeout: seconds per request.
        query_prefix / document_prefix: prepended client-side, like Encoder's prefixes.
        normalize: L2-normalise what the API returns.
        extra_body: further JSON fields sent with every request (e.g. {"truncation": true}).
    """

    eval_only = True

    def __init__(
        self,
        model_name_or_path: str,
        base_url: str,
        api_key_env: str,
        name: str | None = None,
        input_type_field: str | None = None,
        dimensions: int | None = None,
        expected_dim: int | None = None,
        max_batch_size: int = 128,
        max_retries: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        timeout: float = 60.0,
        query_prefix: str = "",
        document_prefix: str = "",
        normalize: bool = True,
        extra_body: dict | None = None,
    ) -> None:
        if not base_url or not str(base_url).startswith(("http://", "https://")):
            raise ConfigError(f"model.base_url={base_url!r}; expected an http(s) URL such as https://api.openai.com/v1")
        if not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ConfigError(f"model.max_batch_size={max_batch_size!r}; expected a positive integer")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError(f"model.max_retries={max_retries!r}; expected an integer >= 0")
        if not api_key_env:
            raise ConfigError(
                "model.api_key_env is empty; expected the name of the environment variable holding the API key"
            )
        self.model_name_or_path = str(model_name_or_path)
        self.name = name or self.model_name_or_path
        self.url = str(base_url).rstrip("/") + "/embeddings"
        self.api_key_env = str(api_key_env)
        self.input_type_field = input_type_field or None
        self.dimensions = int(dimensions) if dimensions else None
        self.expected_dim = int(expected_dim) if expected_dim else None
        self.max_batch_size = max_batch_size
        self.max_retries = max_retries
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.timeout = float(timeout)
        self.prefixes = {"query": query_prefix or "", "document": document_prefix or ""}
        self.normalize = bool(normalize)
        self.extra_body = dict(extra_body or {})
        self._dim: int | None = self.dimensions or self.expected_dim
        self._api_key()  # fail now, not after the data has loaded
        self._sleep = time.sleep

    def __repr__(self) -> str:
        return f"APIEncoder(model={self.model_name_or_path!r}, url={self.url!r}, key from ${self.api_key_env})"

    # ---------------------------------------------------------------- identity
    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self.encode(["dimension probe"], "document").shape[1])
        return self._dim

    def settings(self) -> dict:
        return {
            "api_url": self.url,
            "model": self.model_name_or_path,
            "input_type_field": self.input_type_field,
            "dimensions": self.dimensions,
            "normalize": self.normalize,
            "query_prefix": self.prefixes["query"],
            "document_prefix": self.prefixes["document"],
            "extra_body": self.extra_body,
        }

    def fingerprint(self) -> str:
        """Hash of the endpoint, model name and request settings (a vendor may change a model behind its name)."""
        h = hashlib.blake2b(digest_size=16)
        h.update(json.dumps({"api": self.settings()}, sort_keys=True, default=str).encode())
        return h.hexdigest()

    # ---------------------------------------------------------------- not trainable
    def _no_training(self, *args, **kwargs):
        check_trainable({"_target_": f"{__name__}.{type(self).__name__}", "name": self.name})

    tokenize = forward = parameters = train = _no_training

    def eval(self) -> "APIEncoder":
        return self

    # ---------------------------------------------------------------- encode
    def encode(
        self,
        texts: Sequence[str],
        kind: str = "document",
        batch_size: int = 64,
        show_progress: bool = False,
        desc: str | None = None,
    ) -> torch.Tensor:
        """Texts -> float32 (n, dim) on CPU, in input order."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        texts = [self.prefixes[kind] + t for t in texts]
        size = max(1, min(int(batch_size), self.max_batch_size))
        chunks = []
        for start in tqdm(
            range(0, len(texts), size),
            desc=desc or f"encode {kind}s ({self.name})",
            disable=not show_progress,
            unit="request",
        ):
            chunks.append(self._embed(texts[start : start + size], kind))
        out = torch.cat(chunks) if chunks else torch.empty(0, self._dim or 0)
        if self.normalize and len(out):
            out = F.normalize(out, p=2, dim=-1)
        return out

    def _embed(self, batch: list[str], kind: str) -> torch.Tensor:
        body: dict[str, Any] = {"model": self.model_name_or_path, "input": batch, **self.extra_body}
        if self.input_type_field:
            body[self.input_type_field] = kind
        if self.dimensions:
            body["dimensions"] = self.dimensions
        reply = self._post(body)
        data = reply.get("data") if isinstance(reply, dict) else None
        if not isinstance(data, list) or len(data) != len(batch):
            got = len(data) if isinstance(data, list) else "no 'data' list"
            raise ModelError(f"{self.url}: expected {len(batch)} embeddings in 'data', got {got}")
        try:
            rows = sorted(data, key=lambda r: int(r.get("index", 0)))
            emb = torch.tensor([r["embedding"] for r in rows], dtype=torch.float32)
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"{self.url}: malformed embeddings in the response ({type(e).__name__}: {e})") from e
        if emb.dim() != 2:
            raise ModelError(f"{self.url}: embeddings of unequal length in one response")
        want = self.dimensions or self.expected_dim or self._dim
        if want is not None and emb.shape[1] != want:
            raise ModelError(
                f"{self.url}: model {self.model_name_or_path!r} returned {emb.shape[1]}-dim embeddings, expected {want} (model.expected_dim)"
            )
        self._dim = emb.shape[1]
        return emb

    def _api_key(self) -> str:
        key = os.environ.get(self.api_key_env, "").strip()
        if not key:
            raise ConfigError(
                f"model.api_key_env={self.api_key_env}: the environment variable {self.api_key_env} is not set; "
                "export your API key there (it is never read from a config file)"
            )
        return key

    def _post(self, body: dict) -> dict:
        payload = json.dumps(body).encode()
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(
                self.url,
                data=payload,
                method="POST",
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {self._api_key()}"},
            )
            wait = self.backoff * 2**attempt
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    text = response.read().decode("utf-8")
                try:
                    return json.loads(text)
                except json.JSONDecodeError as e:
                    raise ModelError(f"{self.url}: the response is not JSON ({e.msg})") from e
            except urllib.error.HTTPError as e:
                detail = _error_detail(e)
                if e.code in (401, 403):
                    raise ModelError(
                        f"{self.url}: HTTP {e.code}, the key in ${self.api_key_env} was refused{detail}"
                    ) from None
                if e.code not in RETRY_STATUS:
                    raise ModelError(f"{self.url}: HTTP {e.code}{detail}") from None
                problem = f"HTTP {e.code}{detail}"
                wait = _retry_after(e) or wait
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                problem = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            if attempt == self.max_retries:
                raise ModelError(f"{self.url}: gave up after {self.max_retries + 1} attempts ({problem})")
            wait = min(wait, self.max_backoff)
            log.warning("%s: %s; retry %d/%d in %.1fs", self.url, problem, attempt + 1, self.max_retries, wait)
            self._sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover


def _error_detail(e: urllib.error.HTTPError) -> str:
    """The server's error message, shortened to one line (never echoes request headers)."""
    try:
        body = e.read().decode("utf-8", "replace")
        obj = json.loads(body)
        msg = obj.get("error", obj) if isinstance(obj, dict) else obj
        if isinstance(msg, dict):
            msg = msg.get("message") or msg.get("detail") or msg
        text = str(msg)
    except Exception:
        text = ""
    text = " ".join(text.split())[:200]
    return f" ({text})" if text else ""


def _retry_after(e: urllib.error.HTTPError) -> float | None:
    try:
        value = float(e.headers.get("Retry-After", ""))
    except (TypeError, ValueError):
        return None
    return value if value >= 0 else None
