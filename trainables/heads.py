"""Text-derived classifier heads: CLIP's zero-shot head W_cls and CAR-FT's context weights W_ctx.

All functions here run the text tower under ``torch.no_grad`` (frozen, once per run or per
evaluation). Methods that need class embeddings *with* gradient use
:func:`trainables.methods.common.text_class_embeddings` instead.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from open_clip import build_zero_shot_classifier
from torch import nn

from .models import ClipClassifier

#: texts per text-tower forward when embedding many (class, template) prompts
TEXT_CHUNK = 256


def zero_shot_weights(clip: nn.Module, tokenizer: Callable[..., torch.Tensor],
                      classnames: Sequence[str], templates: Sequence[str],
                      device: str | torch.device) -> torch.Tensor:
    """CLIP's zero-shot head ``W_cls`` as (K, D): per class, the template-averaged normalised text
    embeddings, re-normalised (open_clip's ``build_zero_shot_classifier``, transposed)."""
    weights = build_zero_shot_classifier(clip, tokenizer, list(classnames), list(templates),
                                         num_classes_per_batch=10, device=device)  # (D, K)
    return weights.T.contiguous()


@torch.no_grad()
def prompt_embeddings(clip: nn.Module, tokenizer: Callable[..., torch.Tensor],
                      classnames: Sequence[str], templates: Sequence[str],
                      device: str | torch.device) -> torch.Tensor:
    """Normalised text embeddings of every template filled with every class: (K, P, D)."""
    texts = [t.format(c) for c in classnames for t in templates]
    chunks = [clip.encode_text(tokenizer(texts[i:i + TEXT_CHUNK]).to(device), normalize=True)
              for i in range(0, len(texts), TEXT_CHUNK)]
    return torch.cat(chunks).reshape(len(classnames), len(templates), -1)


def context_weights(clip: nn.Module, tokenizer: Callable[..., torch.Tensor],
                    classnames: Sequence[str], context_templates: Sequence[str],
                    device: str | torch.device, variant: str = "all") -> torch.Tensor:
    """CAR-FT's context prompt weights W_ctx (CAR-FT Eq. 2), row p for context template p.

    ``variant="all"``: (P, D), for each template the average over classes of the normalised
    embeddings of the template filled with each class, re-normalised. ``variant="gt"``: (K, P, D),
    the normalised per-class embeddings, so that each image can use only its ground-truth class's
    row block (the paper's "ground-truth category" variant; it reports similar results).
    """
    per_class = prompt_embeddings(clip, tokenizer, classnames, context_templates, device)
    if variant == "gt":
        return per_class  # (K, P, D), already normalised
    if variant != "all":
        raise ValueError(f"context variant must be 'all' or 'gt', got {variant!r}")
    return F.normalize(per_class.mean(dim=0), dim=-1)  # (P, D)


def build_classifier(bundle_clip: nn.Module, tokenizer: Callable[..., torch.Tensor],
                     classnames: Sequence[str], templates: Sequence[str],
                     device: str | torch.device) -> ClipClassifier:
    """Wrap ``bundle_clip`` in a :class:`ClipClassifier` whose head is the zero-shot head:
    ``head.weight = s · W_cls`` (s = logit_scale.exp()), bias 0, so its logits are CLIP's
    zero-shot logits ``s · f(x) W_clsᵀ`` (wise-ft's convention)."""
    w_cls = zero_shot_weights(bundle_clip, tokenizer, classnames, templates, device)  # (K, D)
    with torch.no_grad():
        scale = bundle_clip.logit_scale.exp()
    return ClipClassifier(bundle_clip, scale * w_cls).to(w_cls.device)
