"""End-to-end fine-tuning with a zero-shot-initialised head (Wortsman et al., 2022, WiSE-FT's FT).

Loss: CE(head(f_θ(x)), y), label smoothing from TrainConfig; trains the image tower and the head
(initialised as s·W_cls); the text tower is unused.
"""
from __future__ import annotations

from .base import is_head, is_image_tower, register
from .common import HeadCrossEntropy


@register
class FineTune(HeadCrossEntropy):
    """Standard fine-tuning (Wortsman et al., CVPR 2022). Loss: CE(head(f_θ(x)), y)."""

    name = "ft"
    paper_defaults = {"lr": 3e-5}

    def trains(self, name: str) -> bool:
        return is_image_tower(name) or is_head(name)
