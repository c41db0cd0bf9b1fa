"""Datasets from a dataset spec: ImageFolder directories or CSV manifests, class names, templates.

A dataset spec is a YAML file (loaded with ``yaml.safe_load``); paths are relative to its folder
(or to ``root: DIR`` when the spec names one)::

    name: my-benchmark
    id:
      classes: [cat, dog]            # or classes_file: classes.txt; or omitted for ImageFolder
      templates: openai_imagenet     # a list of "…{}…" strings, a shipped list name
                                     # (openai_imagenet, simple_imagenet, clip_benchmark:<dataset>)
      # templates_file: prompts.txt  # or one template per line
      context_templates: [...]       # CAR-FT context prompts (default: templates)
      train: {csv: id/train.csv}     # columns path,label[,group] (label: class name or index)
      val: {imagefolder: id/val}     # one sub-folder per class; omit val to hold out val_fraction
      test: {csv: id/test.csv}
      val_fraction: 0.02
      metrics: [macro_f1]            # optional, beside accuracy: macro_f1, worst_group_acc
      shots: 16                      # optional: seeded k-shot sampling of train (val: min(k, 4))
      base_to_new: false             # optional: train on the first ceil(K/2) classes, test the
                                     # rest zero-shot as zeroshot/new (B, N, HM)
      on_corrupt: error              # a corrupt/unreadable image in any split: error (default),
                                     # or skip (dropped, with a warning that counts them)
    ood:                                                    # same classes as id
      sketch: {csv: ood/sketch.csv}
      shifted: {csv: ood/r.csv, subset: [cat, dog], metrics: [worst_group_acc],
                exclude_groups: [Other]}                    # scored over the subset's logits only
    zeroshot: {other: {classes: [...], templates: [...], test: {csv: ...}}}
    context: {style: {classes: [...], templates: [...], test: {csv: ...}}}
    anchors: {captions: {csv: ...}, candidates: {csv: ...}}  # columns path,caption

``${VAR}`` and ``${VAR:-default}`` in any value are replaced from the environment. A spec with a
``benchmark:`` key is a built-in benchmark (``trainables/benchmarks``): its layout is read from the
data's real directory tree by that benchmark's builder.

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
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from .errors import DataError
from .images import (CropBorder, ImageTextPairs, LabeledImages,  # noqa: F401 (re-exported)
                     load_image, pair_collate)
from .sampling import (NEW_SET, hold_out, only_base, only_new,  # noqa: F401 (hold_out
                       sample_shots, split_base_new, val_shots)  # re-exported)
from .scoring import Scoring, parse_metrics, subset_projection
from .spec_env import env_vars, expand_env  # noqa: F401 (env_vars re-exported)

log = logging.getLogger(__name__)

Template = str | Callable[[str], str]
SHIPPED_TEMPLATES: dict[str, Sequence[Template]] = {
    "openai_imagenet": open_clip.OPENAI_IMAGENET_TEMPLATES,
    "simple_imagenet": open_clip.SIMPLE_IMAGENET_TEMPLATES,
}


def fill(template: Template, classname: str) -> str:
    """A prompt: ``template.format(classname)`` or ``template(classname)`` (open_clip's lambdas)."""
    return template.format(classname) if isinstance(template, str) else template(classname)


@dataclass(frozen=True)
class Split:
    """One split: ``kind`` is ``csv``, ``imagefolder``, or ``items`` (samples already read from a
    benchmark's own layout by its builder: ``(path, label, group or None)``). ``classes`` is the
    split's label space when it differs from the spec's ID classes (a projected OOD set)."""

    kind: str
    path: Path
    items: tuple[tuple[str, int, str | None], ...] | None = None
    classes: tuple[str, ...] | None = None


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
    #: per evaluation set ("id", "ood/<name>", "zeroshot/<name>"): projection and extra metrics
    scoring: dict[str, Scoring] = field(default_factory=dict)
    shots: int | None = None               # k-shot sampling of ID train (and val) when set
    new_classes: tuple[str, ...] = ()      # base-to-new: the held-back classes (label >= K)
    on_corrupt: str = "error"              # a corrupt/unreadable image: "error" or "skip" (warn)

    @property
    def label_classes(self) -> tuple[str, ...]:
        """The label space of the ID splits: base classes then new classes."""
        return self.classes + self.new_classes


_TOP_KEYS = {"name", "root", "id", "ood", "zeroshot", "context", "anchors", "pretrain"}
_ID_KEYS = {"classes", "classes_file", "templates", "templates_file", "context_templates", "train",
            "val", "test", "val_fraction", "metrics", "shots", "base_to_new", "on_corrupt"}
_TASK_KEYS = {"classes", "classes_file", "templates", "templates_file", "test", "metrics"}
_SCORING_KEYS = {"metrics", "subset", "exclude_groups"}


def _check_keys(obj: Any, allowed: set[str], where: str, spec: Path) -> dict:
    if not isinstance(obj, dict):
        raise DataError(f"{spec}: {where} must be a mapping")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise DataError(f"{spec}: unknown key(s) {unknown} in {where}; allowed: {sorted(allowed)}")
    return obj


def _split(obj: Any, root: Path, where: str, spec: Path, extra: set[str] = frozenset()) -> Split:
    kinds = [k for k in (obj if isinstance(obj, dict) else {}) if k in ("csv", "imagefolder")]
    if len(kinds) != 1 or set(obj) - set(kinds) - extra:
        raise DataError(f"{spec}: {where} must be {{csv: FILE}} or {{imagefolder: DIR}}"
                        + (f" (optional keys: {sorted(extra)})" if extra else ""))
    kind, rel = kinds[0], obj[kinds[0]]
    path = (root / str(rel)).resolve()
    if kind == "csv" and not path.is_file():
        raise DataError(f"{spec}: {where} manifest {path} does not exist (fix the path or "
                        "generate the data)")
    if kind == "imagefolder" and (not path.is_dir() or not any(path.iterdir())):
        raise DataError(f"{spec}: {where} directory {path} is missing or empty (point it at a "
                        "folder with one sub-folder of images per class)")
    return Split(kind, path)


def templates_from(obj: Any, where: str, spec: Path, root: Path | None = None
                   ) -> tuple[Template, ...]:
    """Templates from a list, a shipped list name (open_clip's, or ``clip_benchmark:<dataset>``)
    or ``{file: PATH}`` (one per line, relative to ``root``); open_clip's lambdas become
    ``"…{}…"`` strings so every consumer can ``.format`` them."""
    if isinstance(obj, dict) and set(obj) == {"file"}:
        path = (root or spec.parent) / str(obj["file"])
        if not path.is_file():
            raise DataError(f"{spec}: {where} file {path} does not exist (provide one template "
                            "per line, each with {})")
        obj = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    elif isinstance(obj, str) and obj.startswith("clip_benchmark:"):
        from .benchmarks.metadata import clip_benchmark_templates
        obj = list(clip_benchmark_templates(obj.partition(":")[2], spec))
    elif isinstance(obj, str):
        if obj not in SHIPPED_TEMPLATES:
            raise DataError(f"{spec}: {where} names unknown template list {obj!r}; use a list of "
                            f"strings with {{}}, clip_benchmark:<dataset> or one of "
                            f"{sorted(SHIPPED_TEMPLATES)}")
        return tuple(t if isinstance(t, str) else t("{}") for t in SHIPPED_TEMPLATES[obj])
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


parse_split = _split   # for benchmark builders: one {csv: FILE} / {imagefolder: DIR} entry


def _templates(obj: dict, where: str, spec: Path, root: Path,
               default: tuple[Template, ...] | None = None) -> tuple[Template, ...]:
    if "templates_file" in obj:
        return templates_from({"file": obj["templates_file"]}, f"{where}.templates_file", spec,
                              root)
    if "templates" in obj:
        return templates_from(obj["templates"], f"{where}.templates", spec, root)
    if default is None:
        raise DataError(f"{spec}: {where}.templates (or templates_file) is required")
    return default


def _ood(obj: Any, classes: tuple[str, ...], root: Path, where: str, spec: Path
         ) -> tuple[Split, Scoring]:
    split = _split(obj, root, where, spec, _SCORING_KEYS)
    projection = None
    if "subset" in obj:
        subset = obj["subset"]
        bad = [c for c in subset or [] if c not in classes]
        if not subset or bad or len(set(subset)) != len(subset):
            raise DataError(f"{spec}: {where}.subset must list distinct ID classes (unknown: "
                            f"{bad[:5]})")
        split = Split(split.kind, split.path, classes=tuple(subset))
        projection = subset_projection([classes.index(c) for c in subset])
    return split, Scoring(parse_metrics(obj.get("metrics"), where, spec), projection,
                          tuple(obj.get("exclude_groups") or ()))


def load_spec(path: str | Path) -> DataSpec:
    """Parse and check a dataset spec file; raises DataError naming the problem and the fix."""
    spec = Path(path).expanduser().resolve()
    if spec.is_dir():
        found = sorted(spec.glob("*.yaml"))
        raise DataError(f"--data {spec} is a{'n empty' if not any(spec.iterdir()) else ''} "
                        "directory, not a dataset spec: pass the spec YAML"
                        + (f", e.g. --data {found[0]}" if found else " that describes the data"))
    if not spec.is_file():
        raise DataError(f"dataset spec {spec} does not exist (pass --data with a spec YAML)")
    try:
        raw = yaml.safe_load(spec.read_text())
    except yaml.YAMLError as err:
        raise DataError(f"{spec}: not valid YAML ({str(err).splitlines()[0]})") from None
    if isinstance(raw, dict) and "benchmark" in raw:
        from .benchmarks import build_spec
        return build_spec(expand_env(raw, spec), spec)
    raw = expand_env(_check_keys(raw, _TOP_KEYS, "the top level", spec), spec)
    # Every relative path (manifests, folders, image rows) is resolved against ``root``: the
    # spec's folder unless the spec names another (a derived spec cached elsewhere keeps its data).
    root = (spec.parent / str(raw["root"])).resolve() if raw.get("root") else spec.parent
    if not root.is_dir():
        raise DataError(f"{spec}: root {root} is not a directory (fix or remove the root key)")
    idd = _check_keys(raw.get("id"), _ID_KEYS, "id", spec)
    for key in ("train", "test"):
        if key not in idd:
            raise DataError(f"{spec}: id.{key} is required")
    train = _split(idd["train"], root, "id.train", spec)
    templates = _templates(idd, "id", spec, root)
    tasks: dict[str, dict[str, Task]] = {}
    scoring = {"id": Scoring(parse_metrics(idd.get("metrics"), "id", spec))}
    for section in ("zeroshot", "context"):
        tasks[section] = {}
        for name, obj in (raw.get(section) or {}).items():
            obj = _check_keys(obj, _TASK_KEYS, f"{section}.{name}", spec)
            test = _split(obj.get("test"), root, f"{section}.{name}.test", spec)
            tasks[section][name] = Task(
                _classes(obj, root, f"{section}.{name}", spec, test),
                _templates(obj, f"{section}.{name}", spec, root, templates), test)
            scoring[f"{section}/{name}"] = Scoring(parse_metrics(obj.get("metrics"),
                                                                 f"{section}.{name}", spec))
    val_fraction = float(idd.get("val_fraction", 0.02))
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"{spec}: id.val_fraction must be in (0, 1), got {val_fraction}")
    shots = idd.get("shots")
    if shots is not None and (not isinstance(shots, int) or shots < 1):
        raise DataError(f"{spec}: id.shots must be a positive integer, got {shots!r}")
    classes, new_classes = _classes(idd, root, "id", spec, train), ()
    if idd.get("base_to_new"):
        if NEW_SET in tasks["zeroshot"] or len(classes) < 2:
            raise DataError(f"{spec}: base_to_new needs >= 2 classes and no zeroshot set named "
                            f"{NEW_SET!r}")
        classes, new_classes = split_base_new(classes)
    ood = {}
    for k, v in (raw.get("ood") or {}).items():
        ood[k], scoring[f"ood/{k}"] = _ood(v, classes, root, f"ood.{k}", spec)
    return DataSpec(
        name=str(raw.get("name", spec.stem)), root=root, classes=classes, templates=templates,
        context_templates=(templates_from(idd["context_templates"], "id.context_templates", spec)
                           if "context_templates" in idd else templates),
        train=train, val=_split(idd["val"], root, "id.val", spec) if "val" in idd else None,
        test=_split(idd["test"], root, "id.test", spec), val_fraction=val_fraction, ood=ood,
        zeroshot=tasks["zeroshot"], context=tasks["context"],
        anchors={k: _split(v, root, f"anchors.{k}", spec)
                 for k, v in (raw.get("anchors") or {}).items()},
        source=spec, scoring=scoring, shots=shots, new_classes=new_classes,
        on_corrupt=_on_corrupt(idd, spec))


# --- samples -------------------------------------------------------------------------------
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
        samples = []
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
                samples.append((str((root / row["path"]).resolve()), idx))
    counts = torch.bincount(torch.tensor([s[1] for s in samples], dtype=torch.long),
                            minlength=len(classes)) if samples else torch.zeros(len(classes))
    empty = [classes[i] for i in range(len(classes)) if counts[i] == 0]
    if empty:
        raise DataError(f"{split.path}: class(es) {empty[:5]} have no images (add images or "
                        "remove the classes from the spec)")
    return samples, groups


def _on_corrupt(idd: dict, spec: Path) -> str:
    value = idd.get("on_corrupt", "error")
    if value not in ("error", "skip"):
        raise DataError(f"{spec}: id.on_corrupt must be error or skip, got {value!r}")
    return value


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
        pairs = [(str((root / r["path"]).resolve()), r["caption"]) for r in reader]
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
