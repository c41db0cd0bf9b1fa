"""The Tune wiring, in one place.

Each Tune trial runs :func:`run_trial`, a function trainable, as its plan says
(:func:`search.tune.plan.plan_trial`). A trial with a GPU or several workers (DDP), or any trial
with ``--trial-runner worker-group``, builds a ``TorchTrainer`` over
:func:`search.tune.trial.train_worker` and calls ``fit()`` (Ray 2.60's Train-in-Tune pattern):
``TuneReportCallback`` forwards the workers' reports (metrics + checkpoint path) to Tune. A
one-worker CPU trial runs the same worker function in the trial actor as a plain Tune function
trainable, reporting to Tune's session, and the actor is reused by the next trial (BENCHMARKS.md,
figure 2: 20-60 s less per trial here).
OptunaSearch (TPE or random, seeded, its named study persisted by :mod:`search.tune.optuna_study`)
proposes the configurations; ASHA prunes on the per-epoch ID-val objective, which the TuneConfig
names.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from search.space import startup_trials
from search.tune import console
from search.tune.console import progress_reporter
from search.tune.trial import OBJECTIVE, StudySetup, setup_dict, train_worker

log = logging.getLogger(__name__)


def run_trial(config: dict[str, Any], setup: StudySetup) -> None:
    """Tune function trainable: one trial. Planned in the actor, it runs :func:`train_worker`
    right here, in the (reused) trial actor, on the resources Tune reserved for it; otherwise one
    ``TorchTrainer.fit()`` per trial, its Train run named by the trial id."""
    trial_id = tune.get_context().get_trial_id()
    loop_config = {"params": dict(config), "setup": setup_dict(setup),
                   "run_name": f"train-{trial_id}"}   # deterministic: a restarted trial resumes
    plan = setup.plan
    if plan.in_actor:
        train_worker(loop_config)
        return

    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trainer = TorchTrainer(
        train_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=plan.num_workers, use_gpu=plan.use_gpu,
                                               resources_per_worker=plan.worker_resources),
        run_config=ray.train.RunConfig(
            name=loop_config["run_name"],
            storage_path=str(Path(setup.storage_path) / "train"),
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=setup.keep_checkpoints),
            # a crashed worker is restarted by Train, within this trial driver
            failure_config=ray.train.FailureConfig(max_failures=plan.train_max_failures)),
    )
    trainer.fit()


def make_searcher(sampler: str, seed: int, study_name: str, *, n_startup_trials: int = 10,
                  multivariate: bool = False, storage: str | None = None) -> OptunaSearch:
    """OptunaSearch over the study ``study_name`` (in the Optuna ``storage`` URL, else in
    memory) with a seeded TPE or random sampler (:mod:`search.tune.optuna_study`). Metric and mode
    come from the TuneConfig; the concurrency limit from ``max_concurrent_trials`` alone."""
    from search.tune.optuna_study import StudySearch, make_sampler
    return StudySearch(sampler=make_sampler(sampler, seed, n_startup_trials, multivariate),
                       study_name=study_name,
                       storage=optuna.storages.RDBStorage(storage) if storage else None)


def make_scheduler(name: str, grace_period: int, reduction_factor: float):
    """ASHA on the per-epoch ID-val objective (metric and mode from the TuneConfig), or FIFO."""
    if name == "asha":
        return ASHAScheduler(time_attr="training_iteration", grace_period=grace_period,
                             reduction_factor=reduction_factor)
    return FIFOScheduler()


def make_tuner(setup: StudySetup, param_space: dict[str, Any], *, study_name: str,
               sampler: str, seed: int, scheduler: str, grace_period: int,
               reduction_factor: float, num_samples: int, max_concurrent_trials: int,
               callbacks: list, storage_path: Path, n_startup_trials: int | None = None,
               multivariate: bool = False, optuna_storage: str | None = None,
               experiment_name: str | None = None, study_budget: int | None = None
               ) -> tune.Tuner:
    """A Tuner over :func:`run_trial`; results and trial checkpoints live under
    storage_path/experiment_name (default: the study's name; a study's extension is a further
    experiment, :mod:`search.experiments`), the Optuna study ``study_name`` in ``optuna_storage``
    (a URL; None: in memory). ``n_startup_trials``: TPE's random start-up trials (None:
    :func:`search.space.startup_trials` of num_samples). ``study_budget``: the whole study's
    trials when this experiment extends it (default ``num_samples``)."""
    setup = replace(setup, storage_path=str(storage_path))
    trainable = make_trainable(setup)
    plan = setup.plan
    n_startup_trials = startup_trials(n_startup_trials, num_samples)
    budget = study_budget or num_samples
    if sampler == "tpe" and param_space and budget <= n_startup_trials:
        log.warning("num_samples %d <= n_startup_trials %d: every TPE trial is random; raise "
                    "num_samples or lower search.n_startup_trials", budget, n_startup_trials)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            # every parameter fixed (e.g. --set lr=1e-4): nothing for Optuna to sample (it would
            # raise), so Tune's default generator repeats the one configuration num_samples times
            search_alg=(make_searcher(sampler, seed, study_name,
                                      n_startup_trials=n_startup_trials,
                                      multivariate=multivariate, storage=optuna_storage)
                        if param_space else None),
            scheduler=make_scheduler(scheduler, grace_period, reduction_factor),
            # named here, so ResultGrid.get_best_result() and the progress table know it
            metric=OBJECTIVE, mode="max",
            num_samples=num_samples, max_concurrent_trials=max_concurrent_trials,
            # Reusing the trial actor keeps torch and open_clip loaded from one trial to the
            # next. Safe only when training runs in the actor: ASHA's stop then ends the trial
            # inside its blocking tune.report(). With a worker group,
            # TorchTrainer.fit() is still shutting the group down when Tune resets the actor;
            # reset_config() times out (TUNE_FUNCTION_THREAD_TIMEOUT_S, 2 s) and Tune fails the
            # *next* trial ("Could not re-use actor"; BENCHMARKS.md figure 2).
            reuse_actors=plan.reuse_actors),
        run_config=tune.RunConfig(
            name=experiment_name or study_name, storage_path=str(storage_path),
            callbacks=callbacks,
            # Tune restarts a failed trial in both modes: in the trial actor, from the checkpoint
            # Tune holds; a worker group's driver (crashed, or its Train run out of retries)
            # starts the same-named Train run again, which resumes from Train's checkpoint. So a
            # trial that always fails runs up to (N + 1)^2 times with a group (search.tune.plan).
            failure_config=tune.FailureConfig(max_failures=plan.tune_max_failures,
                                              fail_fast=False),
            # Tune holds the checkpoints only of trials that train in the trial actor
            checkpoint_config=tune.CheckpointConfig(num_to_keep=setup.keep_checkpoints),
            # a status table every 30 s with the objective and ID val, no per-trial dumps
            progress_reporter=progress_reporter(param_space), verbose=console.VERBOSE),
    )


def restore_tuner(setup: StudySetup, study_name: str, storage_path: Path) -> tune.Tuner:
    """Re-open a killed study: finished trials are kept, unfinished ones restarted.

    Ray restores the Tuner's callbacks (the MLflow callback) from the pickled run config, so the
    recorder reattaches to the same parent run."""
    setup = replace(setup, storage_path=str(storage_path))
    console.use_legacy_output()     # the pickled run config holds the study's reporter
    return tune.Tuner.restore(str(storage_path / study_name), trainable=make_trainable(setup),
                              resume_unfinished=True, restart_errored=False)


def make_trainable(setup: StudySetup):
    """:func:`run_trial` with the study's setup and the trial actor's resources
    (``setup.plan.actor_resources``): the worker's CPUs/GPUs when training runs in the actor;
    else 1 CPU, the workers reserving theirs through Train."""
    return tune.with_resources(tune.with_parameters(run_trial, setup=setup),
                               setup.plan.actor_resources)
