"""Command-line glue shared by every entry point: one-line errors and Hydra composition checks.

`cli_entry(config_name)` wraps a `@hydra.main` function. Before Hydra runs (and, for a multirun,
before a sweep folder or a first job exists) it composes the command line once with Hydra's own
config loader and search path (the packaged `conf/`, `--config-dir`, `hydra.searchpath`), so a
mistake Hydra would report in many lines (or only when job 3 of a sweep starts) becomes one line
with the closest valid option or key and exit status 2:

    loss=infonc: no such option in config group loss; did you mean loss=infonce? expected one of ...
    loss.temprature is not a key of loss; did you mean loss.temperature? to add a new key write +...

Nothing here lists `conf/` by hand: the options come from Hydra's `MissingConfigException`.
`one_line_errors` turns the project's errors raised inside the run into the same one-line form.
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
import sys
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from embedexp.errors import ConfigError, EmbedexpError

log = logging.getLogger("embedexp")

PREFIX = "embedexp: error: "
# flags after which composing the command line ourselves would not mean the same as Hydra's run
_SKIP_FLAGS = ("--config-path", "-cp", "--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ---------------------------------------------------------------- errors raised inside a run
def find_user_error(e: BaseException | None) -> EmbedexpError | None:
    """The project error behind `e` (itself, or a cause/context: Lightning and Hydra re-wrap exceptions)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, EmbedexpError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def one_line_errors(fn: Callable) -> Callable:
    """Decorator: a user error (config, data, model folder) prints one line and exits with status 2."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            user = find_user_error(e)
            if user is None:
                raise
            logging.getLogger("embedexp").debug("user error", exc_info=True)
            print(f"{PREFIX}{user}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapped


# ---------------------------------------------------------------- composing the command line
def _search_path(config_dir_extra: str | None):
    """Hydra's search path for our entry points: the packaged conf/ (+ `--config-dir` first, as Hydra does)."""
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery

    from embedexp.config import config_dir

    search_path = create_config_search_path(config_dir())
    if config_dir_extra:
        extra = os.path.abspath(config_dir_extra)
        if not os.path.isdir(extra):
            raise ConfigError(f"--config-dir={config_dir_extra}: folder does not exist; expected a folder of configs")
        search_path.prepend(provider="command-line", path=f"file://{extra}", anchor=SearchPathQuery(provider="schema"))
    return search_path


def _runs_to_compose(overrides: list[str]) -> list[list[str]]:
    """One command line per value of the longest sweep (others repeat their last value): every value is composed once."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise ConfigError(f"cannot parse the command line: {_first_line(e)}") from None
    swept: dict[int, list[str]] = {}
    for i, o in enumerate(parsed):
        if o.is_sweep_override():
            try:
                swept[i] = [str(v) for v in o.sweep_string_iterator()]
            except Exception:  # range/interval sweeps of a numeric key: the key itself is checked with its first value
                swept[i] = []
    if not swept:
        return [overrides]
    n = max((len(v) for v in swept.values()), default=1) or 1
    runs = []
    for j in range(n):
        line = []
        for i, text in enumerate(overrides):
            if i not in swept:
                line.append(text)
            elif swept[i]:
                values = swept[i]
                line.append(f"{text.split('=', 1)[0]}={values[min(j, len(values) - 1)]}")
        runs.append(line)
    return runs


def _missing_option(e: Exception, overrides: list[str], loader: Any) -> ConfigError:
    """Hydra's MissingConfigException ('Could not find loss/infonc', options) as one line naming the override."""
    missing = str(getattr(e, "missing_cfg_file", "") or "")
    group, _, name = missing.rpartition("/")
    options = sorted(getattr(e, "options", None) or loader.get_group_options(group))
    shown = group or missing
    for text in overrides:
        key, _, value = text.lstrip("+~").partition("=")
        values = [v.strip() for v in value.strip("[]").split(",")]
        if key.split("@")[0] == group and name in values:
            shown = key
            break
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    hint = f"did you mean {shown}={close[0]}? " if close else ""
    listed = f"expected one of {', '.join(options)}" if options else "expected an existing option"
    return ConfigError(f"{shown}={name}: no such option in config group {group}; {hint}{listed}")


