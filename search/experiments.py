"""A study's Tune experiments: the first one, and one more per ``--resume --num-samples M`` that
raised the budget.

Ray 2.60's ``Tuner.restore`` continues an experiment with the budget pickled in it; a larger budget
is, in Ray's own words, a new experiment (ray-project/ray#33495, the Tune FAQ on iterative
experimentation). So a study extended from N to M trials is the restored experiment
``OUTPUT/ray/<study>`` (finished first, if it was not) plus ``OUTPUT/ray/<study>-more-1`` with
M − N trials, and so on for each later extension. Every experiment asks the same persistent
Optuna study (:mod:`search.tune.optuna_study`), so the sampler sees all earlier trials, and records
its trials under the same MLflow parent run, numbered on from the earlier ones; selection, soups,
the summary and the export then read the trials of all of them.

The list lives in the study's ``study.json`` (:mod:`search.resume`) with each experiment's budget
and whether it finished, written before an experiment starts and after it ends, so a driver killed
during an extension resumes it with the same command.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Experiment:
    """One Tune experiment of a study: ``OUTPUT/ray/<name>``, ``num_samples`` trials."""

    name: str
    num_samples: int
    finished: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def experiment_name(study: str, index: int) -> str:
    """The study's first experiment is named after it; extension k is ``<study>-more-<k>``."""
    return study if index == 0 else f"{study}-more-{index}"


def stored_experiments(study: str, state: dict[str, Any] | None) -> list[Experiment]:
    """The experiments ``study.json`` lists (a state written before extensions existed, or none
    yet: the one experiment with the stored budget)."""
    if not state:
        return []
    listed = state.get("experiments")
    if listed:
        return [Experiment(**e) for e in listed]
    budget = int((state.get("inputs") or {}).get("num_samples") or 0)
    return [Experiment(study, budget, finished=state.get("status") == "finished")]


def plan(study: str, state: dict[str, Any] | None, num_samples: int) -> list[Experiment]:
    """The experiments that make a study of ``num_samples`` trials: the stored ones, plus an
    extension with the missing trials when ``num_samples`` exceeds their budgets (a fresh study:
    one experiment). A smaller ``num_samples`` is refused before this (:mod:`search.resume`)."""
    experiments = stored_experiments(study, state) or [Experiment(study, num_samples)]
    missing = num_samples - total(experiments)
    if missing > 0:
        experiments.append(Experiment(experiment_name(study, len(experiments)), missing))
    return experiments


def total(experiments: list[Experiment]) -> int:
    return sum(e.num_samples for e in experiments)


def is_extension_folder(name: str, studies: list[str]) -> bool:
    """Whether ``OUTPUT/ray/<name>`` is an extension experiment of one of ``studies``."""
    head, sep, tail = name.rpartition("-more-")
    return bool(sep) and tail.isdigit() and head in studies

