"""Curves in csv/metrics.csv: a resumed run continues the file (every step once), the last step is always logged,
and a real run's file holds base/* at step 0 and tuned/* at the last step (embedexp/curves.py)."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from embedexp.curves import CurveKeeper, ResumableCSVLogger, merge_rows_by_step


class _Killed(Exception):
    pass


class _Tiny(L.LightningModule):
    """A linear regression on one repeated batch: a resumed run's losses equal the uninterrupted run's."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(1)
        x = torch.randn(4, 4, generator=g).repeat(12, 1)  # every batch the same: where an epoch resumes is moot
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)


class _KillAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise _Killed


def _fit(out: Path, max_steps: int, log_every: int, ckpt_path=None, kill_at=None) -> None:
    callbacks = [CurveKeeper(), ModelCheckpoint(dirpath=out / "ckpt", every_n_train_steps=3, save_top_k=-1)]
    if kill_at:
        callbacks.append(_KillAt(kill_at))
    trainer = L.Trainer(
        max_steps=max_steps,
        log_every_n_steps=log_every,
        logger=ResumableCSVLogger(save_dir=str(out), name="csv", version=""),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        num_sanity_val_steps=0,
    )
    trainer.fit(_Tiny(), ckpt_path=ckpt_path)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _losses(path: Path) -> dict[int, float]:
    rows = [r for r in _rows(path) if r.get("train/loss")]
    steps = [int(r["step"]) for r in rows]
    assert len(steps) == len(set(steps)), f"a step is in {path} twice: {steps}"
    return {int(r["step"]): float(r["train/loss"]) for r in rows}


def test_resumed_run_continues_metrics_csv_every_step_once(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    _fit(full, max_steps=8, log_every=1)
    with pytest.raises(_Killed):
        _fit(killed, max_steps=8, log_every=1, kill_at=5)  # checkpoint at step 3; steps 4-5 are redone
    before_resume = _losses(killed / "csv" / "metrics.csv")
    # steps 1..4 (Lightning logs optimiser step k in row k - 1; the kill comes before step 5 is logged)
    assert sorted(before_resume) == [0, 1, 2, 3]
    _fit(killed, max_steps=8, log_every=1, ckpt_path=str(killed / "ckpt" / "epoch=0-step=3.ckpt"))

    expected = _losses(full / "csv" / "metrics.csv")
    got = _losses(killed / "csv" / "metrics.csv")
    assert sorted(got) == list(range(8))  # Lightning's CSVLogger alone keeps only steps 3..7 here
    assert got == pytest.approx(expected, rel=1e-6)
    for step in (0, 1, 2):  # written before the kill and kept
        assert got[step] == pytest.approx(before_resume[step], rel=1e-9)
    steps = [int(r["step"]) for r in _rows(killed / "csv" / "metrics.csv")]
    assert steps == sorted(set(steps))  # one row per step, in order


def test_fresh_run_replaces_an_old_metrics_csv(tmp_path):
    _fit(tmp_path, max_steps=4, log_every=1)
    _fit(tmp_path, max_steps=2, log_every=1)
    assert sorted(_losses(tmp_path / "csv" / "metrics.csv")) == [0, 1]


@pytest.mark.parametrize("max_steps,every,expected", [(3, 50, [2]), (7, 3, [2, 5, 6]), (6, 3, [2, 5])])
def test_last_step_is_always_logged(tmp_path, max_steps, every, expected):
    _fit(tmp_path, max_steps=max_steps, log_every=every)
    assert sorted(_losses(tmp_path / "csv" / "metrics.csv")) == expected


def test_merge_rows_by_step_keeps_the_last_value_per_column(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("epoch,step,a,b\n0,0,1.0,\n0,1,2.0,\n0,1,3.0,\n,1,,9.0\n0,0,,5.0\n")
    assert merge_rows_by_step(str(path)) == 2
    assert _rows(path) == [
        {"epoch": "0", "step": "0", "a": "1.0", "b": "5.0"},
        {"epoch": "0", "step": "1", "a": "3.0", "b": "9.0"},
    ]


def test_short_real_run_has_loss_base_and_tuned_rows(tmp_path, isolated_cache):
    """embedexp-train's own wiring: 3 steps with log_every_n_steps=50 still log the loss; base/* at step 0,
    tuned/* at step 3, as conf/logger/csv.yaml says."""
    from embedexp.train import train

    from conftest import compose_demo_tiny

    out = tmp_path / "run"
    cfg = compose_demo_tiny(
        out,
        isolated_cache,
        "trainer.max_steps=3",
        "trainer.log_every_n_steps=50",
        "trainer.enable_progress_bar=false",
        "checkpoint.enabled=false",
    )
    train(cfg)
    rows = _rows(out / "csv" / "metrics.csv")
    by_step = {int(r["step"]): r for r in rows}
    assert len(by_step) == len(rows)
    assert by_step[2]["train/loss"]
    assert by_step[0]["base/demo_test/ndcg@10"] and by_step[3]["tuned/demo_test/ndcg@10"]
