"""Config validation before any data or model loads, and one-line errors for bad command lines.

`validate_config(cfg, stage)` checks types, ranges, combinations and paths that must exist, so a
run on a cluster fails in its first second instead of after the model loads (or hours later).
Every error is one line naming the key, the value and what is expected.

`cli_entry(config_name)` wraps a Hydra entry point: an override naming a group option or a key
that does not exist (`loss=infonc`, `loss.temprature=0.1`) fails with the closest valid one, in
one line with exit status 2, instead of Hydra's multi-line report.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from embedexp.errors import ConfigError, ModelError

STAGES = ("train", "evaluate", "mine")
PRECISIONS = ("16-true", "16-mixed", "bf16-true", "bf16-mixed", "32-true", "64-true", "16", "32", "64", "bf16",
              "transformer-engine", "transformer-engine-float16", 16, 32, 64)
K_LISTS = ("ndcg_at", "recall_at", "mrr_at", "map_at")
_ABSENT = object()


# ---------------------------------------------------------------- reading values
def _get(cfg: Any, key: str, default: Any = None) -> Any:
    """Resolved value at dotted `key` (containers as plain lists/dicts); `default` when absent."""
    try:
        value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=True)
    except MissingMandatoryValue:
        raise ConfigError(f"{key} is required (it is ??? in the preset); set it, e.g. {key}=...") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{key}: cannot resolve its value ({_first_line(e)})") from None
    if value is _ABSENT:
        return default
    if isinstance(value, (DictConfig, ListConfig)):
        try:
            return OmegaConf.to_container(value, resolve=True, throw_on_missing=True)
        except MissingMandatoryValue as e:
            raise ConfigError(f"{e.full_key or key} is required (it is ??? in the preset); set it, e.g. {e.full_key or key}=...") from None
        except OmegaConfBaseException as e:
            raise ConfigError(f"{key}: cannot resolve its value ({_first_line(e)})") from None
    return value


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# ---------------------------------------------------------------- small checks
def check_int(key: str, value: Any, minimum: int, optional: bool = False, maximum: int | None = None) -> None:
    if value is None and optional:
        return
    if not _is_int(value) or value < minimum or (maximum is not None and value > maximum):
        upper = f" and <= {maximum}" if maximum is not None else ""
        raise ConfigError(f"{key}={value!r}; expected {'null or ' if optional else ''}an integer >= {minimum}{upper}")


def check_number(key: str, value: Any, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False, optional: bool = False, why: str = "") -> None:
    """A finite number in the interval given by low/high (open or closed ends)."""
    if value is None and optional:
        return
    ok = _is_number(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        if low is not None and high is not None:
            rng = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        elif low is not None:
            rng = f"{'>' if low_open else '>='} {low}"
        elif high is not None:
            rng = f"{'<' if high_open else '<='} {high}"
        else:
            rng = "(finite)"
        raise ConfigError(f"{key}={value!r}; expected {'null or ' if optional else ''}a number {rng}{why}")


def check_bool(key: str, value: Any, optional: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r}; expected true or false")


def check_choice(key: str, value: Any, choices: tuple, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" (did you mean {key}={close[0]}?)" if close else ""
        raise ConfigError(f"{key}={value!r}; expected one of {', '.join(str(c) for c in choices)}{hint}")


def check_int_list(key: str, value: Any, allow_empty: bool = True, optional: bool = False) -> list[int]:
    if value is None and optional:
        return []
    if isinstance(value, (str, bytes, dict)) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key}={value!r}; expected a list of positive integers, e.g. [10, 100]")
    if (not value and not allow_empty) or not all(_is_int(v) and v > 0 for v in value):
        raise ConfigError(f"{key}={value!r}; expected a {'non-empty ' if not allow_empty else ''}list of positive integers, e.g. [10, 100]")
    return list(value)


def check_dir(key: str, value: Any, what: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key}={value!r}; expected the path of {what}")
    if not Path(value).expanduser().is_dir():
        raise ConfigError(f"{key}={value}: folder does not exist; expected {what}")


def check_file(key: str, value: Any, what: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key}={value!r}; expected the path of {what}")
    p = Path(value).expanduser()
    if not p.is_file():
        raise ConfigError(f"{key}={value}: {'is a folder' if p.is_dir() else 'file does not exist'}; expected {what}")


# ---------------------------------------------------------------- groups
def model_dim_of(model: dict) -> int | None:
    """Embedding size a model preset promises: `expected_dim`/`dim`, else config.json's hidden size."""
    for k in ("expected_dim", "dim"):
        if _is_int(model.get(k)):
            return int(model[k])
    path = model.get("model_name_or_path")
    cfg_file = Path(str(path)).expanduser() / "config.json" if path else None
    if cfg_file is not None and cfg_file.is_file():
        try:
            hidden = json.loads(cfg_file.read_text(encoding="utf-8")).get("hidden_size")
        except (ValueError, OSError, AttributeError):
            return None  # the loader reports a broken config.json with its own message
        return int(hidden) if _is_int(hidden) else None
    return None


