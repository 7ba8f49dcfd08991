"""Weight interpolation guard (WiSE-FT / LM-Cocktail): exact endpoints, midpoint, errors, sweep, choice, report."""

import math

import pytest
import torch

from embedexp.eval import interpolate as ip
from embedexp.models.encoder import Encoder

PNG = b"\x89PNG\r\n\x1a\n"
TEXTS = ["a cat sat on the mat", "dense retrieval with embeddings", "weight interpolation", "x"]


@pytest.fixture(scope="module")
def tuned_encoder(tiny_model_dir):
    """(encoder holding 'fine-tuned' weights, base state, tuned state, base embeddings, tuned embeddings)."""
    enc = Encoder(str(tiny_model_dir), max_seq_length=32)
    base = ip.snapshot(enc.backbone)
    base_emb = enc.encode(TEXTS)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a stand-in for training: every floating tensor moves
        for p in enc.backbone.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    tuned = ip.snapshot(enc.backbone)
    tuned_emb = enc.encode(TEXTS)
    assert not torch.allclose(base_emb, tuned_emb, atol=1e-3)
    return enc, base, tuned, base_emb, tuned_emb


def _states_equal(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- weights
def test_endpoints_reproduce_base_and_tuned_exactly(tuned_encoder):
    enc, base, tuned, base_emb, tuned_emb = tuned_encoder
    try:
        s0 = ip.interpolate_state(base, tuned, 0.0)
        s1 = ip.interpolate_state(base, tuned, 1)
        assert _states_equal(s0, base) and _states_equal(s1, tuned)
        assert all(s0[k].data_ptr() != base[k].data_ptr() for k in base)  # copies, not the inputs
        enc.backbone.load_state_dict(s0)
        assert torch.equal(enc.encode(TEXTS), base_emb)
        enc.backbone.load_state_dict(s1)
        assert torch.equal(enc.encode(TEXTS), tuned_emb)
        # the in-place loader gives the same bits, and alpha=0 has the base model's fingerprint (eval cache hit)
        ip.load_interpolated(enc.backbone, base, tuned, 0.0)
        assert torch.equal(enc.encode(TEXTS), base_emb)
        fp0 = enc.fingerprint()
        enc.backbone.load_state_dict(base)
        assert enc.fingerprint() == fp0
    finally:
        enc.backbone.load_state_dict(tuned)
    assert torch.equal(enc.encode(TEXTS), tuned_emb)


def test_midpoint_equals_hand_computation(tuned_encoder):
    _, base, tuned, _, _ = tuned_encoder
    b = {
        "w": torch.tensor([0.0, 2.0, -4.0, 1.0]),
        "ids": torch.tensor([0, 1, 2]),
        "h": torch.tensor([1.0, 3.0]).bfloat16(),
    }
    t = {
        "w": torch.tensor([2.0, 4.0, 0.0, 1.0]),
        "ids": torch.tensor([5, 6, 7]),
        "h": torch.tensor([2.0, 4.0]).bfloat16(),
    }
    mid = ip.interpolate_state(b, t, 0.5)
    assert torch.equal(mid["w"], torch.tensor([1.0, 3.0, -2.0, 1.0]))  # exactly representable: exact
    assert torch.equal(mid["ids"], t["ids"])  # integer buffers come from tuned
    assert mid["h"].dtype == torch.bfloat16 and torch.equal(mid["h"], torch.tensor([1.5, 3.5]).bfloat16())
    assert torch.equal(b["w"], torch.tensor([0.0, 2.0, -4.0, 1.0]))  # inputs untouched
    quarter = ip.interpolate_state(b, t, 0.25)
    assert torch.equal(quarter["w"], torch.tensor([0.5, 2.5, -3.0, 1.0]))
    # a real model: every floating tensor is 0.5 * base + 0.5 * tuned (to float32 rounding), integer ones tuned's
    real = ip.interpolate_state(base, tuned, 0.5)
    assert list(real) == list(base)
    for k in base:
        if base[k].is_floating_point():
            torch.testing.assert_close(real[k], 0.5 * base[k] + 0.5 * tuned[k], rtol=0, atol=1e-6)
            assert real[k].dtype == tuned[k].dtype
        else:
            assert torch.equal(real[k], tuned[k])


def test_mismatches_name_the_key():
    b = {"a": torch.zeros(2), "b": torch.zeros(3)}
    with pytest.raises(ValueError, match="'b' is in the base state but not in the tuned state"):
        ip.interpolate_state(b, {"a": torch.zeros(2)}, 0.5)
    with pytest.raises(ValueError, match="'c' is in the tuned state but not in the base state"):
        ip.interpolate_state(b, {**b, "c": torch.zeros(1)}, 0.5)
    with pytest.raises(ValueError, match=r"'b' has shape \(3,\) in the base state and \(4,\)"):
        ip.interpolate_state(b, {"a": torch.zeros(2), "b": torch.zeros(4)}, 0.5)
    with pytest.raises(ValueError, match="'a' is torch.float32 in the base state and torch.float16"):
        ip.interpolate_state(b, {"a": torch.zeros(2).half(), "b": torch.zeros(3)}, 0.5)
    with pytest.raises(ValueError, match="Encoder keys 'backbone"):
        ip.interpolate_state({"backbone.a": torch.zeros(2)}, {"a": torch.zeros(2)}, 0.5)
    for bad in (-0.1, 1.5, float("nan"), "half"):
        with pytest.raises(ValueError, match="alpha"):
            ip.interpolate_state(b, b, bad)
    module = torch.nn.Linear(2, 2)
    state = ip.snapshot(module)
    with pytest.raises(ValueError, match="'bias' is in the module but not in the given states"):
        ip.load_interpolated(module, {"weight": state["weight"]}, {"weight": state["weight"]}, 0.5)


# ---------------------------------------------------------------- sweep
def test_sweep_evaluates_each_alpha_and_restores_tuned(tuned_encoder):
    enc, base, tuned, base_emb, tuned_emb = tuned_encoder
    seen = {}

    def evaluate(e):
        emb = e.encode(TEXTS)
        seen[len(seen)] = emb
        return {"dev/sim_to_base": float((emb * base_emb).sum(-1).mean()), "general/x": 1.0}

    rows = ip.sweep(enc, base, None, ip.DEFAULT_ALPHAS, evaluate)
    assert [r["alpha"] for r in rows] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert set(rows[0]) == {"alpha", "dev/sim_to_base", "general/x"}
    assert torch.equal(seen[0], base_emb) and torch.equal(seen[4], tuned_emb)
    sims = [r["dev/sim_to_base"] for r in rows]
    assert sims[0] == pytest.approx(1.0, abs=1e-5) and sims == sorted(sims, reverse=True)  # moving away from base
    assert _states_equal(ip.snapshot(enc.backbone), tuned)

    # restored also when evaluate fails half way, and with a tuned_state that aliases the model's own tensors
    calls = []

    def failing(e):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return {"dev": 0.0}

    with pytest.raises(RuntimeError, match="boom"):
        ip.sweep(enc, base, enc.backbone.state_dict(), [0.0, 0.5, 1.0], failing)
    assert _states_equal(ip.snapshot(enc.backbone), tuned)
    assert torch.equal(enc.encode(TEXTS), tuned_emb)

    with pytest.raises(ValueError, match="repeat"):
        ip.sweep(enc, base, tuned, [0.5, 0.5], evaluate)
    with pytest.raises(ValueError, match="named 'alpha'"):
        ip.sweep(enc, base, tuned, [0.5], lambda e: {"alpha": 1.0})
    assert _states_equal(ip.snapshot(enc.backbone), tuned)


# ---------------------------------------------------------------- choice
DEV, GEN = "dev/ndcg@10", "general/ndcg@10"
ROWS = [  # the best dev alpha (1.0) and 0.75 lose too much general ability at max_general_drop=0.01
    {"alpha": 0.0, DEV: 0.50, GEN: 0.800},
    {"alpha": 0.25, DEV: 0.56, GEN: 0.801},
    {"alpha": 0.5, DEV: 0.60, GEN: 0.795},
    {"alpha": 0.75, DEV: 0.63, GEN: 0.785},
    {"alpha": 1.0, DEV: 0.64, GEN: 0.760},
]


def test_choose_respects_the_general_drop():
    c = ip.choose(ROWS, DEV, GEN, 0.01)
    assert c["alpha"] == 0.5 and c["row"] == ROWS[2]
    assert c["excluded"] == [0.75, 1.0] and c["best_dev_alpha"] == 1.0
    assert c["general_floor"] == {GEN: pytest.approx(0.79)}
    assert "alpha=1 has a higher" in c["reason"] and "below the allowed minimum 0.7900" in c["reason"]
    assert ip.choose(ROWS, DEV, GEN, 0.05)["alpha"] == 1.0  # a looser guard lets the fine-tuned model through
    assert ip.choose(ROWS, DEV, GEN, 0.015)["alpha"] == 0.75  # a drop of exactly 0.015 is allowed (float slack)
    assert ip.choose(ROWS, DEV, None, 0.01)["alpha"] == 1.0  # no general metric: best dev
    assert ip.choose(ROWS, DEV, [], 0.01)["excluded"] == []
    worse = [dict(r, **{GEN: 0.5}) if r["alpha"] else r for r in ROWS]
    assert ip.choose(worse, DEV, GEN, 0.01)["alpha"] == 0.0  # everything else excluded: the base model


def test_choose_ties_several_generals_and_missing_values():
    tie = [
        {"alpha": 0.0, DEV: 0.5, GEN: 0.8},
        {"alpha": 0.5, DEV: 0.6, GEN: 0.79},
        {"alpha": 0.75, DEV: 0.6, GEN: 0.80},
        {"alpha": 1.0, DEV: 0.6, GEN: 0.80},
    ]
    assert ip.choose(tie, DEV, GEN, 0.05)["alpha"] == 0.75  # equal dev: higher general, then smaller alpha
    assert ip.choose(tie, DEV, None, 0.05)["alpha"] == 0.5  # equal dev, no general: smaller alpha
    two = [dict(r, **{"sts/spearman": 0.7 - (0.05 if r["alpha"] >= 0.5 else 0.0)}) for r in ROWS]
    c = ip.choose(two, DEV, [GEN, "sts/spearman"], 0.01)
    assert c["alpha"] == 0.25 and c["excluded"] == [0.5, 0.75, 1.0]
    nan = [dict(r, **{DEV: math.nan}) if r["alpha"] == 0.5 else r for r in ROWS]
    assert ip.choose(nan, DEV, GEN, 0.01)["alpha"] == 0.25
    with pytest.raises(ValueError, match="alpha=0"):
        ip.choose(ROWS[1:], DEV, GEN, 0.01)
    with pytest.raises(ValueError, match="max_general_drop"):
        ip.choose(ROWS, DEV, GEN, -0.01)
    with pytest.raises(ValueError, match="repeat"):
        ip.choose(ROWS + ROWS[:1], DEV, GEN, 0.01)
    with pytest.raises(ValueError, match="finite value for general metric"):
        ip.choose([{"alpha": 0.0, DEV: 0.5}], DEV, GEN, 0.01)


# ---------------------------------------------------------------- report
def test_markdown_and_pareto_plot(tmp_path):
    c = ip.choose(ROWS, DEV, GEN, 0.01)
    md = ip.markdown(ROWS, c, DEV, GEN)
    lines = md.splitlines()
    assert lines[0] == f"| alpha | {DEV} | Δ vs base | {GEN} | Δ vs base | within guard | chosen |"
    assert lines[2] == "| 0 (base) | 0.5000 | +0.0000 | 0.8000 | +0.0000 | yes |  |"
    assert lines[4] == "| 0.5 | 0.6000 | +0.1000 | 0.7950 | -0.0050 | yes | **chosen** |"
    assert lines[6] == "| 1 (fine-tuned) | 0.6400 | +0.1400 | 0.7600 | -0.0400 | no |  |"
    assert f"{GEN} >= 0.7900" in md and "chosen: alpha = 0.5" in md
    plain = ip.markdown(ROWS, ip.choose(ROWS, DEV, None, 0.01), DEV, None)
    assert plain.splitlines()[0] == f"| alpha | {DEV} | Δ vs base | chosen |"

    path = ip.plot_pareto(ROWS, c, DEV, GEN, tmp_path / "plots" / "interpolation.png")
    assert path == tmp_path / "plots" / "interpolation.png" and path.read_bytes()[:8] == PNG
    assert path.stat().st_size > 10_000
    no_general = ip.plot_pareto(ROWS, ip.choose(ROWS, DEV, None, 0.01), DEV, None, tmp_path / "alpha.png")
    assert no_general.read_bytes()[:8] == PNG
    assert not list(tmp_path.rglob(".*tmp*"))  # written atomically, no temporary left
