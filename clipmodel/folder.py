"""The model folder: write it (atomically) and read it back into a classifier.

A folder holds::

    open_clip_config.json        {"model_cfg", "preprocess_cfg"}: open_clip's own format, so
                                 open_clip.create_model_and_transforms("local-dir:FOLDER") loads it
    <ARCH>.json                  the architecture alone: open_clip.add_model_config(FOLDER), then
                                 create_model_and_transforms(ARCH,
                                 pretrained=FOLDER/open_clip_model.safetensors)
    open_clip_model.safetensors  the CLIP weights (open_clip's state-dict keys)
    head.safetensors             the classifier: "weight" (K, D) and "bias" (K,) for the "linear"
                                 and "cosine" heads, "class_embeddings" (K, D) for the "text" head
    model.json                   classes, head kind, α, hyperparameters, data, code version, metrics
    README.md                    the model card

``model.json`` is written last and the folder appears under its name by one rename, so a folder
with a ``model.json`` is complete; a killed export leaves only a hidden ``.NAME.tmp-*`` folder.

The three heads turn L2-normalised image features f (B, D) into class logits (B, K) exactly as
the project's evaluation does (``trainables.methods``; a test holds every method to it), with
s = exp(logit_scale) of the exported CLIP:

- ``linear``: ``f Wᵀ + b`` (``torch.nn.functional.linear``); CE methods' head, s already in W
- ``cosine``: ``s · normalize(f) normalize(W)ᵀ``; CLIP-CITE's classifier
- ``text``:   ``s · f Eᵀ``, E the class embeddings of the exported text tower; FLYP, CE-SWA
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

FORMAT = "robust-clip-search/model-folder/1"
OPEN_CLIP_CONFIG = "open_clip_config.json"   # the name open_clip's "local-dir:" reads
WEIGHTS = "open_clip_model.safetensors"      # the first name open_clip's "local-dir:" looks for
HEAD = "head.safetensors"
INFO = "model.json"
CARD = "README.md"
HEAD_KINDS = ("linear", "cosine", "text")


class FolderError(ValueError):
    """A model folder that cannot be written or read; the message names the fix."""


def head_logits(kind: str, features: torch.Tensor, head: dict[str, torch.Tensor],
                logit_scale: torch.Tensor) -> torch.Tensor:
    """Class logits (B, K) from normalised image features (B, D) (module docstring)."""
    if kind == "linear":
        return F.linear(features, head["weight"], head["bias"])
    if kind == "cosine":
        return logit_scale.exp() * F.normalize(features, dim=-1) @ F.normalize(
            head["weight"], dim=-1).T
    if kind == "text":
        return logit_scale.exp() * features @ head["class_embeddings"].T
    raise FolderError(f"unknown head kind {kind!r}: one of {HEAD_KINDS}")


def _json(value: Any) -> Any:
    """Tuples as lists and anything else JSON cannot hold as its string."""
    return json.loads(json.dumps(value, default=str))


def write(target: str | Path, clip: nn.Module, arch: str, head_kind: str,
          head: dict[str, torch.Tensor], classes: Sequence[str], info: dict[str, Any], card: str,
          tokenizer: Any = None) -> Path:
    """Write the model folder ``target`` atomically and return its path.

    ``clip``: the open_clip model at the exported weights; ``arch``: its open_clip architecture
    name (registered in this process); ``head``: the tensors of ``head_kind``; ``info``: metadata
    stored in model.json beside the classes; ``card``: README.md's text. An existing ``target``
    is replaced only if it is a model folder (has model.json), else :class:`FolderError`.
    """
    target = Path(target).expanduser().absolute()
    if head_kind not in HEAD_KINDS:
        raise FolderError(f"unknown head kind {head_kind!r}: one of {HEAD_KINDS}")
    if target.exists() and not (target / INFO).is_file():
        raise FolderError(f"{target} exists and is not a model folder (no {INFO}): choose "
                          "another --to, or remove it")
    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        raise FolderError(f"architecture {arch!r} is not registered with open_clip")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tmp.chmod(0o755)        # mkdtemp's 0700 would hide the model from other users
        preprocess_cfg = _json(dict(clip.visual.preprocess_cfg))
        (tmp / OPEN_CLIP_CONFIG).write_text(json.dumps(
            {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, indent=2))
        (tmp / f"{arch.replace('/', '-')}.json").write_text(json.dumps(model_cfg, indent=2))
        save_file({k: v.detach().to("cpu").contiguous().clone()
                   for k, v in clip.state_dict().items()}, str(tmp / WEIGHTS))
        save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in head.items()},
                  str(tmp / HEAD))
        if hasattr(tokenizer, "save_pretrained"):   # an HF tokenizer: "local-dir:" reads it here
            tokenizer.save_pretrained(str(tmp))
        (tmp / CARD).write_text(card)
        meta = {"format": FORMAT, "arch": arch, "head_kind": head_kind, "classes": list(classes),
                "preprocess_cfg": preprocess_cfg, **_json(info)}
        (tmp / INFO).write_text(json.dumps(meta, indent=2, sort_keys=True))   # last: complete
        _replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _replace(new: Path, target: Path) -> None:
    """Move the finished folder ``new`` to ``target``, replacing an earlier export."""
    if not target.exists():
        os.rename(new, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rename(target, old / "model")
    os.rename(new, target)
    shutil.rmtree(old, ignore_errors=True)


def read_image(source: str | Path | bytes) -> Image.Image:
    """An image file (path) or its encoded bytes as an RGB PIL image (as the study read it)."""
    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    with Image.open(handle) as img:
        return img.convert("RGB")


@dataclass
class FolderModel:
    """A loaded model folder: open_clip model, eval preprocessing, head and metadata."""

    clip: nn.Module
    preprocess: Callable[[Image.Image], torch.Tensor]
    classes: list[str]
    head_kind: str
    head: dict[str, torch.Tensor]
    info: dict[str, Any]
    device: torch.device

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed images -> (B, K) class logits."""
        features = self.clip.encode_image(images.to(self.device), normalize=True)   # (B, D)
        return head_logits(self.head_kind, features, self.head, self.clip.logit_scale)

    def predict(self, images: Iterable[Image.Image], batch_size: int = 256
                ) -> tuple[list[str], torch.Tensor]:
        """(class name per image, (N, K) class probabilities), in batches of ``batch_size``
        (the study's evaluation batch, so the numbers match it)."""
        names, probs, batch = [], [], []

        def flush() -> None:
            logits = self.logits(torch.stack(batch)).cpu()
            names.extend(self.classes[i] for i in logits.argmax(-1).tolist())
            probs.append(logits.softmax(-1))
            batch.clear()

        for image in images:
            batch.append(self.preprocess(image))
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
        return names, (torch.cat(probs) if probs else torch.zeros(0, len(self.classes)))


def load(folder: str | Path, device: str | torch.device = "cpu") -> FolderModel:
    """Read a model folder with plain open_clip (``local-dir:``) and its head."""
    folder = Path(folder).expanduser().absolute()
    if not (folder / INFO).is_file():
        raise FolderError(f"{folder} is not a model folder (no {INFO}): pass the folder "
                          "search.run or search.export wrote")
    info = json.loads((folder / INFO).read_text())
    clip, _, preprocess = open_clip.create_model_and_transforms(
        f"local-dir:{folder}", device=device, weights_only=True)
    clip.eval()
    head = load_file(str(folder / HEAD), device=str(device))
    return FolderModel(clip, preprocess, list(info["classes"]), info["head_kind"], head, info,
                       torch.device(device))
