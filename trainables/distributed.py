"""Where this process stands among a trial's DDP workers, and the gathers that make a contrastive
term see the global batch.

:func:`world` is the one place that decides rank and world size: ``torch.distributed`` when a
process group is initialised (Ray Train's worker group, or any launcher), else rank 0 of 1.

Scaling (as open_clip's trainer): every rank gathers the image and text features of the whole
global batch WITH gradients (``gather_with_grad=True``) and computes the full global loss
(``local_loss=False``), so the loss value is the same on every rank. The backward of
``all_gather`` sums each rank's gradient into the owner of the features, so rank r's features get
N · ∂L/∂f_r; DDP then averages the N ranks' parameter gradients, which gives exactly ∂L/∂θ of the
one-process loss at the global batch (logit_scale's gradient is the same on every rank and averages
to itself). Per-sample terms (CE, CAR-FT's KL) need no gather: their per-rank batch means average
to the global mean.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from open_clip import ClipLoss
from open_clip.loss import gather_features

from .config import ConfigError


def world() -> tuple[int, int]:
    """(rank, world size) of this training process: torch.distributed's when initialised, else
    (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def per_worker_batch(global_batch: int, workers: int) -> int:
    """Each worker's share of the global ``batch_size``; ConfigError when it does not divide."""
    if global_batch % workers:
        raise ConfigError(f"batch_size {global_batch} is the global batch and must divide evenly "
                          f"among {workers} workers per trial: use a multiple of {workers}")
    return global_batch // workers


def clip_loss() -> ClipLoss:
    """open_clip's CLIP loss over the global batch of this process's world (plain one-process
    ``ClipLoss`` when the world is 1). cache_labels=False: batch sizes vary (last batch)."""
    rank, size = world()
    return ClipLoss(local_loss=False, gather_with_grad=True, cache_labels=False, rank=rank,
                    world_size=size)


def gather_pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two per-rank tensors (b, ...) concatenated over the ranks in rank order, (B, ...) each, with
    gradients (open_clip's ``gather_features``, as ``ClipLoss`` uses it); unchanged in one
    process. Every rank must pass the same local batch size."""
    rank, size = world()
    if size == 1:
        return a, b
    return gather_features(a, b, local_loss=False, gather_with_grad=True, rank=rank,
                           world_size=size)


def gather_labels(labels: torch.Tensor) -> torch.Tensor:
    """Per-rank labels (b,) -> the global batch's labels (B,) in rank order (no gradient: they
    only build the same-class masks); unchanged in one process."""
    rank, size = world()
    if size == 1:
        return labels
    parts = [torch.empty_like(labels) for _ in range(size)]
    dist.all_gather(parts, labels.contiguous())
    return torch.cat(parts)


def mean_over_workers(values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over the ranks (one all-reduce); unchanged in one process. Every rank
    must pass the same keys."""
    _, size = world()
    if size == 1 or not values:
        return dict(values)
    keys = sorted(values)
    backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    total = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=backend_device)
    dist.all_reduce(total)
    return {k: float(v) / size for k, v in zip(keys, total.tolist())}
