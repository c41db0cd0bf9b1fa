"""The Tune wiring, in one place (Ray 2.60's supported Train-in-Tune pattern).

Each Tune trial runs :func:`run_trial`, a function trainable that builds a ``TorchTrainer`` over
:func:`search.trial.train_worker` and calls ``fit()``; ``TuneReportCallback`` forwards the workers'
reports (metrics + checkpoint path) to Tune. OptunaSearch (TPE or random, seeded, named study)
proposes the configurations; ASHA prunes on the per-epoch ID-val objective.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from .trial import OBJECTIVE, StudySetup, setup_dict, train_worker


def run_trial(config: dict[str, Any], setup: StudySetup) -> None:
    """Tune function trainable: one ``TorchTrainer.fit()`` per trial, named by the trial id."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    use_gpu = setup.gpus_per_worker > 0
    resources = {"CPU": setup.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = setup.gpus_per_worker
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"params": dict(config), "setup": setup_dict(setup)},
        scaling_config=ray.train.ScalingConfig(num_workers=setup.workers_per_trial,
                                               use_gpu=use_gpu, resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=f"train-{trial_id}",          # deterministic: a restarted trial resumes
            storage_path=str(Path(setup.storage_path) / "train"),
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=setup.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=setup.max_failures)),
    )
    trainer.fit()


def make_searcher(sampler: str, seed: int, study_name: str, max_concurrent: int
                  ) -> ConcurrencyLimiter:
    """OptunaSearch with a seeded TPE or random sampler, limited to ``max_concurrent`` trials."""
    samplers = {"tpe": lambda: optuna.samplers.TPESampler(seed=seed),
                "random": lambda: optuna.samplers.RandomSampler(seed=seed)}
    searcher = OptunaSearch(metric=OBJECTIVE, mode="max", sampler=samplers[sampler](),
                            study_name=study_name)
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)


def make_scheduler(name: str, grace_period: int, reduction_factor: float):
    """ASHA on the per-epoch ID-val objective, or FIFO (no early stopping)."""
    if name == "asha":
        return ASHAScheduler(metric=OBJECTIVE, mode="max", time_attr="training_iteration",
                             grace_period=grace_period, reduction_factor=reduction_factor)
    return FIFOScheduler()


def make_tuner(setup: StudySetup, param_space: dict[str, Any], *, study_name: str,
               sampler: str, seed: int, scheduler: str, grace_period: int,
               reduction_factor: float, num_samples: int, max_concurrent_trials: int,
               callbacks: list, storage_path: Path) -> tune.Tuner:
    """A Tuner over :func:`run_trial`; results and trial checkpoints live under storage_path."""
    setup = replace(setup, storage_path=str(storage_path))
    trainable = tune.with_parameters(run_trial, setup=setup)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            # every parameter fixed (e.g. --set lr=1e-4): nothing for Optuna to sample (it would
            # raise), so Tune's default generator repeats the one configuration num_samples times
            search_alg=(make_searcher(sampler, seed, study_name, max_concurrent_trials)
                        if param_space else None),
            scheduler=make_scheduler(scheduler, grace_period, reduction_factor),
            num_samples=num_samples, max_concurrent_trials=max_concurrent_trials,
            # reuse_actors stays off (Tune's default for function trainables): when ASHA stops a
            # trial, its TorchTrainer.fit() is still shutting down its worker group when Tune
            # resets the actor for the next trial; reset_config() then times out
            # (TUNE_FUNCTION_THREAD_TIMEOUT_S, 2 s) and Tune fails the *next* trial ("Could not
            # re-use actor"). Seen on the embedded default, 2026-11-23; BENCHMARKS.md, figure 2.
            reuse_actors=False),
        run_config=tune.RunConfig(
            name=study_name, storage_path=str(storage_path), callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=1),
    )


def restore_tuner(setup: StudySetup, study_name: str, storage_path: Path) -> tune.Tuner:
    """Re-open a killed study: finished trials are kept, unfinished ones restarted.

    Ray restores the Tuner's callbacks (the MLflow callback) from the pickled run config, so the
    recorder reattaches to the same parent run."""
    setup = replace(setup, storage_path=str(storage_path))
    trainable = tune.with_parameters(run_trial, setup=setup)
    return tune.Tuner.restore(str(storage_path / study_name), trainable=trainable,
                              resume_unfinished=True, restart_errored=False)
