"""Model creation through open_clip.

The project's own architecture JSON files (``trainables/model_configs/*.json``) are registered with
open_clip when this module is imported. Ray Train workers import it through ``trainables``, so the
registration is seen in every process (an ``add_model_config`` done only in the driver is not).

``pretrained`` is either an open_clip tag (``"openai"``, ``"laion2b_s34b_b79k"``: downloaded when
online) or a local weights file (``.safetensors``, or a torch checkpoint loaded with
``weights_only=True``). The default is the tiny CLIP shipped for the embedded world.
"""
from __future__ import annotations

import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import open_clip
import torch
from safetensors import SafetensorError
from torch import nn

from .errors import InputError

CONFIG_DIR = Path(__file__).parent / "model_configs"
ASSET_DIR = Path(__file__).parent / "assets"

#: The embedded default: a tiny ViT CLIP pretrained on the generated world (see trainables/world).
DEFAULT_MODEL = "tiny-clip-32"
DEFAULT_PRETRAINED = str(ASSET_DIR / "tiny-clip-32.safetensors")


class ModelError(InputError):
    """A model name or weights file that cannot be used; the message names the fix."""


def register_model_configs(config_dir: Path = CONFIG_DIR) -> list[str]:
    """Register every ``*.json`` architecture in ``config_dir`` with open_clip; returns names."""
    names = []
    for path in sorted(config_dir.glob("*.json")):
        open_clip.add_model_config(path)
        names.append(path.stem)
    return names


PROJECT_MODELS = register_model_configs()


@dataclass
class ClipBundle:
    """An open_clip model with its preprocessing and tokenizer."""

    clip: nn.Module
    preprocess_train: Callable[[Any], torch.Tensor]
    preprocess_val: Callable[[Any], torch.Tensor]
    tokenizer: Callable[..., torch.Tensor]
    name: str
    pretrained: str | None


def is_local_weights(pretrained: str) -> bool:
    """Whether ``--pretrained`` names a local weights file (a path or a weights file name), not
    an open_clip tag such as ``openai``."""
    return os.sep in pretrained or pretrained.endswith((".safetensors", ".pt", ".pth", ".bin"))


def default_pretrained(model: str | None, pretrained: str | None) -> str | None:
    """``pretrained`` when given; else the shipped weights for the default model and random
    initialisation (None) for any other architecture."""
    if pretrained is not None:
        return pretrained
    return DEFAULT_PRETRAINED if (model or DEFAULT_MODEL) == DEFAULT_MODEL else None


def create_clip(name: str = DEFAULT_MODEL, pretrained: str | None = DEFAULT_PRETRAINED,
                device: str | torch.device = "cpu") -> ClipBundle:
    """Create an open_clip model, its train/val transforms and its real tokenizer.

    ``pretrained=None`` gives a random initialisation (tests). A local file must exist and match
    the architecture; otherwise a :class:`ModelError` says which and how to fix it.
    """
    if name not in open_clip.list_models():
        raise ModelError(f"unknown model architecture {name!r}: use one of open_clip.list_models() "
                         f"or add a JSON config under {CONFIG_DIR}")
    if pretrained and is_local_weights(pretrained):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise ModelError(f"weights file not found: {path} (pass --pretrained with an existing "
                             "file or an open_clip tag)")
        pretrained = str(path)
    try:
        clip, pre_train, pre_val = open_clip.create_model_and_transforms(
            name, pretrained=pretrained or None, device=device, weights_only=True)
    except (RuntimeError, AssertionError) as err:  # load_state_dict(strict=True) on a mismatched
        # file, or open_clip's position-embedding resize asserting on another width
        if isinstance(err, AssertionError) or any(s in str(err) for s in ("state_dict",
                                                                          "size mismatch")):
            raise ModelError(f"weights {pretrained} do not fit architecture {name!r} (pass the "
                             "--model the weights were trained with)") from None
        if "download" in str(err).lower() or "not a known tag" in str(err):   # tag offline/unknown
            offline = " with HF_HUB_OFFLINE set" if os.environ.get("HF_HUB_OFFLINE") else ""
            tags = open_clip.list_pretrained_tags_by_model(name)
            raise ModelError(f"pretrained weights {pretrained!r} for {name!r} cannot be loaded"
                             f"{offline} (known tags: {tags or 'none'}): download them once online"
                             " into the Hugging Face cache, or pass --pretrained with a local "
                             "weights file") from None
        if "PytorchStreamReader" in str(err):       # a truncated/corrupt torch zip file
            raise _unreadable(pretrained, err) from None
        raise
    except (SafetensorError, pickle.UnpicklingError, EOFError) as err:  # a corrupt local file
        raise _unreadable(pretrained, err) from None
    if pretrained:
        _check_finite(clip, pretrained)
    tokenizer = open_clip.get_tokenizer(name)
    return ClipBundle(clip, pre_train, pre_val, tokenizer, name, pretrained)


def _unreadable(pretrained: str | None, err: BaseException) -> ModelError:
    reason = " ".join(str(err).split())[:160]
    return ModelError(f"weights file {pretrained} cannot be read ({type(err).__name__}: {reason}): "
                      "it is corrupt or not a weights file; pass --pretrained with a .safetensors "
                      "file or a torch state dict (loaded with weights_only=True)")


def _check_finite(clip: nn.Module, pretrained: str) -> None:
    """Refuse weights with NaN/inf values: every trial would fail with a non-finite loss."""
    bad = [n for n, t in clip.state_dict().items()
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ModelError(f"weights {pretrained} hold NaN or infinite values in {len(bad)} "
                         f"tensor(s), e.g. {bad[0]}: pass weights that are finite")


#: The largest logit_scale training may reach: s = exp(logit_scale) ≤ 100, the clamp open_clip's
#: trainer applies after every step (FLYP's own code does not clamp).
MAX_LOGIT_SCALE = math.log(100)


def clamp_logit_scale(clip: nn.Module) -> None:
    """Clamp CLIP's trained ``logit_scale`` to [0, ln 100] in place (after an optimizer step)."""
    with torch.no_grad():
        clip.logit_scale.clamp_(0, MAX_LOGIT_SCALE)


class ClipClassifier(nn.Module):
    """CLIP with a linear head over L2-normalised image features.

    ``head.weight`` is (K, D) and starts as ``s * W_cls`` for cross-entropy methods (wise-ft's
    convention, so that WiSE interpolation of the head is meaningful). Methods that classify with
    text embeddings ignore the head and rebuild it from the text tower at evaluation.
    """

    def __init__(self, clip: nn.Module, head_weight: torch.Tensor):
        super().__init__()
        self.clip = clip
        num_classes, dim = head_weight.shape
        self.head = nn.Linear(dim, num_classes, bias=True)
        with torch.no_grad():
            self.head.weight.copy_(head_weight)
            self.head.bias.zero_()

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D), L2-normalised."""
        return self.clip.encode_image(images, normalize=True)

    def text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """(T, L) token ids -> (T, D), L2-normalised."""
        return self.clip.encode_text(tokens, normalize=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, K) logits of the linear head."""
        return self.head(self.image_features(images))
