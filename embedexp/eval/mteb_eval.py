"""Run the real `mteb` package (2.x) on an Encoder, offline: our eval sets and named MTEB tasks.

- Our eval sets (BEIR folders, STS tsv files) become mteb tasks by subclassing mteb's own
  `AbsTaskRetrieval` / `AbsTaskSTS` and overriding `load_data`; mteb does the search and scoring.
- A named task (`SciFact`, `STSBenchmark`, ...) keeps mteb's definition (metadata, main score,
  splits) and reads its data from `local_data` when that file or folder exists; otherwise mteb's
  own loader runs, which offline finds only what the Hugging Face datasets cache holds and fails at
  once otherwise (a one-line ConfigError naming the task).
- The Encoder is wrapped in mteb's encoder protocol; mteb's prompt types map to our kinds
  ("query" / "document"; STS sentences and untyped inputs are documents), so our prefixes apply.
  Its model name + revision (`embedexp/<name>` + the encoder's weight fingerprint) are unique per
  checkpoint, so base and fine-tuned results never share an entry in mteb's result cache.

mteb creates `~/.cache/mteb` when imported unless MTEB_CACHE is set: `prepare_environment` points it
under our cache dir (and sets the hub/datasets offline flags) before the first import.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from embedexp.errors import ConfigError
from embedexp.eval.config import check_section
from embedexp.eval.mteb_tasks import TYPE_FOR, local_named_task, local_path, task_on
from embedexp.eval.mteb_units import UNITS_VERSION, reset_seed, task_units
from embedexp.eval.sets import RetrievalSet

log = logging.getLogger(__name__)

OVERWRITE_STRATEGIES = ("always", "never", "only-missing", "only-cache")
SETTING_KEYS = (
    "tasks",
    "local_sets",
    "local_data",
    "metrics",
    "result_cache",
    "overwrite_strategy",
    "batch_size",
    "summary",
    "export",
)


# ---------------------------------------------------------------- environment and network guard
def prepare_environment(cache_dir: str | Path | None = None) -> Path:
    """Set MTEB_CACHE (default `<cache_dir>/mteb`) and, unless EMBEDEXP_ONLINE=1, the HF offline flags.

    Must run before `import mteb`; a user's own MTEB_CACHE is kept. Returns the mteb cache folder.
    """
    if cache_dir is None:
        cache_dir = os.environ.get("EMBEDEXP_CACHE", Path.home() / ".cache" / "embedexp")
    os.environ.setdefault("MTEB_CACHE", str(Path(cache_dir).expanduser() / "mteb"))
    if not network_allowed():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    return Path(os.environ["MTEB_CACHE"])


def network_allowed() -> bool:
    return os.environ.get("EMBEDEXP_ONLINE", "0") == "1"


class NetworkBlocked(ConnectionError):
    """Raised instead of opening an internet socket while `no_network` is active."""


_LOOPBACK = ("localhost", "127.0.0.1", "::1")


@contextmanager
def no_network(what: str, allow_hosts: tuple[str, ...] = ()) -> Iterator[list]:
    """Refuse internet (AF_INET/AF_INET6) connections and name lookups inside the block.

    Loopback and `allow_hosts` (e.g. an API encoder's own endpoint) stay reachable. Yields the list of
    refused attempts. A no-op when EMBEDEXP_ONLINE=1.
    """
    attempts: list = []
    if network_allowed():
        yield attempts
        return
    real_connect, real_connect_ex, real_getaddrinfo = (
        socket.socket.connect,
        socket.socket.connect_ex,
        socket.getaddrinfo,
    )
    inet = (socket.AF_INET, socket.AF_INET6)
    hosts = set(_LOOPBACK) | {h for h in allow_hosts if h}
    addresses: set[str] = set()

    def refuse(target) -> None:
        attempts.append(target)
        raise NetworkBlocked(f"{what}: network access is off (tried {target!r}); set EMBEDEXP_ONLINE=1 to allow it")

    def allowed(address) -> bool:
        host = str(address[0]) if isinstance(address, tuple) and address else str(address)
        return host in hosts or host in addresses or host.startswith("127.")

    def connect(sock, address):
        if sock.family in inet and not allowed(address):
            refuse(address)
        return real_connect(sock, address)

    def connect_ex(sock, address):
        if sock.family in inet and not allowed(address):
            refuse(address)
        return real_connect_ex(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if host is None or str(host) in hosts or str(host).startswith("127."):
            infos = real_getaddrinfo(host, *args, **kwargs)
            addresses.update(str(info[4][0]) for info in infos)
            return infos
        refuse(host)

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
    try:
        yield attempts
    finally:
        socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = (
            real_connect,
            real_connect_ex,
            real_getaddrinfo,
        )


# ---------------------------------------------------------------- model adapter
class MtebEncoder:
    """mteb's EncoderProtocol around an `embedexp.models.Encoder` (cosine similarity, like our evaluator)."""

    def __init__(
        self,
        encoder,
        batch_size: int = 64,
        show_progress: bool = False,
        revision: str | None = None,
        experiment: dict | None = None,
    ) -> None:
        self.encoder = encoder
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.revision = revision or encoder.fingerprint()
        self.experiment = experiment
        self._meta = None

    @property
    def mteb_model_meta(self):
        if self._meta is None:
            self._meta = model_meta(self.encoder, self.revision, self.experiment)
        return self._meta

    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str, prompt_type=None, **kwargs) -> np.ndarray:
        kind = (
            "query"
            if prompt_type is not None and str(getattr(prompt_type, "value", prompt_type)) == "query"
            else "document"
        )
        texts = [t for batch in inputs for t in batch["text"]]
        emb = self.encoder.encode(
            texts,
            kind,
            int(kwargs.get("batch_size") or self.batch_size),
            bool(kwargs.get("show_progress_bar", self.show_progress)),
            desc=f"mteb {task_metadata.name}: {kind}s",
        )
        return emb.numpy()

    def similarity(self, embeddings1, embeddings2):
        from mteb.similarity_functions import cos_sim

        return cos_sim(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1, embeddings2):
        from mteb.similarity_functions import pairwise_cos_sim

        return pairwise_cos_sim(embeddings1, embeddings2)


