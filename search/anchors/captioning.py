"""Captions for ARF's text-compensated anchors from a ``transformers`` image-to-text model.

ARF (Han et al., CVPR 2024, §4.2.1) captions every training image once with a pretrained
captioner (BLIP-2 in the paper) and uses (image, caption) as extra contrastive pairs. Any model that
``AutoModelForImageTextToText`` loads works: BLIP, BLIP-2, GIT, a ``VisionEncoderDecoderModel``
(ViT-GPT2, …), given by hub id (from the local Hugging Face cache when offline) or a local folder.
Inputs come from the model's ``AutoProcessor``; when the folder has no joint processor (a
VisionEncoderDecoder saved with an image processor and a tokenizer) the two are loaded separately.
Generation is batched, on the GPU when one is given, with a tqdm bar, and unconditional (no prompt).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm import tqdm

from trainables.data import load_image
from trainables.errors import InputError

log = logging.getLogger(__name__)


class CaptionerError(InputError):
    """A captioner that cannot be loaded; the message names the fix."""


def _load_parts(source: str) -> tuple[Any, Any]:
    """(processor for images, tokenizer for decoding) of a captioner folder or hub id."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer
    from transformers.processing_utils import ProcessorMixin
    processor = AutoProcessor.from_pretrained(source)
    if isinstance(processor, ProcessorMixin):     # BLIP, BLIP-2, GIT: one object does both
        return processor, processor
    return AutoImageProcessor.from_pretrained(source), AutoTokenizer.from_pretrained(source)


@dataclass
class Captioner:
    """A loaded image-to-text model; :meth:`caption` runs it over image files in batches.

    ``batches`` counts the ``generate`` calls made so far (tests check the batching).
    """

    source: str
    model: Any
    processor: Any
    tokenizer: Any
    device: torch.device
    max_new_tokens: int = 30
    num_beams: int = 1
    batches: int = field(default=0, init=False)

    @classmethod
    def load(cls, source: str, device: str | torch.device = "cpu", max_new_tokens: int = 30,
             num_beams: int = 1) -> "Captioner":
        """Load ``source`` (a folder or hub id); raises :class:`CaptionerError` if it is not an
        image-to-text model that can be found (offline: it must be in the local hub cache)."""
        from transformers import AutoModelForImageTextToText
        check_captioner(source)
        try:
            processor, tokenizer = _load_parts(source)
            model = AutoModelForImageTextToText.from_pretrained(source)
        except (OSError, ValueError, KeyError) as err:
            raise CaptionerError(f"cannot load captioner {source!r}: "
                                 f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
                                 " (pass a local folder or a cached hub id of an image-to-text "
                                 "model, or --captioner world)") from None
        device = torch.device(device)
        if device.type == "cuda":        # half precision on a GPU (BLIP-2 is run so)
            model = model.to(torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        return cls(source, model.to(device).eval(), processor, tokenizer, device,
                   max_new_tokens, num_beams)

    @torch.no_grad()
    def caption(self, paths: Sequence[str], batch_size: int = 32, progress: bool = True
                ) -> list[str]:
        """One caption per image file, in order (whitespace-normalised, special tokens dropped)."""
        out: list[str] = []
        dtype = next(self.model.parameters()).dtype
        for start in tqdm(range(0, len(paths), batch_size), desc="captioning", unit="batch",
                          disable=not progress):
            images = [load_image(p) for p in paths[start:start + batch_size]]
            inputs = self.processor(images=images, return_tensors="pt").to(self.device)
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
            ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens,
                                      num_beams=self.num_beams)
            self.batches += 1
            out += [" ".join(t.split()) for t in
                    self.tokenizer.batch_decode(ids, skip_special_tokens=True)]
        empty = sum(1 for c in out if not c)
        if empty:
            log.warning("captioner %s produced %d empty caption(s) of %d", self.source, empty,
                        len(out))
        return out


def check_captioner(source: str) -> None:
    """Raise :class:`CaptionerError` unless ``source`` is a folder with a ``config.json`` or a hub
    id whose config can be read (from the local cache when offline). Cheap: loads no weights."""
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise CaptionerError(f"captioner folder {path} has no config.json (save the model "
                                 "with save_pretrained, or pass a hub id)")
        return
    from transformers import AutoConfig
    try:
        AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise CaptionerError(f"captioner {source!r} not found: neither a folder nor a hub id in "
                             f"the local cache ({str(err).splitlines()[0]}); download it first or "
                             "pass --captioner world") from None
