"""LP-FT (Kumar et al., ICLR 2022, "Fine-Tuning can Distort Pretrained Features").

Loss: CE(head(f(x)), y) in both stages: stage "lp" trains the head on cached features
(``lp_epochs`` at ``lp_lr``), then stage "ft" trains image tower + head from the LP head
(TrainConfig's epochs and lr). The paper fits the LP stage by logistic regression to convergence;
here it is a few epochs of the loop's optimizer at a larger lr (the head only has K·D weights).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import ConfigError
from .base import Stage, is_head, is_image_tower, register
from .common import HeadCrossEntropy


@dataclass(frozen=True)
class LpFtParams:
    """``lp_epochs``/``lp_lr``: the linear-probe stage (head only, cached features)."""

    lp_epochs: int = 5
    lp_lr: float = 1e-3

    def __post_init__(self) -> None:
        if self.lp_epochs < 1 or self.lp_lr <= 0:
            raise ConfigError("lp_epochs must be >= 1 and lp_lr > 0")


@register
class LpFt(HeadCrossEntropy):
    """LP then FT (Kumar et al., ICLR 2022). Loss: CE(head(f_θ(x)), y) in both stages."""

    name = "lp-ft"
    # lp_epochs/lp_lr: the LP stage fitted briefly at a probe's lr (the paper runs it to
    # convergence), so it is not scaled
    paper_defaults = {"lr": 3e-5, "lp_epochs": 1, "lp_lr": 1e-2}
    Params = LpFtParams

    def trains(self, name: str) -> bool:
        return is_image_tower(name) or is_head(name)

    def stages(self) -> list[Stage]:
        return [Stage("lp", is_head, epochs=self.params.lp_epochs, lr=self.params.lp_lr,
                      cache_features=True),
                Stage("ft", self.trains)]