def validate_model(prefix: str, model: Any) -> int | None:
    """Checks a model preset (the trained model or a guide); returns its embedding dim when knowable."""
    from embedexp.models.encoder import _looks_like_path, check_model_folder
    from embedexp.models.pooling import POOLING_MODES

    if not isinstance(model, dict):
        raise ConfigError(f"{prefix}={model!r}; expected a model preset (e.g. {prefix.split('.')[0]}=tiny)")
    name = model.get("model_name_or_path")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{prefix}.model_name_or_path={name!r}; expected a model folder")
    check_choice(f"{prefix}.pooling", model.get("pooling", "mean"), POOLING_MODES)
    check_bool(f"{prefix}.normalize", model.get("normalize"))
    check_int(f"{prefix}.max_seq_length", model.get("max_seq_length", 256), 1)
    if "trust_remote_code" in model:
        check_bool(f"{prefix}.trust_remote_code", model["trust_remote_code"], optional=False)
    for k in ("query_prefix", "document_prefix"):
        if model.get(k) is not None and not isinstance(model[k], str):
            raise ConfigError(f"{prefix}.{k}={model[k]!r}; expected a string")
    for k in ("expected_dim", "dim"):
        check_int(f"{prefix}.{k}", model.get(k), 1, optional=True)
    path = Path(name).expanduser()
    if path.exists() or _looks_like_path(name):
        check_model_folder(path)
        _check_remote_code(prefix, path, model.get("trust_remote_code", False))
        stated = next((model[k] for k in ("expected_dim", "dim") if model.get(k) is not None), None)
        actual = model_dim_of({"model_name_or_path": name})
        if stated is not None and actual is not None and stated != actual:
            key = "expected_dim" if model.get("expected_dim") is not None else "dim"
            raise ModelError(f"model folder {path} has hidden size {actual}, but {prefix}.{key}={stated}; "
                             "expected the preset's dim to match the weights")
    return model_dim_of(model)


def _check_remote_code(prefix: str, path: Path, trusted: bool) -> None:
    """A folder whose config.json maps to its own Python code needs an explicit opt-in to run it."""
    try:
        auto_map = json.loads((path / "config.json").read_text(encoding="utf-8")).get("auto_map")
    except (ValueError, OSError, AttributeError):
        return
    if auto_map and not trusted:
        raise ModelError(f"model folder {path} ships its own Python code (auto_map in config.json); it is not run "
                         f"unless {prefix}.trust_remote_code=true (only for folders you trust)")


def _margin_bounds(target: str, loss: dict) -> tuple[float | None, bool]:
    """(upper bound or None, whether 0 is allowed) for `loss.margin` of this loss class."""
    distance = loss.get("distance", "cosine")
    if target.endswith("ContrastiveLoss"):
        return (2.0 if distance == "cosine" else None), False
    if target.endswith("GISTLoss"):
        return (1.0 if loss.get("margin_strategy") == "relative" else 2.0), True
    return (2.0 if distance == "cosine" else None), True


