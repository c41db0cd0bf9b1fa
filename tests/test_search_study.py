"""A study's search end to end (micro CLIP, tiny data, 1 epoch): the persistent Optuna study,
Ray's analysis tools without a metric argument, soups switched off, and a warm-started study.

One test, two short studies (each Ray study costs minutes of CPU): study A (3 trials,
``soups.top_k: 0``), then study B warm-started from A's --output.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from search.bench.tiny_data import write_tiny_spec

from .study_driver import STUDY, _check_layout, _finish, _start, _trial_results


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_tiny_spec(tmp_path_factory.mktemp("search-study"), per_class=4)


def _run(folder: Path, data: Path, num_samples: int, *extra: str) -> dict:
    """Run one study in ``folder`` (a child process, as test_reliability does); its summary."""
    folder.mkdir()
    space = folder / "space.yaml"
    space.write_text(yaml.safe_dump({
        "method": "ft",
        "params": {"lr": {"loguniform": [1.0e-4, 3.0e-3]}, "epochs": 1, "batch_size": 16,
                   "warmup_steps": 1},
        "search": {"num_samples": num_samples, "scheduler": "fifo", "sampler": "tpe", "seed": 0,
                   "n_startup_trials": 2, "max_concurrent_trials": 1},
        "wise": {"strategy": "grid", "grid": [0.0, 1.0]},
        "soups": {"top_k": 0}}))
    cmd = [sys.executable, "-m", "search.run", "--method", "ft", "--space", str(space),
           "--data", str(data), "--model", "micro-clip-16", "--pretrained", "",
           "--output", str(folder / "out"), "--quiet", *extra]
    code = _finish(_start(cmd, folder, "driver"))
    assert code == 0, (folder / "driver.err").read_text()[-3000:]
    _check_layout(folder / "out")
    return json.loads((folder / "out" / "summary.json").read_text())


@pytest.mark.slow
def test_optuna_study_analysis_soups_off_and_warm_start(tmp_path, data):
    from ray import tune

    from search.tune.tuner import run_trial

    # --- study A: persistent Optuna study, soups off -----------------------------------------
    summary = _run(tmp_path / "a", data, 3)
    out = tmp_path / "a" / "out"
    storage = f"sqlite:///{out / 'optuna.db'}"
    assert summary["trials"]["finished"] == 3
    assert summary["soups"] == {}                               # soups.top_k: 0
    assert summary["optuna"] == {"storage": storage, "study_name": STUDY,
                                 "objective": "id_val_acc", "warm_start": None}
    assert summary["importances"].startswith("too few trials: 3 finished")

    study = optuna.load_study(study_name=STUDY, storage=storage)
    assert study.metric_names == ["id_val_acc"] and study.user_attrs["method"] == "ft"
    finals = {rows[-1]["trial_id"]: rows[-1] for rows in _trial_results(out).values()}
    assert len(study.trials) == 3
    for trial in study.trials:
        final = finals[trial.user_attrs["tune_trial_id"]]
        assert trial.state == TrialState.COMPLETE
        assert trial.params == {"lr": final["config"]["lr"]}
        assert trial.value == final["objective"]                 # the WiSE-selected ID val
    assert study.best_value == max(t["objective"] for t in finals.values())

    # Ray's own analysis, no metric argument: the TuneConfig named it
    grid = tune.Tuner.restore(str(out / "ray" / STUDY), trainable=run_trial).get_results()
    best = grid.get_best_result()
    assert best.config == summary["best_params"] == study.best_params
    assert best.metrics["objective"] == study.best_value
    # Ray 2.60's ExperimentAnalysis reads no metric from the experiment folder (README, "Ray's
    # analysis tools"): it needs the metric named; should a later Ray read it, this fails and
    # README's advice can drop the arguments
    path = str(out / "ray" / STUDY)
    with pytest.raises(ValueError, match="pass a `metric`"):
        _ = tune.ExperimentAnalysis(path).best_config
    analysis = tune.ExperimentAnalysis(path, default_metric="objective", default_mode="max")
    assert analysis.best_config == best.config

    # --- study B: warm-started from A --------------------------------------------------------
    summary_b = _run(tmp_path / "b", data, 3, "--warm-start", str(out))
    ranked = sorted(study.trials, key=lambda t: -t.value)
    warm = optuna.load_study(study_name=STUDY,
                             storage=f"sqlite:///{tmp_path / 'b' / 'out' / 'optuna.db'}")
    assert [t.params for t in warm.trials[:2]] == [t.params for t in ranked[:2]]
    assert all("warm_start_from" in t.user_attrs for t in warm.trials[:2])
    assert "warm_start_from" not in warm.trials[2].user_attrs     # then TPE's own proposal
    ran = sorted(rows[-1]["config"]["lr"] for rows in _trial_results(tmp_path / "b" / "out")
                 .values())
    assert ran == sorted(t.params["lr"] for t in warm.trials)
    assert f"study {STUDY}" in summary_b["optuna"]["warm_start"]
