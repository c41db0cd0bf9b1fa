"""Multi-domain benchmarks: DomainNet (train on one domain, test on the others) and the DomainBed
data sets PACS, OfficeHome, VLCS and TerraIncognita (leave one domain out).

Class names are the data's own class folder names (``aircraft_carrier`` -> "aircraft carrier").
Neither open_clip nor clip_benchmark ships templates for these, so the default templates are
CLIP's ImageNet ones (``openai_imagenet``); CAR-FT's context prompts are "a {domain} of a {}."
over the data set's domain folders (CAR-FT §4: "a {domain} of a {class}.").
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DataError
from ..sampling import hold_out
from ..scoring import Scoring
from ..spec import DataSpec
from . import register
from .common import Options, finish, items_split, readable, scan_folders


def _context(domains: list[str]) -> tuple[str, ...]:
    return tuple(f"a {readable(d)} of a {{}}." for d in domains)


# --- DomainNet ---------------------------------------------------------------------------------
def _split_file(opts: Options, domain: str, part: str) -> tuple[list[tuple[str, int]], Path]:
    """Lines ``<domain>/<class>/<file>.jpg <label>`` of ``<domain>_<part>.txt``."""
    path = opts.path(f"{domain}_{part}.txt", f"DomainNet split file for {domain}", "file")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or parts[0].count("/") < 2:
            raise DataError(f"{path}:{n}: expected '<domain>/<class>/<file> <label>'")
        rows.append((parts[0], int(parts[1])))
    return rows, path


@register("domainnet")
def build_domainnet(raw: dict[str, Any], spec: Path) -> DataSpec:
    """DomainNet: ID = ``source`` domain (its _train / _test files), OOD = each target's _test."""
    opts = Options(raw, spec, {"source", "targets"})
    domains = sorted(p.name[:-len("_train.txt")] for p in opts.root.glob("*_train.txt"))
    source = str(opts.get("source", "real"))
    if source not in domains:
        raise DataError(f"{spec}: source domain {source!r} has no {source}_train.txt under "
                        f"{opts.root} (domains found: {domains})")
    targets = opts.get("targets") or [d for d in domains if d != source]
    train_rows, train_path = _split_file(opts, source, "train")
    test_rows, test_path = _split_file(opts, source, "test")
    names: dict[int, str] = {}
    for rel, label in train_rows + test_rows:
        cls = rel.split("/")[1]
        if names.setdefault(label, cls) != cls:
            raise DataError(f"{train_path}: label {label} names two classes ({names[label]!r}, "
                            f"{cls!r})")
    if sorted(names) != list(range(len(names))):
        raise DataError(f"{train_path}: labels must run 0 … K-1 with every class present")
    classes = tuple(readable(names[i]) for i in range(len(names)))

    def items(rows: list[tuple[str, int]], path: Path):
        bad = [lab for _, lab in rows if lab not in names]
        if bad:
            raise DataError(f"{path}: labels {bad[:3]} are not among the source's classes")
        return items_split(((str(opts.root / rel), lab, None) for rel, lab in rows), path)

    ood = {}
    for target in targets:
        rows, path = _split_file(opts, target, "test")
        ood[target] = (items(rows, path), Scoring())
    return finish(opts, classes=classes, default_templates="openai_imagenet",
                  train=items(train_rows, train_path), test=items(test_rows, test_path),
                  ood=ood, context_templates=_context(domains))


# --- DomainBed ---------------------------------------------------------------------------------
@register("domainbed")
def build_domainbed(raw: dict[str, Any], spec: Path) -> DataSpec:
    """DomainBed layout ``<root>/<dataset>/<domain>/<class>/<image>``, leave ``test_domain`` out.

    ID = the other domains: ``test_fraction`` of their images (a fixed split seeded by
    ``split_seed``) is ID test, the rest ID train, from which ID val is held out
    (``val_fraction``, default 0.1: with test_fraction 0.1 about DomainBed's 80/20 split).
    OOD = every image of the held-out domain.
    """
    opts = Options(raw, spec, {"dataset", "test_domain", "test_fraction", "split_seed"})
    base = opts.path(str(opts.get("dataset", "")), "DomainBed data set folder")
    domains = sorted(p.name for p in base.iterdir() if p.is_dir())
    target = str(opts.get("test_domain", ""))
    if target not in domains or len(domains) < 2:
        raise DataError(f"{spec}: test_domain {target!r} is not one of the domains {domains} "
                        f"under {base}")
    class_folders = sorted({c.name for d in domains for c in (base / d).iterdir() if c.is_dir()})
    index = {c: i for i, c in enumerate(class_folders)}
    classes = tuple(readable(c) for c in class_folders)
    id_items = []
    for d in domains:
        if d != target:
            id_items += [(p, y) for p, y, _ in scan_folders(base / d, index.get, f"domain {d}")]
    fraction = float(opts.get("test_fraction", 0.1))
    if not 0.0 < fraction < 1.0:
        raise DataError(f"{spec}: test_fraction must be in (0, 1), got {fraction}")
    train, test = hold_out(id_items, fraction, int(opts.get("split_seed", 0)))
    ood_items = scan_folders(base / target, index.get, f"domain {target}")
    return finish(opts, classes=classes, default_templates="openai_imagenet",
                  train=items_split(((p, y, None) for p, y in train), base),
                  test=items_split(((p, y, None) for p, y in test), base),
                  ood={target: (items_split(ood_items, base / target), Scoring())},
                  default_val_fraction=0.1, context_templates=_context(domains))