def validate_loss(prefix: str, loss: Any, model_dim: int | None) -> None:
    if not isinstance(loss, dict) or "_target_" not in loss:
        raise ConfigError(f"{prefix}={loss!r}; expected a loss preset (e.g. loss=infonce)")
    target = str(loss["_target_"])
    if "temperature" in loss:
        check_number(f"{prefix}.temperature", loss["temperature"], 0, low_open=True, why=" (0.05 = scale 20)")
    if "scale" in loss:
        check_number(f"{prefix}.scale", loss["scale"], 0, low_open=True)
    if loss.get("margin") is not None:
        high, zero_ok = _margin_bounds(target, loss)
        why = " (cosine distances lie in [0, 2])" if high == 2.0 else " (a fraction of the positive's score)" if high else ""
        check_number(f"{prefix}.margin", loss["margin"], 0, high, low_open=not zero_ok, why=why)
    if "dims" in loss:
        from embedexp.losses.matryoshka import validate_dims

        dims = validate_dims(loss["dims"])
        if model_dim is not None and max(dims) > model_dim:
            raise ConfigError(f"{prefix}.dims={list(dims)}; the largest, {max(dims)}, exceeds the model's embedding "
                              f"dimension {model_dim}; expected dims <= {model_dim}")
    if isinstance(loss.get("guide"), dict):
        validate_model(f"{prefix}.guide", loss["guide"])
    decoder = loss.get("decoder_name_or_path")
    if isinstance(decoder, str) and decoder.startswith((".", "/", "~")) and not Path(decoder).expanduser().is_dir():
        raise ConfigError(f"{prefix}.decoder_name_or_path={decoder}: folder does not exist; expected a model folder or null")
    if isinstance(loss.get("loss"), dict):  # Matryoshka wraps another loss
        validate_loss(f"{prefix}.loss", loss["loss"], model_dim)


def world_size(trainer: dict) -> int | None:
    """devices x num_nodes when both are known numbers (None for 'auto' / -1)."""
    devices = trainer.get("devices", 1)
    if isinstance(devices, (list, tuple)):
        n = len(devices)
    elif isinstance(devices, str) and devices.isdigit():
        n = int(devices)
    elif _is_int(devices) and devices > 0:
        n = devices
    else:
        return None
    nodes = trainer.get("num_nodes", 1)
    return n * nodes if _is_int(nodes) else None


