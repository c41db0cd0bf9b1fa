"""How a Tune result is named in MLflow: one metric namespace for study and trial runs, the WiSE
curve as a table, readable trial run names. Pure functions over result dicts (no MLflow client),
shared by :mod:`search.tracking.recorder` (study run), :mod:`search.tracking.callback` (trial runs)
and :mod:`search.bench.report`."""
from __future__ import annotations

import numbers
import re
from typing import Any, Mapping

from ray.tune.utils import flatten_dict

from search.result import ALPHA, CURVE_PREFIX, EVALUATIONS, FINAL, OBJECTIVE, decode
from trainables import metrics as M

#: Ray's bookkeeping keys in a result (ray.tune.result.AUTO_RESULT_KEYS and friends): not metrics
BOOKKEEPING = frozenset({
    "done", "trial_id", "experiment_id", "experiment_tag", "date", "timestamp", "hostname",
    "node_ip", "pid", "config", "training_iteration", "epoch", "time_this_iter_s", "time_total_s",
    "time_since_restore", "timesteps_since_restore", "iterations_since_restore", "timesteps_total",
    "episodes_total", "checkpoint_path", "checkpoint_dir_name", "should_checkpoint"})
#: numbers a trial reports that describe the run, not a measurement: tags on its run
NOT_METRICS = frozenset({FINAL, EVALUATIONS})
_BAD_KEY_CHARS = re.compile(r"[^\w\-. /]")


def _flatten(values: Mapping[str, Any]) -> dict[str, Any]:
    """Nested mappings as one level, keys joined with ``/`` (Ray's own flattening)."""
    return flatten_dict(dict(values), delimiter="/")


def _key(name: str) -> str:
    """A metric/param name MLflow accepts (letters, digits, ``_-. /``)."""
    return _BAD_KEY_CHARS.sub("_", name)


def metrics_of(result: Mapping[str, Any]) -> dict[str, float]:
    """The metric values of a Tune result: numeric, not Ray bookkeeping, not WiSE-curve points."""
    return {k: v for k, v in _flatten(result).items()
            if k not in BOOKKEEPING and not k.startswith((CURVE_PREFIX, "config/", "__"))
            and isinstance(v, numbers.Real) and not isinstance(v, bool)}


def tracked(result: Mapping[str, Any]) -> dict[str, float]:
    """A Tune result's metrics under their MLflow names, rounded (:func:`M.rounded`).

    The same function names a trial run's metrics and the study run's copy of the chosen trial,
    so both carry one namespace. Dropped: ``objective`` (Tune's copy of ``id_val/acc`` per epoch
    and of ``wise/id_val/acc`` at the end), and the bookkeeping in :data:`NOT_METRICS` (tags).
    ``wise_alpha`` becomes :data:`M.WISE_ALPHA`."""
    out = {}
    for key, value in metrics_of(result).items():
        if key == OBJECTIVE or key in NOT_METRICS:
            continue
        key = M.WISE_ALPHA if key == ALPHA else _key(key)
        out[key] = M.rounded(key, value)
    return out


def wise_curve(result: Mapping[str, Any]) -> dict[float, dict[str, float]]:
    """``{alpha: {metric: value}}`` of a trial's final Tune result
    (:func:`search.result.decode`)."""
    return decode(_flatten(result)).curve_points()


def _short(value: Any) -> str:
    """A searched value for a run name: ``3.2e-4``, ``0.21``, ``16``, ``adamw``."""
    if isinstance(value, float):
        if value != 0 and not 1e-2 <= abs(value) < 1e4:
            mantissa, _, exponent = f"{value:.1e}".partition("e")
            return f"{mantissa}e{int(exponent)}"
        return f"{value:.2g}"
    return str(value)


def trial_run_name(trial_id: str, searched: Mapping[str, Any], alpha: float | None = None,
                   index: int | None = None) -> str:
    """``trial-03 lr=3.2e-4 wd=0.21 α*=0.76``: the trial's number (Tune's ``<hash>_00003``), its
    searched values and, once known, the WiSE coefficient α* selected on ID val."""
    tail = trial_id.rpartition("_")[2]
    number = index if index is not None else int(tail) if tail.isdigit() else None
    parts = [f"trial-{number:02d}" if number is not None else f"trial-{trial_id}"]
    parts += [f"{k}={_short(v)}" for k, v in searched.items()
              if isinstance(v, (numbers.Real, str)) and not isinstance(v, bool)]
    if alpha is not None:
        parts.append(f"α*={alpha:.2f}")
    return " ".join(parts)[:250]


def curve_table(curve: Mapping[float, Mapping[str, float]], finetuned: Mapping[str, float],
                zeroshot: Mapping[str, float]) -> dict[str, list[float]]:
    """The WiSE curve as columns: ``alpha``, ``id_val/acc``, each ``ood/<set>/acc``,
    ``ood/avg_acc``. α = 0 is the study's zero-shot result (the same weights θ_zs for every
    trial) and α = 1 the trial's fine-tuned metrics whenever the search did not evaluate them."""
    points = {round(float(a), 4): dict(v) for a, v in curve.items()}
    ft = {k: v for k, v in finetuned.items() if isinstance(v, numbers.Real)}
    for alpha, known in ((0.0, zeroshot), (1.0, ft)):
        if known:
            row = points.setdefault(alpha, {})
            for k, v in known.items():
                row.setdefault(k, v)
    wanted = [M.ID_VAL] + sorted({k for p in points.values() for k in p
                                  if k.startswith("ood/") and k != M.OOD_AVG}) + [M.OOD_AVG]
    columns = [k for k in wanted if any(k in p for p in points.values())]
    table: dict[str, list[float]] = {"alpha": sorted(points)}
    for k in columns:
        table[k] = [M.rounded(k, points[a][k]) if k in points[a] else float("nan")
                    for a in table["alpha"]]
    return table


__all__ = ["curve_table", "metrics_of", "tracked", "trial_run_name", "wise_curve"]
