"""Evaluation: a flat dict of metrics whose names come from :mod:`trainables.metrics`.

The :class:`Evaluator` is built once per run. Evaluation images use deterministic (val) transforms,
so each set's preprocessed tensors are cached in memory the first time (up to ``cache_mb``): the
WiSE search then re-runs only the image tower, not JPEG/PNG decoding. Class embeddings come from
the evaluated model's own text tower; when the method does not train the text tower they are the
zero-shot ones and are computed once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from . import metrics as M
from .data import LabeledImages, TaskData, Template
from .heads import zero_shot_weights
from .methods.base import Method, is_text_tower

SELECTION = ("id_val",)


@dataclass
class EvalSet:
    """One evaluation set: its metric name, its kind, its images and the classes it scores."""

    metric: str
    kind: str                          # id | ood | zeroshot | context
    images: LabeledImages
    classes: tuple[str, ...]
    templates: tuple[Template, ...]


class Evaluator:
    """Evaluates a model on named sets; ``evaluate(..., sets=SELECTION)`` reads ID val only."""

    def __init__(self, data: TaskData, tokenizer: Callable, device: torch.device | str = "cpu",
                 batch_size: int = 256, num_workers: int = 0, cache_mb: int = 2048):
        spec = data.spec
        self.tokenizer, self.device = tokenizer, torch.device(device)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.sets: dict[str, EvalSet] = {
            "id_val": EvalSet(M.ID_VAL, "id", data.val, spec.classes, spec.templates),
            "id_test": EvalSet(M.ID_TEST, "id", data.test, spec.classes, spec.templates)}
        for name, ds in data.ood.items():
            self.sets[f"ood/{name}"] = EvalSet(M.ood(name), "ood", ds, spec.classes, spec.templates)
        for name, (task, ds) in data.zeroshot.items():
            self.sets[f"zeroshot/{name}"] = EvalSet(M.zeroshot(name), "zeroshot", ds,
                                                    task.classes, task.templates)
        for name, (task, ds) in data.context.items():
            self.sets[f"context/{name}"] = EvalSet(M.context(name), "context", ds,
                                                   task.classes, task.templates)
        self._cache: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._cache_budget = cache_mb * 2**20
        self._frozen_heads: dict[str, torch.Tensor] = {}

    @property
    def report_sets(self) -> list[str]:
        """Every set, in reporting order."""
        return list(self.sets)

    def _batches(self, key: str) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        if key in self._cache:
            return self._cache[key]
        loader = DataLoader(self.sets[key].images, batch_size=self.batch_size, shuffle=False,
                            num_workers=self.num_workers)
        batches = [(x, y) for x, y in loader]
        size = sum(x.numel() * x.element_size() for x, _ in batches)
        if size <= self._cache_budget:
            self._cache[key] = batches
            self._cache_budget -= size
        return batches

    @torch.no_grad()
    def _text_head(self, model: nn.Module, es: EvalSet, frozen_text: bool) -> torch.Tensor:
        """(K, D) normalised class embeddings from ``model``'s text tower."""
        key = "|".join(es.classes) + "#" + str(len(es.templates))
        if frozen_text and key in self._frozen_heads:
            return self._frozen_heads[key]
        head = zero_shot_weights(model.clip, self.tokenizer, list(es.classes), list(es.templates),
                                 self.device)
        if frozen_text:
            self._frozen_heads[key] = head
        return head

    @torch.no_grad()
    def evaluate(self, model: nn.Module, method: Method, sets: Sequence[str] = SELECTION
                 ) -> dict[str, float]:
        """Top-1 accuracy on each named set, plus the OOD and zero-shot means when all present."""
        unknown = [s for s in sets if s not in self.sets]
        if unknown:
            raise KeyError(f"unknown evaluation set(s) {unknown}; have {list(self.sets)}")
        was_training = model.training
        model.eval()
        frozen_text = not any(is_text_tower(n) for n in method.trained_names(model))
        out: dict[str, float] = {}
        for key in sets:
            es = self.sets[key]
            head = self._text_head(model, es, frozen_text) if (
                es.kind in ("zeroshot", "context") or method.head_from_text) else None
            correct = total = 0
            for images, labels in self._batches(key):
                feats = model.image_features(images.to(self.device))      # (B, D)
                if es.kind in ("id", "ood"):
                    logits = method.id_logits(model, feats, head)          # (B, K)
                else:
                    logits = feats @ head.T                                # (B, K')
                correct += (logits.argmax(-1).cpu() == labels).sum().item()
                total += labels.numel()
            out[es.metric] = 100.0 * correct / max(total, 1)
        ood = [v for k, v in out.items() if k.startswith("ood/")]
        if ood and len(ood) == sum(1 for s in self.sets.values() if s.kind == "ood"):
            out[M.OOD_AVG] = sum(ood) / len(ood)
        zs = [v for k, v in out.items() if k.startswith("zeroshot/")]
        if zs and len(zs) == sum(1 for s in self.sets.values() if s.kind == "zeroshot"):
            out[M.ZEROSHOT_AVG] = sum(zs) / len(zs)
        model.train(was_training)
        return out
