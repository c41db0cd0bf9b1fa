"""CE + SWA (Vogt-Lowell et al., "Robust Fine-Tuning of Vision-Language Models for Domain
Generalization", arXiv:2311.02236, 2023).

Loss: CE(s · f_θ(x) g_θ(prompts)ᵀ, y) with the class prompts "a photo of a {c}." re-encoded WITH
gradient every step; weights θ_ft = SWA average over the last ``swa_epochs`` epochs.

Trains both towers and logit_scale (clamped ≤ ln 100 after each step, as FLYP here); evaluation
rebuilds the head from the text tower. The average is ``torch.optim.swa_utils.AveragedModel``
over parameters only (buffers are kept from the live model: CLIP's float attention mask holds
−inf, which averaging would turn into NaN). ``on_epoch_end`` receives a 0-based epoch index; the
last ``swa_epochs`` epochs of the stage are averaged (all epochs when the run is shorter). From
the start of the first averaged epoch the lr follows ``SWALR`` (cosine annealing to ``swa_lr``
over one epoch, then constant), see :meth:`CeSwa.lr_scheduler`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel

from ..config import ConfigError, TrainConfig
from ..models import clamp_logit_scale
from .base import (
    Batch,
    Method,
    MethodContext,
    Stage,
    is_image_tower,
    is_logit_scale,
    is_text_tower,
    register,
)
from .common import (
    CLASS_PROMPT,
    class_prompt_tokens,
    cross_entropy,
    image_features,
    text_class_embeddings,
)


@dataclass(frozen=True)
class CeSwaParams:
    """``swa_epochs``: number of final epochs averaged (paper: 10 of 30); ``swa_lr``: the
    constant lr SWALR anneals to once averaging starts (paper 1e-4)."""

    swa_epochs: int = 10
    swa_lr: float = 1e-4

    def __post_init__(self) -> None:
        if self.swa_epochs < 1 or self.swa_lr <= 0:
            raise ConfigError("swa_epochs must be >= 1 and swa_lr > 0")


class SwaSchedule:
    """Per-step lr schedule: ``default`` until step ``swa_start``, then ``SWALR``.

    Built lazily at ``swa_start`` so that SWALR anneals from the lr the default schedule reached.
    ``step()`` is called once per optimizer step, like any LRScheduler.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, default: Any, swa_start: int,
                 swa_lr: float, anneal_steps: int):
        self.optimizer, self.default = optimizer, default
        self.swa_start, self.swa_lr, self.anneal_steps = swa_start, swa_lr, anneal_steps
        self.steps = 0
        self.swa: SWALR | None = None
        if swa_start <= 0:
            self._start_swa()

    def _start_swa(self) -> None:
        # constructing SWALR sets the lr of its first step (the current lr, then annealing)
        self.swa = SWALR(self.optimizer, swa_lr=self.swa_lr,
                         anneal_epochs=max(1, self.anneal_steps), anneal_strategy="cos")

    def step(self) -> None:
        self.steps += 1
        if self.swa is not None:
            self.swa.step()
        elif self.steps < self.swa_start:
            self.default.step()
        else:
            self._start_swa()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "default": self.default.state_dict(),
                "swa": None if self.swa is None else self.swa.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = state["steps"]
        self.default.load_state_dict(state["default"])
        if state["swa"] is not None:
            self._start_swa()
            self.swa.load_state_dict(state["swa"])


@register
class CeSwa(Method):
    """CE + SWA (arXiv:2311.02236). Loss: CE(s·f(x) g(prompts)ᵀ, y); θ_ft = SWA of last epochs."""

    name = "ce-swa"
    # swa_epochs: SWA over the last epoch of a short run (the paper averages over its last ones)
    paper_defaults = {"lr": 1e-5, "weight_decay": 0.0, "swa_lr": 1e-4, "swa_epochs": 1}
    paper_lrs = ("lr", "swa_lr")
    Params = CeSwaParams
    head_from_text = True
    head_kind = "text"

    def __init__(self, params: CeSwaParams, train: TrainConfig):
        super().__init__(params, train)
        self._swa: AveragedModel | None = None
        self._pending: dict[str, Any] | None = None   # a resumed run's running average

    def trains(self, name: str) -> bool:
        return is_image_tower(name) or is_text_tower(name) or is_logit_scale(name)

    def setup(self, model: nn.Module, ctx: MethodContext) -> None:
        self._tokens = class_prompt_tokens(ctx.tokenizer, ctx.classnames, [CLASS_PROMPT],
                                           ctx.device)  # (K, 1, L)
        self._swa = None

    def loss(self, model: nn.Module, batch: Batch, ctx: MethodContext) -> dict[str, torch.Tensor]:
        feats = image_features(model, batch)  # (B, D)
        text = text_class_embeddings(model, self._tokens)  # (K, D), with grad
        logits = model.clip.logit_scale.exp() * feats @ text.T  # (B, K)
        return {"ce_loss": cross_entropy(logits, batch.labels, self.train.label_smoothing)}

    def after_step(self, model: nn.Module) -> None:
        clamp_logit_scale(model.clip)

    # --- SWA ----------------------------------------------------------------------------------
    def swa_start_epoch(self, stage: Stage) -> int:
        """0-based index of the first averaged epoch of ``stage``."""
        epochs = stage.epochs if stage.epochs is not None else self.train.epochs
        return max(0, epochs - self.params.swa_epochs)

    def on_epoch_end(self, model: nn.Module, epoch: int, stage: Stage) -> None:
        if epoch < self.swa_start_epoch(stage):
            return
        if self._swa is None:
            self._swa = AveragedModel(model, use_buffers=False)  # copies model; 1st update = copy
            if self._pending:
                with torch.no_grad():
                    for name, param in self._swa.module.named_parameters():
                        param.copy_(self._pending["params"][name])
                    self._swa.n_averaged.copy_(self._pending["n_averaged"])
                self._pending = None
        self._swa.update_parameters(model)

    def extra_state(self) -> dict[str, Any]:
        """The running SWA average (parameters and count), so a resumed trial keeps it."""
        if self._swa is None:
            return {}
        return {"n_averaged": self._swa.n_averaged.detach().clone(),
                "params": {n: p.detach().clone() for n, p in self._swa.module.named_parameters()}}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._pending = state or None

    def final_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The live model's state with every parameter replaced by its SWA average."""
        state = super().final_state_dict(model)
        if self._swa is not None:
            for name, param in self._swa.module.named_parameters():
                state[name] = param.detach().clone()
        elif self._pending:
            state.update({n: p.clone() for n, p in self._pending["params"].items()})
        return state

    def lr_scheduler(self, optimizer: torch.optim.Optimizer, stage: Stage, steps_per_epoch: int,
                     default: Any) -> Any:
        """The stage's per-step schedule: ``default`` (the loop's warm-up + cosine) until the
        first averaged epoch, then SWALR towards ``swa_lr``."""
        return SwaSchedule(optimizer, default, self.swa_start_epoch(stage) * steps_per_epoch,
                           self.params.swa_lr, steps_per_epoch)
