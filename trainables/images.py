"""Torch datasets over image files: labelled images, image-caption pairs, and their transforms."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .errors import DataError

#: Pillow modes of more than 8 bits per channel: 16-bit greyscale (PNG, TIFF) and 32-bit integer.
#: ``Image.convert("RGB")`` clips them at 255 (a 16-bit photo becomes near-binary), so they are
#: scaled to 8 bits here instead.
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def load_image(path: str) -> Image.Image:
    """Open an image as 8-bit RGB; a corrupt or missing file, or one whose pixel format cannot
    be converted without losing its range, raises DataError naming it."""
    try:
        with Image.open(path) as img:
            if img.mode in WIDE_MODES:
                return _wide_to_rgb(img, path)
            if img.mode == "F":
                raise DataError(f"cannot read image {path}: 32-bit float pixels (mode F) have no "
                                "fixed range to scale to 8 bits (convert it to 8- or 16-bit)")
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"cannot read image {path}: {err} (remove or replace the file)") from None


def _wide_to_rgb(img: Image.Image, path: str) -> Image.Image:
    """A 16-bit (or 32-bit integer holding 16-bit values) greyscale image as 8-bit RGB, scaled by
    255/65535 (rounded), never clipped."""
    pixels = np.asarray(img).astype(np.int64)              # (H, W)
    if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
        raise DataError(f"cannot read image {path}: {img.mode} pixels outside 0..65535 have no "
                        "known range to scale to 8 bits (save it as 8- or 16-bit)")
    grey = np.rint(pixels * (255.0 / 65535.0)).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


class LabeledImages(Dataset):
    """(image tensor (3, H, W), class index) pairs with open_clip's preprocessing transform;
    ``groups`` (one per sample, e.g. FMoW's region) when the split has them."""

    def __init__(self, samples: list[tuple[str, int]], transform: Callable,
                 groups: list[str] | None = None):
        self.samples = samples
        self.transform = transform
        self.groups = groups

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        return self.transform(load_image(path)), label


class CropBorder:
    """Cut ``pixels`` from every side of a PIL image, then apply ``transform`` (ObjectNet's
    images carry a 1-px border; wise-ft crops 2 px)."""

    def __init__(self, pixels: int, transform: Callable):
        self.pixels, self.transform = pixels, transform

    def __call__(self, img: Image.Image) -> torch.Tensor:
        w, h = img.size
        p = self.pixels
        return self.transform(img.crop((p, p, w - p, h - p)) if w > 2 * p and h > 2 * p else img)


class ImageTextPairs(Dataset):
    """(image tensor (3, H, W), caption string) pairs; batches are tokenised by the collate fn."""

    def __init__(self, pairs: list[tuple[str, str]], transform: Callable):
        self.pairs = pairs
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        path, caption = self.pairs[i]
        return self.transform(load_image(path)), caption


def pair_collate(tokenizer: Callable) -> Callable:
    """A collate function turning [(image, caption)] into (images (A,3,H,W), tokens (A, L))."""

    def collate(items: list[tuple[torch.Tensor, str]]) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.stack([im for im, _ in items])
        return images, tokenizer([c for _, c in items])

    return collate
