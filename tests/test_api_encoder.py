"""The HTTP embedding adapter against a local OpenAI/Voyage-style server that serves the tiny local model."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from embedexp.cli import find_user_error
from embedexp.config import config_dir, register_resolvers
from embedexp.errors import ConfigError, ModelError
from embedexp.models import Encoder
from embedexp.models.api import APIEncoder, check_trainable

KEY = "sk-test-NEVER-PRINT-ME-123"
TEXTS = [
    f"sentence number {i} about {w}" for i, w in enumerate(["tides", "bread", "orbits", "cats", "rain", "jazz", "salt"])
]


class FakeAPI:
    """An /v1/embeddings server: the tiny model embeds what it receives (input_type picks its prefix)."""

    def __init__(self, model_dir: Path):
        self.encoder = Encoder(str(model_dir), query_prefix="query: ", document_prefix="passage: ", normalize=False)
        self.requests: list[dict] = []
        self.fail_next: list[int] = []  # statuses to answer before serving
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, obj: dict, headers: dict | None = None):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                api.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                if self.path != "/v1/embeddings":
                    return self._reply(404, {"error": {"message": "no such route"}})
                if self.headers.get("Authorization") != f"Bearer {KEY}":
                    return self._reply(401, {"error": {"message": "invalid api key"}})
                if api.fail_next:
                    return self._reply(api.fail_next.pop(0), {"error": {"message": "slow down"}}, {"Retry-After": "0"})
                emb = api.encoder.encode(body["input"], body.get("input_type", "document"))
                data = [{"object": "embedding", "index": i, "embedding": e.tolist()} for i, e in enumerate(emb)]
                self._reply(
                    200, {"object": "list", "data": data[::-1], "model": body["model"]}
                )  # order by index, not position

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def api(tiny_model_dir):
    server = FakeAPI(tiny_model_dir)
    yield server
    server.close()


@pytest.fixture()
def key(monkeypatch):
    monkeypatch.setenv("EMBEDEXP_TEST_KEY", KEY)
    return "EMBEDEXP_TEST_KEY"


def _adapter(api, key, **kw) -> APIEncoder:
    enc = APIEncoder("tiny-remote", base_url=api.url, api_key_env=key, backoff=0.0, **kw)
    enc._sleep = lambda s: None
    return enc


def test_embeddings_equal_the_local_model(api, key, tiny_model_dir):
    api.requests.clear()
    remote = _adapter(api, key).encode(TEXTS, "document", batch_size=64)
    local = Encoder(str(tiny_model_dir), document_prefix="passage: ").encode(TEXTS, "document")
    torch.testing.assert_close(remote, local, atol=1e-5, rtol=1e-5)
    assert remote.dtype == torch.float32 and remote.shape == (len(TEXTS), 32)
    req = api.requests[-1]
    assert (
        req["model"] == "tiny-remote" and req["input"] == TEXTS and "input_type" not in req and "dimensions" not in req
    )


def test_input_type_field_voyage_style(api, key, tiny_model_dir):
    enc = _adapter(api, key, input_type_field="input_type")
    q, d = enc.encode(TEXTS[:3], "query"), enc.encode(TEXTS[:3], "document")
    local = Encoder(str(tiny_model_dir), query_prefix="query: ", document_prefix="passage: ")
    torch.testing.assert_close(q, local.encode(TEXTS[:3], "query"), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(d, local.encode(TEXTS[:3], "document"), atol=1e-5, rtol=1e-5)
    assert [r["input_type"] for r in api.requests[-2:]] == ["query", "document"]


def test_client_side_prefixes(api, key):
    api.requests.clear()
    _adapter(api, key, query_prefix="Q: ").encode(["a", "b"], "query")
    assert api.requests[-1]["input"] == ["Q: a", "Q: b"]


def test_batching_splits_requests(api, key):
    api.requests.clear()
    out = _adapter(api, key, max_batch_size=3).encode(TEXTS, "document", batch_size=64)
    assert [len(r["input"]) for r in api.requests] == [3, 3, 1]
    assert [t for r in api.requests for t in r["input"]] == TEXTS
    api.requests.clear()
    again = _adapter(api, key, max_batch_size=100).encode(TEXTS, "document", batch_size=2)
    assert [len(r["input"]) for r in api.requests] == [2, 2, 2, 1]
    torch.testing.assert_close(out, again, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("status", [429, 503])
def test_retry_then_success(api, key, status):
    api.requests.clear()
    api.fail_next = [status, status]
    enc = _adapter(api, key, max_retries=3)
    waits = []
    enc._sleep = waits.append
    out = enc.encode(TEXTS[:2], "document")
    assert out.shape == (2, 32) and len(api.requests) == 3 and len(waits) == 2


def test_retries_exhausted_is_a_model_error(api, key):
    api.fail_next = [429, 429, 429]
    with pytest.raises(ModelError, match=r"gave up after 2 attempts \(HTTP 429"):
        _adapter(api, key, max_retries=1).encode(["x"], "document")
    api.fail_next = []


def test_backoff_doubles_and_is_capped(api, key):
    api.fail_next = [500, 500, 500]
    enc = APIEncoder("m", base_url=api.url, api_key_env=key, backoff=1.0, max_backoff=3.0, max_retries=3)
    waits = []
    enc._sleep = waits.append
    # the fake server sends Retry-After: 0 ("no advice"), so the exponential backoff applies
    enc.encode(["x"], "document")
    assert waits == [1.0, 2.0, 3.0]


def test_missing_key_is_a_clear_config_error(api, monkeypatch):
    monkeypatch.delenv("EMBEDEXP_ABSENT_KEY", raising=False)
    with pytest.raises(ConfigError, match="environment variable EMBEDEXP_ABSENT_KEY is not set"):
        APIEncoder("m", base_url=api.url, api_key_env="EMBEDEXP_ABSENT_KEY")


def test_wrong_key_is_refused_without_echoing_it(api, monkeypatch):
    monkeypatch.setenv("EMBEDEXP_WRONG_KEY", "sk-wrong-SECRET")
    with pytest.raises(ModelError) as info:
        APIEncoder("m", base_url=api.url, api_key_env="EMBEDEXP_WRONG_KEY").encode(["x"])
    assert "HTTP 401" in str(info.value) and "$EMBEDEXP_WRONG_KEY" in str(info.value)
    assert "sk-wrong-SECRET" not in str(info.value)


def test_unreachable_server_fails_after_retries(key):
    enc = APIEncoder("m", base_url="http://127.0.0.1:9/v1", api_key_env=key, max_retries=1, backoff=0.0, timeout=2)
    enc._sleep = lambda s: None
    with pytest.raises(ModelError, match="gave up after 2 attempts"):
        enc.encode(["x"])


def test_key_never_in_repr_fingerprint_or_settings(api, key):
    enc = _adapter(api, key)
    enc.encode(["x"])
    dump = " ".join([repr(enc), str(enc), enc.fingerprint(), json.dumps(enc.settings()), repr(vars(enc))])
    assert KEY not in dump and "NEVER-PRINT" not in dump
    assert api.requests[-1]["auth"] == f"Bearer {KEY}"  # it was sent, only in the header


def test_fingerprint_tracks_settings(api, key):
    a = _adapter(api, key)
    assert a.fingerprint() == _adapter(api, key).fingerprint()
    assert a.fingerprint() != _adapter(api, key, dimensions=16).fingerprint()
    assert a.fingerprint() != APIEncoder("other", base_url=api.url, api_key_env=key).fingerprint()


def test_dim_from_config_or_first_response(api, key):
    assert _adapter(api, key, expected_dim=32).dim == 32
    assert _adapter(api, key).dim == 32  # probes the server once
    with pytest.raises(ModelError, match="returned 32-dim embeddings, expected 3072"):
        _adapter(api, key, expected_dim=3072).encode(["x"])


def test_cannot_be_trained(api, key):
    enc = _adapter(api, key)
    for call in (lambda: enc.tokenize(["x"], "query"), lambda: enc.parameters(), lambda: enc.train()):
        with pytest.raises(ConfigError, match="can only be evaluated"):
            call()
    register_resolvers()
    with initialize_config_dir(config_dir=str(Path(config_dir())), version_base="1.3"):
        for preset in ("openai_api", "voyage_api"):
            cfg = compose(config_name="train", overrides=[f"model={preset}", "paths.output_dir=/tmp/x"])
            with pytest.raises(ConfigError, match=f"model={cfg.model.name} is an API embedding model"):
                check_trainable(cfg.model)
        check_trainable(compose(config_name="train", overrides=["model=tiny", "paths.output_dir=/tmp/x"]).model)


def test_presets_instantiate_against_the_local_server(api, key, monkeypatch, tiny_model_dir):
    monkeypatch.setenv("VOYAGE_API_KEY", KEY)
    register_resolvers()
    with initialize_config_dir(config_dir=str(Path(config_dir())), version_base="1.3"):
        cfg = compose(
            config_name="evaluate",
            overrides=[
                "model=voyage_api",
                f"model.base_url={api.url}",
                "model.expected_dim=32",
                "paths.output_dir=/tmp/x",
            ],
        )
    enc = instantiate(cfg.model)
    assert isinstance(enc, APIEncoder) and enc.input_type_field == "input_type"
    local = Encoder(str(tiny_model_dir), query_prefix="query: ")
    torch.testing.assert_close(enc.encode(TEXTS[:2], "query"), local.encode(TEXTS[:2], "query"), atol=1e-5, rtol=1e-5)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with initialize_config_dir(config_dir=str(Path(config_dir())), version_base="1.3"):
        cfg = compose(
            config_name="evaluate",
            overrides=["model=openai_api", f"model.base_url={api.url}", "paths.output_dir=/tmp/x"],
        )
    with pytest.raises(Exception) as info:
        instantiate(cfg.model)
    assert isinstance(find_user_error(info.value), ConfigError) and "OPENAI_API_KEY is not set" in str(
        find_user_error(info.value)
    )
