"""The accelerator a worker trains on, and the per-device settings of the one loop.

No Ray import here: the caller passes what Ray assigned (``ray.get_runtime_context()
.get_accelerator_ids()["GPU"]``), so the same function serves a reused Tune trial actor, a
plain process (``search.bench.gpu``) and the tests.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch


def trial_device(gpus: float, assigned: Sequence[str | int] = (),
                 visible: str | None = None, local_rank: int = 0) -> torch.device:
    """The torch device of a worker that reserved ``gpus`` GPUs (0: CPU).

    ``assigned``: the GPU ids Ray gave this process (physical ids; a fractional GPU is one id,
    shared with other trials). ``visible``: ``$CUDA_VISIBLE_DEVICES``. Ray normally sets it to the
    assigned ids, so the first assigned GPU is ``cuda:<its position in the visible list>``
    (``cuda:0`` for one GPU); where every device is visible (unset, or Ray told not to set it)
    the physical id is the index. Without Ray (``assigned`` empty) it is ``cuda:<local_rank>``:
    one process per GPU, as ``torchrun`` starts them. A reused trial actor keeps the GPU it was
    given, so calling this again for the next trial returns the same device."""
    if gpus <= 0:
        return torch.device("cpu")
    if not assigned:
        return torch.device("cuda", local_rank)
    first = str(assigned[0]).strip()
    ids = [v.strip() for v in visible.split(",")] if visible else []
    if ids:
        if first not in ids:
            raise RuntimeError(f"GPU {first} was assigned but CUDA_VISIBLE_DEVICES={visible!r} "
                               "hides it")
        return torch.device("cuda", ids.index(first))
    return torch.device("cuda", int(first))


def configure_cuda(device: torch.device) -> None:
    """On CUDA, let float32 matmuls and convolutions use TF32 tensor cores: bf16 autocast
    covers the training step, this speeds up what stays in fp32 (evaluation, feature caching).
    Nothing changes on CPU."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True


def loader_workers(requested: int, cpus: float, device: torch.device) -> int:
    """DataLoader worker processes per training process. ``requested`` >= 0 is used as given;
    -1 (auto) is 0 on CPU (the cores are torch's threads, and results stay those of one
    process) and on CUDA every reserved CPU but the one driving the GPU (at least 1), so JPEG
    decoding and augmentation overlap the GPU step."""
    if requested >= 0:
        return requested
    if device.type != "cuda":
        return 0
    return max(1, int(math.floor(cpus)) - 1)


def prefetch_factor(workers: int, in_flight: int = 4) -> int | None:
    """Batches each DataLoader worker prepares ahead, so that about ``in_flight`` batches are
    queued whatever the number of workers (torch's default is 2 per worker); None without
    workers (DataLoader refuses it then)."""
    if workers <= 0:
        return None
    return max(2, math.ceil(in_flight / workers))
