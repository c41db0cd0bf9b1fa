"""The study's Optuna side: a persistent Optuna study, its sampler, warm starts and importances.

Ray's ``OptunaSearch`` keeps its Optuna study in memory unless it is given a storage. Here the
study lives in its own Optuna RDB storage -- by default ``sqlite:///OUTPUT/optuna.db``, never the
MLflow store; any Optuna storage URL (e.g. PostgreSQL for clusters) with ``--optuna-storage`` --
named after the study, its objective named ``id_val_acc``, its method recorded as a study user
attribute. So ``optuna.load_study(study_name=NAME, storage=URL)`` and ``optuna-dashboard URL``
open it, importances are computed from it, and a later study can start from it
(``--warm-start``).

Trial states mean what they say: ``COMPLETE`` = the trial finished its schedule and its value is
the WiSE-selected ID-val accuracy; a trial that ASHA stopped is ``PRUNED`` (its per-epoch ID-val
accuracies are its intermediate values; TPE ranks pruned trials below complete ones); a failed
trial is ``FAIL``. Only the driver touches the storage (the searcher runs there), so one sqlite
file is safe even on a cluster.
"""
from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from search.result import FINAL
from trainables.errors import InputError

log = logging.getLogger(__name__)

OBJECTIVE_NAME = "id_val_acc"       # the Optuna study's name for Tune's "objective"
STORAGE_FILE = "optuna.db"
#: Importances need this many COMPLETE trials. Measured (``python -m search.bench.importances``,
#: BENCHMARKS.md): two searched parameters, only one of which matters; at 3-4 trials fANOVA gives
#: it 0.56-0.58 of the importance on average (about half: it cannot tell the two apart), at 10
#: trials 0.75, and little more after that (0.78 at 16).
MIN_IMPORTANCE_TRIALS = 10


class OptunaStudyError(InputError):
    """A storage or warm-start source that cannot be used; one line naming the problem and fix."""


def default_storage(output: Path) -> str:
    """The study's own Optuna storage under ``--output``: ``sqlite:///OUTPUT/optuna.db``."""
    return f"sqlite:///{output / STORAGE_FILE}"


def shown(url: str) -> str:
    """``url`` with any password masked (for summary.json, MLflow and the console)."""
    import sqlalchemy
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:       # not a URL SQLAlchemy parses: nothing to hide
        return url


def _sqlite_file(url: str) -> Path | None:
    return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None


def study_names(url: str) -> list[str]:
    """The Optuna studies in ``url``, read without writing anything (a missing sqlite file is
    not created). Refuses a database that holds tables other than Optuna's (an MLflow store)."""
    import sqlalchemy
    if url in ("sqlite://", "sqlite:///:memory:"):
        raise OptunaStudyError(f"Optuna storage {url!r} is in memory: nothing could resume or "
                               "open it; fix: give a file (sqlite:///path/optuna.db) or a server")
    path = _sqlite_file(url)
    if path is not None and not path.exists():
        return []
    try:
        engine = sqlalchemy.create_engine(url)
    except Exception as exc:     # bad URL, missing driver (psycopg2, ...)
        raise OptunaStudyError(f"Optuna storage {shown(url)}: {type(exc).__name__}: "
                               f"{str(exc).splitlines()[0]}; fix: give a SQLAlchemy database URL "
                               "(sqlite:///path/optuna.db, postgresql://...) and install its "
                               "driver") from None
    try:
        with engine.connect() as con:
            tables = set(sqlalchemy.inspect(con).get_table_names())
            if tables and "studies" not in tables:
                what = "an MLflow store" if {"experiments", "runs"} <= tables else "not Optuna's"
                raise OptunaStudyError(
                    f"Optuna storage {shown(url)} holds other tables ({what}); Optuna would add "
                    "its own to it; fix: give the Optuna study its own database (the default "
                    "is OUTPUT/optuna.db)")
            if not tables:
                return []
            rows = con.execute(sqlalchemy.text("SELECT study_name FROM studies"))
            return [r[0] for r in rows]
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise OptunaStudyError(f"Optuna storage {shown(url)} cannot be read "
                               f"({str(exc).splitlines()[0]}); fix: check the URL and that the "
                               "database is reachable") from None
    finally:
        engine.dispose()


