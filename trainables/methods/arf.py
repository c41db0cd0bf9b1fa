"""ARF (Han et al., "Anchor-based Robust Finetuning of Vision-Language Models", CVPR 2024).

Loss: L_CL + w_cap·L_Cap + w_ret·L_Ret (the returned terms are already weighted).

- L_CL: FLYP's loss between each image and a randomly templated class prompt.
- L_Cap: the same contrastive loss between the training images and their captions (generated
  offline by a captioner and cached; batch anchor set ``"captions"``).
- L_Ret: the same loss on retrieved (image, text) pairs drawn beside the task batch (anchor set
  ``"retrieved"``).
Anchor pairs carry no class labels, so L_Cap and L_Ret never mask; ``mask_same_class`` applies
to L_CL as in FLYP. Trains both towers and logit_scale (clamped ≤ ln 100, as FLYP here).
Under DDP each term is over the global batch, and the anchor batches are drawn for the global
batch and sharded like the task batch (the loop's ``GlobalBatchSampler``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import ConfigError
from .base import Batch, MethodContext, register
from .common import contrastive_loss, image_features
from .flyp import Flyp


@dataclass(frozen=True)
class ArfParams:
    """``w_cap``/``w_ret``: weights of the caption and retrieval anchor losses (paper: 1)."""

    w_cap: float = 1.0
    w_ret: float = 1.0
    mask_same_class: bool = False

    def __post_init__(self) -> None:
        if self.w_cap < 0 or self.w_ret < 0:
            raise ConfigError("w_cap and w_ret must be >= 0")


@register
class Arf(Flyp):
    """ARF (Han et al., CVPR 2024). Loss: L_CL + w_cap·L_Cap + w_ret·L_Ret (CLIP contrastive)."""

    name = "arf"
    paper_defaults = {"lr": 1e-5, "w_cap": 1.0, "w_ret": 1.0}
    Params = ArfParams
    anchor_sets = ("captions", "retrieved")

    def anchor_loss(self, model: nn.Module, batch: Batch, key: str,
                    task_feats: torch.Tensor) -> torch.Tensor:
        """Contrastive loss on the anchor pairs ``batch.anchors[key]`` = (images, tokens)."""
        if key not in batch.anchors:
            raise KeyError(f"arf needs anchor set {key!r} in every batch (got "
                           f"{sorted(batch.anchors)}): build the caption/retrieval anchors "
                           "before training")
        images, tokens = batch.anchors[key]
        # captions pair the task images themselves: reuse their features when the loop passes
        # the same tensor
        feats = task_feats if images is batch.images else model.image_features(images)
        return contrastive_loss(feats, model.text_features(tokens), model.clip.logit_scale.exp())

    def loss(self, model: nn.Module, batch: Batch, ctx: MethodContext) -> dict[str, torch.Tensor]:
        feats = image_features(model, batch)  # (B, D)
        return {"cl_loss": self.class_prompt_loss(model, feats, batch),
                "cap_loss": self.params.w_cap * self.anchor_loss(model, batch, "captions", feats),
                "ret_loss": self.params.w_ret * self.anchor_loss(model, batch, "retrieved", feats)}
