"""A trial's result as a type, and the one codec between it and the flat keys Tune and MLflow see.

Ray Tune takes (and stores in ``result.json``) a flat dict of numbers per report, and MLflow logs
flat names, so at that boundary a trial's final result is a flat dict::

    objective                      ID-val accuracy at α* (what Tune, Optuna and ASHA maximise)
    final                          1.0: the result that carries the WiSE selection
    wise_alpha                     α*, selected on ID val
    wise_evaluations               how many α were evaluated on ID val
    ft/<metric>                    every report set at α = 1 (θ_ft)
    wise/<metric>                  every report set at α*
    wise_curve/<α:.4f>/<metric>    ID val (and the OOD sets) at every α evaluated
    time/<phase>_s                 seconds spent in a phase
    epoch                          epochs trained

:func:`encode` writes it (the trial worker, :mod:`search.tune.trial`) and :func:`decode` reads it
(the driver, the Tune callback, the methods report); nothing else parses these keys. Everything
past the boundary takes a :class:`TrialResult` (one trial's WiSE outcome) or a
:class:`TrialRecord` (a trial as Tune ended it: id, configuration, error, checkpoint, result).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from trainables import metrics as M

OBJECTIVE = "objective"          # what Tune, Optuna and ASHA maximise: ID-val accuracy
FINAL = "final"                  # 1.0 on the result that carries the WiSE selection
ALPHA = "wise_alpha"             # α* (MLflow logs it as M.WISE_ALPHA)
EVALUATIONS = "wise_evaluations"
CURVE_PREFIX = "wise_curve/"
TIME_PREFIX = "time/"

#: (α, {metric: value}) rows, α ascending
Curve = tuple[tuple[float, dict[str, float]], ...]


@dataclass(frozen=True)
class TrialResult:
    """One model's WiSE-FT outcome: selection on ID val, then the report sets at α = 1 and α*.

    ``curve`` holds ID val at every α the selection evaluated, and the OOD sets along it (the
    frontier); ``timings`` is seconds by phase (``wise_select_s``, ``report_eval_s``,
    ``setup_s``, ...); ``extra`` is whatever else the flat result held (Ray's bookkeeping), kept
    so that :func:`decode` then :func:`encode` gives the same dict back."""

    objective: float                       # ID-val accuracy at α*
    alpha: float                           # α*, selected on ID val only
    finetuned: dict[str, float]            # every report set at α = 1
    wise: dict[str, float]                 # every report set at α*
    curve: Curve = ()
    evaluations: int = 0                   # α values evaluated on ID val
    timings: dict[str, float] = field(default_factory=dict)
    epoch: int | None = None               # epochs trained (set by the trial worker)
    extra: dict[str, Any] = field(default_factory=dict)

    def curve_points(self) -> dict[float, dict[str, float]]:
        """The curve as ``{alpha: {metric: value}}`` (what the plots and tables take)."""
        return {a: dict(m) for a, m in self.curve}


@dataclass(frozen=True)
class TrialRecord:
    """One trial of a study as Tune ended it. ``result`` is None unless it reported its WiSE
    selection (it failed, or the scheduler stopped it first)."""

    trial_id: str
    params: dict[str, Any]                 # the trial's configuration (its searched values)
    error: str | None = None               # the error's last line
    checkpoint: str | None = None          # the folder of its last checkpoint (θ_ft when final)
    result: TrialResult | None = None

    @property
    def finished(self) -> bool:
        """Whether the trial ran to its WiSE selection without error."""
        return self.result is not None and not self.error

    @classmethod
    def from_metrics(cls, trial_id: str, params: Mapping[str, Any], metrics: Mapping[str, Any],
                     error: str | None = None, checkpoint: str | None = None) -> "TrialRecord":
        """A record from a trial's last flat Tune result."""
        return cls(trial_id, dict(params), error, checkpoint,
                   decode(metrics) if is_final(metrics) else None)

    def as_dict(self) -> dict[str, Any]:
        """The record as the study's MLflow ``summary.json`` has always stored it (``metrics``:
        its last result, flat)."""
        return {"trial_id": self.trial_id, "config": self.params,
                "metrics": encode(self.result) if self.result else {}, "error": self.error,
                "checkpoint": self.checkpoint}


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_final(flat: Mapping[str, Any]) -> bool:
    """Whether a flat Tune result carries the WiSE selection (a trial's last result)."""
    return flat.get(FINAL) == 1.0


def encode_curve(curve: Iterable[tuple[float, Mapping[str, float]]]) -> dict[str, float]:
    """``wise_curve/<α:.4f>/<metric>`` keys (:func:`trainables.metrics.curve`)."""
    return {M.curve(a, name): value for a, values in curve for name, value in values.items()}


def encode(result: TrialResult) -> dict[str, Any]:
    """The flat dict Tune is given (the objective first: Tune's live table shows the first
    metrics a trial reports)."""
    out: dict[str, Any] = {OBJECTIVE: result.objective}
    if result.epoch is not None:
        out[M.EPOCH] = result.epoch
    out.update({ALPHA: result.alpha, FINAL: 1.0, EVALUATIONS: float(result.evaluations)})
    out.update({TIME_PREFIX + k: v for k, v in result.timings.items()})
    out.update(encode_curve(result.curve))
    out.update({M.at(M.FINETUNED, k): v for k, v in result.finetuned.items()})
    out.update({M.at(M.WISE, k): v for k, v in result.wise.items()})
    out.update(result.extra)
    return out


def decode(flat: Mapping[str, Any]) -> TrialResult:
    """The :class:`TrialResult` of a final flat result (see :func:`is_final`)."""
    fields: dict[str, dict[str, Any]] = {"ft": {}, "wise": {}, "time": {}, "extra": {}}
    curve: dict[float, dict[str, float]] = {}
    for key, value in flat.items():
        if key in (OBJECTIVE, ALPHA, FINAL, EVALUATIONS, M.EPOCH):
            continue
        head, _, rest = key.partition("/")
        if key.startswith(CURVE_PREFIX) and _number(value):
            alpha, _, metric = rest.partition("/")
            curve.setdefault(float(alpha), {})[metric] = value
        elif head in (M.FINETUNED, M.WISE, "time") and rest and _number(value):
            fields[head][rest] = value
        else:
            fields["extra"][key] = value
    epoch = flat.get(M.EPOCH)
    return TrialResult(
        objective=flat[OBJECTIVE], alpha=flat[ALPHA], finetuned=fields["ft"],
        wise=fields["wise"], curve=tuple(sorted(curve.items())),
        evaluations=int(flat.get(EVALUATIONS, len(curve))), timings=fields["time"],
        epoch=None if epoch is None else int(epoch), extra=fields["extra"])


def finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite real-number metrics (what summary.json and the tables show)."""
    return {k: v for k, v in metrics.items()
            if isinstance(v, (int, float)) and math.isfinite(v)}


def frontier_point(trial_id: str, result: TrialResult) -> dict[str, Any]:
    """One trial on the study's frontier plot (:func:`search.tracking.plots.frontier_data`):
    its curve, α*, and its report points at α = 1 and α* (``ft/…``, ``wise/…``)."""
    return {"trial_id": trial_id, "curve": result.curve_points(), "selected_alpha": result.alpha,
            "metrics": {**{M.at(M.FINETUNED, k): v for k, v in result.finetuned.items()},
                        **{M.at(M.WISE, k): v for k, v in result.wise.items()}}}


def trial_records(grid: Iterable[Any]) -> list[TrialRecord]:
    """One :class:`TrialRecord` per trial of a Tune ``ResultGrid`` (its last result decoded)."""
    trials = []
    for result in grid:
        metrics = dict(result.metrics or {})
        trials.append(TrialRecord.from_metrics(
            metrics.get("trial_id", Path(result.path).name), dict(result.config or {}), metrics,
            None if result.error is None else str(result.error).strip().splitlines()[-1][:500],
            # a worker group's checkpoint lives in Train's storage (its path is a metric); a
            # trial-actor run's in Tune's trial folder
            metrics.get("checkpoint_path") or (
                result.checkpoint.path if result.checkpoint else None)))
    return trials


__all__ = ["ALPHA", "CURVE_PREFIX", "FINAL", "OBJECTIVE", "TrialRecord", "TrialResult", "decode",
           "encode", "encode_curve", "finite", "frontier_point", "is_final", "trial_records"]
