"""A tiny on-disk benchmark in the project's dataset-spec format (CSV + ImageFolder), for tests.

Images are 16×16 PNGs whose colour depends on the class (so a model can learn the task) and whose
"style" (a brightness/noise change) differs between ID and OOD splits. Zero-shot and context tasks
and ARF anchor manifests are included, so every code path of the data layer is exercised.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ID_CLASSES = ["red", "green", "blue", "yellow"]
ZS_CLASSES = ["cyan", "magenta"]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220),
           "yellow": (230, 220, 30), "cyan": (30, 220, 220), "magenta": (220, 30, 220)}
STYLES = ["plain", "noisy"]


def _image(rng: np.random.Generator, colour: str, style: str, size: int = 16) -> Image.Image:
    base = np.array(COLOURS[colour], dtype=np.float32)
    arr = np.ones((size, size, 3), np.float32) * base
    arr += rng.normal(0, 60 if style == "noisy" else 15, arr.shape)
    if style == "noisy":
        arr = arr * 0.6 + 40
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _write_split(root: Path, name: str, classes: list[str], style: str, per_class: int,
                 rng: np.random.Generator, label_of=None) -> list[dict[str, str]]:
    rows = []
    for c in classes:
        for i in range(per_class):
            rel = f"images/{name}/{c}_{i}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            _image(rng, c, style).save(root / rel)
            rows.append({"path": rel, "label": label_of(c, style) if label_of else c})
    return rows


def _csv(path: Path, rows: list[dict[str, str]], cols: tuple[str, ...] = ("path", "label")) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(cols))
        w.writeheader()
        for r in rows:
            w.writerow({c: r[c] for c in cols})
    return path.name


def write_tiny_spec(root: Path, per_class: int = 6, seed: int = 0) -> Path:
    """Write the tiny benchmark under ``root``; returns the spec path."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    train = _write_split(root, "train", ID_CLASSES, "plain", per_class, rng)
    val = _write_split(root, "val", ID_CLASSES, "plain", max(2, per_class // 2), rng)
    test = _write_split(root, "test", ID_CLASSES, "plain", max(2, per_class // 2), rng)
    ood = _write_split(root, "ood_noisy", ID_CLASSES, "noisy", max(2, per_class // 2), rng)
    zs = _write_split(root, "zs", ZS_CLASSES, "plain", max(2, per_class // 2), rng)
    ctx = _write_split(root, "ctx", ID_CLASSES, "plain", 2, rng) + \
        _write_split(root, "ctx2", ID_CLASSES, "noisy", 2, rng)
    for r in ctx:
        r["label"] = "noisy" if "ctx2" in r["path"] else "plain"
    # test split as an ImageFolder, to cover both formats
    for r in test:
        src = root / r["path"]
        dst = root / "test_folder" / r["label"] / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        src.replace(dst)
    captions = [{"path": r["path"], "caption": f"a {r['label']} square"} for r in train]
    candidates = [{"path": r["path"], "caption": f"a picture of {r['label']}"} for r in train + zs]
    for name, rows in (("train", train), ("val", val), ("ood_noisy", ood), ("zs", zs),
                       ("ctx", ctx)):
        _csv(root / f"{name}.csv", rows)
    _csv(root / "captions.csv", captions, ("path", "caption"))
    _csv(root / "candidates.csv", candidates, ("path", "caption"))
    spec = {
        "name": "tiny",
        "id": {"classes": ID_CLASSES, "templates": ["a photo of a {}.", "a {} thing."],
               "context_templates": ["a photo of a {}.", "a noisy photo of a {}."],
               "train": {"csv": "train.csv"}, "val": {"csv": "val.csv"},
               "test": {"imagefolder": "test_folder"}},
        "ood": {"noisy": {"csv": "ood_noisy.csv"}},
        "zeroshot": {"other": {"classes": ZS_CLASSES, "templates": ["a photo of a {}."],
                               "test": {"csv": "zs.csv"}}},
        "context": {"style": {"classes": STYLES, "templates": ["a {} image."],
                              "test": {"csv": "ctx.csv"}}},
        "anchors": {"captions": {"csv": "captions.csv"}, "candidates": {"csv": "candidates.csv"},
                    "retrieved": {"csv": "candidates.csv"}},
    }
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