def validate_trainer(prefix: str, trainer: Any, batch_size: Any) -> None:
    if not isinstance(trainer, dict):
        raise ConfigError(f"{prefix}={trainer!r}; expected a trainer preset (e.g. trainer=cpu)")
    check_number(f"{prefix}.lr", trainer.get("lr", 2e-5), 0, low_open=True)
    check_number(f"{prefix}.weight_decay", trainer.get("weight_decay", 0.0), 0)
    check_number(f"{prefix}.warmup_ratio", trainer.get("warmup_ratio", 0.0), 0, 1, high_open=True)
    check_int(f"{prefix}.max_epochs", trainer.get("max_epochs"), -1, optional=True)
    check_int(f"{prefix}.max_steps", trainer.get("max_steps"), -1, optional=True)
    if trainer.get("max_epochs") == 0 or trainer.get("max_steps") == 0:
        key = "max_epochs" if trainer.get("max_epochs") == 0 else "max_steps"
        raise ConfigError(f"{prefix}.{key}=0; expected at least 1 (or -1 for no limit): the run would not train")
    check_int(f"{prefix}.accumulate_grad_batches", trainer.get("accumulate_grad_batches", 1), 1)
    check_number(f"{prefix}.gradient_clip_val", trainer.get("gradient_clip_val"), 0, optional=True)
    check_int(f"{prefix}.num_nodes", trainer.get("num_nodes", 1), 1)
    check_int(f"{prefix}.skip_bad_batches", trainer.get("skip_bad_batches", 0), 0)
    devices = trainer.get("devices", 1)
    if not (devices == "auto" or (_is_int(devices) and (devices >= 1 or devices == -1))
            or (isinstance(devices, str) and devices.isdigit()) or isinstance(devices, list)):
        raise ConfigError(f"{prefix}.devices={devices!r}; expected a positive integer, -1, 'auto' or a list of device ids")
    if "precision" in trainer:
        check_choice(f"{prefix}.precision", trainer["precision"], PRECISIONS)
    if trainer.get("accelerator") in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"{prefix}.accelerator={trainer['accelerator']}; no CUDA GPU is visible here; "
                              "expected trainer=cpu (or run on a GPU node)")
    gc = trainer.get("grad_cache") or {}
    if not isinstance(gc, dict):
        raise ConfigError(f"{prefix}.grad_cache={gc!r}; expected a mapping with chunk_size, anchor_chunk_size")
    chunk = gc.get("chunk_size")
    check_int(f"{prefix}.grad_cache.chunk_size", chunk, 1, optional=True)
    check_int(f"{prefix}.grad_cache.anchor_chunk_size", gc.get("anchor_chunk_size"), 1, optional=True)
    if chunk is not None and _is_int(batch_size) and chunk > batch_size:
        raise ConfigError(f"{prefix}.grad_cache.chunk_size={chunk} exceeds data.batch_size={batch_size}; "
                          "expected a chunk size <= the (per-device) batch size")


def validate_train_data(prefix: str, data: Any) -> None:
    from embedexp.data.readers import ON_ERROR
    from embedexp.data.train_sets import FORMATS

    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}={data!r}; expected a data preset (e.g. data=demo)")
    check_int(f"{prefix}.batch_size", data.get("batch_size", 32), 1)
    check_int(f"{prefix}.num_workers", data.get("num_workers", 0), 0)
    check_choice(f"{prefix}.on_error", data.get("on_error", "raise"), ON_ERROR)
    for k in ("shuffle", "drop_last"):
        check_bool(f"{prefix}.{k}", data.get(k))
    train = data.get("train")
    if not isinstance(train, dict):
        raise ConfigError(f"{prefix}.train={train!r}; expected a mapping with format and root/path")
    fmt = train.get("format")
    check_choice(f"{prefix}.train.format", fmt, FORMATS)
    check_choice(f"{prefix}.train.on_error", train.get("on_error", "raise"), ON_ERROR)
    if fmt == "beir" or (fmt == "sentences" and train.get("root")):
        check_dir(f"{prefix}.train.root", train.get("root"), "a BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    elif fmt == "sentences" and not train.get("path"):
        raise ConfigError(f"{prefix}.train needs root (a BEIR folder) or path (a text file) for format=sentences")
    else:
        what = {"pairs": "a pairs jsonl file", "labeled_pairs": "a labeled pairs jsonl file",
                "sts": "an STS tsv file", "sentences": "a text file, one text per line"}[fmt]
        check_file(f"{prefix}.train.path", train.get("path"), what)
    if fmt == "sts":
        check_number(f"{prefix}.train.max_score", train.get("max_score", 5.0), 0, low_open=True)
        check_number(f"{prefix}.train.binary_threshold", train.get("binary_threshold"), optional=True)
    if fmt == "sentences":
        check_number(f"{prefix}.train.deletion_ratio", train.get("deletion_ratio", 0.6), 0, 1, high_open=True)
        check_int(f"{prefix}.train.min_words", train.get("min_words", 4), 0)
        check_int(f"{prefix}.train.max_rows", train.get("max_rows"), 1, optional=True)
    if fmt == "beir":
        check_int(f"{prefix}.train.min_grade", train.get("min_grade", 1), 0)


def validate_eval(ev: Any, model_dim: int | None, sets_key: str = "eval.sets") -> None:
    from embedexp.data.readers import ON_ERROR
    from embedexp.eval.sets import SET_TYPES

    if not isinstance(ev, dict):
        raise ConfigError(f"eval={ev!r}; expected an eval preset (e.g. eval=default)")
    check_int("eval.batch_size", ev.get("batch_size", 64), 1)
    ks = {k: check_int_list(f"eval.{k}", ev[k]) for k in K_LISTS if k in ev}
    dims = check_int_list("eval.dims", ev.get("dims"), optional=True)
    if dims and model_dim is not None and max(dims) > model_dim:
        raise ConfigError(f"eval.dims={dims}; {max(dims)} exceeds the model's embedding dimension {model_dim}; "
                          f"expected dims <= {model_dim}")
    sets = ev.get("sets") or {}
    if not isinstance(sets, dict):
        raise ConfigError(f"{sets_key}={sets!r}; expected a mapping name -> {{type, root/path}}")
    for name, spec in sets.items():
        key = f"{sets_key}.{name}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{key}={spec!r}; expected a mapping with type and root/path")
        check_choice(f"{key}.type", spec.get("type"), SET_TYPES)
        check_choice(f"{key}.on_error", spec.get("on_error", "raise"), ON_ERROR)
        if spec["type"] == "retrieval":
            check_dir(f"{key}.root", spec.get("root"), "a BEIR folder")
            if ks and not any(ks.values()):
                raise ConfigError(f"eval: every metric cut-off list ({', '.join(ks)}) is empty; expected at least one k")
        else:
            check_file(f"{key}.path", spec.get("path"), "an STS tsv file")
            check_number(f"{key}.max_score", spec.get("max_score", 5.0), 0, low_open=True)


