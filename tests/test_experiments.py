"""A study's Tune experiments (search/experiments.py): what ``--resume --num-samples M`` plans
from the stored state. The end-to-end extension runs in
tests/test_reliability.py::test_resume_with_more_samples_extends_the_study."""
from __future__ import annotations

from search.experiments import Experiment, is_extension_folder, plan
from search.resume import stored_studies


def _state(budget: int, status: str, experiments=None) -> dict:
    state = {"inputs": {"num_samples": budget}, "status": status}
    if experiments is not None:
        state["experiments"] = [e.as_dict() for e in experiments]
    return state


def test_a_fresh_study_is_one_experiment():
    assert plan("s", None, 4) == [Experiment("s", 4)]


def test_a_larger_budget_adds_an_extension_for_the_missing_trials():
    # a state written before experiments were listed: its one experiment, finished or not
    assert plan("s", _state(2, "finished"), 5) == [Experiment("s", 2, True),
                                                   Experiment("s-more-1", 3)]
    assert plan("s", _state(2, "running"), 3) == [Experiment("s", 2, False),
                                                  Experiment("s-more-1", 1)]
    done = [Experiment("s", 2, True), Experiment("s-more-1", 1, True)]
    assert plan("s", _state(3, "finished", done), 6) == [*done, Experiment("s-more-2", 3)]


def test_a_driver_killed_during_an_extension_continues_it():
    """study.json was written with the new budget and the unfinished extension before it ran:
    the same command plans the same experiments, nothing added."""
    stored = [Experiment("s", 2, True), Experiment("s-more-1", 1, False)]
    assert plan("s", _state(3, "running", stored), 3) == stored


def test_extension_folders_belong_to_their_study(tmp_path):
    for name in ("ft-search", "ft-search-more-1", "ft-search-more-2", "other-more-x", "train"):
        (tmp_path / "ray" / name).mkdir(parents=True)
    assert stored_studies(tmp_path) == ["ft-search", "other-more-x"]
    assert is_extension_folder("ft-search-more-1", ["ft-search"])
    assert not is_extension_folder("ft-search-more-1", ["lp-search"])
