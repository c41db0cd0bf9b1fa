"""search/export.py's choices without a study: which model the study exports (ID val only,
through search/selection.py) and which trials cannot be exported."""
from __future__ import annotations

import pytest

from search.export import ExportError, chosen_source, trial_source
from search.result import TrialRecord


def _trial(trial_id: str, objective: float, final: bool = True, error: str | None = None):
    metrics = {"objective": objective, "wise_alpha": 0.4, "ft/id_test/acc": 50.0}
    if final:
        metrics["final"] = 1.0
    return TrialRecord.from_metrics(trial_id, {"lr": 1e-3}, metrics, error, f"/ckpt/{trial_id}")


def _summary(soup_id_val: dict[str, float]) -> dict:
    return {"best_trial": "a", "best_params": {"lr": 1e-3},
            "soups": {name: {"trials": ["a", "b"], "selected_alpha": 0.7,
                             "soup": {"id_test/acc": 1.0},
                             "wise": {"id_val/acc": v, "ood/avg_acc": 99.0}}
                      for name, v in soup_id_val.items()}}


@pytest.mark.parametrize("soups, expected", [
    ({}, ("trial", "a", 0.4)),
    ({"uniform": 80.0, "greedy": 80.0}, ("trial", "a", 0.4)),        # a tie keeps the trial
    ({"uniform": 79.0, "greedy": 81.0}, ("soup", "greedy", 0.7)),
    ({"uniform": 82.0, "greedy": 81.0}, ("soup", "uniform", 0.7)),
])
def test_chosen_source_reads_id_val_only(soups, expected):
    trials = [_trial("a", 80.0), _trial("b", 70.0)]
    source = chosen_source(_summary(soups), trials)
    assert (source.kind, source.name, source.alpha) == expected
    if source.kind == "soup":
        assert source.trial_ids == ["a", "b"] and len(source.checkpoints) == 2


def test_failed_and_stopped_trials_cannot_be_exported():
    with pytest.raises(ExportError, match="trial x failed"):
        trial_source(_trial("x", 10.0, final=False, error="RuntimeError: boom"))
    with pytest.raises(ExportError, match="stopped before its WiSE selection"):
        trial_source(_trial("y", 10.0, final=False))
    assert trial_source(_trial("z", 10.0), alpha=0.0).alpha == 0.0
