"""A study: validated inputs, the Tune run, soups, importances, MLflow and summary.json.

:meth:`Study.from_args` checks everything that can be checked before training (method, space,
data, weights, tracking store, output state, cluster resources) and raises :class:`StudyError`
with a one-line message; nothing is written under ``--output`` until all checks pass.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from trainables import metrics as M
from trainables.spec import load_spec
from trainables.evaluate import Evaluator
from trainables.methods import get_method_class
from trainables.errors import InputError
from trainables.models import DEFAULT_MODEL, DEFAULT_PRETRAINED

from search.tune.trial import (FINAL, OBJECTIVE, RunParts, StudySetup, prepare, setup_dict,
                    wise_evaluation)

log = logging.getLogger(__name__)


class StudyError(InputError):
    """Bad input found before the study started; one line, naming the problem and the fix."""


class StudyFailed(RuntimeError):
    """Every trial of the study failed; summary.json is written and the MLflow parent is FAILED."""


#: A study name names OUTPUT/ray/<name>, the Optuna study and the MLflow parent run: a plain file
#: name (no separators, no leading dot, so it cannot escape --output); ``train`` is taken by
#: OUTPUT/ray/train (the Train runs' checkpoints).
_STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def check_study_name(name: str) -> None:
    """Raise StudyError unless ``name`` is a safe folder name under OUTPUT/ray."""
    if not _STUDY_NAME.fullmatch(name) or name == "train":
        raise StudyError(f"--study-name {name!r} is not allowed: use 1-100 letters, digits, '.', "
                         "'_' or '-', starting with a letter or digit, other than 'train' (it "
                         "names a folder under --output/ray), e.g. --study-name ft-lr-sweep")


def check_batch_split(space: Any, workers: int) -> None:
    """Raise StudyError unless every ``batch_size`` the space can give (the global batch) divides
    evenly among ``workers`` DDP workers per trial (``TrainConfig``'s default when not given)."""
    from trainables.config import ConfigError, TrainConfig
    from trainables.distributed import per_worker_batch

    if space is None or workers == 1:
        return
    d = space.params.get("batch_size")
    values = ([TrainConfig.batch_size] if d is None else [d.value] if d.kind == "constant"
              else list(d.choices) if d.kind == "choice" else range(int(d.low), int(d.high) + 1))
    for value in values:
        try:
            per_worker_batch(int(value), workers)
        except ConfigError as err:
            raise StudyError(f"{space.source}: {err} (--workers-per-trial {workers})") from None


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
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


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
    experiments: list[Any] = field(default_factory=list)   # search.experiments.Experiment

    # --- validation -------------------------------------------------------------------------
    @classmethod
    def from_args(cls, args: Any, overrides: dict[str, Any],
                  default_data: Callable[[], Path]) -> "Study":
        from search.space import load_space
        from search.tracking.recorder import ensure_tracking

        method_cls = get_method_class(args.method)
        space = None
        if args.space is not None:
            space = load_space(args.space, args.method, overrides or None)
        elif not method_cls.trains_nothing:
            raise StudyError(f"--space is required for method {args.method!r} "
                             "(e.g. --space spaces/car.yaml)")
        seed = args.seed if args.seed is not None else (space.search.seed if space else 0)
        num_samples = args.num_samples or (space.search.num_samples if space else 1)
        max_conc = args.max_concurrent_trials or (space.search.max_concurrent_trials
                                                  if space else 1)
        if num_samples < 1 or max_conc < 1 or args.workers_per_trial < 1:
            raise StudyError("--num-samples, --max-concurrent-trials and --workers-per-trial "
                             "must be >= 1")
        check_batch_split(space, args.workers_per_trial)
        output = args.output.expanduser().resolve()
        name = args.study_name or f"{args.method}-search"
        check_study_name(name)
        study_dir = output / "ray" / name
        if study_dir.exists() and not args.resume:
            raise StudyError(f"{output} already holds study {name!r}: pass --resume to "
                             "continue it, or choose another --output")
        # A driver killed before Tune saved its state leaves the study folder (its study.json)
        # but no tuner.pkl: --resume then starts the trials afresh (see _tune).
        if args.resume and not study_dir.exists():
            from search.resume import stored_studies
            held = stored_studies(output)
            raise StudyError(f"--resume: no study {name!r} under {output} to resume"
                             + (f" (it holds {', '.join(held)}: pass that study's --method and "
                                "--study-name)" if held else " (drop --resume to start one)"))
        from trainables.benchmarks import resolve_data   # a spec file, or a built-in name
        data = resolve_data(args.data) if args.data else default_data()
        load_spec(data)
        cpus = args.cpus_per_worker
        if cpus is None:   # locally, give the concurrent workers this machine's cores
            cpus = 1.0 if args.address else float(max(
                1, (os.cpu_count() or 1) // (max_conc * args.workers_per_trial)))
        base = {k: d.value for k, d in space.params.items() if d.kind == "constant"} if space else {}
        base.setdefault("seed", seed)
        setup = StudySetup(
            method=args.method, model=args.model or DEFAULT_MODEL,
            pretrained=(args.pretrained if args.pretrained is not None else
                        (DEFAULT_PRETRAINED if (args.model or DEFAULT_MODEL) == DEFAULT_MODEL
                         else None)),
            data=str(data), storage_path=str(output / "ray"),
            wise_strategy=space.wise.strategy if space else "grid",
            wise_grid=tuple(space.wise.grid) if space else tuple(i / 10 for i in range(11)),
            wise_evaluations=space.wise.evaluations if space else 6,
            workers_per_trial=args.workers_per_trial, gpus_per_worker=args.gpus_per_worker,
            cpus_per_worker=cpus, max_failures=args.max_failures,
            trial_runner=args.trial_runner,
            torch_threads=max(1, int(cpus)), base_params=base)
        try:
            setup.plan                          # e.g. --trial-runner actor with 2 workers
        except ValueError as err:
            raise StudyError(str(err)) from None
        from search.resume import check_resume, study_inputs
        from search.space import space_as_dict
        inputs = study_inputs(
            method=args.method, space=space_as_dict(space) if space else None,
            data=str(data), model=setup.model, pretrained=setup.pretrained,
            num_samples=num_samples, seed=seed, max_concurrent=max_conc,
            workers_per_trial=args.workers_per_trial, gpus_per_worker=args.gpus_per_worker,
            trial_runner=args.trial_runner, experiment=args.experiment)
        # differences are errors; a finished study raises NothingToDo; a larger budget extends
        stored = check_resume(output, name, inputs) if args.resume else None
        from search.experiments import plan
        experiments = plan(name, stored, num_samples)
        data = _with_anchors(setup, method_cls, output)
        setup = replace(setup, data=str(data))
        parts = prepare(setup, {}, "cpu")       # checks weights/architecture/data together
        tracking_uri = args.tracking_uri or f"sqlite:///{output / 'mlflow.db'}"
        if not tracking_uri.startswith("sqlite"):
            ensure_tracking(tracking_uri)       # reachable before any training
        optuna_storage, warm_start = _check_optuna(args, space, setup, name, output,
                                                   tracking_uri, num_samples)
        from search.tune.cluster import init_ray
        # raises ResourceError if a trial cannot fit, ClusterError for node-local storage or a
        # sqlite store on a multi-node cluster
        init_ray(args.address, setup, max_conc, tracking_uri=tracking_uri)
        return cls(args, setup, space, name, output, tracking_uri, num_samples, max_conc, seed,
                   parts, optuna_storage=optuna_storage, warm_start=warm_start, inputs=inputs,
                   experiments=experiments)

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
        parent = recorder.start(
            space_source_path=self.space.source if self.space else None,
            resolved_config=self.resolved_config(), data_spec_path=Path(self.setup.data),
            code_version=code_version(), resume=self.args.resume)
        try:
            zeroshot = self.parts.evaluator.evaluate(self.parts.model, method,
                                                     self.parts.evaluator.report_sets)
            recorder.log_pretrained(zeroshot)   # α = 0 of every trial's WiSE table
            trials: list[dict[str, Any]] = []
            if not method.trains_nothing:
                trials = self._tune(recorder)
            if len(self.experiments) > 1:   # extended: the study chooses again among all trials
                from search.experiments import clear_best_tags
                clear_best_tags(recorder.client, recorder.experiment_id, parent)
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
        from dataclasses import asdict
        from search.space import space_as_dict
        return {"setup": asdict(self.setup), "space": space_as_dict(self.space) if self.space
                else None, "num_samples": self.num_samples, "seed": self.seed,
                "max_concurrent_trials": self.max_concurrent, "study": self.name}

    def _save_state(self, status: str) -> None:
        """study.json: the inputs, ``status`` and the study's Tune experiments."""
        from search.resume import write_state
        write_state(self.output, self.name, self.inputs, status,
                    [e.as_dict() for e in self.experiments])

    def _tune(self, recorder) -> list[dict[str, Any]]:
        """Run (or, after a kill, continue) each of the study's Tune experiments in turn
        (:mod:`search.experiments`); the records of the trials of all of them. A finished
        experiment is only read back."""
        from search.tune.tuner import restore_tuner
        trials: list[dict[str, Any]] = []
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
        from search.tune.optuna_study import open_study
        from search.tracking.callback import MlflowTuneCallback
        from search.tune.tuner import make_tuner, restore_tuner

        storage = self.output / "ray"
        callback = MlflowTuneCallback(recorder)
        callback.number_offset = numbered
        restoring = self.args.resume and (storage / experiment.name / "tuner.pkl").is_file()
        if self.optuna_storage:
            warm = self.warm_start if index == 0 else ([], "")
            open_study(self.optuna_storage, self.name, self.setup.method, *warm,
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
            params = _param_space(self.space, self.setup)
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
    def _summarise(self, zeroshot: dict[str, float], trials: list[dict[str, Any]], recorder,
                   parent: str) -> dict[str, Any]:
        from search.selection import best_trial
        finished = [t for t in trials if t["metrics"].get(FINAL) == 1.0 and not t["error"]]
        summary: dict[str, Any] = {
            "method": self.setup.method, "study": self.name, "data": self.setup.data,
            "model": self.setup.model, "pretrained": self.setup.pretrained,
            "trials": {"total": len(trials), "finished": len(finished),
                       "failed": sum(1 for t in trials if t["error"]),
                       "stopped_early": sum(1 for t in trials if not t["error"]
                                            and t["metrics"].get(FINAL) != 1.0)},
            "errors": {t["trial_id"]: t["error"] for t in trials if t["error"]},
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
            best = finished[best_trial([t["metrics"] for t in finished], OBJECTIVE)]
            m = best["metrics"]
            summary.update(best_trial=best["trial_id"], best_params=best["config"],
                           selected_alpha=m["wise_alpha"])
            summary["metrics"]["finetuned"] = _strip(m, "ft/")
            summary["metrics"]["wise"] = _strip(m, "wise/")
            summary["soups"] = self._soups(finished, best)
        importances = self._importances(finished)
        summary["importances"] = importances
        importances = importances if isinstance(importances, dict) else {}
        if trials and not finished:     # every trial failed (or was stopped): the study failed
            first = next(iter(summary["errors"].values()), "no trial reported a final result")
            summary["error"] = (f"all {len(trials)} trials failed (first error: {first}); "
                                f"see {self.output / 'summary.json'} and the MLflow trial runs")
            recorder.fail(summary["error"])
            return summary
        recorder.finish(best=best, table=summary["metrics"], frontier_points=finished,
                        soups=summary.get("soups", {}), importances=importances)
        return summary

    def _export(self, summary: dict[str, Any], trials: list[dict[str, Any]], parent: str
                ) -> dict[str, Any]:
        """Write the chosen model (ID val only) to OUTPUT/model, log it on the parent run as an
        MLflow pyfunc model and register it (unless --no-register)."""
        from search.export import chosen_source, export_model
        from search.tracking.registry import log_model
        source = chosen_source(summary, trials)
        target = self.output / "model"
        info = export_model(self.setup, source, target, summary, code_version(),
                            chosen_by="the study, on ID validation accuracy only")
        register = (None if getattr(self.args, "no_register", False)
                    else getattr(self.args, "register_model", None) or self.name)
        logged = log_model(self.tracking_uri, parent, target, register, info)
        return {"path": str(target), "source": source.kind, "name": source.name,
                "alpha": source.alpha, M.ID_TEST: info["metrics"]["exported"].get(M.ID_TEST),
                **logged}

    def _soups(self, finished: list[dict[str, Any]], best: dict[str, Any]) -> dict[str, Any]:
        from search.soups import Ingredient, greedy_soup, uniform_soup
        if self.space is not None and self.space.soups.top_k == 0:
            return {}                                       # soups.top_k: 0 disables soups
        ingredients = [Ingredient(t["trial_id"], t["metrics"]["ft/" + M.ID_VAL],
                                  Path(t["checkpoint"])) for t in finished if t["checkpoint"]]
        if len(ingredients) < 2:
            return {}
        parts = prepare(self.setup, best["config"], "cpu")
        ev: Evaluator = parts.evaluator

        from search.progress import bar as progress_bar
        bar = progress_bar("greedy soup: ID val of each candidate soup", unit="soup")

        def id_val_of(state) -> float:
            parts.model.load_state_dict(state)
            bar.update()
            return ev.evaluate(parts.model, parts.method)[M.ID_VAL]

        top_k = self.space.soups.top_k if self.space else 3
        out = {}
        uni_ids, uni = uniform_soup(ingredients, top_k)
        greedy_ids, greedy, _ = greedy_soup(ingredients, id_val_of)
        bar.close()
        done: dict[frozenset[str], dict[str, float]] = {}   # same ingredients, same soup
        for name, ids, state in (("uniform", uni_ids, uni), ("greedy", greedy_ids, greedy)):
            key = frozenset(ids)
            if key not in done:
                log.info("%s soup of %d trial(s): WiSE selection on ID val, then the report sets",
                         name, len(ids))
                done[key] = wise_evaluation(parts, state, self.setup, label=f"{name} soup")
            result = done[key]
            out[name] = {"trials": ids, "selected_alpha": result["wise_alpha"],
                         "soup": _strip(result, "ft/"), "wise": _strip(result, "wise/"),
                         "curve": {k: v for k, v in result.items() if k.startswith("wise_curve/")}}
        return out

    def _importances(self, finished: list[dict[str, Any]]) -> dict[str, float] | str:
        """fANOVA importances of the searched parameters, from the study's Optuna study (its
        COMPLETE trials = ``finished``), or the reason there are none ("too few trials")."""
        from search.tune.optuna_study import importances
        if not self.optuna_storage:
            return {}
        return importances(self.optuna_storage, self.name, self.seed)

    def print_summary(self, summary: dict[str, Any], wall_s: float) -> None:
        from search.tracking.table import format_table
        rows = {"zero-shot": summary["metrics"]["zeroshot"]}
        if "finetuned" in summary["metrics"]:
            rows["fine-tuned (α=1)"] = summary["metrics"]["finetuned"]
            rows[f"WiSE (α={summary['selected_alpha']:.2f})"] = summary["metrics"]["wise"]
        soups = summary.get("soups") or {}
        for name, soup in soups.items():
            n = len(soup["trials"])
            rows[f"{name} soup ({n} trial{'s' if n != 1 else ''})"] = soup["soup"]
            rows[f"{name} soup + WiSE (α={soup['selected_alpha']:.2f})"] = soup["wise"]
        print()
        t = summary["trials"]
        print(f"Study {self.name}: method {self.setup.method}, {t['total']} trials "
              f"({t['finished']} finished, {t['stopped_early']} stopped early by the scheduler, "
              f"{t['failed']} failed) in {wall_s:.0f} s")
        for trial_id, error in (summary.get("errors") or {}).items():
            print(f"Failed trial {trial_id}: {error}")
        if "best_trial" in summary:
            from search.tracking.names import trial_run_name
            print(f"Best trial {summary['best_trial']} (selected on ID val): "
                  + trial_run_name(summary["best_trial"], summary["best_params"]).partition(" ")[2])
        print("Top-1 accuracy in % (ID test, each shift and their mean, zero-shot sets):")
        print(format_table(rows))
        same = [sorted(s["trials"]) for s in soups.values()]
        if len(same) == 2 and same[0] == same[1]:
            print(f"The {' and '.join(soups)} soups took the same {len(same[0])} trials "
                  "(the greedy soup kept every candidate): one model, the same numbers.")
        export = summary.get("export") or {}
        if export.get("path"):
            registered = (f", registered as {export['registered_model']} version "
                          f"{export['version']}" if export.get("registered_model") else "")
            print(f"\nModel: {export['path']} ({export['source']} {export['name']} at α = "
                  f"{export['alpha']:.2f}; MLflow {export['mlflow_model_uri']}{registered})")
        elif export.get("error"):
            print(f"\nModel export failed: {export['error']}")
        print(f"\nSummary: {self.output / 'summary.json'}")
        uri = self.tracking_uri
        print(f"MLflow: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
              if uri.startswith("sqlite") else f"MLflow: open {uri}")
        if "optuna" in summary:
            optuna_info = summary["optuna"]
            importances = summary.get("importances")
            print(f"Optuna: optuna-dashboard {optuna_info['storage']} (study "
                  f"{optuna_info['study_name']}); importances: "
                  + (", ".join(f"{k} {v:.2f}" for k, v in importances.items())
                     if isinstance(importances, dict) else str(importances)))


def _param_space(space, setup: StudySetup) -> dict[str, Any]:
    """The Tune search space of the parameters the sampler chooses (constants excluded)."""
    from search.space import tune_param_space
    return {k: v for k, v in tune_param_space(space).items() if k not in setup.base_params}


def _check_optuna(args: Any, space, setup: StudySetup, name: str, output: Path,
                  tracking_uri: str, num_samples: int
                  ) -> tuple[str, tuple[list[dict[str, Any]], str]]:
    """(Optuna storage URL or "" when nothing is searched, (warm-start configurations, their
    source)), checked before anything is written (search/tune/optuna_study.py)."""
    from search.tune.optuna_study import (check_storage, default_storage, optuna_distributions,
                               warm_start_points)
    from search.space import startup_trials
    searched = _param_space(space, setup) if space is not None else {}
    warm = getattr(args, "warm_start", None)
    if not searched:
        if warm:
            raise StudyError("--warm-start needs a search space with searched parameters")
        return "", ([], "")
    url = getattr(args, "optuna_storage", None) or default_storage(output)
    check_storage(url, tracking_uri, name, args.resume)
    if not warm:
        return url, ([], "")
    count = min(num_samples, startup_trials(space.search.n_startup_trials, num_samples))
    return url, warm_start_points(warm, getattr(args, "warm_start_study", None), setup.method,
                                  optuna_distributions(searched), count)


def trial_records(grid) -> list[dict[str, Any]]:
    """One dict per trial of a Tune ``ResultGrid``: trial_id, config, metrics (its last result),
    error (the last line, or None) and checkpoint (the folder of its last checkpoint, or None)."""
    trials = []
    for result in grid:
        metrics = dict(result.metrics or {})
        trials.append({"trial_id": metrics.get("trial_id", Path(result.path).name),
                       "config": dict(result.config or {}), "metrics": metrics,
                       "error": None if result.error is None else
                       str(result.error).strip().splitlines()[-1][:500],
                       # a worker group's checkpoint lives in Train's storage (its path
                       # is a metric); a trial-actor run's in Tune's trial folder
                       "checkpoint": metrics.get("checkpoint_path") or (
                           result.checkpoint.path if result.checkpoint else None)})
    return trials


def _strip(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {k[len(prefix):]: v for k, v in metrics.items()
            if k.startswith(prefix) and isinstance(v, (int, float)) and math.isfinite(v)}


def _with_anchors(setup: StudySetup, method_cls, output: Path | None = None) -> Path:
    """The data spec, extended with retrieved anchors when the method needs them (ARF)."""
    spec = load_spec(setup.data)
    if "retrieved" in method_cls.anchor_sets and "retrieved" not in spec.anchors:
        from search.anchors.build import ensure_retrieved
        return ensure_retrieved(Path(setup.data), setup.model, setup.pretrained)
    return Path(setup.data)

