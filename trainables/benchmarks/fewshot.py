"""The few-shot suite in CoOp's layout (``DATASETS.md`` of CoOp/CoCoOp, used by CLIP-CITE).

``<root>/<folder>/`` holds the images and CoOp's split file ``split_zhou_<Name>.json`` —
``{"train"|"val"|"test": [[relative image path, label, class name], …]}`` — except FGVC-Aircraft,
read from its own ``variants.txt`` and ``images_variant_{train,val,test}.txt``. ImageNet uses the
``imagenet`` builder (``specs/imagenet_fewshot.yaml``). k-shot sampling and base-to-new are the
common ``shots`` / ``base_to_new`` options (:mod:`trainables.sampling`).

Class names: the split file's (the data's own), or clip_benchmark's list in label order where the
spec says ``classes: clip_benchmark:<dataset>`` (same count checked). Templates: clip_benchmark's
per-dataset templates; it ships none for UCF101, so that spec reads ``ucf101/templates.txt``,
which the user provides (one template per line with ``{}``, e.g. CLIP's "a photo of a person
doing {}.").
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..spec import DataSpec
from . import register
from .common import Options, finish, items_split
from .metadata import clip_benchmark_classnames


@dataclass(frozen=True)
class CoopDataset:
    folder: str
    image_dir: str
    split_file: str | None          # None: FGVC-Aircraft's variant files
    templates: Any                  # default templates (clip_benchmark key or a file under root)


DATASETS = {
    "caltech101": CoopDataset("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json",
                              "clip_benchmark:caltech101"),
    "oxford_pets": CoopDataset("oxford_pets", "images", "split_zhou_OxfordPets.json",
                               "clip_benchmark:pets"),
    "stanford_cars": CoopDataset("stanford_cars", "", "split_zhou_StanfordCars.json",
                                 "clip_benchmark:cars"),
    "oxford_flowers": CoopDataset("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json",
                                  "clip_benchmark:flowers"),
    "food101": CoopDataset("food-101", "images", "split_zhou_Food101.json",
                           "clip_benchmark:food101"),
    "fgvc_aircraft": CoopDataset("fgvc_aircraft", "images", None, "clip_benchmark:fgvc_aircraft"),
    "sun397": CoopDataset("sun397", "SUN397", "split_zhou_SUN397.json", "clip_benchmark:sun397"),
    "dtd": CoopDataset("dtd", "images", "split_zhou_DescribableTextures.json",
                       "clip_benchmark:dtd"),
    "eurosat": CoopDataset("eurosat", "2750", "split_zhou_EuroSAT.json",
                           "clip_benchmark:eurosat"),
    "ucf101": CoopDataset("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json",
                          {"file": "ucf101/templates.txt"}),
}
PARTS = ("train", "val", "test")


@register("coop")
def build(raw: dict[str, Any], spec: Path) -> DataSpec:
    """One data set of the few-shot suite (``dataset:`` a key of :data:`DATASETS`)."""
    opts = Options(raw, spec, {"dataset", "classes"})
    name = opts.get("dataset")
    if name not in DATASETS:
        raise DataError(f"{spec}: dataset must be one of {sorted(DATASETS)}, got {name!r}")
    ds = DATASETS[name]
    folder = opts.path(ds.folder, f"{name} folder")
    image_dir = folder / ds.image_dir
    parts, names = (_variants(opts, folder, image_dir) if ds.split_file is None
                    else _split_json(opts, folder / ds.split_file, image_dir))
    classes = tuple(names[i] for i in range(len(names)))
    override = opts.get("classes", "split")
    if isinstance(override, str) and override.startswith("clip_benchmark:"):
        shipped = clip_benchmark_classnames(override.partition(":")[2], spec)
        if len(shipped) != len(classes):
            raise DataError(f"{spec}: {override} has {len(shipped)} class names but the data has "
                            f"{len(classes)} classes (use classes: split)")
        classes = shipped
    elif override != "split":
        raise DataError(f"{spec}: classes must be 'split' or clip_benchmark:<dataset>")
    splits = {p: items_split(((str(image_dir / rel), y, None) for rel, y in parts[p]),
                             folder / (ds.split_file or f"images_variant_{p}.txt"))
              for p in PARTS}
    return finish(opts, classes=classes, default_templates=ds.templates, train=splits["train"],
                  val=splits["val"], test=splits["test"])


def _split_json(opts: Options, path: Path, image_dir: Path
                ) -> tuple[dict[str, list[tuple[str, int]]], dict[int, str]]:
    if not path.is_file():
        raise DataError(f"{path}: CoOp split file missing (download it as CoOp's DATASETS.md "
                        "says)")
    try:
        raw = json.loads(path.read_text())
        parts = {p: [(str(rel), int(y), str(c)) for rel, y, c in raw[p]] for p in PARTS}
    except (ValueError, KeyError, TypeError):
        raise DataError(f"{path}: expected {{train|val|test: [[path, label, class name], …]}}"
                        ) from None
    names: dict[int, str] = {}
    for rows in parts.values():
        for _, y, c in rows:
            if names.setdefault(y, c) != c:
                raise DataError(f"{path}: label {y} names two classes ({names[y]!r}, {c!r})")
    _check_labels(names, path)
    return {p: [(rel, y) for rel, y, _ in rows] for p, rows in parts.items()}, names


def _variants(opts: Options, folder: Path, image_dir: Path
              ) -> tuple[dict[str, list[tuple[str, int]]], dict[int, str]]:
    variants = opts.text_lines(f"{folder.name}/variants.txt", "FGVC-Aircraft variants.txt")
    index = {v: i for i, v in enumerate(variants)}
    parts: dict[str, list[tuple[str, int]]] = {}
    for p in PARTS:
        rows = []
        for line in opts.text_lines(f"{folder.name}/images_variant_{p}.txt",
                                    f"FGVC-Aircraft images_variant_{p}.txt"):
            image_id, _, variant = line.partition(" ")
            if variant not in index:
                raise DataError(f"{folder}/images_variant_{p}.txt: variant {variant!r} is not in "
                                "variants.txt")
            rows.append((f"{image_id}.jpg", index[variant]))
        parts[p] = rows
    return parts, dict(enumerate(variants))


def _check_labels(names: dict[int, str], path: Path) -> None:
    if sorted(names) != list(range(len(names))):
        raise DataError(f"{path}: labels must run 0 … K-1 with every class present")
