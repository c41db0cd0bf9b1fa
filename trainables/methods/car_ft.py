"""CAR-FT (Mao et al., "Context-Aware Robust Fine-Tuning", IJCV 2024; arXiv:2211.16175).

Loss: CE(head(f_θ(x)), y) + α·KL(p_ctx(x;θ_zs) ‖ p_ctx(x;θ)), with
p_ctx(x;θ) = softmax(s_zs · W_ctx f_θ(x)) over the P context templates.

W_ctx (P, D) holds, per context template ("a photo of a {}.", "a sketch of a {}.", …), the
class-averaged normalised text embedding of the FROZEN zero-shot model, re-normalised (paper
Eq. 2); it and θ_zs stay frozen. The paper's p_ctx omits a temperature; with unit-norm features
the logits then lie in [−1, 1] and p_ctx is nearly uniform, so we scale by the zero-shot model's
temperature s_zs (as CLIP's own zero-shot classifier does). ``ctx_variant="gt"`` uses, for each
image, only its ground-truth class's P context embeddings instead of the class average (the
paper's variant with similar results). Trains the image tower and the head (init s·W_cls).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError
from ..heads import context_weights
from .base import Batch, MethodContext, register
from .common import cross_entropy, image_features
from .ft import FineTune


@dataclass(frozen=True)
class CarFtParams:
    """``car_alpha``: weight of the context KL term; ``ctx_variant``: "all" | "gt" (W_ctx)."""

    car_alpha: float = 1.0
    ctx_variant: str = "all"

    def __post_init__(self) -> None:
        if self.car_alpha < 0:
            raise ConfigError(f"car_alpha must be >= 0, got {self.car_alpha}")
        if self.ctx_variant not in ("all", "gt"):
            raise ConfigError(f"ctx_variant must be 'all' or 'gt', got {self.ctx_variant!r}")


def context_logits(features: torch.Tensor, w_ctx: torch.Tensor, scale: float) -> torch.Tensor:
    """s · f W_ctxᵀ: (B, D) features against W_ctx (P, D) shared, or (B, P, D) per image."""
    if w_ctx.dim() == 3:
        return scale * torch.einsum("bd,bpd->bp", features, w_ctx)
    return scale * features @ w_ctx.T


def context_kl(ref_features: torch.Tensor, features: torch.Tensor, w_ctx: torch.Tensor,
               scale: float) -> torch.Tensor:
    """KL(p_ctx(ref) ‖ p_ctx(model)), batch mean; p_ctx = softmax over the P context logits."""
    log_p_ref = F.log_softmax(context_logits(ref_features, w_ctx, scale), dim=-1)
    log_p = F.log_softmax(context_logits(features, w_ctx, scale), dim=-1)
    return F.kl_div(log_p, log_p_ref, log_target=True, reduction="batchmean")


@register
class CarFt(FineTune):
    """CAR-FT (Mao et al., IJCV 2024).

    Loss: CE(head(f_θ(x)), y) + α·KL(p_ctx(x;θ_zs) ‖ p_ctx(x;θ)).
    """

    name = "car-ft"
    paper_defaults = {"lr": 3e-5, "car_alpha": 1.0}
    Params = CarFtParams
    uses_reference = True

    def setup(self, model: nn.Module, ctx: MethodContext) -> None:
        self._w_ctx = context_weights(self.reference(ctx).clip, ctx.tokenizer, ctx.classnames,
                                      ctx.context_templates, ctx.device,
                                      variant=self.params.ctx_variant)  # (P, D) or (K, P, D)

    def loss(self, model: nn.Module, batch: Batch, ctx: MethodContext) -> dict[str, torch.Tensor]:
        feats = image_features(model, batch)  # (B, D)
        with torch.no_grad():
            ref_feats = ctx.reference.image_features(batch.images)  # (B, D)
        w_ctx = self._w_ctx[batch.labels] if self._w_ctx.dim() == 3 else self._w_ctx
        kl = context_kl(ref_feats, feats, w_ctx, ctx.zs_logit_scale)
        return {"ce_loss": cross_entropy(model.head(feats), batch.labels,
                                         self.train.label_smoothing),
                "ctx_kl_loss": self.params.car_alpha * kl}
