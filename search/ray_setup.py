"""Starting or joining Ray, and checking that a trial fits the cluster before anything runs."""
from __future__ import annotations

import os

import ray

from .trial import StudySetup


class ResourceError(ValueError):
    """A trial asks for more than the cluster has; the message names both and the fix."""


def init_ray(address: str | None, setup: StudySetup, max_concurrent: int) -> None:
    """Join ``address`` or start a local Ray whose logical CPUs cover every concurrent trial.

    On a small machine Tune's driver actor (1 CPU) plus the Train workers of each concurrent trial
    must all fit, or trials wait for resources forever (ENVIRONMENT.md); locally we therefore
    declare ``max_concurrent * (1 + workers * cpus_per_worker)`` logical CPUs when the machine has
    fewer. The dashboard binds to 127.0.0.1.
    """
    # Train V2 waits one health-check interval per report (2 s by default, ENVIRONMENT.md);
    # polling faster costs little on a local machine and cuts per-epoch overhead.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    env = {"env_vars": {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "ROBUST_SEARCH_CACHE",
                                                   "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S")
                        if k in os.environ}}
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=True)
    else:
        need = max_concurrent * (1 + setup.workers_per_trial * setup.cpus_per_worker)
        ray.init(num_cpus=int(max(os.cpu_count() or 1, need) + 0.999),
                 dashboard_host="127.0.0.1", runtime_env=env, log_to_driver=True,
                 include_dashboard=True)
    check_resources(setup)


def check_resources(setup: StudySetup) -> None:
    """Raise ResourceError if one trial's workers cannot fit the cluster."""
    total = ray.cluster_resources()
    cpus = setup.workers_per_trial * setup.cpus_per_worker + 1
    gpus = setup.workers_per_trial * setup.gpus_per_worker
    if cpus > total.get("CPU", 0):
        raise ResourceError(f"a trial needs {cpus:g} CPUs ({setup.workers_per_trial} workers x "
                            f"{setup.cpus_per_worker:g} + 1 for the trial driver) but the cluster "
                            f"has {total.get('CPU', 0):g}: lower --workers-per-trial or "
                            "--cpus-per-worker")
    if gpus > total.get("GPU", 0):
        raise ResourceError(f"a trial needs {gpus:g} GPUs but the cluster has "
                            f"{total.get('GPU', 0):g}: lower --gpus-per-worker or "
                            "--workers-per-trial")