def model_name(encoder) -> str:
    """`embedexp/<encoder name>`: mteb wants `organisation/model`; spaces and slashes are made safe."""
    return "embedexp/" + str(encoder.name).replace("/", "__").replace(" ", "_")


def model_meta(encoder, revision: str, experiment: dict | None = None):
    """mteb ModelMeta: name + revision (weight fingerprint) unique per checkpoint; no hub lookups."""
    from mteb.models.model_meta import ModelMeta

    backbone = getattr(encoder, "backbone", None)  # None for API encoders
    return ModelMeta(
        loader=None,
        name=model_name(encoder),
        revision=revision,
        release_date=None,
        languages=None,
        n_parameters=sum(p.numel() for p in backbone.parameters()) if backbone is not None else None,
        memory_usage_mb=None,
        max_tokens=getattr(encoder, "max_seq_length", None),
        embed_dim=encoder.dim,
        license=None,
        open_weights=None,
        public_training_code=None,
        public_training_data=None,
        framework=["PyTorch"],
        reference=None,
        similarity_fn_name="cosine",
        use_instructions=bool(encoder.prefixes["query"] or encoder.prefixes["document"]),
        training_datasets=None,
        experiment_kwargs=experiment or None,
    )


def _endpoint_hosts(encoder) -> tuple[str, ...]:
    """The host an API encoder must reach (its `url`); none for local models."""
    from urllib.parse import urlparse

    url = getattr(encoder, "url", None)
    return (urlparse(url).hostname or "",) if isinstance(url, str) else ()


# ---------------------------------------------------------------- tasks on local data
def local_set_task(name: str, data_set, spec: dict):
    """One of our eval sets as a new mteb task named after it (retrieval: nDCG@10; STS: cosine Spearman)."""
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.sts import AbsTaskSTS
    from mteb.abstasks.task_metadata import TaskMetadata

    retrieval = isinstance(data_set, RetrievalSet)
    split = str(spec.get("split", "test"))
    metadata = TaskMetadata(
        name=name,
        description=f"embedexp eval set {name!r}",
        dataset={"path": f"embedexp-local/{name}", "revision": data_set.fingerprint},
        type="Retrieval" if retrieval else "STS",
        category="t2t",
        modalities=["text"],
        eval_splits=[split],
        eval_langs=["eng-Latn"],
        main_score="ndcg_at_10" if retrieval else "cosine_spearman",
    )
    if retrieval:  # the set's own ignore_identical_ids, the same one our evaluator applies
        return task_on(
            AbsTaskRetrieval,
            data_set,
            split,
            metadata=metadata,
            ignore_identical_ids=bool(data_set.ignore_identical_ids),
        )
    return task_on(
        AbsTaskSTS, data_set, split, metadata=metadata, min_score=0, max_score=float(spec.get("max_score", 5.0))
    )


