"""A study's inputs, checked before anything is written or Ray starts: the command line, the
space, the data, the weights, the tracking and Optuna stores, the output folder's state. Every
failure is one line (:class:`StudyError`, or another :class:`trainables.errors.InputError`).
"""
from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from search.runspec import RunSpec
from search.tune.trial import StudySetup, prepare
from trainables.errors import InputError
from trainables.methods import get_method_class
from trainables.models import DEFAULT_MODEL, default_pretrained
from trainables.spec import load_spec


class StudyError(InputError):
    """Bad input found before the study started; one line, naming the problem and the fix."""


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


def check_study_dir(output: Path, name: str, resume: bool) -> None:
    """Raise StudyError if ``output`` holds study ``name`` and ``resume`` is off, or does not
    hold it and ``resume`` is on."""
    study_dir = output / "ray" / name
    if study_dir.exists() and not resume:
        raise StudyError(f"{output} already holds study {name!r}: pass --resume to "
                         "continue it, or choose another --output")
    # A driver killed before Tune saved its state leaves the study folder (its study.json)
    # but no tuner.pkl: --resume then starts the trials afresh (see _tune).
    if resume and not study_dir.exists():
        from search.resume import stored_studies
        held = stored_studies(output)
        raise StudyError(f"--resume: no study {name!r} under {output} to resume"
                         + (f" (it holds {', '.join(held)}: pass that study's --method and "
                            "--study-name)" if held else " (drop --resume to start one)"))


def study_setup(args: Any, space: Any, data: Path, seed: int, max_concurrent: int, output: Path
                ) -> StudySetup:
    """The study's run (method, model, data, WiSE settings, the space's constants) and how Ray
    runs its trials; StudyError if no trial plan fits the options (e.g. ``--trial-runner actor``
    with 2 workers)."""
    cpus = args.cpus_per_worker
    if cpus is None:   # locally, give the concurrent workers this machine's cores
        cpus = 1.0 if args.address else float(max(
            1, (os.cpu_count() or 1) // (max_concurrent * args.workers_per_trial)))
    base = {k: d.value for k, d in space.params.items() if d.kind == "constant"} if space else {}
    base.setdefault("seed", seed)
    model = args.model or DEFAULT_MODEL
    run = RunSpec(
        method=args.method, model=model,
        pretrained=default_pretrained(model, args.pretrained),
        data=str(data), base_params=base,
        **({"wise_strategy": space.wise.strategy, "wise_grid": tuple(space.wise.grid),
            "wise_evaluations": space.wise.evaluations} if space else {}))
    setup = StudySetup(run, storage_path=str(output / "ray"),
                       workers_per_trial=args.workers_per_trial,
                       gpus_per_worker=args.gpus_per_worker, cpus_per_worker=cpus,
                       max_failures=args.max_failures, trial_runner=args.trial_runner,
                       torch_threads=max(1, int(cpus)))
    try:
        _ = setup.plan                  # e.g. --trial-runner actor with 2 workers
    except ValueError as err:
        raise StudyError(str(err)) from None
    return setup


def validate(args: Any, overrides: dict[str, Any], default_data: Callable[[], Path]
             ) -> dict[str, Any]:
    """Check everything that can be checked before Ray starts (method, space, data, weights,
    tracking store, output state, the Optuna storage) and build the driver's model and data;
    returns the fields of a :class:`search.study.Study`. Raises StudyError (or another
    InputError); writes nothing."""
    from search.anchors.build import with_anchors
    from search.resume import check_resume, study_inputs
    from search.space import load_space, space_as_dict
    from search.tracking.recorder import ensure_tracking

    space = None
    if args.space is not None:
        space = load_space(args.space, args.method, overrides or None)
    elif not get_method_class(args.method).trains_nothing:
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
    check_study_dir(output, name, args.resume)
    from trainables.benchmarks import resolve_data  # a spec file, or a built-in name
    data = resolve_data(args.data) if args.data else default_data()
    load_spec(data)
    setup = study_setup(args, space, data, seed, max_conc, output)
    inputs = study_inputs(
        method=args.method, space=space_as_dict(space) if space else None,
        data=str(data), model=setup.run.model, pretrained=setup.run.pretrained,
        num_samples=num_samples, seed=seed, max_concurrent=max_conc,
        workers_per_trial=args.workers_per_trial, gpus_per_worker=args.gpus_per_worker,
        trial_runner=args.trial_runner, experiment=args.experiment)
    # differences are errors; a finished study raises NothingToDo; a larger budget extends
    stored = check_resume(output, name, inputs) if args.resume else None
    from search.experiments import plan
    experiments = plan(name, stored, num_samples)
    setup = replace(setup, run=with_anchors(setup.run))
    parts = prepare(setup.run, {}, "cpu")   # checks weights/architecture/data together
    tracking_uri = args.tracking_uri or f"sqlite:///{output / 'mlflow.db'}"
    if not tracking_uri.startswith("sqlite"):
        ensure_tracking(tracking_uri)       # reachable before any training
    optuna_storage, warm_start = check_optuna(args, space, setup, name, output,
                                               tracking_uri, num_samples)
    return dict(args=args, setup=setup, space=space, name=name, output=output,
                tracking_uri=tracking_uri, num_samples=num_samples,
                max_concurrent=max_conc, seed=seed, parts=parts,
                optuna_storage=optuna_storage, warm_start=warm_start, inputs=inputs,
                experiments=experiments)


def param_space(space, setup: StudySetup) -> dict[str, Any]:
    """The Tune search space of the parameters the sampler chooses (constants excluded)."""
    from search.space import tune_param_space
    return {k: v for k, v in tune_param_space(space).items() if k not in setup.run.base_params}


def check_optuna(args: Any, space, setup: StudySetup, name: str, output: Path,
                 tracking_uri: str, num_samples: int
                 ) -> tuple[str, tuple[list[dict[str, Any]], str]]:
    """(Optuna storage URL or "" when nothing is searched, (warm-start configurations, their
    source)), checked before anything is written (search/tune/optuna_study.py)."""
    from search.space import startup_trials
    from search.tune.optuna_study import (
        check_storage,
        default_storage,
        optuna_distributions,
        warm_start_points,
    )
    searched = param_space(space, setup) if space is not None else {}
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
    return url, warm_start_points(warm, getattr(args, "warm_start_study", None), setup.run.method,
                                  optuna_distributions(searched), count)
