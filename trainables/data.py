"""Datasets from a parsed dataset spec (:mod:`trainables.spec`: the YAML format and its checks).

Reads the samples of each split (CSV manifests or ImageFolder trees), verifies the images once per
process, and builds the task's datasets (train/val/test, OOD, zero-shot, context, anchors) with
the model's preprocessing. Every problem is a :class:`DataError` with a one-line message naming
the file and the fix.
"""
from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from .errors import DataError
from .images import CropBorder, ImageTextPairs, LabeledImages, load_image, pair_collate  # noqa: F401 (re-exported)
from .sampling import (  # noqa: F401 (hold_out
    NEW_SET,
    hold_out,
    only_base,
    only_new,
    sample_shots,  # re-exported)
    val_shots,
)
from .spec import DataSpec, Split, Task
from .spec_env import env_vars  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


# --- samples -------------------------------------------------------------------------------
def under(root: str, relative: str) -> str:
    """The normalised path of a manifest entry under the absolute ``root``. Lexical
    (``normpath``), not ``Path.resolve()``: resolving follows every component's symlinks, one
    ``lstat`` each, which cost 3 s per trial start for the embedded world's 17k images."""
    return os.path.normpath(os.path.join(root, relative))


def read_samples(split: Split, classes: Sequence[str], root: Path) -> list[tuple[str, int]]:
    """(image path, class index) pairs of a split; every class must have at least one image."""
    return read_split(split, classes, root)[0]


def read_split(split: Split, classes: Sequence[str], root: Path
               ) -> tuple[list[tuple[str, int]], list[str] | None]:
    """(samples, groups): the (image path, class index) pairs and, when the manifest has a
    ``group`` column (or the builder gave groups), each sample's group. Manifests and folders must
    have an image for every class; a builder's ``items`` are taken as read."""
    if split.kind == "items":
        items = split.items or ()
        bad = [y for _, y, _ in items if not 0 <= y < len(classes)]
        if not items or bad:
            raise DataError(f"{split.path}: no images found, or labels {bad[:3]} outside the "
                            f"{len(classes)} classes (check the data root)")
        groups = [g for _, _, g in items]
        return [(p, y) for p, y, _ in items], None if None in groups else groups
    index = {c: i for i, c in enumerate(classes)}
    groups: list[str] | None = None
    if split.kind == "imagefolder":
        missing = [c for c in classes if not (split.path / c).is_dir()]
        if missing:
            raise DataError(f"{split.path}: no folder for class(es) {missing[:5]} (add images "
                            "for them or remove them from the spec's classes)")
        samples = make_dataset(str(split.path), index, extensions=IMG_EXTENSIONS,
                               allow_empty=True)
    else:
        samples, base = [], os.path.abspath(root)
        with split.path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
                raise DataError(f"{split.path}: a split manifest needs columns path,label")
            groups = [] if "group" in reader.fieldnames else None
            for row in reader:
                if groups is not None:
                    groups.append(row["group"])
                label = row["label"]
                if label in index:
                    idx = index[label]
                elif label.isdigit() and int(label) < len(classes):
                    idx = int(label)
                else:
                    raise DataError(f"{split.path}: label {label!r} is not one of the spec's "
                                    "classes (fix the manifest or the classes list)")
                samples.append((under(base, row["path"]), idx))
    counts = torch.bincount(torch.tensor([s[1] for s in samples], dtype=torch.long),
                            minlength=len(classes)) if samples else torch.zeros(len(classes))
    empty = [classes[i] for i in range(len(classes)) if counts[i] == 0]
    if empty:
        raise DataError(f"{split.path}: class(es) {empty[:5]} have no images (add images or "
                        "remove the classes from the spec)")
    return samples, groups


_IMAGE_OK: dict[str, str | None] = {}    # path -> None if it verified, else why not (per process)


def _image_problem(path: str) -> str | None:
    """None if PIL can open and verify ``path`` (headers and checksums, no decoding, ~0.1 ms for a
    small PNG), else the reason; memoised, so a process checks each file once."""
    if path not in _IMAGE_OK:
        try:
            with Image.open(path) as image:
                image.verify()
            _IMAGE_OK[path] = None
        except Exception as err:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, …
            _IMAGE_OK[path] = f"{type(err).__name__}: {err}"[:200]
    return _IMAGE_OK[path]


def verified(samples: list[tuple[str, int]], groups: list[str] | None, spec: DataSpec,
             split: Split) -> tuple[list[tuple[str, int]], list[str] | None]:
    """``(samples, groups)`` without corrupt or unreadable images: with ``on_corrupt: skip`` they
    are dropped with a warning that counts them; with ``error`` (the default) a DataError names
    the first one and the fix."""
    bad = [i for i, (path, _) in enumerate(samples) if _image_problem(path) is not None]
    if not bad:
        return samples, groups
    first = samples[bad[0]][0]
    if spec.on_corrupt == "error":
        raise DataError(f"{split.path}: {len(bad)} corrupt or unreadable image(s), e.g. {first} "
                        f"({_image_problem(first)}): replace or remove them, or set on_corrupt: "
                        "skip under id: in the dataset spec to drop them with a warning")
    log.warning("%s: skipped %d corrupt or unreadable image(s) of %d (on_corrupt: skip), e.g. %s",
                split.path, len(bad), len(samples), first)
    drop = set(bad)
    keep = [i for i in range(len(samples)) if i not in drop]
    return ([samples[i] for i in keep],
            None if groups is None else [groups[i] for i in keep])


