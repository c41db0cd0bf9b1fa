"""Evaluation: a flat dict of metrics whose names come from :mod:`trainables.metrics`.

The :class:`Evaluator` is built once per run. Evaluation images use deterministic (val) transforms,
so each set's preprocessed tensors are cached in memory the first time (up to ``cache_mb``): the
WiSE search then re-runs only the image tower, not JPEG/PNG decoding. Class embeddings come from
the evaluated model's own text tower; when the method does not train the text tower they are the
zero-shot ones and are computed once.

Each set is scored as its spec says (:class:`~trainables.scoring.Scoring`): a projected set
(ImageNet-R/-A's 200 classes, ObjectNet's 113) takes the argmax over its own classes' ID logits
only; sets may add macro-F1 or worst-group accuracy beside accuracy, and a base-to-new spec adds
B, N and HM.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from . import metrics as M
from .data import LabeledImages, TaskData
from .heads import zero_shot_weights
from .methods.base import Method, is_text_tower
from .sampling import NEW_SET
from .scoring import Scoring, harmonic_mean, project, score
from .spec import Template

SELECTION = ("id_val",)


@dataclass
class EvalSet:
    """One evaluation set: its metric name, its kind, its images and the classes it scores."""

    metric: str
    kind: str                          # id | ood | zeroshot | context
    images: LabeledImages
    classes: tuple[str, ...]
    templates: tuple[Template, ...]
    scoring: Scoring = Scoring()


class Evaluator:
    """Evaluates a model on named sets; ``evaluate(..., sets=SELECTION)`` reads ID val only."""

    def __init__(self, data: TaskData, tokenizer: Callable, device: torch.device | str = "cpu",
                 batch_size: int = 256, num_workers: int = 0, cache_mb: int = 2048):
        spec = data.spec
        self.tokenizer, self.device = tokenizer, torch.device(device)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.base_to_new = bool(spec.new_classes)
        scoring = spec.scoring.get
        self.sets: dict[str, EvalSet] = {
            "id_val": EvalSet(M.ID_VAL, "id", data.val, spec.classes, spec.templates,
                              scoring("id", Scoring())),
            "id_test": EvalSet(M.ID_TEST, "id", data.test, spec.classes, spec.templates,
                               scoring("id", Scoring()))}
        for name, ds in data.ood.items():
            self.sets[f"ood/{name}"] = EvalSet(M.ood(name), "ood", ds, spec.classes,
                                               spec.templates, scoring(f"ood/{name}", Scoring()))
        for name, (task, ds) in data.zeroshot.items():
            self.sets[f"zeroshot/{name}"] = EvalSet(M.zeroshot(name), "zeroshot", ds,
                                                    task.classes, task.templates,
                                                    scoring(f"zeroshot/{name}", Scoring()))
        for name, (task, ds) in data.context.items():
            self.sets[f"context/{name}"] = EvalSet(M.context(name), "context", ds,
                                                   task.classes, task.templates,
                                                   scoring(f"context/{name}", Scoring()))
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
                            num_workers=self.num_workers,
                            pin_memory=self.device.type == "cuda")
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
        """Top-1 accuracy (and the spec's extra metrics) on each named set, plus the OOD and
        zero-shot means and base-to-new's HM when every set they need is evaluated."""
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
            preds, labels = [], []
            for images, y in self._batches(key):
                feats = model.image_features(images.to(self.device))      # (B, D)
                if es.kind in ("id", "ood"):
                    logits = method.id_logits(model, feats, head)          # (B, K)
                    logits = project(logits, es.scoring.projection)        # (B, J)
                else:
                    logits = feats @ head.T                                # (B, K')
                preds.append(logits.argmax(-1).cpu())
                labels.append(y)
            out.update(score(torch.cat(preds), torch.cat(labels), es.scoring,
                             es.images.groups, es.metric))
        self._averages(out)
        model.train(was_training)
        return out

    def _averages(self, out: dict[str, float]) -> None:
        """Means over the OOD and zero-shot sets (per metric kind every one of them reports),
        and base-to-new's B, N and HM."""
        for kind_of_set, avg in (("ood", M.OOD_AVG), ("zeroshot", M.ZEROSHOT_AVG)):
            members = [s for s in self.sets.values() if s.kind == kind_of_set]
            for kind in M.METRIC_KINDS:
                names = [s.metric if kind == M.ACC else M.with_kind(s.metric, kind)
                         for s in members]
                if names and all(n in out for n in names):
                    name = avg if kind == M.ACC else M.with_kind(avg, kind)
                    out[name] = sum(out[n] for n in names) / len(names)
        new = M.zeroshot(NEW_SET)
        if self.base_to_new and M.ID_TEST in out and new in out:
            out[M.B2N_BASE], out[M.B2N_NEW] = out[M.ID_TEST], out[new]
            out[M.B2N_HM] = harmonic_mean(out[M.ID_TEST], out[new])
