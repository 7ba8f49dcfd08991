"""Issue 14, items 6-8: resume checks the data position's inputs, GradCache's LR schedule equals the plain
path's, Matryoshka's sampled dims are fixed for one optimisation step.

Every run here is a real (tiny, CPU, single-process) Lightning fit of EmbeddingModule.
"""

from __future__ import annotations

import logging

import lightning as L
import pytest
import torch

from embedexp.checkpointing import LAST, ResumableCheckpoint, check_resume_data
from embedexp.data import EmbeddingDataModule
from embedexp.data.train_sets import TrainSet
from embedexp.errors import ConfigError
from embedexp.losses import InfoNCELoss, MatryoshkaLoss
from embedexp.models import Encoder
from embedexp.module import EmbeddingModule

WORDS = "protein cell gene tumour virus brain heart drug dose trial mouse patient risk blood liver".split()


def _rows(n: int) -> list[tuple[str, str]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for r in range(n):
        idx = torch.randint(len(WORDS), (6,), generator=g).tolist()
        out.append((f"q{r} " + " ".join(WORDS[i] for i in idx[:3]), f"d{r} " + " ".join(WORDS[i] for i in idx[3:])))
    return out


def _datamodule(rows, batch_size: int, seed: int = 0, **kwargs) -> EmbeddingDataModule:
    dm = EmbeddingDataModule(train={"format": "beir", "root": "unused"}, batch_size=batch_size, seed=seed, **kwargs)
    dm.set_train_set(TrainSet(("anchor", "positive"), ("query", "document"), rows))
    return dm


class Record(L.Callback):
    """Per optimiser update: the LR it used; per training batch: its rows (anchor texts) and the global step."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.anchors: list[str] = []
        self.dims: list[tuple[int, tuple[int, ...]]] = []  # (global step, dims of every loss call)

    def on_train_start(self, trainer, pl_module):
        if hasattr(pl_module.loss, "last_dims"):
            pl_module.loss.register_forward_hook(
                lambda mod, args, out: self.dims.append((trainer.global_step, tuple(mod.last_dims)))
            )

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append(optimizer.param_groups[0]["lr"])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.anchors.extend(batch["texts"][0])


def _fit(
    model_dir,
    dm,
    *,
    accumulate=1,
    grad_cache=None,
    max_epochs=1,
    max_steps=-1,
    loss=None,
    ckpt_dir=None,
    every_n_steps=None,
    ckpt_path=None,
    lr=1e-3,
    warmup_ratio=0.0,
    devices=1,
):
    encoder = Encoder(str(model_dir), max_seq_length=16)
    dm.set_tokenizer(encoder.tokenize)
    module = EmbeddingModule(
        encoder,
        loss or InfoNCELoss(),
        lr=lr,
        weight_decay=0.0,
        warmup_ratio=warmup_ratio,
        grad_cache=grad_cache,
        accumulate_grad_batches=accumulate if grad_cache else 1,
    )
    record = Record()
    callbacks = [record]
    if ckpt_dir is not None:
        callbacks.append(ResumableCheckpoint(ckpt_dir, every_n_steps, datamodule=dm))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        max_epochs=max_epochs,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accumulate_grad_batches=1 if grad_cache else accumulate,
        callbacks=callbacks,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return trainer, record, module


# ---------------------------------------------------------------- item 7: LR schedule under GradCache


@pytest.mark.parametrize(
    "max_epochs, max_steps, expected",
    [
        # hand-worked: 5 batches, accumulate 2 -> updates on batches 2, 4 and the partial window {5}: 3 per epoch;
        # linear decay from 1e-3 over N updates gives 1e-3 * (N - k) / N at update k
        (1, -1, [1e-3, 2e-3 / 3, 1e-3 / 3]),
        (2, 4, [1e-3 * (4 - k) / 4 for k in range(4)]),  # max_steps counts updates on both paths
    ],
)
def test_gradcache_accumulation_lr_schedule_equals_plain_path(tiny_model_dir, max_epochs, max_steps, expected):
    """Reference: Lightning's automatic optimisation (ceil(batches / accumulate) updates per epoch, the last
    window partial) and the hand-worked LRs above. Before the fix GradCache used floor(5 / 2) = 2 updates:
    LRs [1e-3, 5e-4, 0.0] for one epoch."""
    rows = _rows(10)
    _, plain, _ = _fit(tiny_model_dir, _datamodule(rows, 2), accumulate=2, max_epochs=max_epochs, max_steps=max_steps)
    trainer, cached, _ = _fit(
        tiny_model_dir,
        _datamodule(rows, 2),
        accumulate=2,
        grad_cache={"chunk_size": 1},
        max_epochs=max_epochs,
        max_steps=max_steps,
    )
    assert plain.lrs == pytest.approx(expected, rel=1e-9)
    assert cached.lrs == pytest.approx(plain.lrs, rel=1e-9)
    assert trainer.global_step == len(expected)


def test_gradcache_warmup_schedule_equals_plain_path(tiny_model_dir):
    """Warm-up too: both paths size it from the same (ceil) number of updates. Reference: the plain path."""
    rows = _rows(14)
    _, plain, _ = _fit(tiny_model_dir, _datamodule(rows, 2), accumulate=3, max_epochs=2, warmup_ratio=0.3)
    _, cached, _ = _fit(
        tiny_model_dir, _datamodule(rows, 2), accumulate=3, grad_cache={"chunk_size": 2}, max_epochs=2, warmup_ratio=0.3
    )
    assert len(plain.lrs) == 6  # 7 batches, accumulate 3: windows of 3, 3, 1 per epoch
    assert cached.lrs == pytest.approx(plain.lrs, rel=1e-9)


# ---------------------------------------------------------------- item 6: resume checks what the position depends on
ROWS = 12


@pytest.fixture(scope="module")
def saved_run(tiny_model_dir, tmp_path_factory):
    """12 rows, batch 4, seed 0: stopped after 2 of 3 batches with a checkpoint (position: epoch 0, 2 batches)."""
    ckpt_dir = tmp_path_factory.mktemp("resume") / "checkpoints"
    _, record, _ = _fit(tiny_model_dir, _datamodule(_rows(ROWS), 4), max_steps=2, ckpt_dir=ckpt_dir, every_n_steps=1)
    assert len(record.anchors) == 8
    return ckpt_dir / LAST, record.anchors


CHANGES = {
    # name: (datamodule kwargs, rows, text the one-line error must contain)
    "batch_size": ({"batch_size": 2}, None, "data.batch_size=4 in the checkpoint but 2 in this run"),
    "seed": ({"batch_size": 4, "seed": 1}, None, "seed=0 in the checkpoint but 1 in this run"),
    "shuffle": ({"batch_size": 4, "shuffle": False}, None, "data.shuffle=True in the checkpoint but False"),
    "drop_last": ({"batch_size": 4, "drop_last": True}, None, "data.drop_last=False in the checkpoint but True"),
    "data": ({"batch_size": 4}, "one_row_changed", "training-data fingerprint (data.train texts, miner output)='"),
    "data_size": ({"batch_size": 4}, "one_row_more", "number of training rows (data.train, after mining)=12 in the"),
}


def _changed_rows(kind):
    rows = _rows(ROWS)
    if kind == "one_row_changed":  # e.g. a miner that chose another hard negative for one row
        rows[5] = (rows[5][0], rows[5][1] + " liver")
    elif kind == "one_row_more":
        rows = _rows(ROWS + 1)
    return rows


@pytest.mark.parametrize("change", list(CHANGES))
def test_resume_with_changed_data_order_is_one_line_error(change, saved_run, tiny_model_dir, tmp_path):
    """Reference: the hand-worked position. The checkpoint trained rows 0-7 of the seed-0 order in batches of 4;
    before the fix, resuming with data.batch_size=2 skipped 2 batches of 2 = 4 rows and trained 4 of them
    (order positions 4-7) a second time (with seed=1 it retrained a different 8 rows' worth of the order).
    Now both the early check (before the base evaluation) and fit refuse, naming both values, before any batch."""
    ckpt, _ = saved_run
    kwargs, rows_kind, expected = CHANGES[change]
    kwargs = dict(kwargs)
    dm = _datamodule(_changed_rows(rows_kind), kwargs.pop("batch_size"), **kwargs)
    with pytest.raises(ConfigError) as early:
        check_resume_data(str(ckpt), dm)
    message = str(early.value)
    assert expected in message and "\n" not in message and f"ckpt_path={ckpt}" in message
    assert "epoch 0, 2 batches done" in message
    with pytest.raises(ConfigError, match="in the checkpoint but") as late:
        trainer, record, _ = _fit(tiny_model_dir, dm, ckpt_path=str(ckpt), ckpt_dir=tmp_path, every_n_steps=1)
    assert expected in str(late.value)


def test_resume_check_includes_world_size(saved_run):
    """The position counts batches per rank: 2 ranks would each skip 2 batches of their half of the order."""
    ckpt, _ = saved_run
    with pytest.raises(
        ConfigError, match=r"world size \(trainer.devices x trainer.num_nodes\)=1 in the checkpoint but 2"
    ):
        check_resume_data(str(ckpt), _datamodule(_rows(ROWS), 4), world_size=2)
    check_resume_data(str(ckpt), _datamodule(_rows(ROWS), 4), world_size=1)  # unchanged: no error
    check_resume_data(None, _datamodule(_rows(ROWS), 2))  # no checkpoint: nothing to check


def test_resume_with_same_data_trains_every_row_once(saved_run, tiny_model_dir, tmp_path):
    """Reference: one epoch of 12 rows trains each row exactly once (first run 8 rows + resumed run 4 rows)."""
    ckpt, first = saved_run
    dm = _datamodule(_rows(ROWS), 4)
    check_resume_data(str(ckpt), dm)
    _, record, _ = _fit(tiny_model_dir, dm, ckpt_path=str(ckpt), max_epochs=1, ckpt_dir=tmp_path)
    seen = first + record.anchors
    assert len(record.anchors) == 4 and sorted(seen) == sorted(r[0] for r in _rows(ROWS))


def test_old_checkpoint_without_record_warns_and_resumes(saved_run, tiny_model_dir, tmp_path, caplog):
    """Checkpoints saved before the record existed: a warning, then the resume goes ahead (documented choice)."""
    ckpt, _ = saved_run
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    state["callbacks"]["ResumableCheckpoint"].pop("data")
    old = tmp_path / "old.ckpt"
    torch.save(state, old)
    dm = _datamodule(_rows(ROWS), 4)
    with caplog.at_level(logging.WARNING, logger="embedexp.checkpointing"):
        check_resume_data(str(old), dm)
        _, record, _ = _fit(tiny_model_dir, dm, ckpt_path=str(old), max_epochs=1, ckpt_dir=tmp_path / "c")
    assert "no record of the data position's inputs" in caplog.text
    assert len(record.anchors) == 4


# ---------------------------------------------------------------- item 8: Matryoshka dims per optimisation step


def test_matryoshka_sampled_dims_resume_reproduces_the_draw(tiny_model_dir, tmp_path):
    """An uninterrupted run and a run stopped after step 1 and resumed train the same dims at every step, and
    every loss call of a step (4 GradCache anchor chunks x 2 accumulated micro-batches) uses one set.
    Reference: MatryoshkaLoss.step_dims(step, seed), a pure function of (seed, global step)."""

    def loss():
        return MatryoshkaLoss(InfoNCELoss(), dims=[32, 16, 8, 4], n_dims_per_step=2)

    gc = {"chunk_size": 2, "anchor_chunk_size": 1}
    rows = _rows(24)  # batch 4, accumulate 2: 3 updates in the epoch
    _, full, _ = _fit(tiny_model_dir, _datamodule(rows, 4, seed=7), accumulate=2, grad_cache=gc, loss=loss())
    _, first, _ = _fit(
        tiny_model_dir,
        _datamodule(rows, 4, seed=7),
        accumulate=2,
        grad_cache=gc,
        loss=loss(),
        max_steps=1,
        ckpt_dir=tmp_path / "ck",
        every_n_steps=1,
    )
    _, resumed, _ = _fit(
        tiny_model_dir,
        _datamodule(rows, 4, seed=7),
        accumulate=2,
        grad_cache=gc,
        loss=loss(),
        ckpt_path=str(tmp_path / "ck" / LAST),
        ckpt_dir=tmp_path / "ck2",
    )
    assert len(full.dims) == 3 * 2 * 4
    per_step = {}
    for step, dims in full.dims:
        per_step.setdefault(step, set()).add(dims)
    assert per_step == {s: {loss().step_dims(s, seed=7)} for s in range(3)}
    assert first.dims + resumed.dims == full.dims
    assert len({d for _, d in full.dims}) > 1  # really sampled: the steps differ
