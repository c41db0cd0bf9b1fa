"""Linear probing (Radford et al., 2021; Kumar et al., 2022 for LP as a robustness baseline).

Loss: CE(head(f_zs(x)), y) on cached, frozen, normalised image features; only the head trains.
The head starts from the zero-shot head s·W_cls (so LP starts at zero-shot accuracy), and its lr is
TrainConfig.lr (searched), trained with the loop's optimizer rather than L-BFGS.
"""
from __future__ import annotations

from .base import Stage, is_head, register
from .common import HeadCrossEntropy


@register
class LinearProbe(HeadCrossEntropy):
    """Linear probe on frozen CLIP features. Loss: CE(head(f(x)), y) (label smoothing optional)."""

    name = "lp"
    paper_defaults = {"lr": 1e-2, "weight_decay": 0.0}
    paper_lrs = ()   # the probe's lr: no paper gives one

    def trains(self, name: str) -> bool:
        return is_head(name)

    def stages(self) -> list[Stage]:
        return [Stage("lp", self.trains, cache_features=True)]
