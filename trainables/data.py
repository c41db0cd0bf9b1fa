"""Datasets from a dataset spec: ImageFolder directories or CSV manifests, class names, templates.

A dataset spec is a YAML file (loaded with ``yaml.safe_load``); paths are relative to its folder::

    name: my-benchmark
    id:
      classes: [cat, dog]            # or classes_file: classes.txt; or omitted for ImageFolder
      templates: openai_imagenet     # a list of "…{}…" strings, or an open_clip-shipped list name
      context_templates: [...]       # CAR-FT context prompts (default: templates)
      train: {csv: id/train.csv}     # columns path,label (label: class name or index)
      val: {imagefolder: id/val}     # one sub-folder per class; omit val to hold out val_fraction
      test: {csv: id/test.csv}
      val_fraction: 0.02
    ood: {sketch: {csv: ood/sketch.csv}}                    # same classes as id
    zeroshot: {other: {classes: [...], templates: [...], test: {csv: ...}}}
    context: {style: {classes: [...], templates: [...], test: {csv: ...}}}
    anchors: {captions: {csv: ...}, candidates: {csv: ...}}  # columns path,caption

Every problem is a :class:`DataError` with a one-line message naming the file and the fix.
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import open_clip
import torch
import yaml
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

log = logging.getLogger(__name__)

Template = str | Callable[[str], str]
SHIPPED_TEMPLATES: dict[str, Sequence[Template]] = {
    "openai_imagenet": open_clip.OPENAI_IMAGENET_TEMPLATES,
    "simple_imagenet": open_clip.SIMPLE_IMAGENET_TEMPLATES,
}


class DataError(ValueError):
    """A dataset spec or data directory that cannot be used; the message names the fix."""


def fill(template: Template, classname: str) -> str:
    """A prompt: ``template.format(classname)`` or ``template(classname)`` (open_clip's lambdas)."""
    return template.format(classname) if isinstance(template, str) else template(classname)


@dataclass(frozen=True)
class Split:
    """One split on disk: ``kind`` is ``csv`` or ``imagefolder``."""

    kind: str
    path: Path


@dataclass(frozen=True)
class Task:
    """A labelled evaluation task with its own classes and templates (zero-shot, context)."""

    classes: tuple[str, ...]
    templates: tuple[Template, ...]
    test: Split


@dataclass(frozen=True)
class DataSpec:
    """A parsed dataset spec. ``val`` is None when it is held out from ``train``."""

    name: str
    root: Path
    classes: tuple[str, ...]
    templates: tuple[Template, ...]
    context_templates: tuple[Template, ...]
    train: Split
    val: Split | None
    test: Split
    val_fraction: float = 0.02
    ood: dict[str, Split] = field(default_factory=dict)
    zeroshot: dict[str, Task] = field(default_factory=dict)
    context: dict[str, Task] = field(default_factory=dict)
    anchors: dict[str, Split] = field(default_factory=dict)
    source: Path | None = None


_TOP_KEYS = {"name", "id", "ood", "zeroshot", "context", "anchors", "pretrain"}
_ID_KEYS = {"classes", "classes_file", "templates", "context_templates", "train", "val", "test",
            "val_fraction"}
_TASK_KEYS = {"classes", "classes_file", "templates", "test"}


def _check_keys(obj: Any, allowed: set[str], where: str, spec: Path) -> dict:
    if not isinstance(obj, dict):
        raise DataError(f"{spec}: {where} must be a mapping")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise DataError(f"{spec}: unknown key(s) {unknown} in {where}; allowed: {sorted(allowed)}")
    return obj


def _split(obj: Any, root: Path, where: str, spec: Path) -> Split:
    if not isinstance(obj, dict) or len(obj) != 1 or next(iter(obj)) not in ("csv", "imagefolder"):
        raise DataError(f"{spec}: {where} must be {{csv: FILE}} or {{imagefolder: DIR}}")
    kind, rel = next(iter(obj.items()))
    path = (root / str(rel)).resolve()
    if kind == "csv" and not path.is_file():
        raise DataError(f"{spec}: {where} manifest {path} does not exist (fix the path or "
                        "generate the data)")
    if kind == "imagefolder" and (not path.is_dir() or not any(path.iterdir())):
        raise DataError(f"{spec}: {where} directory {path} is missing or empty (point it at a "
                        "folder with one sub-folder of images per class)")
    return Split(kind, path)


def _templates(obj: Any, where: str, spec: Path) -> tuple[Template, ...]:
    if isinstance(obj, str):
        if obj not in SHIPPED_TEMPLATES:
            raise DataError(f"{spec}: {where} names unknown template list {obj!r}; use a list of "
                            f"strings with {{}} or one of {sorted(SHIPPED_TEMPLATES)}")
        return tuple(SHIPPED_TEMPLATES[obj])
    if not obj or not all(isinstance(t, str) and "{}" in t for t in obj):
        raise DataError(f"{spec}: {where} must be a non-empty list of strings containing {{}}")
    return tuple(obj)


def _classes(obj: dict, root: Path, where: str, spec: Path, folder: Split | None) -> tuple[str, ...]:
    if "classes" in obj:
        names = obj["classes"]
    elif "classes_file" in obj:
        path = root / obj["classes_file"]
        if not path.is_file():
            raise DataError(f"{spec}: {where} classes_file {path} does not exist")
        names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    elif folder is not None and folder.kind == "imagefolder":
        names = sorted(p.name for p in folder.path.iterdir() if p.is_dir())
    else:
        raise DataError(f"{spec}: {where} needs classes (a list) or classes_file")
    if not names or len(set(names)) != len(names):
        raise DataError(f"{spec}: {where} classes must be a non-empty list of distinct names")
    return tuple(str(n) for n in names)


def load_spec(path: str | Path) -> DataSpec:
    """Parse and check a dataset spec file; raises DataError naming the problem and the fix."""
    spec = Path(path).expanduser().resolve()
    if not spec.is_file():
        raise DataError(f"dataset spec {spec} does not exist (pass --data with a spec YAML)")
    try:
        raw = yaml.safe_load(spec.read_text())
    except yaml.YAMLError as err:
        raise DataError(f"{spec}: not valid YAML ({str(err).splitlines()[0]})") from None
    raw = _check_keys(raw, _TOP_KEYS, "the top level", spec)
    root = spec.parent
    idd = _check_keys(raw.get("id"), _ID_KEYS, "id", spec)
    for key in ("train", "test", "templates"):
        if key not in idd:
            raise DataError(f"{spec}: id.{key} is required")
    train = _split(idd["train"], root, "id.train", spec)
    templates = _templates(idd["templates"], "id.templates", spec)
    tasks: dict[str, dict[str, Task]] = {}
    for section in ("zeroshot", "context"):
        tasks[section] = {}
        for name, obj in (raw.get(section) or {}).items():
            obj = _check_keys(obj, _TASK_KEYS, f"{section}.{name}", spec)
            test = _split(obj.get("test"), root, f"{section}.{name}.test", spec)
            tasks[section][name] = Task(
                _classes(obj, root, f"{section}.{name}", spec, test),
                _templates(obj.get("templates", idd["templates"]), f"{section}.{name}.templates",
                           spec), test)
    val_fraction = float(idd.get("val_fraction", 0.02))
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"{spec}: id.val_fraction must be in (0, 1), got {val_fraction}")
    return DataSpec(
        name=str(raw.get("name", spec.stem)), root=root,
        classes=_classes(idd, root, "id", spec, train), templates=templates,
        context_templates=_templates(idd.get("context_templates", idd["templates"]),
                                     "id.context_templates", spec),
        train=train, val=_split(idd["val"], root, "id.val", spec) if "val" in idd else None,
        test=_split(idd["test"], root, "id.test", spec), val_fraction=val_fraction,
        ood={k: _split(v, root, f"ood.{k}", spec) for k, v in (raw.get("ood") or {}).items()},
        zeroshot=tasks["zeroshot"], context=tasks["context"],
        anchors={k: _split(v, root, f"anchors.{k}", spec)
                 for k, v in (raw.get("anchors") or {}).items()},
        source=spec)