def check_storage(url: str, tracking_uri: str, study: str, resume: bool) -> None:
    """Before anything is written: ``url`` is usable, is not the MLflow store, and holds no
    study named ``study`` unless resuming it."""
    same_file = _sqlite_file(url) and _sqlite_file(tracking_uri) and (
        _sqlite_file(url).resolve() == _sqlite_file(tracking_uri).resolve())
    if url == tracking_uri or same_file:
        raise OptunaStudyError(f"--optuna-storage {shown(url)} is the MLflow tracking store; "
                               "fix: give the Optuna study its own database (default "
                               "OUTPUT/optuna.db)")
    if study in study_names(url) and not resume:
        raise OptunaStudyError(f"Optuna storage {shown(url)} already holds study {study!r}; fix: "
                               "pass --resume to continue it, or choose another --study-name")


# --- warm start ---------------------------------------------------------------------------------
def _warm_source(source: str, study: str | None) -> tuple[str, str]:
    """(storage URL, study name) of ``--warm-start`` (an output folder, or a URL + a name)."""
    if "://" in source:
        if not study:
            raise OptunaStudyError(f"--warm-start {shown(source)} is a storage URL: also name "
                                   "the study in it; fix: add --warm-start-study NAME")
        return source, study
    summary = Path(source).expanduser() / "summary.json"
    if not summary.is_file():
        raise OptunaStudyError(f"--warm-start {source}: no finished study there (no "
                               "summary.json); fix: pass the --output of a finished study, or "
                               "a storage URL with --warm-start-study")
    try:
        recorded = json.loads(summary.read_text())["optuna"]
        url, name = recorded["storage"], recorded["study_name"]
    except (ValueError, KeyError, TypeError):
        raise OptunaStudyError(f"--warm-start {source}: summary.json names no Optuna study "
                               "(written before studies were persisted); fix: warm-start from a "
                               "newer study") from None
    local = Path(source).expanduser() / STORAGE_FILE
    if _sqlite_file(url) is not None and local.is_file():
        url = default_storage(local.parent.resolve())   # the folder's own file, even if moved
    if "***" in url:    # summary.json masks passwords
        raise OptunaStudyError(f"--warm-start {source}: its storage URL has a masked password; "
                               "fix: pass the URL itself with --warm-start-study "
                               f"{name}")
    return url, study or name


def warm_start_points(source: str, study: str | None, method: str,
                      distributions: dict[str, Any], count: int) -> tuple[list[dict], str]:
    """(up to ``count`` configurations, a label of the source): the best COMPLETE trials of a
    finished study of the same ``method`` whose searched parameters are those of
    ``distributions`` (Optuna distributions of this study's space). Configurations outside this
    space's ranges are skipped with a warning. Reads only."""
    url, name = _warm_source(source, study)
    if name not in study_names(url):
        raise OptunaStudyError(f"--warm-start: no study {name!r} in {shown(url)}; fix: check "
                               "the name (optuna studies ls --storage URL)")
    try:
        storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
        earlier = optuna.load_study(study_name=name, storage=storage)
    except Exception as exc:    # e.g. a schema from another Optuna version
        raise OptunaStudyError(f"--warm-start: study {name!r} in {shown(url)} cannot be read "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0]}); fix: "
                               "open it with the Optuna version that wrote it") from None
    label = f"{shown(url)} study {name}"
    if earlier.user_attrs.get("method") != method:
        raise OptunaStudyError(f"--warm-start {label} is a study of method "
                               f"{earlier.user_attrs.get('method')!r}, not {method!r}; fix: "
                               "warm-start from a study of the same method")
    done = [t for t in earlier.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and math.isfinite(t.value)]
    if not done:
        raise OptunaStudyError(f"--warm-start {label} has no finished trial; fix: warm-start "
                               "from a study whose trials finished")
    theirs, ours = set(done[0].distributions), set(distributions)
    if theirs != ours:
        raise OptunaStudyError(f"--warm-start {label} searched {sorted(theirs)}, this space "
                               f"searches {sorted(ours)}; fix: warm-start from a study over the "
                               "same parameters (or fix the others with --set)")
    for key, dist in distributions.items():
        if type(done[0].distributions[key]) is not type(dist) or getattr(
                done[0].distributions[key], "log", None) != getattr(dist, "log", None):
            raise OptunaStudyError(f"--warm-start {label}: parameter {key} was "
                                   f"{done[0].distributions[key]}, here {dist}; fix: use the same "
                                   "kind of distribution")
    points, outside = [], 0
    for t in sorted(done, key=lambda t: -t.value):
        if all(_contains(distributions[k], v) for k, v in t.params.items()):
            points.append(dict(t.params))
        else:
            outside += 1
    if outside:
        log.warning("--warm-start: %d of %d finished trials of %s lie outside this space's "
                    "ranges and are not used", outside, len(done), label)
    if not points:
        raise OptunaStudyError(f"--warm-start {label}: none of its finished trials lies inside "
                               "this space; fix: widen the ranges or warm-start from another "
                               "study")
    return points[:count], label


