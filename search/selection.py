"""Selection: the one place that chooses, and it can only see ID-validation accuracy.

:func:`select_alpha` picks the WiSE mixing coefficient from a callable that returns the ID-val
accuracy of the interpolated model at α. Nothing else is passed in, so OOD or zero-shot data cannot
influence the choice. Ties go to the smaller α (closer to the zero-shot model, the more robust end).
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

from search.result import OBJECTIVE, TrialResult
from trainables import metrics as M

GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # 0.618…


def _best(curve: dict[float, float]) -> float:
    return max(sorted(curve), key=lambda a: (curve[a], -a))


def grid_search(id_val_at: Callable[[float], float], grid: list[float]) -> dict[float, float]:
    """ID-val accuracy at every α of ``grid``."""
    return {round(a, 4): id_val_at(a) for a in grid}


def golden_search(id_val_at: Callable[[float], float], evaluations: int) -> dict[float, float]:
    """Golden-section search for the best α on [0, 1] with at most ``evaluations`` evaluations.

    Assumes ID-val accuracy is unimodal in α (the WiSE-FT curves are). α = 1 (the fine-tuned
    model) is always evaluated first so the result is never worse than not interpolating.
    """
    curve: dict[float, float] = {}

    def f(a: float) -> float:
        a = round(a, 4)
        if a not in curve:
            curve[a] = id_val_at(a)
        return curve[a]

    f(1.0)
    lo, hi = 0.0, 1.0
    x1, x2 = hi - GOLDEN * (hi - lo), lo + GOLDEN * (hi - lo)
    while True:
        f1, f2 = f(x1), f(x2)   # after the first round one of the two is already known
        if len(curve) >= evaluations or hi - lo < 0.02:
            break
        if f1 >= f2:            # ties move towards smaller α
            hi, x2 = x2, x1
            x1 = hi - GOLDEN * (hi - lo)
        else:
            lo, x1 = x1, x2
            x2 = lo + GOLDEN * (hi - lo)
    return curve


def select_alpha(id_val_at: Callable[[float], float], strategy: str = "grid",
                 grid: list[float] | None = None, evaluations: int = 6
                 ) -> tuple[float, dict[float, float]]:
    """(selected α, {α: ID-val accuracy}) using ``strategy`` ``grid`` or ``golden``."""
    if strategy == "grid":
        curve = grid_search(id_val_at, grid or [i / 10 for i in range(11)])
    elif strategy == "golden":
        curve = golden_search(id_val_at, evaluations)
    else:
        raise ValueError(f"unknown WiSE search strategy {strategy!r}: use grid or golden")
    return _best(curve), curve


def best_trial(results: Sequence[TrialResult | Mapping[str, float]], metric: str = OBJECTIVE
               ) -> int:
    """Index of the result with the highest selection metric (ID-val based, never OOD): a
    :class:`~search.result.TrialResult`'s objective (ID val at its α*), or ``metric`` of a
    mapping. Ties go to the first."""
    if metric != OBJECTIVE and not M.is_selectable(metric):
        raise ValueError(f"refusing to select on {metric!r}: selection reads ID val only")
    values = [r.objective if isinstance(r, TrialResult) else r.get(metric, math.nan)
              for r in results]
    scored = [(v, -i) for i, v in enumerate(values) if math.isfinite(v)]
    if not scored:
        raise ValueError("no trial finished with a finite ID-val objective")
    return -max(scored)[1]