class ResolvedTask:
    """An mteb task ready to run, with the fingerprint of the data it will read."""

    def __init__(self, task, fingerprint: str, source: str) -> None:
        self.task, self.fingerprint, self.source = task, fingerprint, source

    @property
    def name(self) -> str:
        return self.task.metadata.name


class TaskUnavailable(Exception):
    """A named task has no local data and mteb's own loader failed (offline); `hint` is the local_data entry to add."""

    def __init__(self, name: str, where: str, hint: str, reason: str) -> None:
        super().__init__(reason)
        self.name, self.where, self.hint, self.reason = name, where, hint, reason


def _hint(task, name: str, key: str) -> str:
    kind = TYPE_FOR.get(task.metadata.type)
    shape = {
        "retrieval": "{type: retrieval, root: <BEIR folder>}",
        "sts": "{type: sts, path: <score/sentence1/sentence2 tsv>}",
        "classification": "{type: classification, root: <folder with train.tsv, test.tsv>}",
        "clustering": "{type: clustering, path: <sentences/labels jsonl>}",
        "reranking": "{type: reranking, path: <query/positive/negative jsonl>}",
    }.get(kind, "{...}")
    subset = ", subset: <one of its subsets>" if task.metadata.is_multilingual else ""
    return f"{key}.local_data.{name}={shape[:-1]}{subset}}}"


def named_task(name: str, local: dict | None, key: str = "eval.mteb") -> ResolvedTask:
    """mteb's task `name`; its data from `local` (a local-data spec) when that exists, else mteb's loader.

    Raises:
        ConfigError: not an mteb task, or a local spec that does not fit it.
        TaskUnavailable: no local data and mteb's loader failed (collected by MtebEvaluation into one line).
    """
    import mteb

    try:
        task = mteb.get_task(name)
    except (KeyError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"{key}.tasks: {name!r} is not an mteb task ({first})") from None
    local = dict(local or {})
    path = local_path(local) if local else None
    if path and Path(str(path)).expanduser().exists():
        local_task, fingerprint, source = local_named_task(task, name, local, f"{key}.local_data.{name}")
        return ResolvedTask(local_task, fingerprint, source)
    where = f" (no {path})" if path else ""
    t0 = time.perf_counter()
    try:
        with no_network(f"mteb task {name}"):
            task.load_data()
    except Exception as e:  # datasets' offline ConnectionError, NetworkBlocked, a missing optional package, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TaskUnavailable(name, where, _hint(task, name, key), first) from None
    log.info("mteb task %s: mteb's own loader (%.1fs)", name, time.perf_counter() - t0)
    revision = task.metadata.dataset.get("revision")
    return ResolvedTask(task, f"hf:{task.metadata.dataset.get('path')}@{revision}", "mteb")


def unavailable_error(missing: list[TaskUnavailable], key: str = "eval.mteb") -> ConfigError:
    """One line naming every task without data and the local_data entry each needs."""
    parts = "; ".join(f"{m.name}: no local data{m.where} (set {m.hint})" for m in missing)
    offline = "" if network_allowed() else " offline"
    return ConfigError(
        f"{key}.tasks: {parts}; mteb cannot load {'it' if len(missing) == 1 else 'them'}{offline}: {missing[0].reason}"
    )