def _contains(dist: Any, value: Any) -> bool:
    try:
        return dist._contains(dist.to_internal_repr(value))
    except (ValueError, TypeError):
        return False


def optuna_distributions(param_space: dict[str, Any]) -> dict[str, Any]:
    """The Optuna distributions OptunaSearch makes of a Tune ``param_space`` (Ray's own
    conversion, so a warm-start point is checked against exactly what the sampler will use)."""
    return OptunaSearch.convert_search_space(param_space) if param_space else {}


# --- the study ------------------------------------------------------------------------------------
def open_study(url: str, name: str, method: str, warm: list[dict], warm_label: str,
               restoring: bool) -> None:
    """Create the study in ``url`` (objective name, method, warm-start configurations enqueued
    first), or, if it exists, leave it as it is. When Tune starts afresh (``restoring`` False,
    e.g. ``--resume`` after a driver killed before Tune saved anything), trials the earlier
    driver left RUNNING can never report: they are marked FAIL."""
    existed = name in study_names(url)
    study = optuna.create_study(storage=url, study_name=name, direction="maximize",
                                load_if_exists=True)
    if existed:
        if not restoring:
            fail_running(study, "its driver was killed before Tune saved the trial")
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([OBJECTIVE_NAME])
    study.set_user_attr("method", method)
    for point in warm:
        study.enqueue_trial(point, user_attrs={"warm_start_from": warm_label})


def fail_running(study: optuna.Study, reason: str, keep: frozenset[int] | set[int] = frozenset()
                 ) -> int:
    """Mark FAIL every RUNNING trial of ``study`` whose number is not in ``keep``; how many."""
    orphans = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
               if t.number not in keep]
    for number in orphans:
        study.tell(number, state=TrialState.FAIL)
    if orphans:
        log.warning("Optuna study %s: trials %s marked FAIL (%s)", study.study_name, orphans,
                    reason)
    return len(orphans)


class StudySearch(OptunaSearch):
    """Ray's OptunaSearch over the persistent study, with honest trial states.

    A trial that ends without its final report (ASHA stopped it) is told PRUNED, not COMPLETE
    with its last per-epoch accuracy; the Tune trial id is stored as a user attribute. On restore
    (``--resume``), Optuna trials the killed driver asked for after Tune last saved its state --
    RUNNING, unknown to the restored searcher, so no Tune trial will ever report them -- are
    marked FAIL."""

    def suggest(self, trial_id: str) -> dict | None:
        fresh = trial_id not in self._ot_trials
        config = super().suggest(trial_id)
        if fresh and trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr("tune_trial_id", trial_id)
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if (result and not error and result.get(FINAL) != 1.0 and trial_id in self._ot_trials
                and trial_id not in self._completed_trials):
            try:
                self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
            except Exception as exc:    # e.g. already told before a kill; as OptunaSearch does
                log.warning(exc)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        known = {t.number for t in self._ot_trials.values()}
        fail_running(self._ot_study, "its driver was killed before Tune saved the trial", known)


def make_sampler(sampler: str, seed: int, n_startup_trials: int, multivariate: bool
                 ) -> optuna.samplers.BaseSampler:
    """A seeded Optuna sampler: TPE (``n_startup_trials`` random trials first, optionally
    multivariate) or random."""
    if sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():     # multivariate is "experimental" in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials,
                                          multivariate=multivariate)


def importances(url: str, name: str, seed: int = 0) -> dict[str, float] | str:
    """fANOVA parameter importances of the study's COMPLETE trials, or why there are none."""
    study = optuna.load_study(study_name=name, storage=url)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < MIN_IMPORTANCE_TRIALS:
        return (f"too few trials: {len(done)} finished, importances need "
                f">= {MIN_IMPORTANCE_TRIALS}")
    try:
        return dict(optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed)))
    except (ValueError, RuntimeError) as err:   # e.g. every trial has the same parameters
        return f"unavailable: {err}"


__all__ = ["MIN_IMPORTANCE_TRIALS", "OBJECTIVE_NAME", "OptunaStudyError", "StudySearch",
           "check_storage", "default_storage", "fail_running", "importances", "make_sampler",
           "open_study", "optuna_distributions", "shown", "study_names", "warm_start_points"]
