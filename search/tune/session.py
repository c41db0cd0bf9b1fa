"""The trial worker's session under Ray: Tune's (a trial in its actor) or Train's (a worker group).

The only place :func:`search.tune.trial.run_worker` meets Ray, so the worker also runs without Ray
(``search.tune.trial.LocalSession``, used by ``python -m search.bench --only gpu``).
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import ray
import ray.train
import ray.train.torch
import ray.tune
from torch import nn
from torch.utils.data import DataLoader

from trainables.device import trial_device


class RaySession:
    """Reports and checkpoints go to Tune's session in the trial actor, which stores the
    checkpoints and hands the last one back on a restart; in a Train worker group, to Train's,
    whose ``prepare_model``/``prepare_data_loader`` add DDP and the data sharding.

    The device: in a worker group Ray Train picks it (``ray.train.torch.get_device``); in the
    trial actor, :func:`trainables.device.trial_device` from the GPU ids Ray assigned the actor
    (Ray sets ``CUDA_VISIBLE_DEVICES`` to them; a fractional GPU is one shared id)."""

    def __init__(self, in_actor: bool, gpus_per_worker: float):
        self.in_actor = in_actor
        self._session = ray.tune if in_actor else ray.train
        if in_actor:
            self.rank = 0
            assigned = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
            self.device = trial_device(gpus_per_worker, assigned,
                                       os.environ.get("CUDA_VISIBLE_DEVICES"))
        else:
            self.rank = ray.train.get_context().get_world_rank()
            self.device = ray.train.torch.get_device()

    @contextlib.contextmanager
    def checkpoint_dir(self) -> Iterator[str | None]:
        checkpoint = self._session.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as path:
            yield path

    def report(self, metrics: dict[str, float], checkpoint_dir: str | None = None) -> None:
        if checkpoint_dir is None:
            self._session.report(metrics)
        else:
            self._session.report(metrics,
                                 checkpoint=self._session.Checkpoint.from_directory(checkpoint_dir))

    def wrap_module(self, module: nn.Module) -> nn.Module:
        return module if self.in_actor else ray.train.torch.prepare_model(module)

    def prepare_loader(self, loader: DataLoader) -> DataLoader:
        return loader if self.in_actor else ray.train.torch.prepare_data_loader(loader)


__all__ = ["RaySession"]
