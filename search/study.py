"""A study: validated inputs, the Tune run, soups, importances, MLflow and summary.json.

:meth:`Study.from_args` checks everything that can be checked before training (method, space,
data, weights, tracking store, output state: :func:`search.inputs.validate`; then the cluster's
resources as Ray starts) and raises :class:`StudyError` with a one-line message; nothing is
written under ``--output`` until all checks pass. The study records the seconds of its phases in
:attr:`Study.phases`.
"""
from __future__ import annotations

import json
import logging
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from search.inputs import StudyError, check_batch_split, check_study_name, param_space, validate
from search.result import TrialRecord, trial_records
from search.tune.trial import RunParts, StudySetup, setup_dict
from trainables import metrics as M
from trainables.files import atomic_write_text

log = logging.getLogger(__name__)
__all__ = ["Study", "StudyError", "StudyFailed", "check_batch_split", "check_study_name",
           "code_version", "timed"]


class StudyFailed(RuntimeError):
    """Every trial of the study failed; summary.json is written and the MLflow parent is FAILED."""


@contextmanager
def timed(phases: dict[str, float], name: str) -> Iterator[None]:
    """Add the seconds spent in the block to ``phases[name]`` (a study's :attr:`Study.phases`)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        phases[name] = phases.get(name, 0.0) + time.perf_counter() - start


def code_version() -> str:
    """The git commit of the project (with -dirty), or the package version."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=5, check=True)
        return rev.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import version
        return version("robust-clip-search")


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str))


