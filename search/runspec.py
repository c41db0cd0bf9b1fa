"""What one run is: method, model, data, WiSE settings, the space's constants. No Ray here.

A :class:`RunSpec` is everything :func:`search.tune.trial.prepare` and
:func:`search.tune.trial.wise_evaluation` need to build, train and evaluate one model; the search
driver, the methods report (``search.report``), the benchmarks and ``search.export`` all build
one. How Ray runs a study's trials (workers, resources, storage) is the other half of
:class:`search.tune.trial.StudySetup`, which holds a ``RunSpec``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

#: WiSE-FT's default α grid (Wortsman et al., 2022): 0, 0.1, ..., 1
DEFAULT_WISE_GRID: tuple[float, ...] = tuple(i / 10 for i in range(11))


@dataclass(frozen=True)
class RunSpec:
    """One run: which method trains which model on which data, and how α is searched."""

    method: str
    model: str
    pretrained: str | None
    data: str                          # the data spec (a file, or a built-in data set's folder)
    wise_strategy: str = "grid"        # grid | golden (search/selection.py)
    wise_grid: tuple[float, ...] = DEFAULT_WISE_GRID
    wise_evaluations: int = 6          # golden-section: α values evaluated on ID val
    eval_batch_size: int = 256
    report_eval: bool = True           # False: no end-of-trial reporting evaluation (OOD curve,
                                       # every set at α = 1 and α*): only search.bench's figure 4,
                                       # which reads the ID-val objective alone, turns it off
    base_params: dict[str, Any] = field(default_factory=dict)   # the space's constants (+ seed)

    @classmethod
    def from_dict(cls, flat: Mapping[str, Any]) -> "RunSpec":
        """The run of a flat setup dict (a study's summary.json ``setup``, which also holds how
        Ray ran it: those keys are ignored)."""
        run = {f.name: flat[f.name] for f in fields(cls) if f.name in flat}
        if "wise_grid" in run:
            run["wise_grid"] = tuple(run["wise_grid"])      # JSON gives a list
        return cls(**run)


__all__ = ["DEFAULT_WISE_GRID", "RunSpec"]
