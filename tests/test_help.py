"""Per-command --help (conf/hydra/help/<command>.yaml): the command's sentence, three examples, and only the
config groups that matter for it, with their options read from conf/ (not a hand-kept list)."""

from __future__ import annotations

import importlib
import sys

import pytest

# (module, entry function, first words of the sentence, groups listed, groups that must not be listed)
COMMANDS = {
    "train": ("embedexp.train", "main", "embedexp-train: fine-tune", ["model", "loss", "data", "trainer"], []),
    "evaluate": ("embedexp.evaluate", "main", "embedexp-evaluate: evaluate", ["model", "data", "eval"], ["loss"]),
    "mine": ("embedexp.mine", "main", "embedexp-mine: mine hard negatives", ["miner", "data", "model"], ["loss"]),
    "index": ("embedexp.index.cli", "index_main", "embedexp-index: encode a corpus", ["model"], ["loss", "data"]),
    "search": ("embedexp.index.cli", "search_main", "embedexp-search: query", ["model"], ["loss", "data", "miner"]),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_page(command, monkeypatch, capsys):
    module, fn, sentence, groups, unrelated = COMMANDS[command]
    entry = getattr(importlib.import_module(module), fn)
    monkeypatch.setattr(sys, "argv", [f"embedexp-{command}", "--help"])
    try:
        entry()
    except SystemExit as e:  # hydra may exit 0 after printing help
        assert not e.code
    out = capsys.readouterr().out
    assert out.startswith(sentence), out[:300]
    examples = out.split("Examples:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert len(examples) == 3 and all(line.strip().startswith("embedexp-") for line in examples), examples
    section = out.split("Config group", 1)[1].split(":\n", 1)[1].split("\n\n", 1)[0]
    listed = {line.split(":")[0].strip() for line in section.splitlines()}
    assert set(groups) <= listed, listed
    assert not set(unrelated) & listed, listed
    assert "minilm" in out and "tiny" in out  # the model group's options, read from conf/model/
    assert "$APP_CONFIG_GROUPS" not in out and "Powered by Hydra" not in out
    if command == "train":
        assert "infonce" in out and "tsdae" in out  # conf/loss/
