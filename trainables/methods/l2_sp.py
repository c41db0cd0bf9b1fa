"""L2-SP (Li, Grandvalet & Davoine, ICML 2018, "Explicit Inductive Bias for Transfer Learning").

Loss: CE(head(f_θ(x)), y) + β·Σ‖θ − θ_zs‖² over the image encoder's parameters (the head is new
to the task, so it is not pulled towards a starting point). θ_zs is read from the frozen reference
model (``uses_reference``), never from the model being trained: a trial resumed from a checkpoint
must still be pulled towards the zero-shot weights, not towards where it was interrupted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from ..config import ConfigError
from .base import Batch, MethodContext, is_image_tower, register
from .common import cross_entropy, image_features
from .ft import FineTune


@dataclass(frozen=True)
class L2SpParams:
    """``beta``: weight of the squared distance to θ_zs. The project searches it log-uniform in
    1e-4 … 1 (docs/methods.md#l2-sp); the default is that range's log-midpoint (the L2-SP
    paper's weights belong to its ½-scaled, ImageNet-CNN setting and do not transfer)."""

    beta: float = 0.01

    def __post_init__(self) -> None:
        if self.beta < 0:
            raise ConfigError(f"beta must be >= 0, got {self.beta}")


def l2sp_penalty(params: Iterable[tuple[torch.Tensor, torch.Tensor]], beta: float) -> torch.Tensor:
    """β · Σ ‖θ − θ_0‖² over (θ, θ_0) pairs (θ_0 detached)."""
    return beta * sum(((p - p0) ** 2).sum() for p, p0 in params)


@register
class L2Sp(FineTune):
    """L2-SP (Li et al., ICML 2018). Loss: CE(head(f_θ(x)), y) + β·Σ‖θ_img − θ_img,zs‖²."""

    name = "l2-sp"
    paper_defaults = {"lr": 3e-5}
    Params = L2SpParams
    uses_reference = True

    def setup(self, model: nn.Module, ctx: MethodContext) -> None:
        self._anchor = {n: p.detach() for n, p in self.reference(ctx).named_parameters()
                        if is_image_tower(n)}

    def loss(self, model: nn.Module, batch: Batch, ctx: MethodContext) -> dict[str, torch.Tensor]:
        logits = model.head(image_features(model, batch))  # (B, K)
        pairs = ((p, self._anchor[n]) for n, p in model.named_parameters() if n in self._anchor)
        return {"ce_loss": cross_entropy(logits, batch.labels, self.train.label_smoothing),
                "l2sp_loss": l2sp_penalty(pairs, self.params.beta)}
