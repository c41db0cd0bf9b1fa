"""Zero-shot CLIP (Radford et al., 2021): evaluation of θ_zs with the template-averaged head.

Loss: none — nothing is trained; the run only evaluates the zero-shot classifier s · f(x) W_clsᵀ.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Batch, Method, MethodContext, register


@register
class ZeroShot(Method):
    """Zero-shot CLIP (Radford et al., ICML 2021). Loss: none (evaluation of θ_zs only)."""

    name = "zeroshot"
    trains_nothing = True

    def trains(self, name: str) -> bool:
        return False

    def loss(self, model: nn.Module, batch: Batch, ctx: MethodContext) -> dict[str, torch.Tensor]:
        raise RuntimeError("zeroshot trains nothing: the loop must not call its loss")
