"""Dataset specs: the YAML format, parsed and checked once into a :class:`DataSpec`.


A dataset spec is a YAML file (read by the bounded loader of ``trainables/yaml_io.py``); paths
are relative to its folder (or to ``root: DIR`` when the spec names one)::

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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import open_clip

from .errors import DataError
from .sampling import NEW_SET, split_base_new
from .scoring import Scoring, parse_metrics, subset_projection
from .spec_env import expand_env
from .yaml_io import YamlError, read_yaml

Template = str | Callable[[str], str]
SHIPPED_TEMPLATES: dict[str, Sequence[Template]] = {
    "openai_imagenet": open_clip.OPENAI_IMAGENET_TEMPLATES,
    "simple_imagenet": open_clip.SIMPLE_IMAGENET_TEMPLATES,
}


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
        raise DataError(f"{spec}: {where} must be a mapping (key: value lines), got "
                        f"{_brief(obj)}")
    unknown = sorted(str(k) for k in set(obj) - allowed)
    if unknown:
        raise DataError(f"{spec}: unknown key(s) {unknown} in {where}; allowed: {sorted(allowed)}")
    return obj


def _brief(value: Any) -> str:
    """A value for an error message, cut short (a list of 10,000 names is not quoted whole)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _mapping(obj: Any, where: str, spec: Path) -> dict:
    """An optional section (``ood``, ``zeroshot``, ...): a mapping of names, or empty."""
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise DataError(f"{spec}: {where} must be a mapping of names to entries, got "
                        f"{_brief(obj)}")
    return obj


def _path(root: Path, rel: Any, where: str, spec: Path) -> Path:
    """``root / rel`` resolved; ``rel`` must be a plain path string."""
    if isinstance(rel, bool) or not isinstance(rel, (str, int, float)) or not str(rel).strip() \
            or "\0" in str(rel):
        raise DataError(f"{spec}: {where} must be a path (a string), got {_brief(rel)}")
    try:
        return (root / str(rel)).resolve()
    except (OSError, ValueError, RuntimeError) as err:
        raise DataError(f"{spec}: {where} path {_brief(rel)} is unusable ({err})") from None


def _is(check, path: Path) -> bool:
    """``path.is_file()`` / ``is_dir()``, False for names the OS refuses (too long, ...)."""
    try:
        return check(path)
    except (OSError, ValueError):
        return False


def _split(obj: Any, root: Path, where: str, spec: Path, extra: set[str] = frozenset()) -> Split:
    kinds = [k for k in (obj if isinstance(obj, dict) else {}) if k in ("csv", "imagefolder")]
    if len(kinds) != 1 or set(obj) - set(kinds) - extra:
        raise DataError(f"{spec}: {where} must be {{csv: FILE}} or {{imagefolder: DIR}}"
                        + (f" (optional keys: {sorted(extra)})" if extra else ""))
    kind, rel = kinds[0], obj[kinds[0]]
    path = _path(root, rel, f"{where}.{kind}", spec)
    if kind == "csv" and not _is(Path.is_file, path):
        raise DataError(f"{spec}: {where} manifest {path} does not exist (fix the path or "
                        "generate the data)")
    if kind == "imagefolder" and (not _is(Path.is_dir, path) or not any(path.iterdir())):
        raise DataError(f"{spec}: {where} directory {path} is missing or empty (point it at a "
                        "folder with one sub-folder of images per class)")
    return Split(kind, path)


def templates_from(obj: Any, where: str, spec: Path, root: Path | None = None
                   ) -> tuple[Template, ...]:
    """Templates from a list, a shipped list name (open_clip's, or ``clip_benchmark:<dataset>``)
    or ``{file: PATH}`` (one per line, relative to ``root``); open_clip's lambdas become
    ``"…{}…"`` strings so every consumer can ``.format`` them."""
    if isinstance(obj, dict) and set(obj) == {"file"}:
        path = _path(root or spec.parent, obj["file"], f"{where} file", spec)
        if not _is(Path.is_file, path):
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
    if not isinstance(obj, list) or not obj or not all(isinstance(t, str) and "{}" in t
                                                         for t in obj):
        raise DataError(f"{spec}: {where} must be a non-empty list of strings containing {{}}")
    for t in obj:          # each is filled in with .format(classname) when the head is built
        try:
            t.format("x")
        except (KeyError, IndexError, ValueError):
            raise DataError(f"{spec}: {where}: template {_brief(t)} has braces other than one "
                            "{} (write {{ and }} for literal braces)") from None
    return tuple(obj)


def _classes(obj: dict, root: Path, where: str, spec: Path,
             folder: Split | None) -> tuple[str, ...]:
    if "classes" in obj:
        names = obj["classes"]
        if not isinstance(names, list) or not all(
                isinstance(n, (str, int)) and not isinstance(n, bool) for n in names):
            raise DataError(f"{spec}: {where}.classes must be a list of class names, got "
                            f"{_brief(names)}")
        names = [str(n) for n in names]
    elif "classes_file" in obj:
        path = _path(root, obj["classes_file"], f"{where}.classes_file", spec)
        if not _is(Path.is_file, path):
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
    if "exclude_groups" in obj and not (isinstance(obj["exclude_groups"], list) and all(
            isinstance(g, str) for g in obj["exclude_groups"])):
        raise DataError(f"{spec}: {where}.exclude_groups must be a list of group names")
    if "subset" in obj:
        subset = obj["subset"]
        if not isinstance(subset, list) or not all(isinstance(c, str) for c in subset):
            raise DataError(f"{spec}: {where}.subset must be a list of ID class names, got "
                            f"{_brief(subset)}")
        bad = [c for c in subset or [] if c not in classes]
        if not subset or bad or len(set(subset)) != len(subset):
            raise DataError(f"{spec}: {where}.subset must list distinct ID classes (unknown: "
                            f"{bad[:5]})")
        split = Split(split.kind, split.path, classes=tuple(subset))
        projection = subset_projection([classes.index(c) for c in subset])
    return split, Scoring(parse_metrics(obj.get("metrics"), where, spec), projection,
                          tuple(obj.get("exclude_groups") or ()))


