"""Subsets of splits: the held-out ID val, seeded k-shot sampling and the base-to-new split.

k-shot (CoOp): from each class draw ``k`` images without replacement (all of them when a class has
fewer), with a generator seeded by ``seed`` so a study's trials share one subset and another seed
gives another subset. ID val takes ``min(k, 4)`` images per class (CoOp's choice).

Base-to-new (CoCoOp, used by CLIP-CITE): the first ``ceil(K / 2)`` classes in label order are the
*base* classes, trained on and tested as ID test (B); the other classes are the *new* classes,
evaluated zero-shot on their own test images (N); HM = 2BN / (B + N).
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence, TypeVar

import torch

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
