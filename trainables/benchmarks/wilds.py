"""WILDS: iWildCam (macro-F1) and FMoW (worst-region accuracy), in WILDS' own layouts.

Both read the data's own metadata, with WILDS' official splits (ID val/test are WILDS' ``id_val``
/ ``id_test``; the OOD set is WILDS' OOD ``test``):

- ``iwildcam_v2.0/``: ``metadata.csv`` (``split``, ``filename``, ``y``), ``categories.csv``
  (``y``, ``name``: the class names), images under ``train/``. Every set also reports macro-F1 over
  the classes present in its labels (WILDS' metric).
- ``fmow_v1.1/``: ``rgb_metadata.csv`` (``split``, ``category``, ``country_code``, ``timestamp``),
  ``country_code_mapping.csv`` (``alpha-3``, ``region``), images ``images/rgb_img_<row>.png``.
  WILDS' "time_after_2016" scheme: ID = before 2013 (train / val / test rows), OOD test = test rows
  from 2016 on; sequestered rows are dropped. Regions group the samples; every set also reports
  worst-region accuracy, leaving out the "Other" region as WILDS does.

Neither open_clip nor clip_benchmark ships prompts for these, so templates default to CLIP's
ImageNet ones; set ``templates_file`` to use the papers' dataset-specific prompts.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from .. import metrics as M
from ..errors import DataError
from ..scoring import Scoring
from ..spec import DataSpec
from . import register
from .common import Options, finish, items_split, readable

IWILDCAM_SPLITS = {"train": "train", "val": "id_val", "test": "id_test", "ood": "test"}
FMOW_ID_BEFORE, FMOW_OOD_FROM = 2013, 2016


def _rows(opts: Options, rel: str, columns: set[str]) -> list[dict[str, str]]:
    path = opts.path(rel, "WILDS metadata file", "file")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = columns - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{path}: missing column(s) {sorted(missing)}")
        return list(reader)


@register("iwildcam")
def build_iwildcam(raw: dict[str, Any], spec: Path) -> DataSpec:
    """iWildCam 2020 (WILDS v2.0): ID = WILDS' train / id_val / id_test, OOD = test."""
    opts = Options(raw, spec, {"folder", "ood_name"})
    folder = str(opts.get("folder", "iwildcam_v2.0"))
    rows = _rows(opts, f"{folder}/metadata.csv", {"split", "filename", "y"})
    cats = _rows(opts, f"{folder}/categories.csv", {"y", "name"})
    names = {int(r["y"]): r["name"] for r in cats}
    num = max(int(r["y"]) for r in rows) + 1
    missing = [y for y in range(num) if y not in names]
    if missing:
        raise DataError(f"{opts.root / folder}/categories.csv: no name for label(s) {missing[:5]}")
    images = opts.root / folder / "train"
    by_split = {
        part: items_split(((str(images / r["filename"]), int(r["y"]), None)
                           for r in rows if r["split"] == split), opts.root / folder)
        for part, split in IWILDCAM_SPLITS.items()}
    f1 = (M.MACRO_F1,)
    return finish(opts, classes=tuple(names[y] for y in range(num)),
                  default_templates="openai_imagenet", train=by_split["train"],
                  val=by_split["val"], test=by_split["test"],
                  ood={str(opts.get("ood_name", "iwildcam-ood")): (by_split["ood"], Scoring(f1))},
                  id_scoring=Scoring(f1))


@register("fmow")
def build_fmow(raw: dict[str, Any], spec: Path) -> DataSpec:
    """FMoW (WILDS v1.1), split by year; groups are regions (worst-region accuracy)."""
    opts = Options(raw, spec, {"folder", "ood_name"})
    folder = str(opts.get("folder", "fmow_v1.1"))
    rows = _rows(opts, f"{folder}/rgb_metadata.csv",
                 {"split", "category", "country_code", "timestamp"})
    regions = {r["alpha-3"]: r["region"] for r in
               _rows(opts, f"{folder}/country_code_mapping.csv", {"alpha-3", "region"})}
    categories = sorted({r["category"] for r in rows if r["split"] != "seq"})
    index = {c: i for i, c in enumerate(categories)}
    images = opts.root / folder / "images"
    parts: dict[str, list] = {"train": [], "val": [], "test": [], "ood": []}
    for row_index, r in enumerate(rows):
        if r["split"] == "seq":
            continue
        try:
            year = int(r["timestamp"][:4])
        except ValueError:
            raise DataError(f"{opts.root / folder}/rgb_metadata.csv row {row_index + 2}: "
                            f"timestamp {r['timestamp']!r} does not start with a year") from None
        part = None
        if year < FMOW_ID_BEFORE:
            part = {"train": "train", "val": "val", "test": "test"}.get(r["split"])
        elif year >= FMOW_OOD_FROM and r["split"] == "test":
            part = "ood"
        if part is not None:
            parts[part].append((str(images / f"rgb_img_{row_index}.png"), index[r["category"]],
                                regions.get(r["country_code"], "Other")))
    split = {p: items_split(v, opts.root / folder) for p, v in parts.items()}
    worst = Scoring((M.WORST_GROUP_ACC,), exclude_groups=("Other",))
    return finish(opts, classes=tuple(readable(c) for c in categories),
                  default_templates="openai_imagenet", train=split["train"], val=split["val"],
                  test=split["test"],
                  ood={str(opts.get("ood_name", "fmow-ood")): (split["ood"], worst)},
                  id_scoring=worst)
