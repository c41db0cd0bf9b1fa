"""Starting or joining Ray, and checking that a trial fits the cluster before anything runs.

On a multi-node cluster every node must see the study's storage (Ray Train checkpoints, Tune
state) and the MLflow store must be a server: :func:`check_cluster` verifies the first by
writing a marker file and looking for it from every node, and refuses a sqlite tracking URI.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable

import ray

from search.tune.trial import StudySetup
from trainables.errors import InputError


class ResourceError(InputError):
    """A trial asks for more than the cluster has; the message names both and the fix."""


class ClusterError(InputError):
    """The storage or tracking store cannot serve a multi-node cluster; names the fix."""


def init_ray(address: str | None, setup: StudySetup, max_concurrent: int,
             tracking_uri: str | None = None) -> None:
    """Join ``address`` or start a local Ray whose logical CPUs cover every concurrent trial.

    On a small machine every concurrent trial's reservation (``StudySetup.trial_resources``: the
    worker's CPUs for a one-worker trial, else Tune's trial actor (1 CPU) plus the Train workers)
    must fit, or trials wait for resources forever (docs/environment.md#ray-260); locally we
    therefore declare ``max_concurrent`` times that many logical CPUs when the machine has fewer.
    The dashboard binds to 127.0.0.1. The environment variables the data spec reads
    (``${IMAGENET_ROOT}``, …) travel to every worker in the runtime environment. After joining,
    :func:`check_cluster` refuses node-local storage and a sqlite ``tracking_uri`` when the
    cluster has more than one node.
    """
    from trainables.benchmarks import required_env
    # Train V2 waits one health-check interval per report (2 s by default,
    # docs/environment.md#ray-260); polling faster costs little on a local machine and cuts
    # per-epoch overhead.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    env = {"env_vars": {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "ROBUST_SEARCH_CACHE",
                                                   "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S",
                                                   "ROBUST_SEARCH_VERBOSE")
                        if k in os.environ}}
    env["env_vars"].update(required_env(setup.run.data))
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=True)
    else:
        check_machine(setup)            # a local Ray can only be as big as this machine
        need = max_concurrent * setup.trial_resources["CPU"]
        # address="local": always a new instance; a bare ray.init() would join whatever cluster
        # /tmp/ray/ray_current_cluster names (another user's `ray start`).
        ray.init(address="local", num_cpus=int(max(os.cpu_count() or 1, need) + 0.999),
                 dashboard_host="127.0.0.1", runtime_env=env, log_to_driver=True,
                 include_dashboard=True)
    check_resources(setup)
    check_cluster(setup.storage_path, tracking_uri)


def alive_nodes() -> list[dict]:
    """The cluster's alive nodes (``ray.nodes()`` entries)."""
    return [n for n in ray.nodes() if n.get("Alive")]


def nodes_see(path: Path, nodes: list[dict]) -> list[bool]:
    """Whether ``path`` exists as seen from each node (a zero-CPU task pinned to each node)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    def exists(p: str) -> bool:          # nested: pickled by value, nothing to import remotely
        import os
        return os.path.exists(p)

    task = ray.remote(num_cpus=0)(exists)
    refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        n["NodeID"], soft=False)).remote(str(path)) for n in nodes]
    return ray.get(refs, timeout=120)


def check_cluster(storage_path: str, tracking_uri: str | None,
                  nodes: list[dict] | None = None,
                  visible: Callable[[Path, list[dict]], list[bool]] = nodes_see) -> None:
    """On more than one node, raise ClusterError for a sqlite MLflow store or a storage path
    that some node cannot see (node-local); one node (or a ``scheme://`` URI) passes."""
    nodes = alive_nodes() if nodes is None else nodes
    if len(nodes) <= 1:
        return
    if tracking_uri is not None and tracking_uri.startswith("sqlite"):
        raise ClusterError(f"the Ray cluster has {len(nodes)} nodes but the MLflow store is "
                           f"{tracking_uri}: run an MLflow server (mlflow server --backend-store-"
                           "uri ... --host HOST --port P) and pass --tracking-uri http://HOST:P, "
                           "with --output on storage every node mounts")
    if "://" in storage_path:           # s3://, gs://, …: Ray's own shared storage
        return
    anchor = Path(storage_path)
    while not anchor.exists() and anchor != anchor.parent:
        anchor = anchor.parent          # nothing is created under --output before validation
    marker = anchor / f".shared-storage-check-{uuid.uuid4().hex}"
    try:
        marker.touch()
    except OSError as err:
        raise ClusterError(f"cannot write under {anchor} to check that every node sees it "
                           f"({err.strerror}): choose an --output on writable shared storage"
                           ) from None
    try:
        seen = visible(marker, nodes)
    finally:
        marker.unlink(missing_ok=True)
    blind = [n.get("NodeManagerAddress", n.get("NodeID", "?")) for n, ok in zip(nodes, seen)
             if not ok]
    if blind:
        raise ClusterError(f"--output {Path(storage_path).parent} is node-local: node(s) "
                           f"{', '.join(blind)} of the {len(nodes)}-node cluster cannot see it; "
                           "put --output on storage every node mounts (NFS, Lustre, …) and use "
                           "an MLflow server (--tracking-uri http://HOST:PORT)")


def stop_ray() -> None:
    """Shut down the Ray this process started or joined; nothing when there is none."""
    if ray.is_initialized():
        ray.shutdown()


def check_machine(setup: StudySetup) -> None:
    """Raise ResourceError, before a local Ray starts, if one trial needs more Train workers than
    this machine has cores or more GPUs than it has CUDA devices (the local Ray declares enough
    logical CPUs for any request, so :func:`check_resources` alone would let 64 workers start)."""
    import torch
    cores, gpus = os.cpu_count() or 1, torch.cuda.device_count()
    need_gpus = setup.workers_per_trial * setup.gpus_per_worker
    if setup.workers_per_trial > cores:
        raise ResourceError(f"a trial needs {setup.workers_per_trial} Train workers but this "
                            f"machine has {cores} CPU cores: lower --workers-per-trial to at most "
                            f"{cores}, or join a larger Ray cluster with --address")
    if need_gpus > gpus:
        raise ResourceError(f"a trial needs {need_gpus:g} GPUs ({setup.workers_per_trial} "
                            f"workers x {setup.gpus_per_worker:g}) but this machine has {gpus}: "
                            "lower --gpus-per-worker (0 trains on CPU) or --workers-per-trial, or "
                            "join a cluster with GPUs via --address")


def check_resources(setup: StudySetup) -> None:
    """Raise ResourceError if one trial's workers cannot fit the cluster."""
    if 0 < setup.gpus_per_worker < 1 and setup.workers_per_trial > 1:
        raise ResourceError(f"--gpus-per-worker {setup.gpus_per_worker:g} with "
                            f"--workers-per-trial {setup.workers_per_trial}: DDP ranks of one "
                            "trial need a GPU each (NCCL refuses two on one device); fractional "
                            "GPUs pack one-worker trials, so use --workers-per-trial 1")
    total = ray.cluster_resources()
    cpus, gpus = setup.trial_resources["CPU"], setup.trial_resources["GPU"]
    driver = "" if setup.in_trial_process else " + 1 for the trial driver"
    if cpus > total.get("CPU", 0):
        raise ResourceError(f"a trial needs {cpus:g} CPUs ({setup.workers_per_trial} workers x "
                            f"{setup.cpus_per_worker:g}{driver}) but the cluster "
                            f"has {total.get('CPU', 0):g}: lower --workers-per-trial or "
                            "--cpus-per-worker")
    if gpus > total.get("GPU", 0):
        raise ResourceError(f"a trial needs {gpus:g} GPUs but the cluster has "
                            f"{total.get('GPU', 0):g}: lower --gpus-per-worker or "
                            "--workers-per-trial")