def validate_config(cfg: DictConfig, stage: str = "train") -> None:
    """Every check that needs no data rows and no model weights; raises ConfigError/ModelError."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}")
    seed = _get(cfg, "seed", 0)
    if not _is_int(seed):
        raise ConfigError(f"seed={seed!r}; expected an integer")
    miner = _get(cfg, "miner") or {}
    needs_model = stage != "mine" or (miner.get("name") == "dense" and miner.get("model") is None)
    model_dim = validate_model("model", _get(cfg, "model")) if needs_model else None
    if stage == "train":
        validate_loss("loss", _get(cfg, "loss"), model_dim)
        data = _get(cfg, "data")
        validate_train_data("data", data)
        validate_trainer("trainer", _get(cfg, "trainer"), data.get("batch_size"))
        pretrain = _get(cfg, "pretrain")
        if pretrain:
            validate_loss("pretrain.loss", pretrain.get("loss"), model_dim)
            validate_train_data("pretrain.data", pretrain.get("data"))
            merged = {**_get(cfg, "trainer"), **(pretrain.get("trainer") or {})}
            validate_trainer("pretrain.trainer", merged, (pretrain.get("data") or {}).get("batch_size"))
    if stage == "mine":
        validate_train_data("data", _get(cfg, "data"))
        check_int("miner.n_negatives", miner.get("n_negatives", 1), 1)
    if stage in ("train", "evaluate"):
        validate_eval(_get(cfg, "eval"), model_dim, _sets_key(cfg))
    if stage == "evaluate" and _get(cfg, "tuned") is not None:
        check_dir("tuned", _get(cfg, "tuned"), "an exported model folder")


def _sets_key(cfg: DictConfig) -> str:
    """Name eval sets by the key the user edits: `data.eval_sets` when eval.sets points there."""
    try:
        raw = cfg.eval._get_node("sets")._value()
    except (AttributeError, OmegaConfBaseException):
        return "eval.sets"
    return "data.eval_sets" if isinstance(raw, str) and raw.replace(" ", "") == "${data.eval_sets}" else "eval.sets"


def check_batches(cfg: DictConfig, n_rows: int) -> None:
    """Once the rows are known: drop_last must leave at least one step on every device."""
    batch, drop_last = _get(cfg, "data.batch_size", 32), _get(cfg, "data.drop_last", False)
    world = world_size(_get(cfg, "trainer") or {}) or 1
    if drop_last and n_rows < batch * world:
        raise ConfigError(
            f"data.batch_size={batch} x {world} device(s) = {batch * world} rows per step, but the training data has "
            f"{n_rows} rows and data.drop_last=true: no step would run; expected a smaller batch or drop_last=false"
        )


# ---------------------------------------------------------------- command line
def _group_options(conf: Path, group: str) -> list[str]:
    folder = conf / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def check_overrides(config_name: str, overrides: list[str], conf: str | None = None) -> None:
    """Group options must exist under conf/<group>/ and keys must exist unless added with `+`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from embedexp.config import config_dir

    conf_path = Path(conf or config_dir())
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise ConfigError(f"cannot parse the command line: {_first_line(e)}") from None
    sweeping = False
    for o in parsed:
        group = o.key_or_group
        if group.startswith("hydra") or o.is_delete() or not (conf_path / group).is_dir():
            continue
        if o.is_sweep_override():
            sweeping = True
            values = list(o.sweep_string_iterator()) if hasattr(o, "sweep_string_iterator") else []
        else:
            value = o.value()
            values = list(value) if isinstance(value, list) else [value]  # logger=[csv,wandb]: several options
        options = _group_options(conf_path, group)
        shown = f"{group}@{o.package}" if o.package else group
        for v in values:
            if v is None or str(v) == "null" or str(v) in options:
                continue
            close = difflib.get_close_matches(str(v), options, n=1, cutoff=0.5)
            hint = f"did you mean {shown}={close[0]}? " if close else ""
            raise ConfigError(f"{shown}={v}: no such option in conf/{group}/; {hint}expected one of {', '.join(options)}")
    if not sweeping:
        _check_keys(config_name, [s for s, o in zip(overrides, parsed) if not o.key_or_group.startswith("hydra")], conf_path)


