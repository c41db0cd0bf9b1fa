"""What every benchmark builder shares: its options, folder scanning, and the finished DataSpec.

A built-in spec is a YAML mapping whose ``benchmark`` key names a builder; the keys below are
common to every builder (each builder adds its own)::

    benchmark: imagenet
    name: imagenet                 # default: the benchmark name
    root: ${IMAGENET_ROOT}         # the data root (relative paths: relative to the spec file)
    templates: openai_imagenet     # override the benchmark's templates (list, shipped name,
                                   # clip_benchmark:<dataset>, or templates_file: FILE under root)
    context_templates: [...]       # CAR-FT context prompts (default: the benchmark's)
    val_fraction: 0.02             # ID val held out from ID train when the data has none
    shots: 16                      # k-shot sampling of ID train (val: min(k, 4)), seeded
    base_to_new: false             # train on the first half of the classes, test the rest
    anchors: {captions: {csv: …}}  # ARF's image-text sets (search/anchors/build.py writes these)
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from torchvision.datasets.folder import IMG_EXTENSIONS

from ..errors import DataError
from ..sampling import NEW_SET, split_base_new
from ..scoring import Scoring
from ..spec import DataSpec, Split, Template, parse_split, templates_from

COMMON_KEYS = {"benchmark", "name", "root", "templates", "templates_file", "context_templates",
               "val_fraction", "shots", "base_to_new", "anchors"}

Item = tuple[str, int, str | None]


@dataclass
class Options:
    """A builder's view of its spec: checked keys, the data root, and typed getters."""

    raw: dict[str, Any]
    spec: Path
    allowed: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.raw) - COMMON_KEYS - self.allowed)
        if unknown:
            raise DataError(f"{self.spec}: unknown key(s) {unknown} for benchmark "
                            f"{self.raw['benchmark']!r}; allowed: "
                            f"{sorted(COMMON_KEYS | self.allowed)}")
        if "root" not in self.raw or self.raw["root"] in (None, ""):
            raise DataError(f"{self.spec}: root (the data directory) is required")
        root = Path(str(self.raw["root"])).expanduser()
        self.root = (root if root.is_absolute() else self.spec.parent / root).resolve()
        if not self.root.is_dir():
            raise DataError(f"{self.spec}: data root {self.root} is not a directory (set root, or "
                            "the environment variable the spec names, to the data location)")

    def get(self, key: str, default: Any = None) -> Any:
        return self.raw.get(key, default)

    def path(self, rel: str, what: str, kind: str = "dir") -> Path:
        """``root / rel`` (or ``rel`` if absolute), which must exist as a ``dir`` or ``file``."""
        path = Path(str(rel)).expanduser()
        path = path if path.is_absolute() else self.root / path
        ok = path.is_dir() if kind == "dir" else path.is_file()
        if not ok:
            raise DataError(f"{self.spec}: {what} {path} does not exist (check the data layout "
                            "in trainables/benchmarks/README.md, or edit a copy of the spec)")
        return path

    def text_lines(self, rel: str, what: str) -> list[str]:
        return [ln.strip() for ln in self.path(rel, what, "file").read_text().splitlines()
                if ln.strip()]


def is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def scan_folders(folder: Path, label_of: Callable[[str], int | None], what: str,
                 group: str | None = None) -> list[Item]:
    """(path, label, group) for every image under each sub-folder of ``folder`` (recursively);
    ``label_of(sub-folder name)`` gives the label, or None to skip the folder."""
    items: list[Item] = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_dir():
            continue
        label = label_of(entry.name)
        if label is None:
            continue
        for dirpath, dirnames, files in os.walk(entry.path, followlinks=True):
            dirnames.sort()
            items.extend((os.path.join(dirpath, f), label, group) for f in sorted(files)
                         if is_image(f))
    if not items:
        raise DataError(f"{folder}: no images found for {what}")
    return items


def items_split(items: Iterable[Item], source: Path, classes: tuple[str, ...] | None = None
                ) -> Split:
    """A Split of already-read samples; ``source`` names where they came from in messages."""
    items = tuple(items)
    if not items:
        raise DataError(f"{source}: no images found (check the data layout)")
    return Split("items", source, items=items, classes=classes)


def readable(name: str) -> str:
    """A folder name as a prompt word: ``Alarm_Clock`` -> ``alarm clock``."""
    return name.replace("_", " ").strip().lower()


def finish(opts: Options, *, classes: tuple[str, ...], default_templates: Any,
           train: Split, test: Split, val: Split | None = None,
           ood: dict[str, tuple[Split, Scoring]] | None = None,
           id_scoring: Scoring = Scoring(),  # noqa: B008 -- frozen, so sharing is safe
           default_val_fraction: float = 0.02,
           context_templates: tuple[Template, ...] | None = None) -> DataSpec:
    """The DataSpec of a built benchmark, with the common options applied."""
    spec = opts.spec
    if "templates_file" in opts.raw:
        templates = templates_from({"file": opts.raw["templates_file"]}, "templates_file", spec,
                                   opts.root)
    else:
        templates = templates_from(opts.get("templates", default_templates), "templates", spec,
                                   opts.root)
    ctx = (templates_from(opts.raw["context_templates"], "context_templates", spec, opts.root)
           if "context_templates" in opts.raw else context_templates or templates)
    val_fraction = float(opts.get("val_fraction", default_val_fraction))
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"{spec}: val_fraction must be in (0, 1), got {val_fraction}")
    shots = opts.get("shots")
    if shots is not None and (not isinstance(shots, int) or isinstance(shots, bool) or shots < 1):
        raise DataError(f"{spec}: shots must be a positive integer, got {shots!r}")
    base_to_new = opts.get("base_to_new", False)
    base_to_new = bool(base_to_new) if base_to_new in (0, 1) else base_to_new   # BASE_TO_NEW=1
    if not isinstance(base_to_new, bool):
        raise DataError(f"{spec}: base_to_new must be true or false, got {base_to_new!r}")
    new_classes: tuple[str, ...] = ()
    ood = ood or {}
    if base_to_new:
        if ood:
            raise DataError(f"{spec}: base_to_new evaluates the new classes as zeroshot/"
                            f"{NEW_SET}; remove the OOD sets (ood: {{}}) for this protocol")
        classes, new_classes = split_base_new(classes)
    scoring = {"id": id_scoring}
    scoring.update({f"ood/{k}": sc for k, (_, sc) in ood.items()})
    anchors = {k: parse_split(v, spec.parent, f"anchors.{k}", spec)
               for k, v in (opts.get("anchors") or {}).items()}
    return DataSpec(name=str(opts.get("name", opts.raw["benchmark"])), root=opts.root,
                    classes=classes, templates=templates, context_templates=ctx,
                    train=train, val=val, test=test, val_fraction=val_fraction,
                    ood={k: s for k, (s, _) in ood.items()}, source=spec, scoring=scoring,
                    shots=shots, new_classes=new_classes, anchors=anchors)
