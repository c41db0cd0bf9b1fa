"""How an evaluation set is scored: projections onto class subsets and per-set metrics.

A :class:`Scoring` travels with each evaluation set of a dataset spec. ``projection`` maps the
set's own labels to the ID classifier's classes: ImageNet-R/-A are labelled with their 200
classes and scored only over those 200 ID logits; ObjectNet is labelled with its 113 classes, each
scored by the max over the ID logits of the ImageNet classes it maps to (wise-ft's
``project_logits``). ``metrics`` names the metric kinds reported beside accuracy
(:data:`~trainables.metrics.MACRO_F1`, :data:`~trainables.metrics.WORST_GROUP_ACC`).

The functions below are pure: predictions and labels in, a percentage out.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from . import metrics as M
from .errors import DataError


@dataclass(frozen=True)
class Scoring:
    """How one set is scored. ``projection[j]`` lists the ID class indices of set label ``j``;
    ``exclude_groups`` are groups left out of the worst-group minimum (FMoW's "Other" region);
    ``crop_border`` pixels are cut from every side before the transform (ObjectNet's border)."""

    metrics: tuple[str, ...] = ()
    projection: tuple[tuple[int, ...], ...] | None = None
    exclude_groups: tuple[str, ...] = ()
    crop_border: int = 0

    def __post_init__(self) -> None:
        unknown = [k for k in self.metrics if k not in M.METRIC_KINDS or k == M.ACC]
        if unknown:
            raise ValueError(f"unknown metric kind(s) {unknown}: choose from "
                             f"{[k for k in M.METRIC_KINDS if k != M.ACC]} (accuracy is always "
                             "reported)")
        if self.projection is not None and not all(self.projection):
            raise ValueError("every projected class needs at least one ID class")


def parse_metrics(obj: Any, where: str, spec: Path | str) -> tuple[str, ...]:
    """The extra metric kinds of a set (beside accuracy), checked against metrics.METRIC_KINDS."""
    kinds = obj or []
    extra = [k for k in M.METRIC_KINDS if k != M.ACC]
    if not isinstance(kinds, list) or any(k not in extra for k in kinds):
        raise DataError(f"{spec}: {where}.metrics must be a list drawn from {extra} (accuracy is "
                        "always reported)")
    return tuple(kinds)


def subset_projection(subset: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """The projection of a class subset: set label ``j`` is ID class ``subset[j]``."""
    return tuple((int(i),) for i in subset)


def project(logits: torch.Tensor, projection: tuple[tuple[int, ...], ...] | None
            ) -> torch.Tensor:
    """(B, K) ID logits -> (B, J) logits over the set's classes (max over each class's ID
    classes; a plain column selection when every set class is one ID class)."""
    if projection is None:
        return logits
    if all(len(ids) == 1 for ids in projection):
        return logits[:, [ids[0] for ids in projection]]
    return torch.stack([logits[:, list(ids)].max(dim=1).values for ids in projection], dim=1)


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    return 100.0 * (pred == labels).sum().item() / max(labels.numel(), 1)


def macro_f1(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Macro-F1 in percent over the classes present in ``labels`` (WILDS' definition, as
    ``sklearn.metrics.f1_score(average="macro", labels=unique(labels))``; F1 = 0 where a class
    has no true positives)."""
    classes = torch.unique(labels)
    scores = []
    for c in classes:
        tp = ((pred == c) & (labels == c)).sum().item()
        fp = ((pred == c) & (labels != c)).sum().item()
        fn = ((pred != c) & (labels == c)).sum().item()
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return 100.0 * sum(scores) / max(len(scores), 1)


def worst_group_accuracy(pred: torch.Tensor, labels: torch.Tensor, groups: Sequence[str],
                         exclude: Sequence[str] = ()) -> float:
    """The lowest per-group accuracy in percent over the groups present (minus ``exclude``)."""
    if len(groups) != labels.numel():
        raise ValueError(f"{len(groups)} group labels for {labels.numel()} samples")
    accs = []
    for g in sorted(set(groups) - set(exclude)):
        mask = torch.tensor([x == g for x in groups])
        accs.append(accuracy(pred[mask], labels[mask]))
    if not accs:
        raise ValueError("no group left to score (every group is excluded)")
    return min(accs)


def harmonic_mean(base: float, new: float) -> float:
    """HM = 2BN / (B + N) of the base-to-new protocol (0 when both are 0)."""
    return 0.0 if base + new == 0 else 2 * base * new / (base + new)


def score(pred: torch.Tensor, labels: torch.Tensor, scoring: Scoring,
          groups: Sequence[str] | None, metric: str) -> dict[str, float]:
    """Accuracy under the name ``metric`` plus every kind ``scoring`` asks for."""
    out = {metric: accuracy(pred, labels)}
    for kind in scoring.metrics:
        if kind == M.MACRO_F1:
            out[M.with_kind(metric, kind)] = macro_f1(pred, labels)
        elif kind == M.WORST_GROUP_ACC:
            if groups is None:
                raise ValueError(f"{metric}: worst-group accuracy needs a group per sample "
                                 "(a 'group' column in the manifest)")
            out[M.with_kind(metric, kind)] = worst_group_accuracy(pred, labels, groups,
                                                                  scoring.exclude_groups)
    return out
