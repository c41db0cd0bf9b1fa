"""CLIP-CITE (Liu, Li & Yu, "Fully Fine-tuned CLIP Models are Efficient Few-Shot Learners", 2024).

Loss: L_DVA + λ·L_SCL + η·L_VLD (the returned terms are already weighted by λ and η).

- L_DVA: CE over s·cos(f(x), w_c) with a learnable classifier W (head.weight). W starts as the
  shared zero-shot head s·W_cls (template-averaged; the paper uses the single prompt
  "a photo of a {c}." — identical when that is the only template); cosine logits are invariant to
  the factor s, so W is normalised inside. The head's bias is unused and not trained. The text
  encoder is not updated by this term (W is a separate parameter).
- L_SCL: image↔text contrastive loss within the batch; each image's positive is its own class
  prompt "a photo of a {c}." encoded WITH gradient; denominators leave out the other batch texts
  (resp. images) of the same class but keep the positive, so it equals FLYP's loss when every
  class in the batch is distinct. Written as a negative log-likelihood (the printed Eq. 4 drops
  the minus sign) and averaged like open_clip's ClipLoss (½ × two batch means), not summed.
- L_VLD: KL(p_zs ‖ p_ft), teacher first (Eq. 5's argument order is ambiguous), between the
  row-softmaxes of the B×B image–class-prompt similarity matrices of the frozen zero-shot model
  (scaled by s_zs) and of the fine-tuned model (scaled by its s); batch mean.

Under DDP, L_SCL and L_VLD are computed over the global batch (features and labels of every rank
gathered with gradients, :mod:`trainables.distributed`); L_DVA is per-sample and needs no gather.

Trains the image tower, the text tower and W; logit_scale stays fixed (s = s_zs throughout).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError
from ..distributed import gather_pair
from .base import Batch, Method, MethodContext, is_head, is_image_tower, is_text_tower, register
from .common import (
    CLASS_PROMPT,
    batch_class_embeddings,
    class_prompt_tokens,
    cross_entropy,
    image_features,
    same_class_masked_contrastive_loss,
)


@dataclass(frozen=True)
class ClipCiteParams:
    """``lambda_scl``: weight λ of L_SCL; ``eta_vld``: weight η of L_VLD (η > 0.1 hurts)."""

    lambda_scl: float = 0.7
    eta_vld: float = 0.1

    def __post_init__(self) -> None:
        if self.lambda_scl < 0 or self.eta_vld < 0:
            raise ConfigError("lambda_scl and eta_vld must be >= 0")


def cosine_logits(features: torch.Tensor, weight: torch.Tensor,
                  scale: torch.Tensor | float) -> torch.Tensor:
    """s · normalize(f) normalize(W)ᵀ: (B, D) features, (K, D) weight -> (B, K)."""
    return scale * F.normalize(features, dim=-1) @ F.normalize(weight, dim=-1).T


def dva_loss(features: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
             scale: torch.Tensor | float, label_smoothing: float = 0.0) -> torch.Tensor:
    """L_DVA: cross-entropy of the cosine classifier's logits."""
    return cross_entropy(cosine_logits(features, weight, scale), labels, label_smoothing)


def scl_loss(image_feats: torch.Tensor, text_feats: torch.Tensor, labels: torch.Tensor,
             scale: torch.Tensor | float) -> torch.Tensor:
    """L_SCL on (B, D) image and class-prompt features: contrastive loss with the other
    same-class pairs left out of the denominators (the positive stays)."""
    return same_class_masked_contrastive_loss(image_feats, text_feats, labels, scale)


def vld_loss(zs_image: torch.Tensor, zs_text: torch.Tensor, zs_scale: torch.Tensor | float,
             ft_image: torch.Tensor, ft_text: torch.Tensor,
             ft_scale: torch.Tensor | float) -> torch.Tensor:
    """L_VLD = KL(p_zs ‖ p_ft), batch mean, p = row-softmax of s · I Tᵀ (B, B) over the global
    batch (each rank passes its (b, D) features; they are gathered first under DDP)."""
    zs_image, zs_text = gather_pair(zs_image, zs_text)   # (B, D) each, no grad (frozen model)
    ft_image, ft_text = gather_pair(ft_image, ft_text)   # (B, D) each, with grad
    log_p_zs = F.log_softmax(zs_scale * zs_image @ zs_text.T, dim=-1)
    log_p_ft = F.log_softmax(ft_scale * ft_image @ ft_text.T, dim=-1)
    return F.kl_div(log_p_ft, log_p_zs, log_target=True, reduction="batchmean")


@register
class ClipCite(Method):
    """CLIP-CITE (Liu et al., 2024). Loss: L_DVA + λ·L_SCL + η·L_VLD."""

    name = "clip-cite"
    paper_defaults = {"lr": 5e-6, "lambda_scl": 0.7, "eta_vld": 0.1}
    Params = ClipCiteParams
    uses_reference = True
    head_kind = "cosine"

    def trains(self, name: str) -> bool:
        return (is_image_tower(name) or is_text_tower(name)
                or (is_head(name) and name.endswith(".weight")))

    def setup(self, model: nn.Module, ctx: MethodContext) -> None:
        reference = self.reference(ctx)
        self._tokens = class_prompt_tokens(ctx.tokenizer, ctx.classnames, [CLASS_PROMPT],
                                           ctx.device)  # (K, 1, L)
        with torch.no_grad():
            self._zs_text = reference.text_features(self._tokens[:, 0])  # (K, D)

    def loss(self, model: nn.Module, batch: Batch, ctx: MethodContext) -> dict[str, torch.Tensor]:
        labels = batch.labels
        feats = image_features(model, batch)  # (B, D)
        text = batch_class_embeddings(model, self._tokens, labels)  # (B, D), with grad
        scale = model.clip.logit_scale.exp().detach()  # not trained by CLIP-CITE
        with torch.no_grad():
            zs_feats = ctx.reference.image_features(batch.images)  # (B, D)
        vld = vld_loss(zs_feats, self._zs_text[labels], ctx.zs_logit_scale, feats, text, scale)
        return {"dva_loss": dva_loss(feats, model.head.weight, labels, scale,
                                     self.train.label_smoothing),
                "scl_loss": self.params.lambda_scl * scl_loss(feats, text, labels, scale),
                "vld_loss": self.params.eta_vld * vld}

    def id_logits(self, model: nn.Module, features: torch.Tensor,
                  text_head: torch.Tensor) -> torch.Tensor:
        """The cosine classifier s · normalize(f) normalize(W)ᵀ (W = head.weight)."""
        return cosine_logits(features, model.head.weight, model.clip.logit_scale.exp())
