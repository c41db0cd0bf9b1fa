"""Subsets of splits: the held-out ID val, seeded k-shot sampling and the base-to-new split.

k-shot (CoOp): from each class draw ``k`` images without replacement (all of them when a class has
fewer), with a generator seeded by ``seed`` so a study's trials share one subset and another seed
gives another subset. ID val takes ``min(k, 4)`` images per class (CoOp's choice).

Base-to-new (CoCoOp, used by CLIP-CITE): the first ``ceil(K / 2)`` classes in label order are the
*base* classes, trained on and tested as ID test (B); the other classes are the *new* classes,
evaluated zero-shot on their own test images (N); HM = 2BN / (B + N).

Training draws that do not depend on how the batch is split among DDP workers, nor on whether the
run was resumed: :class:`GlobalBatchSampler` orders epoch e by a permutation seeded by (seed, e)
and hands each worker its slice of every global batch; :class:`PerSampleDraws` gives each sample
a draw (FLYP's template) that is a function of (seed, epoch, sample index) only.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterator, Sequence, TypeVar

import numpy as np
import torch
from torch.utils.data import Sampler

T = TypeVar("T")

#: the zero-shot set that holds the new classes' test images in base-to-new runs
NEW_SET = "new"


def val_shots(shots: int) -> int:
    """Images per class kept in ID val for a ``shots``-shot run (CoOp: at most 4)."""
    return min(shots, 4)


def sample_shots(samples: Sequence[tuple[str, int]], shots: int, seed: int
                 ) -> list[tuple[str, int]]:
    """At most ``shots`` samples per class, drawn with a generator seeded by ``seed``; the result
    keeps the input order, so it is identical for the same (samples, shots, seed)."""
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, (_, label) in enumerate(samples):
        by_class[label].append(i)
    gen = torch.Generator().manual_seed(seed)
    keep: list[int] = []
    for label in sorted(by_class):
        idx = by_class[label]
        order = torch.randperm(len(idx), generator=gen).tolist()
        keep.extend(idx[j] for j in order[:shots])
    return [samples[i] for i in sorted(keep)]


def base_count(num_classes: int) -> int:
    """How many classes are base classes: ``ceil(K / 2)`` (CoCoOp)."""
    return math.ceil(num_classes / 2)


def split_base_new(classes: Sequence[T]) -> tuple[tuple[T, ...], tuple[T, ...]]:
    """(base classes, new classes): the first ``ceil(K / 2)`` and the rest, in label order."""
    m = base_count(len(classes))
    return tuple(classes[:m]), tuple(classes[m:])


def only_base(samples: Sequence[tuple[str, int]], num_base: int) -> list[tuple[str, int]]:
    """The samples of base classes (labels ``< num_base``), labels unchanged."""
    return [s for s in samples if s[1] < num_base]


def only_new(samples: Sequence[tuple[str, int]], num_base: int) -> list[tuple[str, int]]:
    """The samples of new classes, relabelled from 0 (label ``- num_base``)."""
    return [(p, y - num_base) for p, y in samples if y >= num_base]


def hold_out(samples: list[tuple[str, int]], fraction: float, seed: int
             ) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Deterministically split samples into (train, val) with ``fraction`` held out as val."""
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, round(fraction * len(samples)))
    val = sorted(order[:n_val])
    keep = sorted(order[n_val:])
    return [samples[i] for i in keep], [samples[i] for i in val]


# --- training draws independent of the worker count ----------------------------------------
#: independent random streams of one trial seed (the key after the seed in :func:`derived_seed`);
#: anchor set i (in the method's ``anchor_sets`` order) uses ``ANCHOR_STREAM + i``
TASK_STREAM, TEMPLATE_STREAM, ANCHOR_STREAM = 0, 1, 2


def derived_seed(*keys: int) -> int:
    """A 64-bit generator seed from integer keys (numpy's ``SeedSequence`` hash: well mixed, no
    collisions between e.g. (seed, epoch) = (1, 0) and (0, 1000))."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0])


class GlobalBatchSampler(Sampler[list[int]]):
    """This worker's share of every global batch; the batches are a function of (seed, epoch).

    Epoch e (:meth:`set_epoch`) orders the ``n`` samples by a permutation from a generator seeded
    by (seed, stream, e) (in order when not ``shuffle``) and cuts it into global batches of
    ``batch_size``: the full ones, or one batch of all ``n`` when ``n <= batch_size``; a given
    ``num_batches`` may exceed one pass (small anchor sets), the next pass continuing with the
    next permutation of the same generator. Rank r of N yields the r-th contiguous slice of
    ``batch_size / N`` indices of each global batch (the one batch of a set smaller than
    ``batch_size`` is trimmed to a multiple of N), so the union of the N workers' step-t batches
    is the one-worker step-t batch and a resumed run draws what an uninterrupted one does.
    """

    def __init__(self, n: int, batch_size: int, seed: int, *, stream: int = TASK_STREAM,
                 shuffle: bool = True, num_batches: int | None = None, rank: int = 0,
                 world_size: int = 1):
        from .distributed import per_worker_batch

        per_worker_batch(batch_size, world_size)          # ConfigError unless it divides
        self.n, self.seed, self.stream, self.shuffle = n, seed, stream, shuffle
        self.rank, self.world_size = rank, world_size
        self.batch_size = min(batch_size, n - n % world_size)
        if self.batch_size < world_size:
            raise ValueError(f"{n} samples cannot be shared among {world_size} workers")
        self.num_batches = num_batches if num_batches is not None else max(1, n // batch_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        gen = torch.Generator().manual_seed(derived_seed(self.seed, self.stream, self.epoch))
        order: list[int] = []
        share = self.batch_size // self.world_size
        for _ in range(self.num_batches):
            if len(order) < self.batch_size:    # start a fresh pass over the samples
                order = (torch.randperm(self.n, generator=gen).tolist() if self.shuffle
                         else list(range(self.n)))
            batch, order = order[:self.batch_size], order[self.batch_size:]
            yield batch[self.rank * share:(self.rank + 1) * share]


class PerSampleDraws:
    """For each sample index one draw in ``[0, choices)``, a function of (seed, epoch, index).

    The draws of an epoch are tables of ``BLOCK`` draws per block of consecutive indices, each
    from its own generator seeded by (seed, stream, epoch, block) and cached for the epoch, so a
    sample draws the same whichever worker, batch or run (resumed or not) it lands in.
    """

    BLOCK = 1024

    def __init__(self, seed: int, choices: int, stream: int = TEMPLATE_STREAM):
        self.seed, self.choices, self.stream = seed, choices, stream
        self._epoch: int | None = None
        self._tables: dict[int, torch.Tensor] = {}

    def _table(self, block: int) -> torch.Tensor:
        if block not in self._tables:
            gen = torch.Generator().manual_seed(
                derived_seed(self.seed, self.stream, self._epoch, block))
            self._tables[block] = torch.randint(self.choices, (self.BLOCK,), generator=gen)
        return self._tables[block]

    def __call__(self, epoch: int, indices: torch.Tensor) -> torch.Tensor:
        """The draws (B,) of sample ``indices`` (B,) in ``epoch`` (on the CPU)."""
        if epoch != self._epoch:
            self._epoch, self._tables = epoch, {}
        indices = indices.cpu()
        blocks = indices // self.BLOCK
        out = torch.empty_like(indices)
        for block in blocks.unique().tolist():
            rows = blocks == block
            out[rows] = self._table(block)[indices[rows] % self.BLOCK]
        return out
