"""Guard against regression by weight interpolation (WiSE-FT / LM-Cocktail).

Fine-tuning on a narrow domain can cost general ability. Interpolating the weights of the base model and
the fine-tuned one,

    theta(alpha) = (1 - alpha) * theta_base + alpha * theta_tuned,      alpha in [0, 1],

traces a path from the base model (alpha = 0) to the fine-tuned one (alpha = 1) that often keeps most of the
domain gain at a fraction of the general loss. This module evaluates a few points of that path and picks
the one to export:

- `interpolate_state`: the interpolated state dict (alpha = 0 / 1 give base / tuned bit for bit);
- `load_interpolated`: the same, written in place into a module's weights (one tensor at a time, no second
  copy of the model);
- `sweep`: evaluate every alpha with a caller-supplied `evaluate(encoder) -> {metric: value}`;
- `choose`: the best dev metric among the alphas whose general metric(s) drop at most
  ``max_general_drop`` below the base model's (alpha = 0, which therefore always qualifies);
- `markdown`, `plot_pareto`: the table for results.md and the domain-vs-general picture.

References:
    Wortsman et al. 2022, "Robust fine-tuning of zero-shot models" (WiSE-FT), CVPR, arXiv:2109.01903.
    Xiao et al. 2023, "LM-Cocktail: Resilient Tuning of Language Models via Model Merging", arXiv:2311.13534.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)

DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
# general metrics are compared with the allowed minimum up to this float slack, so that e.g. a drop of exactly
# 0.01 with max_general_drop=0.01 qualifies (0.80 - 0.01 is 0.7900000000000001 in binary floating point)
TOLERANCE = 1e-9

Tensors = Mapping[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------- weights
def _check_alpha(alpha: float) -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha={alpha!r} is not a number; expected a float in [0, 1]") from None
    if not (math.isfinite(a) and 0.0 <= a <= 1.0):
        raise ValueError(f"alpha={alpha!r} is outside [0, 1] (0 = base model, 1 = fine-tuned model)")
    return a


def _check_pair(
    base: Tensors, tuned: Tensors, names: tuple[str, str] = ("base state", "tuned state"), dtypes: bool = True
) -> None:
    """Same keys, shapes and (for floating tensors) dtypes; ValueError naming the first key that differs."""
    first, second = names
    hint = _prefix_hint(list(base), list(tuned))
    second_keys = set(tuned)
    for k in base:
        if k not in second_keys:
            raise ValueError(f"state dicts differ: key {k!r} is in the {first} but not in the {second}{hint}")
    first_keys = set(base)
    for k in tuned:
        if k not in first_keys:
            raise ValueError(f"state dicts differ: key {k!r} is in the {second} but not in the {first}{hint}")
    for k, b in base.items():
        t = tuned[k]
        if tuple(b.shape) != tuple(t.shape):
            raise ValueError(
                f"state dicts differ: {k!r} has shape {tuple(b.shape)} in the {first} "
                f"and {tuple(t.shape)} in the {second}"
            )
        if dtypes and (b.is_floating_point() or t.is_floating_point()) and b.dtype != t.dtype:
            raise ValueError(
                f"state dicts differ: {k!r} is {b.dtype} in the {first} and {t.dtype} in the "
                f"{second}; cast one of them first"
            )


def _prefix_hint(a: list[str], b: list[str]) -> str:
    for keys, other in ((a, b), (b, a)):
        if keys and all(k.startswith("backbone.") for k in keys) and not any(k.startswith("backbone.") for k in other):
            return " (one state has Encoder keys 'backbone.*': pass encoder.backbone.state_dict() for both)"
    return ""


def _mix(b: torch.Tensor, t: torch.Tensor, alpha: float, device: torch.device | None = None) -> torch.Tensor:
    """One tensor of theta(alpha), on `device` (default: t's); the endpoints are copies, not arithmetic."""
    device = t.device if device is None else device
    if not t.is_floating_point() or alpha == 1.0:  # integer/bool buffers (position ids...) come from tuned
        return t.detach().to(device, copy=True)
    if alpha == 0.0:
        return b.detach().to(device, copy=True)
    work = torch.float64 if t.dtype == torch.float64 else torch.float32  # fp16/bf16 are mixed in float32
    b32 = b.detach().to(device=device, dtype=work)
    t32 = t.detach().to(device=device, dtype=work)
    return torch.lerp(b32, t32, alpha).to(t.dtype)


def interpolate_state(base: Tensors, tuned: Tensors, alpha: float) -> dict[str, torch.Tensor]:
    """theta(alpha) = (1 - alpha) * theta_base + alpha * theta_tuned, key by key (WiSE-FT / LM-Cocktail).

    Args:
        base: state dict of the base model, e.g. ``encoder.backbone.state_dict()`` before training
            ({name: tensor of any shape}).
        tuned: state dict of the fine-tuned model: the same keys, shapes and floating dtypes as `base`.
        alpha: weight of the fine-tuned model, in [0, 1].

    Returns:
        A new dict (keys in `base`'s order) of new tensors, each with `tuned`'s shape, dtype and device.
        Floating-point tensors are interpolated with ``torch.lerp`` in float32 (float64 stays float64; fp16 and
        bf16 are computed in float32 and rounded back once). At alpha = 0 every tensor is a copy of `base`'s
        and at alpha = 1 of `tuned`'s, bitwise (no arithmetic at the endpoints), so theta(0) embeds exactly as
        the base model and theta(1) exactly as the fine-tuned one. Integer and bool buffers (position ids,
        token type ids) are copied from `tuned` at every alpha. The inputs are not modified.

    Raises:
        ValueError: alpha is not a number in [0, 1]; the key sets differ (naming the first key found in one
            state but not the other); a tensor's shape differs, or its dtype where either side is floating
            (naming the key).

    References:
        Wortsman et al. 2022, "Robust fine-tuning of zero-shot models", arXiv:2109.01903 (WiSE-FT, eq. 1).
        Xiao et al. 2023, "LM-Cocktail: Resilient Tuning of Language Models via Model Merging", arXiv:2311.13534.
    """
    a = _check_alpha(alpha)
    _check_pair(base, tuned)
    return {k: _mix(base[k], tuned[k], a) for k in base}


@torch.no_grad()
def load_interpolated(module: nn.Module, base: Tensors, tuned: Tensors, alpha: float) -> None:
    """Write theta(alpha) (see `interpolate_state`) into `module`'s own weights, in place, one tensor at a time.

    `module` is the model whose ``state_dict()`` keys `base` and `tuned` use (for an embedexp Encoder:
    ``encoder.backbone``). Each tensor is mixed on the module tensor's device and copied into it (cast to its
    dtype where the module runs in another precision), so only one tensor's worth of extra memory is used
    and `base` / `tuned` may live on the CPU. `base` and `tuned` must not share storage with the module's
    tensors (take ``{k: v.detach().clone()}`` snapshots).

    Raises:
        ValueError: as `interpolate_state`, or when the module's state dict has other keys or shapes than
            the states (naming the first).
    """
    a = _check_alpha(alpha)
    _check_pair(base, tuned)
    own = module.state_dict()  # detached tensors sharing the parameters' memory
    _check_pair(own, tuned, ("module", "given states"), dtypes=False)  # copy_ casts into the module's precision
    for k, dest in own.items():
        dest.copy_(_mix(base[k], tuned[k], a, device=dest.device))


def snapshot(module: nn.Module, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A detached copy of ``module.state_dict()`` on `device` (CPU by default): the base / tuned state to keep."""
    return {k: v.detach().to(device, copy=True) for k, v in module.state_dict().items()}


def _backbone(encoder) -> nn.Module:
    return getattr(encoder, "backbone", encoder)


def sweep(
    encoder,
    base_state: Tensors,
    tuned_state: Tensors | None,
    alphas: Iterable[float],
    evaluate: Callable[[object], Mapping[str, float]],
) -> list[dict]:
    """Evaluate the encoder at every alpha of the interpolation path; returns one row per alpha.

    Args:
        encoder: an embedexp Encoder (its ``.backbone``, the Hugging Face model, is interpolated), or any
            nn.Module (interpolated as a whole).
        base_state: the base model's ``backbone.state_dict()`` (a snapshot: see `snapshot`).
        tuned_state: the fine-tuned model's; None takes a CPU snapshot of the backbone as it is now (the
            usual call, right after training).
        alphas: weights of the fine-tuned model, each in [0, 1], no repeats (e.g. `DEFAULT_ALPHAS`); evaluated
            in the order given.
        evaluate: ``evaluate(encoder) -> {metric name: value}`` run once per alpha with the interpolated
            weights loaded (e.g. ``lambda enc: evaluator.evaluate(enc)``; the evaluator's cache is keyed by the
            weights' fingerprint, so alpha = 0 may reuse the base model's cached results).

    Returns:
        ``[{"alpha": a, **evaluate(encoder)}, ...]`` in the order of `alphas`.

    At the end, and also when `evaluate` (or loading) raises, the backbone holds `tuned_state` again, bitwise
    (cast to the backbone's dtype where it runs in another precision).
    The backbone's train/eval mode is left to `evaluate` (``Encoder.encode`` switches to eval and back).

    Raises:
        ValueError: an alpha outside [0, 1] or repeated, no alphas, mismatching states (see
            `interpolate_state`), or `evaluate` returning a metric named "alpha". Whatever `evaluate` raises
            is re-raised after the tuned weights are restored.
    """
    alphas = [_check_alpha(a) for a in alphas]
    if not alphas:
        raise ValueError("sweep needs at least one alpha")
    if len(set(alphas)) != len(alphas):
        raise ValueError(f"alphas {alphas} repeat a value")
    module = _backbone(encoder)
    if tuned_state is None:
        tuned_state = snapshot(module)
    else:
        tuned_state = _unalias(module, tuned_state, "tuned_state")
    base_state = _unalias(module, base_state, "base_state")
    _check_pair(base_state, tuned_state)
    _check_pair(module.state_dict(), tuned_state, ("module", "given states"), dtypes=False)  # before any write
    rows: list[dict] = []
    try:
        for a in alphas:
            load_interpolated(module, base_state, tuned_state, a)
            metrics = dict(evaluate(encoder))
            if "alpha" in metrics:
                raise ValueError("evaluate() returned a metric named 'alpha', which sweep uses for the weight")
            rows.append({"alpha": a, **metrics})
            log.info(
                "interpolation alpha=%g: %s",
                a,
                ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, (int, float))),
            )
    finally:
        load_interpolated(module, base_state, tuned_state, 1.0)
    return rows


def _unalias(module: nn.Module, state: Tensors, name: str) -> Tensors:
    """`state` with copies of the tensors that share memory with `module`'s (loading in place would change them)."""
    ptrs = {v.data_ptr() for v in module.state_dict().values() if v.numel()}
    shared = [k for k, v in state.items() if v.numel() and v.data_ptr() in ptrs]
    if not shared:
        return state
    log.debug("%s shares %d tensors with the model; copying them", name, len(shared))
    return {k: (v.detach().clone() if k in shared else v) for k, v in state.items()}


# ---------------------------------------------------------------------------------------------- selection
def _general_list(general_metric: str | Sequence[str] | None) -> list[str]:
    if general_metric is None:
        return []
    if isinstance(general_metric, str):
        return [general_metric]
    return list(general_metric)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def choose(
    rows: Sequence[Mapping],
    dev_metric: str,
    general_metric: str | Sequence[str] | None,
    max_general_drop: float,
) -> dict:
    """Pick the alpha to export: best dev metric among those whose general metric(s) stay within the allowed drop.

    A row qualifies when, for every general metric g, ``g(alpha) >= g(alpha=0) - max_general_drop`` (up to
    `TOLERANCE` of float slack). alpha = 0 is the base model, so it always qualifies: the guard can fall back
    to exporting the base weights, never to something worse on general data than allowed. Among the
    qualifying rows the highest `dev_metric` wins; ties (equal dev metric) go to the higher general metric
    (the sum over general metrics), then to the smaller alpha (the same domain score with less departure from
    the base model). Without general metrics (None or []) the best dev metric wins, same tie rule.
    Rows whose dev or general value is missing or not finite never qualify (but alpha = 0's must be finite).

    Args:
        rows: `sweep`'s output, ``[{"alpha": a, metric: value, ...}]``; one row must have alpha = 0 when a
            general metric is given.
        dev_metric: the in-domain selection metric, e.g. "dev/ndcg@10" (higher is better).
        general_metric: the general-ability metric name, a list of them, or None.
        max_general_drop: largest allowed fall of each general metric below the base model's, >= 0 (e.g. 0.01).

    Returns:
        ``{"alpha", "row" (the chosen row), "reason" (one sentence), "general_floor" ({metric: allowed
        minimum}, empty without general metrics), "excluded" (alphas ruled out by the guard, ascending),
        "best_dev_alpha" (the alpha with the best dev metric before the guard), "dev_metric",
        "general_metrics" (list), "max_general_drop"}``.

    Raises:
        ValueError: no rows, repeated alphas, max_general_drop negative or not finite, no alpha = 0 row
            (with general metrics), the base row's general metric missing or not finite, or no row with a
            finite dev metric among the qualifying ones.

    References:
        Wortsman et al. 2022 (WiSE-FT), arXiv:2109.01903, choose alpha on held-out data; Xiao et al. 2023
        (LM-Cocktail), arXiv:2311.13534, merge weights to keep general ability.
    """
    if not rows:
        raise ValueError("choose needs at least one row")
    alphas = [float(r["alpha"]) for r in rows]
    if len(set(alphas)) != len(alphas):
        raise ValueError(f"rows repeat an alpha: {alphas}")
    drop = float(max_general_drop)
    if not (math.isfinite(drop) and drop >= 0):
        raise ValueError(f"max_general_drop={max_general_drop!r}; expected a finite number >= 0")
    generals = _general_list(general_metric)
    floors: dict[str, float] = {}
    if generals:
        base = next((r for r in rows if float(r["alpha"]) == 0.0), None)
        if base is None:
            raise ValueError(
                f"no row with alpha=0 (the base model) among alphas {alphas}; the general-metric "
                "guard measures drops from it"
            )
        for g in generals:
            if not _finite(base.get(g)):
                raise ValueError(f"the base row (alpha=0) has no finite value for general metric {g!r}")
            floors[g] = float(base[g]) - drop

    def ok(r: Mapping) -> bool:
        return all(_finite(r.get(g)) and float(r[g]) >= floors[g] - TOLERANCE for g in generals)

    def key(r: Mapping):
        return (float(r[dev_metric]), sum(float(r[g]) for g in generals), -float(r["alpha"]))

    with_dev = [r for r in rows if _finite(r.get(dev_metric))]
    allowed = [r for r in with_dev if ok(r)]
    if not allowed:
        raise ValueError(
            f"no row has a finite {dev_metric!r}" + (" among those within the general-metric guard" if with_dev else "")
        )
    best = max(allowed, key=key)
    best_dev = max(with_dev, key=lambda r: (float(r[dev_metric]), -float(r["alpha"])))
    excluded = sorted(float(r["alpha"]) for r in rows if generals and not ok(r))
    a = float(best["alpha"])
    if not generals:
        reason = f"best {dev_metric} ({float(best[dev_metric]):.4f}); no general metric to guard"
    elif best is best_dev or float(best_dev[dev_metric]) == float(best[dev_metric]):
        reason = f"best {dev_metric} ({float(best[dev_metric]):.4f}), within the allowed general drop of {drop:g}" + (
            f" (excluded: alpha {', '.join(f'{x:g}' for x in excluded)})" if excluded else ""
        )
    else:
        worst = min(generals, key=lambda g: float(best_dev[g]) - floors[g] if _finite(best_dev.get(g)) else -math.inf)
        value = best_dev.get(worst)
        shown = f"{float(value):.4f}" if _finite(value) else "missing"
        reason = (
            f"best {dev_metric} within the allowed general drop of {drop:g} "
            f"({float(best[dev_metric]):.4f}); alpha={float(best_dev['alpha']):g} has a higher "
            f"{dev_metric} ({float(best_dev[dev_metric]):.4f}) but its {worst} ({shown}) is below the "
            f"allowed minimum {floors[worst]:.4f}"
        )
    return {
        "alpha": a,
        "row": dict(best),
        "reason": reason,
        "general_floor": floors,
        "excluded": excluded,
        "best_dev_alpha": float(best_dev["alpha"]),
        "dev_metric": dev_metric,
        "general_metrics": generals,
        "max_general_drop": drop,
    }


# ---------------------------------------------------------------------------------------------- report
def _fmt(x) -> str:
    return f"{float(x):.4f}" if _finite(x) else "–"


def _delta(x, ref) -> str:
    return f"{float(x) - float(ref):+.4f}" if _finite(x) and _finite(ref) else "–"


def markdown(
    rows: Sequence[Mapping],
    chosen: Mapping,
    dev_metric: str,
    general_metric: str | Sequence[str] | None,
) -> str:
    """The sweep as a markdown table (no heading), one row per alpha, then a line saying which alpha and why.

    Columns: alpha, the dev metric and its change vs alpha = 0 (the base model), each general metric and its
    change, "within guard" (yes / no, with the allowed minimum) and "chosen". `chosen` is `choose`'s output.
    Rows are listed by ascending alpha; a missing value shows as "–".
    """
    generals = _general_list(general_metric)
    ordered = sorted(rows, key=lambda r: float(r["alpha"]))
    base = next((r for r in ordered if float(r["alpha"]) == 0.0), {})
    floors = chosen.get("general_floor") or {}
    head = ["alpha", dev_metric, "Δ vs base"]
    for g in generals:
        head += [g, "Δ vs base"]
    if generals:
        head.append("within guard")
    head.append("chosen")
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * (len(head) - 1) + ":---|"]
    for r in ordered:
        a = float(r["alpha"])
        label = {0.0: f"{a:g} (base)", 1.0: f"{a:g} (fine-tuned)"}.get(a, f"{a:g}")
        cells = [label, _fmt(r.get(dev_metric)), _delta(r.get(dev_metric), base.get(dev_metric))]
        for g in generals:
            cells += [_fmt(r.get(g)), _delta(r.get(g), base.get(g))]
        if generals:
            cells.append("no" if a in set(chosen.get("excluded") or []) else "yes")
        cells.append("**chosen**" if a == float(chosen["alpha"]) else "")
        lines.append("| " + " | ".join(cells) + " |")
    out = "\n".join(lines) + "\n"
    if floors:
        out += "\nallowed minimum (base - {:g}): {}\n".format(
            float(chosen.get("max_general_drop", 0.0)), ", ".join(f"{g} >= {v:.4f}" for g, v in floors.items())
        )
    out += f"\nchosen: alpha = {float(chosen['alpha']):g}: {chosen.get('reason', '')}\n"
    return out


def plot_pareto(
    rows: Sequence[Mapping],
    chosen: Mapping,
    dev_metric: str,
    general_metric: str | Sequence[str] | None,
    path: str | Path,
) -> Path:
    """Domain vs general: one point per alpha (dev metric up, general metric across), written as a PNG at `path`.

    One panel per general metric (without one: dev metric against alpha). Points are joined in alpha order
    (base -> fine-tuned) and labelled with their alpha; the base point (alpha = 0) is a square, the chosen
    one is ringed in green, alphas excluded by the guard are red, and a dashed line marks the allowed
    general minimum (base - max_general_drop). Drawn with matplotlib's object API on the Agg canvas (the
    helpers of `embedexp.eval.plots`). Returns `path`.

    Raises:
        ValueError: no rows.
    """
    from embedexp.eval.plots import _figure, _save

    if not rows:
        raise ValueError("plot_pareto needs at least one row")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    generals = _general_list(general_metric)
    ordered = sorted(rows, key=lambda r: float(r["alpha"]))
    excluded = set(chosen.get("excluded") or [])
    floors = chosen.get("general_floor") or {}
    pick = float(chosen["alpha"])
    panels = generals or [None]
    fig = _figure(5.2 * len(panels), 4.4)
    for i, g in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        pts = []
        for r in ordered:
            x = float(r["alpha"]) if g is None else r.get(g)
            y = r.get(dev_metric)
            if _finite(x) and _finite(y):
                pts.append((float(r["alpha"]), float(x), float(y)))
        if pts:
            ax.plot([p[1] for p in pts], [p[2] for p in pts], "-", color="#9a9a9a", linewidth=1, zorder=1)
        for a, x, y in pts:
            colour = "#d1342f" if a in excluded else "#1f77b4"
            marker = "s" if a == 0.0 else "o"
            ax.scatter([x], [y], s=42, marker=marker, color=colour, zorder=3)
            if a == pick:
                ax.scatter([x], [y], s=230, facecolors="none", edgecolors="#2a9d4b", linewidths=2.2, zorder=4)
            text = f"α={a:g}" + (" (base)" if a == 0.0 else " (fine-tuned)" if a == 1.0 else "")
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(6, 5), fontsize=8)
        if g is not None and g in floors:
            ax.axvline(floors[g], color="#d1342f", linestyle="--", linewidth=1)
            ax.annotate(
                f"allowed min {floors[g]:.4f}",
                (floors[g], 0.02),
                xycoords=("data", "axes fraction"),
                rotation=90,
                fontsize=7,
                color="#d1342f",
                xytext=(-9, 0),
                textcoords="offset points",
            )
            xs = [p[1] for p in pts] + [floors[g]]
            pad = 0.08 * ((max(xs) - min(xs)) or 0.01)
            ax.set_xlim(min(xs) - pad, max(xs) + 3 * pad)  # room for the labels right of the points
        elif g is None:
            ax.set_xlim(-0.08, 1.3)  # alpha across, room for the labels right of the points
        ax.margins(y=0.1)
        ax.set_xlabel("alpha (weight of the fine-tuned model)" if g is None else f"{g} (general)")
        ax.set_ylabel(f"{dev_metric} (dev)")
        ax.grid(alpha=0.3)
    handles = [
        ax.scatter([], [], marker="s", color="#1f77b4", label="base (α=0)"),
        ax.scatter([], [], marker="o", color="#1f77b4", label="within guard"),
        ax.scatter([], [], marker="o", color="#d1342f", label="general drop too large"),
        ax.scatter([], [], s=120, facecolors="none", edgecolors="#2a9d4b", linewidths=2, label=f"chosen (α={pick:g})"),
    ]
    if not generals:
        handles = [handles[0], handles[3]]
    fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncol=len(handles), frameon=False)
    fig.suptitle(f"weight interpolation θ(α) = (1-α)·θ_base + α·θ_tuned: chosen α={pick:g}", fontsize=10)
    return _save(fig, path)