def read_pairs(split: Split, root: Path) -> list[tuple[str, str]]:
    """(image path, caption) pairs from a ``path,caption`` manifest (ARF anchors)."""
    if split.kind != "csv":
        raise DataError(f"{split.path}: image-text pairs must be a CSV manifest with path,caption")
    with split.path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"path", "caption"} <= set(reader.fieldnames):
            raise DataError(f"{split.path}: an image-text manifest needs columns path,caption")
        base = os.path.abspath(root)
        pairs = [(under(base, r["path"]), r["caption"]) for r in reader]
    if not pairs:
        raise DataError(f"{split.path}: the manifest has no rows")
    return pairs


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


def _group_map(samples: list[tuple[str, int]], groups: list[str] | None) -> dict[str, str]:
    """image path -> group, for a split read with groups (empty when it has none)."""
    return {} if groups is None else dict(zip((p for p, _ in samples), groups))


def _groups_of(samples: list[tuple[str, int]], group_of: dict[str, str]) -> list[str] | None:
    """The groups of ``samples`` (filtered, held out or k-shot), looked up by image path."""
    out = [group_of.get(p) for p, _ in samples]
    return None if not group_of or None in out else out


def build_task_data(spec: DataSpec, preprocess_train: Callable, preprocess_val: Callable,
                    seed: int = 0, anchors: Sequence[str] = ()) -> TaskData:
    """Read every split of ``spec`` (and the named anchor sets) into datasets.

    ``seed`` fixes the held-out ID val and the k-shot draw (without a val split, k-shot val is
    drawn from the train images the k-shot train set left out). Base-to-new: the ID splits keep
    the base classes, and the new classes' test images become the zero-shot set ``new``.
    """
    classes, num_base = spec.label_classes, len(spec.classes)
    train, groups = verified(*read_split(spec.train, classes, spec.root), spec, spec.train)
    group_of = _group_map(train, groups)
    val = None
    if spec.val is not None:
        val, groups = verified(*read_split(spec.val, classes, spec.root), spec, spec.val)
        group_of.update(_group_map(val, groups))
    test, groups = verified(*read_split(spec.test, classes, spec.root), spec, spec.test)
    test_group_of = _group_map(test, groups)
    zeroshot: dict[str, tuple[Task, LabeledImages]] = {}
    if spec.new_classes:
        new = only_new(test, num_base)
        zeroshot[NEW_SET] = (Task(spec.new_classes, spec.templates, spec.test),
                             LabeledImages(new, preprocess_val, _groups_of(new, test_group_of)))
        train, test = only_base(train, num_base), only_base(test, num_base)
        val = None if val is None else only_base(val, num_base)
    if spec.shots and val is None:      # k-shot train, then k-shot val from the other images
        picked = sample_shots(train, spec.shots, seed)
        chosen = set(picked)
        val = sample_shots([s for s in train if s not in chosen], val_shots(spec.shots), seed)
        train = picked
    elif spec.shots:
        train = sample_shots(train, spec.shots, seed)
        val = sample_shots(val, val_shots(spec.shots), seed)
    elif val is None:
        train, val = hold_out(train, spec.val_fraction, seed)
    missing = [a for a in anchors if a not in spec.anchors]
    if missing:
        raise DataError(f"{spec.source}: anchors {missing} are required by this method but the "
                        "spec has no such entry under anchors: (prepare them first)")

    def images(split: Split, key: str, split_classes: Sequence[str]) -> LabeledImages:
        samples, groups = verified(*read_split(split, split.classes or split_classes, spec.root),
                                   spec, split)
        border = spec.scoring[key].crop_border if key in spec.scoring else 0
        return LabeledImages(samples, CropBorder(border, preprocess_val) if border else
                             preprocess_val, groups)

    def task(t: Task, key: str) -> tuple[Task, LabeledImages]:
        return t, images(t.test, key, t.classes)

    zeroshot.update({k: task(t, f"zeroshot/{k}") for k, t in spec.zeroshot.items()})
    return TaskData(
        spec=spec, train=LabeledImages(train, preprocess_train),
        val=LabeledImages(val, preprocess_val, _groups_of(val, group_of)),
        test=LabeledImages(test, preprocess_val, _groups_of(test, test_group_of)),
        ood={k: images(s, f"ood/{k}", spec.classes) for k, s in spec.ood.items()},
        zeroshot=zeroshot,
        context={k: task(t, f"context/{k}") for k, t in spec.context.items()},
        anchors={k: ImageTextPairs(read_pairs(spec.anchors[k], spec.root), preprocess_train)
                 for k in anchors})
