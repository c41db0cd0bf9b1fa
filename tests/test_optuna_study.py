"""The Optuna side of a study without Ray: sampler settings, the persistent study's trial states,
restore after a kill, warm-start sources, importances, the storage checks and the greedy-soup tie
rule. The end-to-end run is tests/test_search_study.py."""
from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from search.result import FINAL, OBJECTIVE
from search.soups import greedy_soup
from search.space import SpaceError, load_space, startup_trials
from search.tune import optuna_study as O

from .test_soups import _ingredient

ROOT = Path(__file__).resolve().parent.parent
LR = optuna.distributions.FloatDistribution(1e-4, 3e-3, log=True)


# --- sampler settings ---------------------------------------------------------------------------
def test_startup_trials_default_scales_with_the_budget():
    assert [startup_trials(None, n) for n in (1, 4, 8, 16, 40)] == [2, 2, 2, 4, 10]
    assert startup_trials(5, 16) == 5


@pytest.mark.parametrize("override, needle", [
    ({"search.n_startup_trials": 0}, "must be >= 1"),
    ({"search.n_startup_trials": 2.5}, "n_startup_trials"),
    ({"search.multivariate": "yes"}, "true or false"),
])
def test_sampler_settings_are_validated(override, needle):
    with pytest.raises(SpaceError, match=needle):
        load_space(ROOT / "spaces" / "ft.yaml", "ft", override)
    space = load_space(ROOT / "spaces" / "ft.yaml", "ft",
                       {"search.n_startup_trials": 3, "search.multivariate": True})
    assert (space.search.n_startup_trials, space.search.multivariate) == (3, True)


def test_tpe_sampler_takes_the_settings():
    tpe = O.make_sampler("tpe", 0, 3, True)
    assert isinstance(tpe, optuna.samplers.TPESampler)
    assert tpe._n_startup_trials == 3 and tpe._multivariate
    assert isinstance(O.make_sampler("random", 0, 3, False), optuna.samplers.RandomSampler)


# --- the searcher over a persistent study ---------------------------------------------------------
def _searcher(url: str, name: str = "s", restoring: bool = False) -> O.StudySearch:
    from ray import tune
    O.open_study(url, name, "ft", [], "", restoring=restoring)
    search = O.StudySearch(sampler=O.make_sampler("tpe", 0, 2, False), study_name=name,
                           storage=optuna.storages.RDBStorage(url))
    search.set_search_properties(OBJECTIVE, "max", {"lr": tune.loguniform(1e-4, 3e-3)})
    return search


