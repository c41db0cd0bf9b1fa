"""Helpers shared by several methods: the contrastive losses, class-prompt tokens, class
embeddings computed with gradient, and the image features of a batch.

Shapes: ``B`` batch, ``D`` embedding dim, ``K`` classes, ``T`` templates, ``L`` context length.
Under DDP the contrastive losses take this rank's ``b = B / N`` pairs and are computed over the
global batch (every text of every rank is a negative): see :mod:`trainables.distributed`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import clip_loss, gather_labels, gather_pair
from .base import Batch, Method, MethodContext

#: The single class prompt of CLIP-CITE (paper: "a photo of a [category]") and CE-SWA's
#: one-prompt-per-class head. Fixed rather than the dataset's first template so that the method
#: matches its paper whatever template list a dataset ships.
CLASS_PROMPT = "a photo of a {}."


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor,
                     scale: torch.Tensor | float) -> torch.Tensor:
    """CLIP's symmetric InfoNCE over the global batch's B (image, text) pairs (open_clip
    ``ClipLoss``, gathering every rank's pairs with gradients under DDP).

    ``image_features``/``text_features``: (b, D) on this rank, L2-normalised; row i of each is a
    positive pair. ``scale``: the temperature s = logit_scale.exp().
    """
    return clip_loss()(image_features, text_features, scale)


def same_class_masked_contrastive_loss(image_features: torch.Tensor,
                                       text_features: torch.Tensor, labels: torch.Tensor,
                                       scale: torch.Tensor | float) -> torch.Tensor:
    """CLIP's symmetric InfoNCE where the *other* same-class pairs are left out of denominators.

    Row i (image i against the batch texts) keeps its positive text i and every text of another
    class; the texts j ≠ i with ``labels[j] == labels[i]`` are removed (logit −∞). Likewise for
    each text against the batch images. Reduction as in ``ClipLoss`` (½ × sum of the two batch
    means), so with all labels distinct it equals :func:`contrastive_loss`. This is FLYP's
    optional masking and CLIP-CITE's L_SCL (written as a negative log-likelihood). Under DDP the
    features and labels of every rank are gathered first (the masks need the global labels).
    """
    image_features, text_features = gather_pair(image_features, text_features)  # (B, D) each
    labels = gather_labels(labels)  # (B,)
    logits = scale * image_features @ text_features.T  # (B, B), row = image, column = text
    same = labels[:, None] == labels[None, :]
    other_same = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    logits = logits.masked_fill(other_same, float("-inf"))  # symmetric mask: serves both ways
    target = torch.arange(len(labels), device=labels.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def class_prompt_tokens(tokenizer: Callable[..., torch.Tensor], classnames: Sequence[str],
                        templates: Sequence[str], device: str | torch.device) -> torch.Tensor:
    """Token ids of every template filled with every class name: (K, T, L)."""
    texts = [t.format(c) for c in classnames for t in templates]
    return tokenizer(texts).reshape(len(classnames), len(templates), -1).to(device)


def text_class_embeddings(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Class embeddings from the model's current text tower, WITH gradient: (K, D).

    ``tokens`` (K, T, L): per class, the normalised embeddings of its T prompts are averaged and
    re-normalised (the zero-shot head's recipe; T = 1 is a single prompt per class).
    """
    num_classes, num_templates, length = tokens.shape
    emb = model.text_features(tokens.reshape(-1, length))  # (K·T, D), normalised
    return F.normalize(emb.reshape(num_classes, num_templates, -1).mean(dim=1), dim=-1)


def batch_class_embeddings(model: nn.Module, tokens: torch.Tensor,
                           labels: torch.Tensor) -> torch.Tensor:
    """Each image's class embedding (B, D) with gradient, encoding each distinct class once.

    ``tokens`` (K, T, L) as in :func:`text_class_embeddings`; ``labels`` (B,).
    """
    classes, inverse = labels.unique(return_inverse=True)
    return text_class_embeddings(model, tokens[classes])[inverse]


def image_features(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Normalised image features (B, D): the cached ``batch.features`` when the stage caches
    them (frozen image tower), else a forward pass of the model's image tower."""
    if batch.features is not None:
        return batch.features
    if batch.images is None:
        raise ValueError("batch has neither images nor cached features")
    return model.image_features(batch.images)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of (B, K) logits against (B,) labels."""
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


class HeadCrossEntropy(Method):
    """A method whose loss is CE(head(f(x)), y): the linear head on the normalised image features
    (B, D) -> logits (B, K), label smoothing from TrainConfig. FT, LP and LP-FT differ only in
    what they train and in which stages."""

    def loss(self, model: nn.Module, batch: Batch, ctx: MethodContext) -> dict[str, torch.Tensor]:
        logits = model.head(image_features(model, batch))  # (B, K)
        return {"ce_loss": cross_entropy(logits, batch.labels, self.train.label_smoothing)}
