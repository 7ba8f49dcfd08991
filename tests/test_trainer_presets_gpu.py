"""GPU trainer presets (gpu, ddp_gpu, fsdp_gpu): composition, bf16, the FSDP strategy they build, and the refusals.

Lightning's FSDP runs on CUDA only, so without a GPU these tests check the composed configs, the strategy object
(`embedexp.trainer.fsdp.fsdp_strategy`), which blocks its wrap policy makes FSDP units of (torch's own recursive
wrapper on a tiny random Qwen2), and the one-line refusals. scripts/gpu_smoke.sh is where they run on a GPU.
"""

import pytest
import torch
from omegaconf import OmegaConf

from embedexp.errors import ConfigError
from embedexp.trainer.config import check_trainer_config, split_trainer_cfg
from embedexp.trainer.fsdp import LayerWrapPolicy, fsdp_strategy
from embedexp.validate import validate_config

from conftest import compose_demo_tiny


def _trainer(tmp_path, preset: str, *overrides: str) -> dict:
    cfg = compose_demo_tiny(tmp_path / "out", tmp_path / "cache", f"trainer={preset}", *overrides)
    return OmegaConf.to_container(cfg.trainer, resolve=True)


@pytest.mark.parametrize("preset", ["gpu", "ddp_gpu", "fsdp_gpu"])
def test_gpu_presets_train_in_bf16(preset, tmp_path):
    t = _trainer(tmp_path, preset)
    assert t["precision"] == "bf16-mixed"
    assert t["accelerator"] == "gpu"
    assert t["name"] == preset


def test_fsdp_preset_composes_full_shard(tmp_path):
    t = _trainer(tmp_path, "fsdp_gpu")
    assert t["strategy"] == "fsdp"
    assert t["devices"] == -1
    assert t["fsdp"]["sharding_strategy"] == "FULL_SHARD"
    assert t["fsdp"]["wrap_layers"] == "auto"
    assert t["fsdp"]["use_orig_params"] is True


def test_fsdp_preset_builds_lightning_fsdp_strategy(tmp_path, monkeypatch):
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp import ShardingStrategy

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the preset's GPU check; nothing runs on it
    cfg = compose_demo_tiny(tmp_path / "out", tmp_path / "cache", "trainer=fsdp_gpu", "trainer.fsdp.cpu_offload=true")
    optim, kwargs = split_trainer_cfg(cfg.trainer)
    assert "fsdp" not in kwargs and "fsdp" not in optim
    strategy = kwargs["strategy"]
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert isinstance(strategy.kwargs["auto_wrap_policy"], LayerWrapPolicy)
    assert strategy.kwargs["use_orig_params"] is True
    assert strategy.cpu_offload.offload_params is True
    assert kwargs["precision"] == "bf16-mixed"


def test_wrap_policy_makes_one_unit_per_decoder_block(tmp_path):
    """torch's own FSDP recursive wrapper with our policy wraps exactly the Qwen2DecoderLayer blocks ('auto')."""
    from torch.distributed.fsdp.wrap import _recursive_wrap
    from transformers import AutoModel

    from embedexp.models.tiny import build_tiny_decoder

    model = AutoModel.from_pretrained(build_tiny_decoder(tmp_path / "qwen2", family="qwen2", layers=3))
    wrapped = []

    def fake_wrapper(module, **kwargs):
        wrapped.append(type(module).__name__)
        return module

    for names in ("auto", ["Qwen2DecoderLayer"]):
        wrapped.clear()
        _recursive_wrap(model, LayerWrapPolicy(names), fake_wrapper, set(), set(), only_wrap_children=True)
        assert wrapped == ["Qwen2DecoderLayer"] * 3, names
    assert LayerWrapPolicy("auto").names == set()  # nothing is assumed before the model is seen


def test_fsdp_on_cpu_is_refused_in_one_line(tmp_path):
    cfg = compose_demo_tiny(tmp_path / "out", tmp_path / "cache", "trainer=fsdp_gpu", "trainer.accelerator=cpu")
    with pytest.raises(ConfigError, match=r"trainer.strategy=fsdp with trainer.accelerator=cpu; .*CUDA GPUs only"):
        validate_config(cfg, "train")
    # Lightning itself refuses it too (later, with a longer message): our check says it first, naming the keys
    import lightning as L

    with pytest.raises(Exception, match="requires a GPU accelerator"):
        L.Trainer(accelerator="cpu", strategy=fsdp_strategy(None), logger=False)


def test_fsdp_with_gradcache_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    t = _trainer(tmp_path, "fsdp_gpu", "trainer.grad_cache.chunk_size=4")
    with pytest.raises(ConfigError, match=r"trainer.grad_cache.chunk_size=4 with trainer.strategy=fsdp; GradCache"):
        check_trainer_config("trainer", t, 8)


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.fsdp.sharding_strategy=SHARD_ALL", r"trainer.fsdp.sharding_strategy='SHARD_ALL'"),
        ("trainer.fsdp.wrap_layers=Qwen2DecoderLayer", r"trainer.fsdp.wrap_layers='Qwen2DecoderLayer'; expected"),
        ("+trainer.fsdp.offload=true", r"trainer.fsdp.offload is not an FSDP option"),
        ("trainer.strategy=ddp", r"trainer.fsdp is set but trainer.strategy='ddp'"),
    ],
)
def test_bad_fsdp_settings_name_the_key(override, message, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    t = _trainer(tmp_path, "fsdp_gpu", override)
    with pytest.raises(ConfigError, match=message):
        check_trainer_config("trainer", t, 8)


def test_gpu_preset_without_cuda_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"trainer.accelerator=gpu; no CUDA GPU is visible here"):
        check_trainer_config("trainer", _trainer(tmp_path, "fsdp_gpu"), 8)
