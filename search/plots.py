"""ID–OOD frontier plots (as in FLYP's Fig. 2 / ARF's Fig. 4): PNGs via matplotlib's Agg.

A WiSE curve is ``{alpha: {metric: value}}`` (metric names from :mod:`trainables.metrics`). The x
axis is the mean OOD accuracy ``ood/avg_acc``; the y axis the ID accuracy, ``id_test/acc`` when the
curve has it (the report's number), else ``id_val/acc``. Accuracies are percentages (as trainables.evaluate reports them).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from trainables.metrics import ID_TEST, ID_VAL, OOD_AVG  # noqa: E402

Curve = Mapping[float, Mapping[str, float]]
DPI = 100


def _id_metric(curves: Sequence[Curve]) -> str:
    """The ID metric every point can use: ID test if all curves have it, else ID val."""
    points = [p for c in curves for p in c.values()]
    return ID_TEST if points and all(ID_TEST in p for p in points) else ID_VAL


def _xy(curve: Curve, id_metric: str) -> list[tuple[float, float, float]]:
    """(alpha, OOD %, ID %) for each α with both metrics, sorted by α."""
    return [(float(a), p[OOD_AVG], p[id_metric]) for a, p in sorted(curve.items())
            if OOD_AVG in p and id_metric in p]


def _finish(fig: Any, ax: Any, id_metric: str, title: str, path: str | Path) -> Path:
    ax.set_xlabel(f"OOD accuracy, mean over shifts ({OOD_AVG}) [%]")
    ax.set_ylabel(f"ID accuracy ({id_metric}) [%]")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def trial_frontier_png(curve: Curve, selected_alpha: float | None, path: str | Path,
                       title: str = "WiSE-FT frontier") -> Path | None:
    """One trial's WiSE curve as an ID-vs-OOD frontier, one point per α (annotated).

    Zero-shot (α=0) and fine-tuned (α=1) ends get their own markers; the α chosen on ID val is
    ringed. Returns the path, or None when no α has both an ID and an OOD accuracy.
    """
    id_metric = _id_metric([curve])
    points = _xy(curve, id_metric)
    if not points:
        return None
    alphas, xs, ys = zip(*points)
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    ax.plot(xs, ys, "-o", color="tab:blue", markersize=4, label="WiSE-FT θ(α)")
    for a, x, y in points:
        ax.annotate(f"{a:g}", (x, y),
                    textcoords="offset points", xytext=(6, 6), fontsize=7, color="0.3")
    ends = {0.0: ("*", "tab:green", "zero-shot (α=0)"),
            1.0: ("s", "tab:orange", "fine-tuned (α=1)")}
    for a, x, y in points:
        if a in ends:
            marker, color, label = ends[a]
            ax.scatter([x], [y], marker=marker, s=140, color=color, zorder=3, label=label)
    if selected_alpha is not None:
        chosen = [(x, y) for a, x, y in points if abs(a - selected_alpha) < 1e-9]
        if chosen:
            ax.scatter(*zip(*chosen), s=260, facecolors="none", edgecolors="tab:red", linewidths=2,
                       zorder=4, label=f"selected on ID val (α={selected_alpha:g})")
    return _finish(fig, ax, id_metric, title, path)


def study_frontier_png(trials: Sequence[Mapping[str, Any]], path: str | Path,
                       soups: Mapping[str, Mapping[str, float]] | None = None,
                       title: str = "Study: ID–OOD frontier of every trial") -> Path | None:
    """Every trial's WiSE curve on one ID-vs-OOD axes, plus each soup as its own marker.

    ``trials``: dicts with ``curve`` (``{alpha: {metric: value}}``), optional ``trial_id``,
    ``selected_alpha`` (drawn as a filled dot) and ``best`` (drawn thick). ``soups``: name ->
    metrics of that soup (e.g. ``{"uniform": {...}, "greedy": {...}}``). A shared zero-shot
    point (α=0) is drawn once. Returns the path, or None when nothing can be plotted.
    """
    curves = [t["curve"] for t in trials if t.get("curve")]
    id_metric = _id_metric(curves + [{1.0: m} for m in (soups or {}).values()])
    fig, ax = plt.subplots(figsize=(7.2, 5.4))
    cmap = plt.get_cmap("tab10" if len(curves) <= 10 else "viridis")
    drawn, zero_shot = 0, None
    for i, trial in enumerate(t for t in trials if t.get("curve")):
        points = _xy(trial["curve"], id_metric)
        if not points:
            continue
        alphas, xs, ys = zip(*points)
        best = bool(trial.get("best"))
        color = cmap(i % 10) if len(curves) <= 10 else cmap(i / max(1, len(curves) - 1))
        if best and len(curves) > 10:
            color = "crimson"
        label = str(trial.get("trial_id", f"trial {i}")) + (" (best)" if best else "")
        if len(curves) > 10 and not best:
            label = "other trials" if drawn == 0 else None
        ax.plot(xs, ys, "-", color=color, linewidth=2.5 if best else 1.0,
                alpha=1.0 if best else 0.7, label=label, zorder=3 if best else 2)
        if alphas[-1] == 1.0:
            ax.scatter(xs[-1:], ys[-1:], marker="s", s=25, color=color, zorder=3)
        selected = trial.get("selected_alpha")
        chosen = [(x, y) for a, x, y in points if selected is not None and abs(a - selected) < 1e-9]
        if chosen:
            ax.scatter(*zip(*chosen), s=70 if best else 35, color=color, edgecolors="black",
                       zorder=4)
        if alphas[0] == 0.0:
            zero_shot = (xs[0], ys[0])
        drawn += 1
    if zero_shot is not None:
        ax.scatter(*zero_shot, marker="*", s=220, color="tab:green", edgecolors="black", zorder=5,
                   label="zero-shot (α=0)")
    soup_markers = ["P", "X", "D", "^", "v"]
    for j, (name, metrics) in enumerate((soups or {}).items()):
        if OOD_AVG in metrics and id_metric in metrics:
            ax.scatter(metrics[OOD_AVG], metrics[id_metric], s=150, zorder=5,
                       marker=soup_markers[j % len(soup_markers)], color="black",
                       label=f"{name} soup")
            drawn += 1
    if drawn == 0:
        plt.close(fig)
        return None
    ax.scatter([], [], marker="s", s=25, color="0.4", label="fine-tuned end (α=1)")
    ax.scatter([], [], s=35, color="0.4", edgecolors="black", label="α selected on ID val")
    return _finish(fig, ax, id_metric, title, path)


__all__ = ["study_frontier_png", "trial_frontier_png"]
