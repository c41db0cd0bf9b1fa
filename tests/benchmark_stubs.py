"""Images whose colour encodes a class index, and a stub model that reads it back, so the scores
of the built-in benchmark tests are known exactly (see tests/test_benchmarks.py)."""
from __future__ import annotations

import csv
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from trainables.data import build_task_data
from trainables.evaluate import Evaluator

D = 256                                   # stub feature size: one dimension per colour code


# --- images whose colour is a class code, and a stub model that reads it -------------------------
def write_image(path: Path, code: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10 * (code % 25) + 5, 10 * (code // 25) + 5, 0)).save(path)


def decode(img: Image.Image) -> torch.Tensor:
    """The transform: an image -> its code (1,) (centre pixel, robust to JPEG and cropping)."""
    r, g, _ = img.getpixel((img.width // 2, img.height // 2))
    return torch.tensor([round((r - 5) / 10) + 25 * round((g - 5) / 10)])


class StubModel(nn.Module):
    """Features: one-hot of the code. ID logits: 5 on the coded class, 10 on ``distractor``."""

    def __init__(self, num_classes: int, distractor: int | None = None):
        super().__init__()
        self.num_classes, self.distractor = num_classes, distractor

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(x[:, 0].long(), D).float()

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        logits = 5 * feats[:, :self.num_classes]
        if self.distractor is not None:
            logits[:, self.distractor] += 10
        return logits


class StubMethod:
    head_from_text = False

    def trained_names(self, model):
        return []

    def id_logits(self, model, feats, head):
        return model.head(feats)


def evaluate(spec, distractor=None, new_head=None, seed=0, sets=None):
    data = build_task_data(spec, decode, decode, seed=seed)
    ev = Evaluator(data, tokenizer=None, batch_size=64)
    if new_head is not None:                     # zero-shot head of the new classes (base-to-new)
        ev._text_head = lambda model, es, frozen: new_head
    out = ev.evaluate(StubModel(len(spec.classes), distractor), StubMethod(),
                      sets or ev.report_sets)
    return data, out


def labels_of(ds) -> list[int]:
    return [y for _, y in ds.samples]


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
