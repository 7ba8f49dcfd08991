"""What a person sees: one log stream, no third-party tips, plain progress lines when not on a terminal, the TSDAE
decoder load in one line, search hits with their text, an actionable re-index refusal."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import lightning as L
import pytest

from embedexp import progress
from embedexp.runtime import _install_warning_filters, quiet_lightning


@pytest.fixture()
def root_handler():
    """A handler on the root logger, as Hydra's job logging installs one."""
    handler = logging.StreamHandler()
    logging.getLogger().addHandler(handler)
    yield handler
    logging.getLogger().removeHandler(handler)


def test_lightning_prints_once_and_without_tips(root_handler, caplog):
    import lightning

    logging.getLogger("lightning").addHandler(lightning._console)  # as `import lightning` leaves it
    quiet_lightning()
    assert lightning._console not in logging.getLogger("lightning").handlers  # no second "INFO: ..." copy
    caplog.set_level(logging.INFO)
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    rank_zero.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]")
    rank_zero.info("GPU available: False, used: False")
    ckpt = logging.getLogger("lightning.pytorch.trainer.connectors.checkpoint_connector")
    ckpt.info("`weights_only` was not set, defaulting to `False`.")
    ckpt.info("Restoring states from the checkpoint path at x.ckpt")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["GPU available: False, used: False", "Restoring states from the checkpoint path at x.ckpt"]


@pytest.mark.parametrize("slurm_job", [None, "123"])
def test_warning_filters_are_narrow(monkeypatch, slurm_job):
    if slurm_job:
        monkeypatch.setenv("SLURM_JOB_ID", slurm_job)
    else:
        monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        warnings.simplefilter("always")
        _install_warning_filters()
        srun = "The `srun` command is available on your system but is not used. HINT: ..."
        warnings.warn_explicit(srun, UserWarning, "slurm.py", 204, module="lightning.fabric.plugins.environments.slurm")
        leaf = "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)` instead."
        warnings.warn_explicit(leaf, FutureWarning, "_pytree.py", 21, module="lightning.pytorch.utilities._pytree")
        warnings.warn_explicit(leaf, FutureWarning, "ours.py", 1, module="embedexp.something")  # not lightning's
        warnings.warn_explicit("a real problem", UserWarning, "slurm.py", 1, module="lightning.fabric.x")
    shown = [str(w.message) for w in caught]
    assert shown == ([srun] if slurm_job else []) + [leaf, "a real problem"]


def test_progress_mode_follows_the_stream(monkeypatch):
    class Stream:
        def __init__(self, tty: bool) -> None:
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    monkeypatch.delenv("EMBEDEXP_PROGRESS", raising=False)
    progress.configure("auto")
    assert progress.resolved_mode(Stream(True)) == "bars" and progress.resolved_mode(Stream(False)) == "lines"
    monkeypatch.setenv("EMBEDEXP_PROGRESS", "none")
    assert progress.resolved_mode(Stream(True)) == "none"
    monkeypatch.setenv("EMBEDEXP_PROGRESS", "lines")
    assert isinstance(progress.progress_bar(3, "x"), progress.LineProgress)
    assert not isinstance(progress.progress_bar(3, "x", disable=True), progress.LineProgress)
    with pytest.raises(Exception, match="progress.mode='fast'; expected one of auto, bars, lines, none"):
        progress.configure("fast")
    assert [progress.format_duration(s) for s in (5, 192, 7500)] == ["5s", "3m12s", "2h05m"]


def test_line_progress_writes_counts_only_for_long_work(caplog):
    caplog.set_level(logging.INFO, logger="embedexp.progress")
    with progress.LineProgress(40, "helpdesk_test: corpus", every_s=1e9) as bar:
        for _ in range(40):
            bar.update()
    assert not caplog.records  # short work: the caller's "evaluated ... in 0.4s" says enough
    with progress.LineProgress(40, "helpdesk_test: corpus", every_s=0.0) as bar:
        for _ in range(3):
            bar.update()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("helpdesk_test: corpus 1/40 batches (") and lines[-1].startswith(
        "helpdesk_test: corpus 3/40 batches"
    )


def test_training_lines_when_not_a_terminal(tmp_path, caplog):
    from test_curves import _Tiny

    from embedexp.trainer.progress import LineProgressBar

    caplog.set_level(logging.INFO, logger="embedexp.progress")
    trainer = L.Trainer(
        max_steps=7,
        logger=False,
        callbacks=[LineProgressBar(every_n_steps=3, every_s=1e9)],
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(_Tiny())
    lines = [r.getMessage() for r in caplog.records if r.name == "embedexp.progress"]
    step_lines = [line for line in lines if line.startswith("step ")]
    assert [line.split()[1] for line in step_lines] == ["1/7", "4/7", "7/7"]  # first, every 3rd, last
    assert all(" loss=" in line and " lr=0.1 " in line and " eta=" in line for line in step_lines), step_lines
    assert lines[-1].startswith("training done: 7 steps in ")


def test_tsdae_decoder_load_is_one_line_other_loads_keep_the_report(tiny_model_dir, caplog):
    from transformers import AutoConfig, AutoModelForCausalLM

    from embedexp.losses.tsdae import TSDAELoss
    from embedexp.models import Encoder

    caplog.set_level(logging.INFO)
    TSDAELoss().attach(Encoder(str(tiny_model_dir), pooling="cls"))
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "LOAD REPORT" not in text and "seem corrupted" not in text
    assert "cross-attention/LM-head tensors newly initialised" in text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("embedexp")]
    caplog.clear()
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.is_decoder, config.add_cross_attention = True, True
    AutoModelForCausalLM.from_pretrained(tiny_model_dir, config=config)  # not the decoder: transformers reports
    assert "LOAD REPORT" in "\n".join(r.getMessage() for r in caplog.records)


def test_search_prints_text_and_refusal_names_paths_and_rebuild(tmp_path, tiny_model_dir, isolated_cache, capsys):
    from hydra import compose, initialize_config_dir

    from embedexp.config import config_dir, register_resolvers
    from embedexp.errors import ModelError
    from embedexp.index import cli
    from embedexp.index.store import Index
    from embedexp.models import Encoder
    from embedexp.models.tiny import build_tiny_bert

    out = tmp_path / "ix"
    long_text = "tides rise and fall twice a day because of the moon " * 4
    Index.build(Encoder(str(tiny_model_dir)), ["d1", "d2"], [long_text, "bread\n  needs   yeast"], source="/c").save(
        out
    )
    register_resolvers()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("search", [f"index={out}", "query=tides", "k=2", f"paths.output_dir={tmp_path}"])
    cli.search(cfg)
    hits = capsys.readouterr().out.splitlines()[1:]
    assert len(hits) == 2
    by_id = {line.split()[-1]: line for line in hits}
    assert "bread needs yeast" in by_id["d2"]  # whitespace collapsed
    assert long_text[:60] in by_id["d1"] and "…" in by_id["d1"] and len(by_id["d1"]) < 140  # cut near 100 chars

    other_dir = build_tiny_bert(tmp_path / "other", seed=1)
    with pytest.raises(ModelError) as e:
        Index.load(out, encoder=Encoder(str(other_dir)))
    message = str(e.value)
    assert f"index {out.resolve()} was built with model {Path(tiny_model_dir).resolve()}" in message
    assert f"not with {Path(other_dir).resolve()}" in message
    assert f"embedexp-index corpus=/c model.model_name_or_path={Path(other_dir).resolve()} out={out.resolve()}" in (
        message
    )