# --- samples -------------------------------------------------------------------------------
def read_samples(split: Split, classes: Sequence[str], root: Path) -> list[tuple[str, int]]:
    """(image path, class index) pairs of a split; every class must have at least one image."""
    index = {c: i for i, c in enumerate(classes)}
    if split.kind == "imagefolder":
        missing = [c for c in classes if not (split.path / c).is_dir()]
        if missing:
            raise DataError(f"{split.path}: no folder for class(es) {missing[:5]} (add images "
                            "for them or remove them from the spec's classes)")
        samples = make_dataset(str(split.path), index, extensions=IMG_EXTENSIONS,
                               allow_empty=True)
    else:
        samples = []
        with split.path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
                raise DataError(f"{split.path}: a split manifest needs columns path,label")
            for row in reader:
                label = row["label"]
                if label in index:
                    idx = index[label]
                elif label.isdigit() and int(label) < len(classes):
                    idx = int(label)
                else:
                    raise DataError(f"{split.path}: label {label!r} is not one of the spec's "
                                    "classes (fix the manifest or the classes list)")
                samples.append((str((root / row["path"]).resolve()), idx))
    counts = torch.bincount(torch.tensor([s[1] for s in samples], dtype=torch.long),
                            minlength=len(classes)) if samples else torch.zeros(len(classes))
    empty = [classes[i] for i in range(len(classes)) if counts[i] == 0]
    if empty:
        raise DataError(f"{split.path}: class(es) {empty[:5]} have no images (add images or "
                        "remove the classes from the spec)")
    return samples


