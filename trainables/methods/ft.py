"""End-to-end fine-tuning with a zero-shot-initialised head (Wortsman et al., 2022, WiSE-FT's FT).

Loss: CE(head(f_θ(x)), y), label smoothing from TrainConfig; trains the image tower and the head
(initialised as s·W_cls); the text tower is unused.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Batch, Method, MethodContext, is_head, is_image_tower, register
from .common import cross_entropy, image_features


@register
class FineTune(Method):
    """Standard fine-tuning (Wortsman et al., CVPR 2022). Loss: CE(head(f_θ(x)), y)."""

    name = "ft"

    def trains(self, name: str) -> bool:
        return is_image_tower(name) or is_head(name)

    def loss(self, model: nn.Module, batch: Batch, ctx: MethodContext) -> dict[str, torch.Tensor]:
        logits = model.head(image_features(model, batch))  # (B, K)
        return {"ce_loss": cross_entropy(logits, batch.labels, self.train.label_smoothing)}
