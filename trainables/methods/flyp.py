"""FLYP (Goyal et al., CVPR 2023, "Finetune like you pretrain").

Loss: ½[CE(s·F Tᵀ, arange B) + CE(s·T Fᵀ, arange B)] (open_clip ``ClipLoss``) between each image
and ONE template drawn at random (independently per image) filled with its class name.

Trains both towers and logit_scale; evaluation rebuilds the head from the text tower. Same-class
pairs in a batch are negatives by default (the paper found masking them slightly worse);
``mask_same_class`` removes them from the denominators. After every step logit_scale is clamped
to ≤ ln(100) as open_clip's trainer does; FLYP's own code does not clamp (with lr ~1e-5 the
scale hardly moves, so the clamp only guards long or high-lr runs).
Each image's template is a function of (TrainConfig.seed, epoch, the image's dataset index)
(:class:`~trainables.sampling.PerSampleDraws`): runs are reproducible, a resumed run draws what an
uninterrupted one does, and N DDP workers draw what one worker does. Under DDP the loss is over
the global batch (open_clip's ``ClipLoss`` gathers every rank's pairs).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..models import clamp_logit_scale
from ..sampling import PerSampleDraws
from .base import (
    Batch,
    Method,
    MethodContext,
    is_image_tower,
    is_logit_scale,
    is_text_tower,
    register,
)
from .common import (
    class_prompt_tokens,
    contrastive_loss,
    image_features,
    same_class_masked_contrastive_loss,
)


@dataclass(frozen=True)
class FlypParams:
    """``mask_same_class``: leave other same-class pairs out of the contrastive denominators."""

    mask_same_class: bool = False


@register
class Flyp(Method):
    """FLYP (Goyal et al., CVPR 2023). Loss: CLIP contrastive loss over (image, class prompt)."""

    name = "flyp"
    paper_defaults = {"lr": 1e-5}
    Params = FlypParams
    head_from_text = True
    head_kind = "text"

    def trains(self, name: str) -> bool:
        return is_image_tower(name) or is_text_tower(name) or is_logit_scale(name)

    def setup(self, model: nn.Module, ctx: MethodContext) -> None:
        self._tokens = class_prompt_tokens(ctx.tokenizer, ctx.classnames, ctx.templates,
                                           ctx.device)  # (K, T, L)
        self._draws = PerSampleDraws(self.train.seed, self._tokens.shape[1])

    def prompt_tokens(self, batch: Batch) -> torch.Tensor:
        """For each image of the batch one template drawn uniformly at random, a function of
        (seed, ``batch.epoch``, ``batch.indices``): tokens (B, L)."""
        draws = self._draws(batch.epoch, batch.sample_indices())
        return self._tokens[batch.labels.to(self._tokens.device), draws.to(self._tokens.device)]

    def class_prompt_loss(self, model: nn.Module, image_feats: torch.Tensor,
                          batch: Batch) -> torch.Tensor:
        """FLYP's loss between (B, D) image features and their randomly templated class prompts."""
        text_feats = model.text_features(self.prompt_tokens(batch))  # (B, D)
        scale = model.clip.logit_scale.exp()
        if self.params.mask_same_class:
            return same_class_masked_contrastive_loss(image_feats, text_feats, batch.labels, scale)
        return contrastive_loss(image_feats, text_feats, scale)

    def loss(self, model: nn.Module, batch: Batch, ctx: MethodContext) -> dict[str, torch.Tensor]:
        return {"contrastive_loss":
                self.class_prompt_loss(model, image_features(model, batch), batch)}

    def after_step(self, model: nn.Module) -> None:
        clamp_logit_scale(model.clip)