def read_pairs(split: Split, root: Path) -> list[tuple[str, str]]:
    """(image path, caption) pairs from a ``path,caption`` manifest (ARF anchors)."""
    if split.kind != "csv":
        raise DataError(f"{split.path}: image-text pairs must be a CSV manifest with path,caption")
    with split.path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"path", "caption"} <= set(reader.fieldnames):
            raise DataError(f"{split.path}: an image-text manifest needs columns path,caption")
        pairs = [(str((root / r["path"]).resolve()), r["caption"]) for r in reader]
    if not pairs:
        raise DataError(f"{split.path}: the manifest has no rows")
    return pairs


def hold_out(samples: list[tuple[str, int]], fraction: float, seed: int
             ) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Deterministically split samples into (train, val) with ``fraction`` held out as val."""
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, round(fraction * len(samples)))
    val = sorted(order[:n_val])
    keep = sorted(order[n_val:])
    return [samples[i] for i in keep], [samples[i] for i in val]


def load_image(path: str) -> Image.Image:
    """Open an image as RGB; a corrupt or missing file raises DataError naming it."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"cannot read image {path}: {err} (remove or replace the file)") from None


class LabeledImages(Dataset):
    """(image tensor (3, H, W), class index) pairs with open_clip's preprocessing transform."""

    def __init__(self, samples: list[tuple[str, int]], transform: Callable):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        return self.transform(load_image(path)), label


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


@dataclass
class TaskData:
    """The datasets a run needs, built once from a spec and the model's transforms."""

    spec: DataSpec
    train: LabeledImages
    val: LabeledImages
    test: LabeledImages
    ood: dict[str, LabeledImages]
    zeroshot: dict[str, tuple[Task, LabeledImages]]
    context: dict[str, tuple[Task, LabeledImages]]
    anchors: dict[str, ImageTextPairs]


def build_task_data(spec: DataSpec, preprocess_train: Callable, preprocess_val: Callable,
                    seed: int = 0, anchors: Sequence[str] = ()) -> TaskData:
    """Read every split of ``spec`` (and the named anchor sets) into datasets."""
    train = read_samples(spec.train, spec.classes, spec.root)
    if spec.val is None:
        train, val = hold_out(train, spec.val_fraction, seed)
    else:
        val = read_samples(spec.val, spec.classes, spec.root)
    missing = [a for a in anchors if a not in spec.anchors]
    if missing:
        raise DataError(f"{spec.source}: anchors {missing} are required by this method but the "
                        "spec has no such entry under anchors: (prepare them first)")

    def task(t: Task) -> tuple[Task, LabeledImages]:
        return t, LabeledImages(read_samples(t.test, t.classes, spec.root), preprocess_val)

    return TaskData(
        spec=spec, train=LabeledImages(train, preprocess_train),
        val=LabeledImages(val, preprocess_val),
        test=LabeledImages(read_samples(spec.test, spec.classes, spec.root), preprocess_val),
        ood={k: LabeledImages(read_samples(s, spec.classes, spec.root), preprocess_val)
             for k, s in spec.ood.items()},
        zeroshot={k: task(t) for k, t in spec.zeroshot.items()},
        context={k: task(t) for k, t in spec.context.items()},
        anchors={k: ImageTextPairs(read_pairs(spec.anchors[k], spec.root), preprocess_train)
                 for k in anchors})