@dataclass
class Study:
    """A validated study, ready to :meth:`run`."""

    args: Any
    setup: StudySetup
    space: Any                   # search.space.Space, or None for methods that train nothing
    name: str
    output: Path
    tracking_uri: str
    num_samples: int
    max_concurrent: int
    seed: int
    parts: RunParts              # driver-side model/data/evaluator (zero-shot eval, soups)
    optuna_storage: str = ""     # the Optuna study's storage URL (search/tune/optuna_study.py)
    warm_start: tuple[list[dict[str, Any]], str] = ([], "")   # (configurations, source label)
    inputs: dict[str, Any] = field(default_factory=dict)   # compared by --resume (resume.py)
    #: seconds by phase: validation, Ray start, zero-shot evaluation, Tune, soups, importances,
    #: MLflow (driver); filled as the study runs (``search.bench.study_figures`` reads them)
    phases: dict[str, float] = field(default_factory=dict)
    experiments: list[Any] = field(default_factory=list)   # search.experiments.Experiment

    # --- validation ---------------------------------------------------------------------------
    @classmethod
    def from_args(cls, args: Any, overrides: dict[str, Any],
                  default_data: Callable[[], Path]) -> "Study":
        """Validate the study (:func:`search.inputs.validate`), then start or join Ray: it raises
        ResourceError if a trial cannot fit, ClusterError for node-local storage or a sqlite
        store on a multi-node cluster. :attr:`phases` gets the seconds of both."""
        from search.tune.cluster import init_ray
        phases: dict[str, float] = {}
        with timed(phases, "validation + driver set-up"):
            fields = validate(args, overrides, default_data)
        with timed(phases, "ray start"):
            init_ray(args.address, fields["setup"], fields["max_concurrent"],
                     tracking_uri=fields["tracking_uri"])
        return cls(**fields, phases=phases)

    # --- running ----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from search.interrupt import Interrupted
        from search.tracking.recorder import StudyRecorder, ensure_tracking

        method = self.parts.method
        self.output.mkdir(parents=True, exist_ok=True)
        self._save_state("running")
        ensure_tracking(self.tracking_uri)
        recorder = StudyRecorder(
            self.tracking_uri, self.args.experiment, self.name,
            artifact_location=self.output / "mlartifacts" if self.tracking_uri.startswith(
                "sqlite") else None)
        with timed(self.phases, "MLflow (driver)"):
            parent = recorder.start(
                space_source_path=self.space.source if self.space else None,
                resolved_config=self.resolved_config(), data_spec_path=Path(self.setup.run.data),
                code_version=code_version(), resume=self.args.resume)
        try:
            with timed(self.phases, "zero-shot evaluation"):
                zeroshot = self.parts.evaluator.evaluate(self.parts.model, method,
                                                         self.parts.evaluator.report_sets)
            recorder.log_pretrained(zeroshot)   # α = 0 of every trial's WiSE table
            trials: list[TrialRecord] = []
            if not method.trains_nothing:
                with timed(self.phases, "Tune"):
                    trials = self._tune(recorder)
            summary = self._summarise(zeroshot, trials, recorder, parent)
        except Interrupted as stop:     # Ctrl-C / SIGTERM: KILLED runs, no summary; --resume
            from search.tracking.interrupted import mark_killed
            mark_killed(recorder, f"interrupted by {stop}; continue with --resume")
            raise
        except Exception as err:        # the driver itself failed: say so on the parent run
            recorder.fail(f"{type(err).__name__}: {err}")
            raise
        summary["setup"] = setup_dict(self.setup)      # what search.export rebuilds models from
        if "error" not in summary:
            try:
                summary["export"] = self._export(summary, trials, parent)
            except Exception as err:    # the trials are safe: write the summary, then fail loudly
                summary["export"] = {"error": f"{type(err).__name__}: {err}"}
                atomic_write_json(self.output / "summary.json", summary)
                raise
        atomic_write_json(self.output / "summary.json", summary)
        self._save_state("failed" if "error" in summary else "finished")
        if "error" in summary:
            raise StudyFailed(summary["error"])
        return summary

    def resolved_config(self) -> dict[str, Any]:
        from search.space import space_as_dict
        return {"setup": setup_dict(self.setup), "space": space_as_dict(self.space) if self.space
                else None, "num_samples": self.num_samples, "seed": self.seed,
                "max_concurrent_trials": self.max_concurrent, "study": self.name}

    def _save_state(self, status: str) -> None:
        """study.json: the inputs, ``status`` and the study's Tune experiments."""
        from search.resume import write_state
        write_state(self.output, self.name, self.inputs, status,
                    [e.as_dict() for e in self.experiments])

    def _tune(self, recorder) -> list[TrialRecord]:
        """Run (or, after a kill, continue) each of the study's Tune experiments in turn
        (:mod:`search.experiments`); the records of the trials of all of them. A finished
        experiment is only read back."""
        from search.tune.tuner import restore_tuner
        trials: list[TrialRecord] = []
        numbered = 0            # trials of the earlier experiments: trial numbers go on from here
        for index, experiment in enumerate(self.experiments):
            if experiment.finished and (self.output / "ray" / experiment.name / "tuner.pkl"
                                        ).is_file():
                grid = restore_tuner(self.setup, experiment.name, self.output / "ray"
                                     ).get_results()
            else:
                grid = self._fit(recorder, experiment, index, numbered)
                experiment.finished = True
                self._save_state("running")
            trials += trial_records(grid)
            numbered += experiment.num_samples
        return trials

    def _fit(self, recorder, experiment, index: int, numbered: int):
        """Run one Tune experiment to its end (restored if Tune saved its state); its ResultGrid.
        An extension (``index`` > 0) asks the same Optuna study with a sampler seeded
        ``seed + index`` (the first experiment's seed would replay its random draws) and with
        TPE's start-up trials counted over the whole budget; its MLflow runs are numbered on
        from ``numbered``."""
        from search.space import startup_trials
        from search.tracking.callback import MlflowTuneCallback
        from search.tune.optuna_study import open_study
        from search.tune.tuner import make_tuner, restore_tuner

        storage = self.output / "ray"
        callback = MlflowTuneCallback(recorder)
        callback.number_offset = numbered
        restoring = self.args.resume and (storage / experiment.name / "tuner.pkl").is_file()
        if self.optuna_storage:
            warm = self.warm_start if index == 0 else ([], "")
            open_study(self.optuna_storage, self.name, self.setup.run.method, *warm,
                       restoring=restoring)
        if restoring:
            tuner = restore_tuner(self.setup, experiment.name, storage)
        else:
            if self.args.resume and index == 0:
                log.warning("--resume: the killed driver saved no Tune state for %s (it died "
                            "before the first trial); starting its trials afresh", self.name)
            elif index:
                log.info("extending study %s to %d trials: experiment %s runs %d more",
                         self.name, self.num_samples, experiment.name, experiment.num_samples)
            params = param_space(self.space, self.setup)
            s = self.space.search
            tuner = make_tuner(self.setup, params, study_name=self.name, sampler=s.sampler,
                               seed=self.seed + index, scheduler=s.scheduler,
                               grace_period=s.grace_period,
                               reduction_factor=s.reduction_factor,
                               num_samples=experiment.num_samples,
                               max_concurrent_trials=self.max_concurrent, callbacks=[callback],
                               storage_path=storage,
                               n_startup_trials=(s.n_startup_trials if index == 0 else
                                                 startup_trials(s.n_startup_trials,
                                                                self.num_samples)),
                               multivariate=s.multivariate,
                               optuna_storage=self.optuna_storage or None,
                               experiment_name=experiment.name, study_budget=self.num_samples)
        from search.interrupt import tune_running
        with tune_running():            # a signal stops Tune gracefully, then raises Interrupted
            return tuner.fit()

    # --- after the study ----------------------------------------------------------------------
    def _summarise(self, zeroshot: dict[str, float], trials: list[TrialRecord], recorder,
                   parent: str) -> dict[str, Any]:
        from search.summary import chosen, trial_counts
        finished = [t for t in trials if t.finished]
        run = self.setup.run
        summary: dict[str, Any] = {
            "method": run.method, "study": self.name, "data": run.data,
            "model": run.model, "pretrained": run.pretrained, "trials": trial_counts(trials),
            "errors": {t.trial_id: t.error for t in trials if t.error},
            "metrics": {"zeroshot": zeroshot},
            "mlflow": {"tracking_uri": self.tracking_uri, "experiment": self.args.experiment,
                       "experiment_id": recorder.experiment_id, "parent_run_id": parent},
        }
        if self.optuna_storage:
            from search.tune.optuna_study import OBJECTIVE_NAME, shown
            summary["optuna"] = {"storage": shown(self.optuna_storage), "study_name": self.name,
                                 "objective": OBJECTIVE_NAME,
                                 "warm_start": self.warm_start[1] or None}
        best = None
        if finished:
            best, fields = chosen(finished)
            summary["metrics"].update(fields.pop("rows"))
            summary.update(fields)
            with timed(self.phases, "soups"):
                summary["soups"] = self._soups(finished, best)
        with timed(self.phases, "importances"):
            importances = self._importances(finished)
        summary["importances"] = importances
        importances = importances if isinstance(importances, dict) else {}
        if trials and not finished:     # every trial failed (or was stopped): the study failed
            first = next(iter(summary["errors"].values()), "no trial reported a final result")
            summary["error"] = (f"all {len(trials)} trials failed (first error: {first}); "
                                f"see {self.output / 'summary.json'} and the MLflow trial runs")
            recorder.fail(summary["error"])
            return summary
        with timed(self.phases, "MLflow (driver)"):
            recorder.finish(best=best, table=summary["metrics"], frontier=finished,
                            soups=summary.get("soups", {}), importances=importances)
        return summary

    def _export(self, summary: dict[str, Any], trials: list[TrialRecord], parent: str
                ) -> dict[str, Any]:
        """Write the chosen model (ID val only) to OUTPUT/model, log it on the parent run as an
        MLflow pyfunc model and register it (unless --no-register)."""
        from search.export import chosen_source, export_model
        from search.tracking.registry import log_model
        source = chosen_source(summary, trials)
        target = self.output / "model"
        info = export_model(self.setup.run, source, target, summary, code_version(),
                            chosen_by="the study, on ID validation accuracy only")
        register = (None if getattr(self.args, "no_register", False)
                    else getattr(self.args, "register_model", None) or self.name)
        logged = log_model(self.tracking_uri, parent, target, register, info)
        return {"path": str(target), "source": source.kind, "name": source.name,
                "alpha": source.alpha, M.ID_TEST: info["metrics"]["exported"].get(M.ID_TEST),
                **logged}

    def _soups(self, finished: list[TrialRecord], best: TrialRecord) -> dict[str, Any]:
        """The study's soups (:func:`search.summary.soups`); soups.top_k: 0 disables them."""
        from search.summary import soups
        top_k = self.space.soups.top_k if self.space else 3
        return soups(self.setup.run, finished, best, top_k) if top_k else {}

    def _importances(self, finished: list[TrialRecord]) -> dict[str, float] | str:
        """fANOVA importances of the searched parameters, from the study's Optuna study (its
        COMPLETE trials = ``finished``), or the reason there are none ("too few trials")."""
        from search.tune.optuna_study import importances
        if not self.optuna_storage:
            return {}
        return importances(self.optuna_storage, self.name, self.seed)

    def print_summary(self, summary: dict[str, Any], wall_s: float) -> None:
        from search.summary import print_summary
        print_summary(summary, wall_s, self.output, self.tracking_uri)