# ---------------------------------------------------------------- the evaluation
class MtebEvaluation:
    """Runs mteb on an encoder: `{"mteb/<Task>/<metric>": value}` (split/subset in the key when a task has several).

    Args:
        tasks: named mteb tasks (`[STSBenchmark, SciFact]`).
        local_sets: also run each of our eval sets (`eval_sets`, with their config `set_specs`) as an mteb task
            (off by default: they are already scored by our own evaluator).
        local_data: task name -> local-data spec (`type`: retrieval | sts | classification | clustering | reranking,
            `root`/`path`, `split`, `subset` for multilingual tasks) read instead of mteb's download.
        metrics: which score names to report (main_score is always kept); None = every numeric score.
        result_cache: keep mteb's result files under MTEB_CACHE (per model name/revision/data); off = no cache.
        overwrite_strategy: mteb's: always | never | only-missing | only-cache.
        summary: name of one more row, the mean of every task's main score (e.g. `general/mean_main_score`);
            None = no such row.
        export: `embedexp.eval.mteb_export` settings (model name, training datasets, ...) used by `export_results`.
    Raises:
        ConfigError: a bad setting; every task without local data that mteb cannot load, in one line.
    """

    def __init__(
        self,
        tasks: list[str] | None = None,
        local_sets: bool = False,
        local_data: dict | None = None,
        metrics: list[str] | None = None,
        result_cache: bool = False,
        overwrite_strategy: str = "only-missing",
        batch_size: int | None = None,
        summary: str | None = None,
        export: dict | None = None,
        *,
        eval_sets: list | None = None,
        set_specs: dict | None = None,
        cache_dir: str | Path | None = None,
        default_batch_size: int = 64,
        show_progress: bool = False,
    ) -> None:
        if tasks is None:
            tasks = []
        if isinstance(tasks, str) or not all(isinstance(t, str) and t for t in tasks):
            raise ConfigError(
                f"eval.mteb.tasks={tasks!r}; expected a list of mteb task names, e.g. [STSBenchmark, SciFact]"
            )
        if overwrite_strategy not in OVERWRITE_STRATEGIES:
            raise ConfigError(
                f"eval.mteb.overwrite_strategy={overwrite_strategy!r}; expected one of {', '.join(OVERWRITE_STRATEGIES)}"
            )
        if metrics is not None and (isinstance(metrics, str) or not all(isinstance(m, str) for m in metrics)):
            raise ConfigError(f"eval.mteb.metrics={metrics!r}; expected a list of mteb score names or null (all)")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ConfigError(f"eval.mteb.batch_size={batch_size!r}; expected a positive integer or null")
        if summary is not None and (not isinstance(summary, str) or not summary or summary.startswith("mteb/")):
            raise ConfigError(
                f"eval.mteb.summary={summary!r}; expected a row name outside mteb/ (e.g. general/mean_main_score) or null"
            )
        if not isinstance(local_sets, bool):
            raise ConfigError(f"eval.mteb.local_sets={local_sets!r}; expected true or false")
        self.cache_path = prepare_environment(cache_dir)
        self.metrics = list(metrics) if metrics is not None else None
        self.result_cache = bool(result_cache)
        self.overwrite_strategy = overwrite_strategy
        self.batch_size = batch_size or default_batch_size
        self.show_progress = show_progress
        self.summary = summary
        self.export = dict(export or {})
        self.tasks: list[ResolvedTask] = []
        self.last_units: dict[str, dict] = {}
        self.last_task_results: list = []
        self.results_by_revision: dict[str, list] = {}  # mteb TaskResults of each model run here (by revision)
        local_data = dict(local_data or {})
        unknown = sorted(set(local_data) - set(tasks))
        if unknown:
            log.info("eval.mteb.local_data: %s not in eval.mteb.tasks; not run", ", ".join(unknown))
        if local_sets:
            for s in eval_sets or []:
                self.tasks.append(
                    ResolvedTask(
                        local_set_task(s.name, s, dict((set_specs or {}).get(s.name) or {})), s.fingerprint, "eval set"
                    )
                )
        missing: list[TaskUnavailable] = []
        for name in tasks:
            try:
                self.tasks.append(named_task(name, local_data.get(name)))
            except TaskUnavailable as e:
                missing.append(e)
        if missing:
            raise unavailable_error(missing)
        names = [t.name for t in self.tasks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"eval.mteb: task name {dup[0]!r} appears twice (an eval set and a named task?)")
        for t in self.tasks:
            log.info("mteb task %s: data from %s", t.name, t.source)

    def data_fingerprint(self) -> str:
        return hashlib.blake2b(
            json.dumps([[t.name, t.fingerprint] for t in self.tasks]).encode(), digest_size=8
        ).hexdigest()

    def settings(self) -> dict:
        """Everything that changes the numbers (for the evaluator's cache key)."""
        import mteb

        return {
            "mteb_version": mteb.__version__,
            "tasks": [
                [t.name, t.fingerprint, list(t.task.eval_splits), list(t.task.hf_subsets or [])] for t in self.tasks
            ],
            "metrics": self.metrics,
            "summary": self.summary,
            "units": UNITS_VERSION,
        }

    def adapter(self, encoder, revision: str | None = None) -> MtebEncoder:
        return MtebEncoder(encoder, self.batch_size, self.show_progress, revision, {"data": self.data_fingerprint()})

    def run(self, encoder, revision: str | None = None) -> dict[str, float]:
        """Evaluate `encoder` on every task (network refused throughout) and flatten the scores.

        Per-item values (per query, sentence pair or test text) of the tasks that have them go to `self.last_units`
        under the same row names (see `embedexp.eval.mteb_units`); mteb's TaskResults to `self.last_task_results`.
        """
        self.last_units, self.last_task_results = {}, []
        if not self.tasks:
            return {}
        import mteb

        model = self.adapter(encoder, revision)
        cache = mteb.ResultCache(self.cache_path) if self.result_cache else None
        t0 = time.perf_counter()
        mteb_log = logging.getLogger("mteb")
        if mteb_log.level == logging.NOTSET:  # its per-phase INFO lines would drown ours; kept if set explicitly
            mteb_log.setLevel(logging.WARNING)
        for t in self.tasks:  # the same draws for every model (clustering samples with the task's rng)
            reset_seed(t.task)
        with tempfile.TemporaryDirectory(prefix="embedexp-mteb-") as predictions:
            with no_network("mteb evaluation", _endpoint_hosts(encoder)):
                result = mteb.evaluate(
                    model,
                    [t.task for t in self.tasks],
                    cache=cache,
                    overwrite_strategy=self.overwrite_strategy,
                    encode_kwargs={"batch_size": self.batch_size, "show_progress_bar": self.show_progress},
                    show_progress_bar=self.show_progress,
                    co2_tracker=False,
                    raise_error=True,
                    prediction_folder=predictions,
                )
            log.info("mteb: %d task(s) in %.1fs", len(self.tasks), time.perf_counter() - t0)
            self.last_task_results = list(result.task_results)
            self.results_by_revision[model.revision] = self.last_task_results
            flat = self.flatten(result.task_results)
            units = {}
            for t in self.tasks:
                units.update(
                    task_units(
                        t.task,
                        Path(predictions),
                        lambda split, subset, t=t: self._prefix(t.name, t.task, split, subset),
                    )
                )
        self.last_units = {k: v for k, v in units.items() if k in flat}
        return flat

    def task_results_for(self, encoder, revision: str | None = None) -> list | None:
        """mteb's TaskResults of `encoder` on every task: from a `run` in this process, else from mteb's result cache
        (`result_cache: true`; a model whose scores came from embedexp's eval cache never ran mteb here). None when
        some task has no result in either place.
        """
        model = self.adapter(encoder, revision)
        if model.revision in self.results_by_revision:
            return self.results_by_revision[model.revision]
        if not self.result_cache or not self.tasks:
            return None
        import mteb

        cache = mteb.ResultCache(self.cache_path)
        found = [cache.load_task_result(t.name, model.mteb_model_meta) for t in self.tasks]
        return found if all(tr is not None for tr in found) else None

    @staticmethod
    def _prefix(name: str, task, split: str, subset: str) -> str:
        splits = list(task.eval_splits)
        return "/".join(
            ["mteb", name] + ([split] if len(splits) > 1 else []) + ([subset] if subset != "default" else [])
        )

    def flatten(self, task_results) -> dict[str, float]:
        out: dict[str, float] = {}
        mains: list[float] = []
        for tr in task_results:
            splits = tr.scores
            for split, entries in splits.items():
                for entry in entries:
                    subset = entry.get("hf_subset", "default")
                    parts = (
                        ["mteb", tr.task_name]
                        + ([split] if len(splits) > 1 else [])
                        + ([subset] if subset != "default" else [])
                    )
                    prefix = "/".join(parts)
                    ordered = sorted(entry.items(), key=lambda kv: kv[0] != "main_score")  # main_score first
                    for name, value in ordered:
                        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                            continue  # labels, lists, and scores mteb could not compute (NaN)
                        if name == "main_score":
                            mains.append(float(value))
                        if self.metrics is not None and name != "main_score" and name not in self.metrics:
                            continue
                        out[f"{prefix}/{name}"] = float(value)
        if self.summary and mains:
            out[self.summary] = float(np.mean(mains))  # mean over tasks (and their splits/subsets) of main_score
        return out


def from_config(
    cfg: dict | None, eval_sets: list, set_specs: dict, cache_dir, batch_size: int, show_progress: bool
) -> MtebEvaluation | None:
    """`eval.mteb` -> MtebEvaluation (None when the section is absent/null)."""
    if cfg is None:
        return None
    check_section(cfg, "eval.mteb", SETTING_KEYS, "tasks, local_sets, local_data, ...")
    return MtebEvaluation(
        **cfg,
        eval_sets=eval_sets,
        set_specs=set_specs,
        cache_dir=cache_dir,
        default_batch_size=batch_size,
        show_progress=show_progress,
    )