def test_trial_states_and_restore_fails_only_orphans(tmp_path):
    """Finished -> COMPLETE with the final objective; stopped early -> PRUNED; after a restore,
    a RUNNING trial the saved searcher knew stays RUNNING, one asked after the save is FAIL."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    search = _searcher(url)
    for tid in ("a", "b", "c"):
        search.suggest(tid)
        search.on_trial_result(tid, {OBJECTIVE: 50.0, "training_iteration": 1})
    search.on_trial_complete("a", {OBJECTIVE: 60.0, FINAL: 1.0, "training_iteration": 2})
    search.on_trial_complete("b", {OBJECTIVE: 50.0, "training_iteration": 1})    # ASHA stop
    search.save(str(tmp_path / "state.pkl"))          # "c" is running when Tune saves
    search.suggest("d")                               # asked after the save, then the kill

    restored = _searcher(url, restoring=True)     # what --resume does (search/study.py)
    restored.restore(str(tmp_path / "state.pkl"))
    study = optuna.load_study(study_name="s", storage=url)
    states = {t.user_attrs["tune_trial_id"]: (t.state, t.value) for t in study.trials}
    assert states == {"a": (TrialState.COMPLETE, 60.0), "b": (TrialState.PRUNED, 50.0),
                      "c": (TrialState.RUNNING, None), "d": (TrialState.FAIL, None)}
    assert study.metric_names == [O.OBJECTIVE_NAME] and study.user_attrs["method"] == "ft"
    restored.on_trial_complete("c", {OBJECTIVE: 70.0, FINAL: 1.0, "training_iteration": 2})
    assert optuna.load_study(study_name="s", storage=url).best_value == 70.0


# --- storage checks -------------------------------------------------------------------------------
def test_storage_checks(tmp_path):
    mlflow_db = tmp_path / "mlflow.db"
    with sqlite3.connect(mlflow_db) as con:            # the tables that make an MLflow store
        con.execute("CREATE TABLE experiments (id INTEGER)")
        con.execute("CREATE TABLE runs (id INTEGER)")
    tracking = f"sqlite:///{mlflow_db}"
    with pytest.raises(O.OptunaStudyError, match="is the MLflow tracking store"):
        O.check_storage(tracking, tracking, "s", False)
    with pytest.raises(O.OptunaStudyError, match="an MLflow store"):
        O.check_storage(tracking, "http://127.0.0.1:5000", "s", False)
    with pytest.raises(O.OptunaStudyError, match="in memory"):
        O.check_storage("sqlite://", tracking, "s", False)
    fresh = tmp_path / "sub" / "optuna.db"
    O.check_storage(f"sqlite:///{fresh}", tracking, "s", False)
    assert not fresh.exists() and not fresh.parent.exists()      # checking wrote nothing
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    O.open_study(url, "s", "ft", [], "", restoring=False)
    with pytest.raises(O.OptunaStudyError, match="already holds study 's'.*--resume"):
        O.check_storage(url, tracking, "s", False)
    O.check_storage(url, tracking, "s", True)
    assert O.shown("postgresql://me:secret@db/optuna") == "postgresql://me:***@db/optuna"


# --- warm start -----------------------------------------------------------------------------------
def _earlier(tmp_path: Path, method: str = "ft", values=(80.0, 85.0, 82.0, 90.0),
             lrs=(1e-4, 2e-4, 3e-4, 5e-3)) -> Path:
    """An earlier study's --output: optuna.db + summary.json naming it; the 90.0 trial's lr
    lies outside LR."""
    out = tmp_path / "earlier"
    out.mkdir()
    url = O.default_storage(out)
    O.open_study(url, "old", method, [], "", restoring=False)
    study = optuna.load_study(study_name="old", storage=url)
    wide = optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)
    for lr, value in zip(lrs, values):
        study.add_trial(optuna.trial.create_trial(params={"lr": lr}, distributions={"lr": wide},
                                                  value=value))
    study.add_trial(optuna.trial.create_trial(params={"lr": 1e-3}, distributions={"lr": wide},
                                              state=TrialState.PRUNED))
    (out / "summary.json").write_text(json.dumps({"optuna": {"storage": url,
                                                             "study_name": "old"}}))
    return out


def test_warm_start_takes_the_best_finished_configurations_inside_the_space(tmp_path, caplog):
    out = _earlier(tmp_path)
    points, label = O.warm_start_points(str(out), None, "ft", {"lr": LR}, 2)
    assert points == [{"lr": 2e-4}, {"lr": 3e-4}]      # 85, 82; the 90 lies outside the range
    assert "study old" in label and "outside this space" in caplog.text
    url_points, _ = O.warm_start_points(O.default_storage(out), "old", "ft", {"lr": LR}, 5)
    assert url_points == [{"lr": 2e-4}, {"lr": 3e-4}, {"lr": 1e-4}]


@pytest.mark.parametrize("case, needle", [
    ("method", "is a study of method 'car-ft', not 'ft'"),
    ("params", "searched ['lr'], this space searches ['lr', 'weight_decay']"),
    ("kind", "parameter lr was"),
    ("no summary", "no summary.json"),
    ("url without study", "--warm-start-study"),
    ("unknown study", "no study 'nope'"),
    ("nothing inside", "none of its finished trials"),
])
def test_incompatible_warm_starts_are_one_line_errors(tmp_path, case, needle):
    out = _earlier(tmp_path, method="car-ft" if case == "method" else "ft")
    dists = {"lr": LR}
    source, study = str(out), None
    if case == "params":
        dists["weight_decay"] = optuna.distributions.FloatDistribution(0.0, 0.5)
    elif case == "kind":
        dists = {"lr": optuna.distributions.FloatDistribution(1e-4, 3e-3)}
    elif case == "no summary":
        source = str(tmp_path)
    elif case == "url without study":
        source = O.default_storage(out)
    elif case == "unknown study":
        source, study = O.default_storage(out), "nope"
    elif case == "nothing inside":
        dists = {"lr": optuna.distributions.FloatDistribution(1e-2, 1e-1, log=True)}
    with pytest.raises(O.OptunaStudyError) as err:
        O.warm_start_points(source, study, "ft", dists, 2)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_warm_start_configurations_are_the_new_study_s_first_trials(tmp_path):
    url = f"sqlite:///{tmp_path / 'new.db'}"
    O.open_study(url, "new", "ft", [{"lr": 2e-4}, {"lr": 3e-4}], "earlier", restoring=False)
    search = O.StudySearch(sampler=O.make_sampler("tpe", 0, 2, False), study_name="new",
                           storage=optuna.storages.RDBStorage(url))
    from ray import tune
    search.set_search_properties(OBJECTIVE, "max", {"lr": tune.loguniform(1e-4, 3e-3)})
    assert [search.suggest(t)["lr"] for t in ("a", "b")] == [2e-4, 3e-4]
    third = search.suggest("c")["lr"]
    assert third not in (2e-4, 3e-4) and 1e-4 <= third <= 3e-3
    # resuming opens the existing study: nothing enqueued twice
    O.open_study(url, "new", "ft", [{"lr": 2e-4}], "earlier", restoring=True)
    assert len(optuna.load_study(study_name="new", storage=url).trials) == 3


# --- importances ----------------------------------------------------------------------------------
def test_importances_only_with_enough_finished_trials(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    O.open_study(url, "s", "ft", [], "", restoring=False)
    study = optuna.load_study(study_name="s", storage=url)
    dists = {"lr": LR, "weight_decay": optuna.distributions.FloatDistribution(0.0, 0.5)}
    for i in range(O.MIN_IMPORTANCE_TRIALS):
        if i == O.MIN_IMPORTANCE_TRIALS - 1:
            assert O.importances(url, "s") == (f"too few trials: {i} finished, importances "
                                               f"need >= {O.MIN_IMPORTANCE_TRIALS}")
        lr, wd = 1e-4 * 1.4 ** i, (i * 0.37) % 0.5
        study.add_trial(optuna.trial.create_trial(
            params={"lr": lr, "weight_decay": wd}, distributions=dists,
            value=85 - 4 * (math.log10(lr) + 3) ** 2))       # depends on lr only
    result = O.importances(url, "s")
    assert set(result) == {"lr", "weight_decay"} and result["lr"] > result["weight_decay"]


# --- greedy soup ----------------------------------------------------------------------------------
def test_greedy_soup_rejects_an_ingredient_that_only_ties(tmp_path):
    """Model soups' rule: keep an ingredient only if ID val strictly improves; a tie is no
    evidence that it helps (the old rule, >=, kept b)."""
    ings = [_ingredient(tmp_path, "a", 90.0, 1.0), _ingredient(tmp_path, "b", 85.0, 3.0),
            _ingredient(tmp_path, "c", 80.0, 2.0)]
    scores = {1.0: 70.0, 2.0: 70.0, 1.5: 71.0}               # soup weight -> ID val

    def id_val_of(state):
        return scores.get(round(float(state["w"].mean()), 4), 0.0)

    ids, state, score = greedy_soup(ings, id_val_of)
    assert ids == ["a", "c"] and score == 71.0             # a+b ties (70.0): rejected
    assert torch.allclose(state["w"], torch.full((2, 3), 1.5))


# --- the command line: bad storage / warm start -> one line, exit 2, nothing written ------------
@pytest.mark.parametrize("case", ["warm start of another method", "storage is the MLflow store"])
def test_bad_optuna_input_exits_2_and_writes_nothing(case, tmp_path, capsys, monkeypatch):
    from search.bench.tiny_data import write_tiny_spec
    from search.run import main
    monkeypatch.chdir(ROOT)
    out = tmp_path / "out"
    args = ["--method", "ft", "--space", "spaces/ft.yaml", "--set", "weight_decay=0.1",
            "--data", str(write_tiny_spec(tmp_path / "data", per_class=2)),
            "--model", "micro-clip-16", "--pretrained", "", "--output", str(out)]
    if case == "warm start of another method":
        args += ["--warm-start", str(_earlier(tmp_path, method="car-ft"))]
        needle = "is a study of method 'car-ft', not 'ft'"
    else:
        store = f"sqlite:///{tmp_path / 'mlflow.db'}"
        args += ["--tracking-uri", store, "--optuna-storage", store]
        needle = "is the MLflow tracking store"
    with pytest.raises(SystemExit) as exc:
        main(args)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert exc.value.code == 2 and len(lines) == 1 and needle in lines[0], lines
    assert not out.exists()


# --- the Tuner's configuration (built without starting Ray) ---------------------------------------
def test_tuner_names_its_metric_sets_one_concurrency_limit_and_warns(tmp_path, monkeypatch, caplog):
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from search.runspec import RunSpec
    from search.tune import tuner
    from search.tune.trial import StudySetup
    monkeypatch.setattr(tuner, "make_trainable", lambda setup: (lambda config: None))
    setup = StudySetup(RunSpec(method="ft", model="micro-clip-16", pretrained=None, data=""),
                       storage_path=str(tmp_path))
    built = tuner.make_tuner(setup, {"lr": tune.loguniform(1e-4, 3e-3)}, study_name="s",
                             sampler="tpe", seed=0, scheduler="asha", grace_period=1,
                             reduction_factor=2, num_samples=2, max_concurrent_trials=2,
                             callbacks=[], storage_path=tmp_path)
    config = built._local_tuner._tune_config          # (private: what Tune will run with)
    assert (config.metric, config.mode) == (OBJECTIVE, "max")
    assert config.max_concurrent_trials == 2
    assert isinstance(config.search_alg, O.StudySearch)       # not also a ConcurrencyLimiter
    assert not isinstance(config.search_alg, ConcurrencyLimiter)
    assert config.search_alg._sampler._n_startup_trials == 2
    assert "num_samples 2 <= n_startup_trials 2: every TPE trial is random" in caplog.text
