"""Where a trial trains and what it reserves: one pure function, no Ray import.

Two ways to run a trial's worker function (:func:`search.tune.trial.train_worker`):

- ``actor``: directly in Tune's trial actor, which the next trial reuses. For one-worker CPU
  trials this is measured and worth it: torch and open_clip are imported once per study, not
  once per trial (BENCHMARKS.md, figure 2: framework time per trial 55.9 s -> 10.9 s).
  (Train's own local mode, ``num_workers=0``, is no way round a worker group: inside a Tune
  trial Ray 2.60 refuses ``ray.train.report``/``get_context`` there.)
- ``worker-group``: the trial actor builds a Ray Train ``TorchTrainer`` worker group and calls
  ``fit()`` (Ray 2.60's Train-in-Tune pattern). Required for DDP (several workers), and the
  default for every trial that uses a GPU: Ray Train then owns the GPU placement, the
  process group and the per-worker device, and restarts crashed workers.

``auto`` (the default) picks ``actor`` only for a one-worker CPU trial. Both modes get Tune's
retries (``FailureConfig(max_failures)``); a worker group also gets Train's, so a crashed Train
worker is restarted by Train and a crashed trial driver (or a Train run that used up its own
retries) by Tune, which starts the Train run again under the same name: Train restores its
checkpoint manager from storage and the workers resume from the last checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass

RUNNERS = ("auto", "actor", "worker-group")


@dataclass(frozen=True)
class TrialPlan:
    """How one trial runs: ``runner`` is ``actor`` or ``worker-group``.

    ``actor_resources`` is what Tune reserves for the trial actor (Tune's resource names, lower
    case, zero entries left out); ``worker_resources`` what each Train worker reserves (empty for
    ``actor``); ``total`` the sum, in Ray's names (``CPU``, ``GPU``), used to check the cluster and
    to size a local Ray."""

    runner: str
    num_workers: int
    use_gpu: bool
    actor_resources: dict[str, float]
    worker_resources: dict[str, float]
    total: dict[str, float]
    reuse_actors: bool
    tune_max_failures: int
    train_max_failures: int

    @property
    def in_actor(self) -> bool:
        return self.runner == "actor"


def plan_trial(runner: str, workers: int, cpus_per_worker: float, gpus_per_worker: float,
               max_failures: int = 0) -> TrialPlan:
    """The plan of one trial from the study's settings (``runner`` one of :data:`RUNNERS`).

    ``auto``: a one-worker CPU trial trains in the (reused) trial actor; a trial with a GPU or
    several workers runs a Train worker group. A worker group's trial actor takes 1 CPU (Tune's
    default) beside its workers' CPUs and GPUs. Actors are reused only when training runs in
    them: with a worker group, ``fit()`` is still shutting the group down when Tune resets the
    actor, and Tune fails the next trial ("Could not re-use actor", BENCHMARKS.md figure 2)."""
    if runner not in RUNNERS:
        raise ValueError(f"trial runner {runner!r}: choose one of {', '.join(RUNNERS)}")
    if runner == "auto":
        runner = "actor" if workers == 1 and gpus_per_worker == 0 else "worker-group"
    if runner == "actor" and workers != 1:
        raise ValueError(f"--trial-runner actor runs one worker per trial, not {workers}: use "
                         "--trial-runner worker-group (or auto) for DDP trials")
    use_gpu = gpus_per_worker > 0
    worker = {"CPU": float(cpus_per_worker), "GPU": float(gpus_per_worker)}
    if runner == "actor":
        return TrialPlan("actor", 1, use_gpu, _tune_names(worker), {}, worker,
                         reuse_actors=True, tune_max_failures=max_failures, train_max_failures=0)
    total = {"CPU": workers * cpus_per_worker + 1.0, "GPU": workers * gpus_per_worker}
    return TrialPlan("worker-group", workers, use_gpu, {"cpu": 1.0},
                     {k: v for k, v in worker.items() if v}, total, reuse_actors=False,
                     tune_max_failures=max_failures, train_max_failures=max_failures)


def _tune_names(resources: dict[str, float]) -> dict[str, float]:
    """Ray's resource names as ``tune.with_resources`` spells them; zero entries left out."""
    return {k.lower(): v for k, v in resources.items() if v}
