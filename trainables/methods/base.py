"""The contract every fine-tuning method implements, and the registry.

A method is a class registered by name. It declares what it trains (a predicate over
:class:`~trainables.models.ClipClassifier` parameter names, per stage), computes any frozen
text-side features once in :meth:`Method.setup`, and returns its loss terms as a dict whose keys end
in ``_loss`` (the loop sums them). Nothing outside ``trainables/methods`` branches on a method name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from ..config import TrainConfig

# Parameter-name groups of ClipClassifier (open_clip's CLIP: visual.*, then the text tower's
# token_embedding, positional_embedding, transformer.*, ln_final.*, text_projection; logit_scale).
TEXT_TOWER_PREFIXES = ("clip.token_embedding", "clip.positional_embedding", "clip.transformer.",
                       "clip.ln_final.", "clip.text_projection", "clip.text.")


def is_image_tower(name: str) -> bool:
    return name.startswith("clip.visual.")


def is_text_tower(name: str) -> bool:
    return name.startswith(TEXT_TOWER_PREFIXES)


def is_head(name: str) -> bool:
    return name.startswith("head.")


def is_logit_scale(name: str) -> bool:
    return name == "clip.logit_scale"


@dataclass(frozen=True)
class NoParams:
    """Methods without hyperparameters of their own."""


@dataclass(frozen=True)
class Stage:
    """One pass of the training loop: what it trains, for how many epochs, at which lr.

    ``cache_features``: the image tower is frozen in this stage, so the loop computes the training
    images' features once (eval transforms, no grad) and batches carry ``features`` instead.
    ``lr``/``epochs`` of ``None`` mean the TrainConfig's values.
    """

    name: str
    trains: Callable[[str], bool]
    epochs: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    cache_features: bool = False


@dataclass
class Batch:
    """One training batch (this worker's share under DDP). Shapes: images (B, 3, H, W); labels
    (B,); features (B, D).

    ``anchors`` maps an anchor-set name (ARF: ``"captions"``, ``"retrieved"``) to a pair
    (images (A, 3, H, W), tokens (A, L)) drawn beside the task batch. ``indices`` (B,) are the
    samples' indices in the training set and ``epoch`` the 0-based epoch across stages: per-sample
    random draws (FLYP's templates) are functions of them.
    """

    labels: torch.Tensor
    images: torch.Tensor | None = None
    features: torch.Tensor | None = None
    anchors: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    indices: torch.Tensor | None = None
    epoch: int = 0

    def sample_indices(self) -> torch.Tensor:
        """``indices``, or 0 … B−1 for a batch built without them (tests, one-off losses)."""
        if self.indices is not None:
            return self.indices
        return torch.arange(len(self.labels))


@dataclass
class MethodContext:
    """What a method may read besides the batch; built once per run by the training driver.

    ``reference`` is the frozen zero-shot model (eval mode, no grad) for methods with
    ``uses_reference``; ``zs_logit_scale`` is its temperature s_zs as a float.
    """

    classnames: list[str]
    templates: list[str]
    context_templates: list[str]
    tokenizer: Callable[..., torch.Tensor]
    device: torch.device
    zs_logit_scale: float
    reference: nn.Module | None = None


class Method:
    """Base class. Subclasses set ``name`` (and ``Params``), and implement :meth:`loss`."""

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    uses_reference: ClassVar[bool] = False
    #: evaluation classifies ID images with class embeddings rebuilt from the text tower
    head_from_text: ClassVar[bool] = False
    #: how :meth:`id_logits` reads the head, for the exported model (``clipmodel/folder.py``):
    #: "linear" (the head), "cosine" (normalised head, times s) or "text" (class embeddings)
    head_kind: ClassVar[str] = "linear"
    #: anchor sets the method draws beside each batch (ARF)
    anchor_sets: ClassVar[tuple[str, ...]] = ()
    #: the method trains nothing (zero-shot evaluation only)
    trains_nothing: ClassVar[bool] = False
    #: the paper's settings (TrainConfig / Params keys) for ViT-B/16 at batch 512; the methods
    #: report trains every method at these, the keys in ``paper_lrs`` (learning rates at the
    #: papers' scale) times one common factor. Listed in docs/methods.md.
    paper_defaults: ClassVar[dict[str, Any]] = {}
    paper_lrs: ClassVar[tuple[str, ...]] = ("lr",)

    def __init__(self, params: Any, train: TrainConfig):
        self.params = params
        self.train = train

    # --- what it trains -------------------------------------------------------------------
    def trains(self, name: str) -> bool:
        """Whether parameter ``name`` of ClipClassifier is trained (single-stage methods)."""
        raise NotImplementedError

    def stages(self) -> list[Stage]:
        """The loop's stages; one by default. LP-FT overrides with its two."""
        return [Stage("train", self.trains)]

    def trained_names(self, model: nn.Module) -> list[str]:
        """Names of every parameter any stage trains (WiSE interpolates exactly these)."""
        preds = [s.trains for s in self.stages()]
        return [n for n, _ in model.named_parameters() if any(p(n) for p in preds)]

    # --- training -------------------------------------------------------------------------
    def reference(self, ctx: MethodContext) -> nn.Module:
        """``ctx.reference``, the frozen zero-shot model a ``uses_reference`` method reads; an
        error naming the method if the driver did not build one."""
        if ctx.reference is None:
            raise ValueError(f"{self.name} needs the frozen zero-shot model as ctx.reference")
        return ctx.reference

    def setup(self, model: nn.Module, ctx: MethodContext) -> None:
        """Compute frozen text-side features once (from ``ctx.reference``); default: nothing."""

    def loss(self, model: nn.Module, batch: Batch, ctx: MethodContext) -> dict[str, torch.Tensor]:
        """Loss terms by name (keys end in ``_loss``); the loop back-propagates their sum."""
        raise NotImplementedError

    def after_step(self, model: nn.Module) -> None:
        """Called after each optimizer step (e.g. clamp logit_scale); default: nothing."""

    def on_epoch_end(self, model: nn.Module, epoch: int, stage: Stage) -> None:
        """Called after each epoch of each stage (e.g. SWA snapshots); default: nothing."""

    def lr_scheduler(self, optimizer: torch.optim.Optimizer, stage: Stage, steps_per_epoch: int,
                     default: Any) -> Any:
        """The stage's per-step lr schedule (the loop calls ``.step()`` after each optimizer
        step); default: the loop's warm-up + cosine scheduler ``default``. CE-SWA switches to
        SWALR here."""
        return default

    def extra_state(self) -> dict[str, Any]:
        """Method state to checkpoint beside the weights (SWA's running average); default: none."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned (resuming a trial)."""

    def final_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The fine-tuned weights θ_ft to keep (SWA returns its average); default: the model's."""
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    # --- evaluation -----------------------------------------------------------------------
    def id_logits(self, model: nn.Module, features: torch.Tensor,
                  text_head: torch.Tensor) -> torch.Tensor:
        """ID-class logits (B, K) from normalised image features (B, D).

        ``text_head`` (K, D) holds the ID class embeddings rebuilt from the model's current text
        tower. Default: the linear head (CE methods); ``head_from_text`` methods use ``text_head``.
        """
        if self.head_from_text:
            return model.clip.logit_scale.exp() * features @ text_head.T
        return model.head(features)


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: add ``cls`` to the registry under ``cls.name``."""
    if not cls.name or cls.name in METHODS:
        raise ValueError(f"method name {cls.name!r} is empty or registered twice")
    METHODS[cls.name] = cls
    return cls


def get_method_class(name: str) -> type[Method]:
    """The registered class for ``name``; unknown names raise InputError listing the choices."""
    from ..errors import InputError
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise InputError(f"unknown method {name!r}: choose one of {sorted(METHODS)}") from None