def _check_keys(config_name: str, overrides: list[str], conf: Path) -> None:
    """Compose once (no resolution) to catch keys that do not exist; name the closest existing key."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    if GlobalHydra.instance().is_initialized():
        return  # called inside a composed app (tests): nothing to add
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        try:
            compose(config_name=config_name, overrides=overrides)
            return
        except (HydraException, OmegaConfBaseException) as e:
            cause = e.__cause__
            full_key = getattr(cause, "full_key", None)
            if not full_key or "not in struct" not in str(cause):
                return  # let Hydra report what we cannot phrase better
            parent, _, leaf = str(full_key).rpartition(".")
            rest = [s for s in overrides if not s.split("=", 1)[0].lstrip("+~") == full_key]
            try:
                base = compose(config_name=config_name, overrides=rest)
            except (HydraException, OmegaConfBaseException):
                base = None
    node = OmegaConf.select(base, parent) if base is not None and parent else base
    keys = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
    close = difflib.get_close_matches(leaf, keys, n=1)
    where = parent or "the top level"
    hint = f"did you mean {parent + '.' if parent else ''}{close[0]}? " if close else ""
    raise ConfigError(f"{full_key} is not a key of {where}; {hint}to add a new key write +{full_key}=...")


def cli_entry(config_name: str) -> Callable:
    """Decorator for a `@hydra.main` function: check the command line first, one line + exit 2 on error."""

    def wrap(hydra_main: Callable) -> Callable:
        @functools.wraps(hydra_main)
        def entry(*args, **kwargs):
            argv = sys.argv[1:]
            hydra_flags = [a for a in argv if a.startswith("-")]
            if not any(f.split("=")[0] in ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
                                            "--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion",
                                            "-sc", "--cfg", "-c", "--package", "-p") for f in hydra_flags):
                try:
                    check_overrides(config_name, [a for a in argv if not a.startswith("-")])
                except ConfigError as e:
                    print(f"embedexp: error: {e}", file=sys.stderr, flush=True)
                    sys.exit(2)
            return hydra_main(*args, **kwargs)

        return entry

    return wrap
