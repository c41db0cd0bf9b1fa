"""ImageNet and its distribution shifts: ImageNet-V2, -Sketch, -R, -A and ObjectNet.

ID classes are the WordNet-id folders of ``train`` (all 1000 for the real data), named with CLIP's
class names (open_clip) via timm's WordNet-id list. ID val is held out from train (2%); ID test is
ImageNet's validation set in class folders. OOD sets, each ``{layout, path[, subset]}``:

- ``wnid_folders``: one folder per WordNet id (ImageNet-Sketch, -R, -A). With ``subset:
  imagenet_r`` / ``imagenet_a`` the set is labelled with that 200-class subset (timm's list,
  restricted to the ID classes present) and scored only over those classes' logits.
- ``index_folders``: folders ``0`` … ``999`` named by ImageNet label index (ImageNet-V2's format).
- ``objectnet``: ``images/<folder>/`` plus ObjectNet's own ``mappings/``
  (``folder_to_objectnet_label.json``, ``objectnet_to_imagenet_1k.json``,
  ``pytorch_to_imagenet_2012_id.json``, ``imagenet_to_label_2012_v2``). Only the ObjectNet classes
  that overlap ImageNet (113) are kept; each is scored by the max over the logits of the ImageNet
  classes it maps to (wise-ft's ``project_logits``), after cropping the 1-px border (2 px, as
  wise-ft does).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..scoring import Scoring, parse_metrics, subset_projection
from ..spec import DataSpec, Split
from . import register
from .common import Options, finish, items_split, scan_folders
from .metadata import imagenet_classname, imagenet_index, imagenet_subset, imagenet_wnids

LAYOUTS = ("wnid_folders", "index_folders", "objectnet")


@register("imagenet")
def build(raw: dict[str, Any], spec: Path) -> DataSpec:
    """ImageNet (ID) with the OOD sets listed under ``ood``."""
    opts = Options(raw, spec, {"train", "test", "ood"})
    train_dir = opts.path(opts.get("train", "imagenet/train"), "ImageNet train folder")
    wnids = tuple(sorted(e.name for e in train_dir.iterdir() if e.is_dir()))
    unknown = [w for w in wnids if w not in imagenet_index()]
    if not wnids or unknown:
        raise DataError(f"{train_dir}: expected one folder per ImageNet WordNet id (n01440764, …);"
                        f" found {unknown[:3] or 'none'}")
    id_index = {w: i for i, w in enumerate(wnids)}
    classes = tuple(imagenet_classname(w) for w in wnids)
    train = items_split(scan_folders(train_dir, id_index.get, "ImageNet train"), train_dir)
    test_dir = opts.path(opts.get("test", "imagenet/val"), "ImageNet val folder")
    test = items_split(scan_folders(test_dir, _strict(id_index, test_dir, "WordNet id"),
                                    "ImageNet val (one folder per WordNet id; reorganise a flat "
                                    "val with ImageNet's valprep.sh)"), test_dir)
    ood = {}
    for name, entry in (opts.get("ood") or {}).items():
        ood[name] = _ood_set(opts, name, entry, wnids, id_index)
    return finish(opts, classes=classes, default_templates="openai_imagenet", train=train,
                  test=test, ood=ood)


def _strict(index: dict[str, int], folder: Path, what: str):
    def label_of(name: str) -> int:
        if name not in index:
            raise DataError(f"{folder}: folder {name!r} is not a {what} of the ID classes")
        return index[name]
    return label_of


def _ood_set(opts: Options, name: str, entry: Any, wnids: tuple[str, ...],
             id_index: dict[str, int]) -> tuple[Split, Scoring]:
    where = f"ood.{name}"
    if not isinstance(entry, dict) or entry.get("layout") not in LAYOUTS or "path" not in entry \
            or set(entry) - {"layout", "path", "subset", "metrics"}:
        raise DataError(f"{opts.spec}: {where} must be {{layout: one of {list(LAYOUTS)}, path: "
                        "DIR[, subset: imagenet_r|imagenet_a][, metrics: [...]]}")
    folder = opts.path(entry["path"], f"{where} folder")
    metrics = parse_metrics(entry.get("metrics"), where, opts.spec)
    layout = entry["layout"]
    if layout == "objectnet":
        return _objectnet(opts, folder, id_index, metrics)
    if layout == "index_folders":
        all_wnids = imagenet_wnids()

        def by_index(folder_name: str) -> int:
            if not folder_name.isdigit() or int(folder_name) >= len(all_wnids) \
                    or all_wnids[int(folder_name)] not in id_index:
                raise DataError(f"{folder}: folder {folder_name!r} is not the label index of an "
                                "ID class (expected 0 … 999)")
            return id_index[all_wnids[int(folder_name)]]
        return items_split(scan_folders(folder, by_index, where), folder), Scoring(metrics)
    if "subset" not in entry:
        return (items_split(scan_folders(folder, _strict(id_index, folder, "WordNet id"), where),
                            folder), Scoring(metrics))
    subset = [w for w in imagenet_subset(entry["subset"]) if w in id_index]   # label order
    if not subset:
        raise DataError(f"{opts.spec}: {where}: none of the {entry['subset']} classes is an ID "
                        "class")
    position = {w: j for j, w in enumerate(subset)}
    items = scan_folders(folder, _strict(position, folder, f"{entry['subset']} WordNet id"),
                         where)
    names = tuple(imagenet_classname(w) for w in subset)
    return (items_split(items, folder, names),
            Scoring(metrics, subset_projection([id_index[w] for w in subset])))


def _objectnet(opts: Options, folder: Path, id_index: dict[str, int],
               metrics: tuple[str, ...]) -> tuple[Split, Scoring]:
    maps = folder / "mappings"

    def load(name: str):
        path = maps / name
        if not path.is_file():
            raise DataError(f"{path}: missing ObjectNet mapping file (it ships in "
                            "objectnet-1.0/mappings/)")
        return json.loads(path.read_text()) if name.endswith(".json") else \
            [ln.strip() for ln in path.read_text().splitlines()]

    folder_to_label = load("folder_to_objectnet_label.json")           # folder -> ObjectNet name
    to_imagenet = load("objectnet_to_imagenet_1k.json")                # name -> "a; b" names
    pytorch_to_2012 = load("pytorch_to_imagenet_2012_id.json")         # label index -> 2012 id
    names_2012 = load("imagenet_to_label_2012_v2")                     # line i: 2012 id i name
    index_of_2012 = {int(v): int(k) for k, v in pytorch_to_2012.items()}
    line_of = {n: i for i, n in enumerate(names_2012) if n}
    all_wnids = imagenet_wnids()
    label_to_folder = {v: k for k, v in folder_to_label.items()}
    projection: dict[str, tuple[int, ...]] = {}
    for on_name, imagenet_names in to_imagenet.items():
        ids = []
        for n in imagenet_names.split("; "):
            if n not in line_of or line_of[n] not in index_of_2012:
                raise DataError(f"{maps}: ImageNet class {n!r} of ObjectNet class {on_name!r} is "
                                "not in imagenet_to_label_2012_v2 / pytorch_to_imagenet_2012_id")
            wnid = all_wnids[index_of_2012[line_of[n]]]
            if wnid in id_index:
                ids.append(id_index[wnid])
        if ids and on_name in label_to_folder:
            projection[label_to_folder[on_name]] = tuple(sorted(ids))
    folders = sorted(projection)
    if not folders:
        raise DataError(f"{maps}: no ObjectNet class maps to an ID class")
    position = {f: j for j, f in enumerate(folders)}
    images = folder / "images"
    if not images.is_dir():
        raise DataError(f"{images}: ObjectNet images folder missing (objectnet-1.0/images/)")
    items = scan_folders(images, position.get, "ObjectNet")
    names = tuple(folder_to_label[f].lower() for f in folders)
    return (items_split(items, images, names),
            Scoring(metrics, tuple(projection[f] for f in folders), crop_border=2))
