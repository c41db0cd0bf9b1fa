"""ID–OOD frontier plots (as in FLYP's Fig. 2 / ARF's Fig. 4): PNGs via matplotlib's Agg.

A WiSE curve is ``{alpha: {metric: value}}`` (metric names from :mod:`trainables.metrics`). The x
axis is the mean OOD accuracy ``ood/avg_acc``; the y axis the ID accuracy, ``id_test/acc`` when the
curve has it (the report's number), else ``id_val/acc``. Accuracies are percentages (as
trainables.evaluate reports them).
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
    return _save(fig, ax, title, path)


def _save(fig: Any, ax: Any, title: str, path: str | Path, legend_size: int = 8) -> Path:
    """Title, grid and legend on ``ax``; ``fig`` written to ``path`` (folders made) and closed."""
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=legend_size, framealpha=0.9)
    return _write(fig, path)


def _write(fig: Any, path: str | Path) -> Path:
    """``fig`` laid out, written to ``path`` (folders made) and closed."""
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
        chosen = [(x, y) for a, x, y in points if round(a, 4) == round(selected_alpha, 4)]
        if chosen:
            ax.scatter(*zip(*chosen), s=260, facecolors="none", edgecolors="tab:red", linewidths=2,
                       zorder=4, label=f"selected on ID val (α={selected_alpha:g})")
    return _finish(fig, ax, id_metric, title, path)


def _pair(metrics: Mapping[str, Any], prefix: str, id_metric: str) -> tuple[float, float] | None:
    """(OOD %, ID %) of the model whose metrics are ``<prefix><name>`` in ``metrics``."""
    x, y = metrics.get(prefix + OOD_AVG), metrics.get(prefix + id_metric)
    return (float(x), float(y)) if x is not None and y is not None else None


def frontier_data(trials: Sequence[Mapping[str, Any]],
                  soups: Mapping[str, Mapping[str, Any]] | None = None,
                  zeroshot: Mapping[str, float] | None = None) -> dict[str, Any]:
    """What :func:`study_frontier_png` draws, as data (tests check this, not pixels).

    ``selection``: per trial its ID-val curve ``points`` [(α, OOD, ID val)] and ``selected``, the
    point whose stored α equals the trial's ``selected_alpha`` (both rounded to 4 decimals, as
    the search stores α). ``report`` (ID test, the table's axis): the zero-shot point, each trial's
    fine-tuned end (α = 1) and WiSE point (α*) from its ``metrics`` (``ft/…``, ``wise/…``), and
    each soup and soup + WiSE; a soup on the same point as an earlier one gets ``offset`` > 0
    (drawn hollow, labelled "same point").
    """
    curves = []
    for i, t in enumerate(trials):
        points = _xy(t.get("curve") or {}, ID_VAL)
        selected = t.get("selected_alpha")
        chosen = [p for p in points if selected is not None
                  and round(p[0], 4) == round(float(selected), 4)]
        metrics = t.get("metrics") or {}
        curves.append({"trial_id": str(t.get("trial_id", f"trial {i}")),
                       "best": bool(t.get("best")),
                       "points": points, "selected": chosen[0] if chosen else None,
                       "ft": _pair(metrics, "ft/", ID_TEST),
                       "wise": _pair(metrics, "wise/", ID_TEST)})
    soup_points = []
    for name, entry in (soups or {}).items():
        plain = entry.get("soup") if isinstance(entry.get("soup"), Mapping) else entry
        for label, values in ((f"{name} soup", plain), (f"{name} soup + WiSE", entry.get("wise"))):
            xy = _pair(values, "", ID_TEST) if isinstance(values, Mapping) else None
            if xy is not None:
                same = sum(1 for s in soup_points if s["xy"] == xy)
                soup_points.append({"label": label, "xy": xy, "offset": same})
    return {"selection": curves, "zero_shot": _pair(zeroshot or {}, "", ID_TEST),
            "zero_shot_val": _pair(zeroshot or {}, "", ID_VAL), "soups": soup_points}


def study_frontier_png(trials: Sequence[Mapping[str, Any]], path: str | Path,
                       soups: Mapping[str, Mapping[str, Any]] | None = None,
                       title: str = "Study: ID–OOD frontier",
                       zeroshot: Mapping[str, float] | None = None) -> Path | None:
    """Two panels sharing the OOD axis. Left, selection: every trial's WiSE curve on ID val, the
    selected α ringed. Right, report (the table's numbers, ID test): zero-shot, each trial's
    fine-tuned end and WiSE point, the soups. See :func:`frontier_data` for the inputs; returns
    the path, or None when nothing can be plotted."""
    data = frontier_data(trials, soups, zeroshot)
    if not any(c["points"] or c["ft"] for c in data["selection"]) and not data["soups"]:
        return None
    fig, (sel, rep) = plt.subplots(1, 2, figsize=(12, 5.2), sharex=True)
    many = len(data["selection"]) > 10
    cmap = plt.get_cmap("viridis" if many else "tab10")
    for i, c in enumerate(data["selection"]):
        color = ("crimson" if c["best"] else cmap(i / max(1, len(data["selection"]) - 1))) if many \
            else cmap(i % 10)
        chosen = " (chosen)" if c["best"] else ""
        label = None if many and not c["best"] else c["trial_id"] + chosen
        if c["points"]:
            _, xs, ys = zip(*c["points"])
            sel.plot(xs, ys, "-o", color=color, markersize=3, linewidth=2.5 if c["best"] else 1,
                     alpha=1 if c["best"] else 0.6, label=label, zorder=3 if c["best"] else 2)
        if c["selected"] is not None:
            sel.scatter([c["selected"][1]], [c["selected"][2]], s=160 if c["best"] else 70,
                        facecolors="none", edgecolors="black", linewidths=1.5, zorder=4)
        for key, marker in (("ft", "s"), ("wise", "o")):
            if c[key] is not None:
                rep.scatter(*c[key], marker=marker, s=90 if c["best"] else 30, color=color,
                            edgecolors="black" if c["best"] else "none", zorder=4 if c["best"]
                            else 3)
    if data["zero_shot_val"] is not None:
        sel.scatter(*data["zero_shot_val"], marker="*", s=220, color="gold",
                    edgecolors="black", zorder=5, label="zero-shot (α=0)")
    if data["zero_shot"] is not None:
        rep.scatter(*data["zero_shot"], marker="*", s=220, color="gold", edgecolors="black",
                    zorder=5, label="zero-shot (α=0)")
    markers = ["P", "X", "D", "^", "v", "<"]
    for j, s in enumerate(data["soups"]):
        # hollow, so a trial's point under a soup (a greedy soup of one trial) stays visible;
        # growing with each soup already on the same point, so coinciding soups stay apart
        rep.scatter(*s["xy"], marker=markers[j % len(markers)], s=130 + 120 * s["offset"],
                    facecolors="none", edgecolors="black", linewidths=1.4, zorder=6,
                    label=s["label"] + (" (same point as above)" if s["offset"] else ""))
    sel.scatter([], [], s=70, facecolors="none", edgecolors="black", label="α* selected on ID val")
    rep.scatter([], [], marker="s", s=30, color="0.5", label="fine-tuned (α=1)")
    rep.scatter([], [], marker="o", s=30, color="0.5", label="WiSE (α*)")
    sel.set_title("selection: WiSE curve on ID val")
    rep.set_title("report: ID test (the table's numbers)")
    for ax, metric in ((sel, ID_VAL), (rep, ID_TEST)):
        ax.set_xlabel(f"OOD accuracy, mean over shifts ({OOD_AVG}) [%]")
        ax.set_ylabel(f"ID accuracy ({metric}) [%]")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=7, framealpha=0.9)
    fig.suptitle(title)
    return _write(fig, path)


def wise_curve_png(table: Mapping[str, Sequence[float]], selected_alpha: float | None,
                   path: str | Path, title: str = "WiSE-FT curve") -> Path | None:
    """A trial's WiSE table (:func:`search.tracking.names.curve_table`) against α: ID val (what
    selects α), each OOD set and their mean; α* as a vertical line."""
    alphas = list(table.get("alpha", []))
    if not alphas:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for key, values in table.items():
        if key == "alpha":
            continue
        style = {ID_VAL: dict(color="tab:blue", linewidth=2.2, label="ID val (selects α)"),
                 OOD_AVG: dict(color="tab:red", linewidth=2.2, label="OOD mean")}.get(
            key, dict(linewidth=0.9, alpha=0.6, linestyle="--", label=key))
        ax.plot(alphas, values, marker="o", markersize=3, **style)
    if selected_alpha is not None:
        ax.axvline(selected_alpha, color="black", linestyle=":",
                   label=f"α* = {selected_alpha:.2f}")
    ax.set_xlabel("α (0 = zero-shot, 1 = fine-tuned)")
    ax.set_ylabel("accuracy [%]")
    return _save(fig, ax, title, path, legend_size=7)


__all__ = ["frontier_data", "study_frontier_png", "trial_frontier_png", "wise_curve_png"]