def _read_spec(spec: Path) -> Any:
    """The parsed YAML of the spec file ``spec`` (a folder or a missing file: DataError)."""
    if spec.is_dir():
        found = sorted(spec.glob("*.yaml"))
        raise DataError(f"--data {spec} is a{'n empty' if not any(spec.iterdir()) else ''} "
                        "directory, not a dataset spec: pass the spec YAML"
                        + (f", e.g. --data {found[0]}" if found else " that describes the data"))
    if not spec.is_file():
        raise DataError(f"dataset spec {spec} does not exist (pass --data with a spec YAML)")
    try:
        return read_yaml(spec)            # bounded: size, alias expansion, nesting
    except YamlError as err:
        raise DataError(str(err)) from None


def _eval_tasks(raw: dict, root: Path, templates: tuple[Template, ...], spec: Path,
                scoring: dict[str, Scoring]) -> dict[str, dict[str, Task]]:
    """The ``zeroshot`` and ``context`` sections' tasks by section and name; their scoring is
    added to ``scoring`` (keys ``zeroshot/<name>``, ``context/<name>``)."""
    tasks: dict[str, dict[str, Task]] = {}
    for section in ("zeroshot", "context"):
        tasks[section] = {}
        for name, obj in _mapping(raw.get(section), section, spec).items():
            obj = _check_keys(obj, _TASK_KEYS, f"{section}.{name}", spec)
            test = _split(obj.get("test"), root, f"{section}.{name}.test", spec)
            tasks[section][name] = Task(
                _classes(obj, root, f"{section}.{name}", spec, test),
                _templates(obj, f"{section}.{name}", spec, root, templates), test)
            scoring[f"{section}/{name}"] = Scoring(parse_metrics(obj.get("metrics"),
                                                                 f"{section}.{name}", spec))
    return tasks


def load_spec(path: str | Path) -> DataSpec:
    """Parse and check a dataset spec file; raises DataError naming the problem and the fix."""
    spec = Path(path).expanduser().resolve()
    raw = _read_spec(spec)
    if isinstance(raw, dict) and "benchmark" in raw:
        from .benchmarks import build_spec
        return build_spec(expand_env(raw, spec), spec)
    raw = expand_env(_check_keys(raw, _TOP_KEYS, "the top level", spec), spec)
    # Every relative path (manifests, folders, image rows) is resolved against ``root``: the
    # spec's folder unless the spec names another (a derived spec cached elsewhere keeps its data).
    root = _path(spec.parent, raw["root"], "root", spec) if raw.get("root") else spec.parent
    if not _is(Path.is_dir, root):
        raise DataError(f"{spec}: root {root} is not a directory (fix or remove the root key)")
    idd = _check_keys(raw.get("id"), _ID_KEYS, "id", spec)
    for key in ("train", "test"):
        if key not in idd:
            raise DataError(f"{spec}: id.{key} is required")
    train = _split(idd["train"], root, "id.train", spec)
    templates = _templates(idd, "id", spec, root)
    scoring = {"id": Scoring(parse_metrics(idd.get("metrics"), "id", spec))}
    tasks = _eval_tasks(raw, root, templates, spec, scoring)
    val_fraction = idd.get("val_fraction", 0.02)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or \
            not 0.0 < val_fraction < 1.0:
        raise DataError(f"{spec}: id.val_fraction must be in (0, 1), got {val_fraction}")
    shots = idd.get("shots")
    if shots is not None and (not isinstance(shots, int) or isinstance(shots, bool) or shots < 1):
        raise DataError(f"{spec}: id.shots must be a positive integer, got {shots!r}")
    classes, new_classes = _classes(idd, root, "id", spec, train), ()
    if idd.get("base_to_new"):
        if NEW_SET in tasks["zeroshot"] or len(classes) < 2:
            raise DataError(f"{spec}: base_to_new needs >= 2 classes and no zeroshot set named "
                            f"{NEW_SET!r}")
        classes, new_classes = split_base_new(classes)
    ood = {}
    for k, v in _mapping(raw.get("ood"), "ood", spec).items():
        ood[k], scoring[f"ood/{k}"] = _ood(v, classes, root, f"ood.{k}", spec)
    return DataSpec(
        name=str(raw.get("name", spec.stem)), root=root, classes=classes, templates=templates,
        context_templates=(templates_from(idd["context_templates"], "id.context_templates", spec)
                           if "context_templates" in idd else templates),
        train=train, val=_split(idd["val"], root, "id.val", spec) if "val" in idd else None,
        test=_split(idd["test"], root, "id.test", spec), val_fraction=val_fraction, ood=ood,
        zeroshot=tasks["zeroshot"], context=tasks["context"],
        anchors={k: _split(v, root, f"anchors.{k}", spec)
                 for k, v in _mapping(raw.get("anchors"), "anchors", spec).items()},
        source=spec, scoring=scoring, shots=shots, new_classes=new_classes,
        on_corrupt=_on_corrupt(idd, spec))


def _on_corrupt(idd: dict, spec: Path) -> str:
    value = idd.get("on_corrupt", "error")
    if value not in ("error", "skip"):
        raise DataError(f"{spec}: id.on_corrupt must be error or skip, got {value!r}")
    return value