def _missing_key(cause: BaseException, compose: Callable, overrides: list[str]) -> ConfigError | None:
    """OmegaConf's 'Key x is not in struct' under Hydra's composition error, with the closest existing key."""
    full_key = getattr(cause, "full_key", None)
    if not full_key or "not in struct" not in str(cause):
        return None
    parent, _, leaf = str(full_key).rpartition(".")
    rest = [s for s in overrides if s.split("=", 1)[0].lstrip("+~") != full_key]
    try:
        base = compose(rest)
    except Exception:
        base = None
    node = OmegaConf.select(base, parent) if base is not None and parent else base
    keys = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
    close = difflib.get_close_matches(leaf, keys, n=1)
    hint = f"did you mean {parent + '.' if parent else ''}{close[0]}? " if close else ""
    return ConfigError(
        f"{full_key} is not a key of {parent or 'the top level'}; {hint}to add a new key write +{full_key}=..."
    )


def check_overrides(config_name: str, overrides: list[str], config_dir_extra: str | None = None) -> None:
    """Compose `overrides` with Hydra's loader (each sweep value once); raise ConfigError as one line on a mistake.

    Args:
        config_name: the primary config (`train`, `evaluate`, ...).
        overrides: command-line overrides, sweeps allowed (`loss=infonce,triplet`).
        config_dir_extra: the `--config-dir` folder, searched before the packaged configs.
    Raises:
        ConfigError: unparsable override, unknown group option (with the closest option), unknown key (with the
            closest key). Other composition errors are left to Hydra's own report.
    """
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException
    from hydra.types import RunMode

    loader = ConfigLoaderImpl(config_search_path=_search_path(config_dir_extra))

    def compose(line: list[str]) -> Any:
        return loader.load_configuration(config_name=config_name, overrides=line, run_mode=RunMode.RUN)

    for line in _runs_to_compose(overrides):
        try:
            compose(line)
        except MissingConfigException as e:
            raise _missing_option(e, line, loader) from None
        except (ConfigCompositionException, HydraException, OmegaConfBaseException) as e:
            error = _missing_key(e.__cause__ or e, compose, line)
            if error is not None:
                raise error from None
            return  # Hydra's own report says it better than a re-worded line would


def group_options(group: str) -> str:
    """The options of a config group, comma-separated (the packaged conf/ and Hydra's plugins): the
    `${embedexp.options:<group>}` resolver of the per-command help pages in conf/hydra/help/."""
    try:
        options = _help_loader().get_group_options(group)
    except Exception:  # help text must never fail
        return "?"
    return ", ".join(sorted(options)) or "(none)"


def help_text(command: str) -> str | None:
    """The `--help` page of a command: the template of conf/hydra/help/<command>.yaml (also Hydra's `hydra.help`
    for that command), its `${embedexp.options:<group>}` filled in; None when the command has no page."""
    from embedexp.config import config_dir

    path = os.path.join(config_dir(), "hydra", "help", f"{command}.yaml")
    if not os.path.isfile(path):
        return None
    return str(OmegaConf.load(path).template)


@functools.lru_cache(maxsize=1)
def _help_loader():
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    return ConfigLoaderImpl(config_search_path=_search_path(None))


OmegaConf.register_new_resolver("embedexp.options", group_options, replace=True)


def cli_entry(config_name: str) -> Callable:
    """Decorator for a `@hydra.main` function: check the command line first, one line + exit 2 on error."""

    def wrap(hydra_main: Callable) -> Callable:
        @functools.wraps(hydra_main)
        def entry(*args, **kwargs):
            from hydra._internal.utils import get_args_parser

            argv = sys.argv[1:]
            if "--help" in argv or "-h" in argv:
                text = help_text(config_name)
                if text is not None:  # Hydra's own page would compose every group of every plugin first (~seconds)
                    print(text)
                    return None
            try:
                parsed, _ = get_args_parser().parse_known_args(argv)
            except SystemExit:
                return hydra_main(*args, **kwargs)  # Hydra reports its own flag errors
            if not any(a.split("=")[0] in _SKIP_FLAGS for a in argv if a.startswith("-")):
                try:
                    check_overrides(parsed.config_name or config_name, list(parsed.overrides), parsed.config_dir)
                except ConfigError as e:
                    print(f"{PREFIX}{e}", file=sys.stderr, flush=True)
                    sys.exit(2)
            return hydra_main(*args, **kwargs)

        return entry

    return wrap
