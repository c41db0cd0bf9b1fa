"""Class names, templates and class lists that dependencies ship (nothing here is hand-typed).

- ImageNet's 1000 WordNet ids in label order, and the 200-class ImageNet-R / ImageNet-A subsets:
  timm's ``timm/data/_info/*_synsets.txt`` (timm is a dependency of open_clip).
- ImageNet class names and templates: open_clip's ``IMAGENET_CLASSNAMES`` and
  ``OPENAI_IMAGENET_TEMPLATES`` (CLIP's own).
- Per-dataset class names and zero-shot templates of the few-shot suite: clip_benchmark's
  ``en_classnames.json`` and ``en_zeroshot_classification_templates.json`` (read as package data;
  nothing of clip_benchmark is imported beyond its package marker).
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

import open_clip

from ..errors import DataError

#: the ImageNet class subsets timm lists (folder names of the real data sets)
SUBSETS = {"imagenet_r": "imagenet_r_synsets.txt", "imagenet_a": "imagenet_a_synsets.txt"}


def _timm_info(name: str) -> list[str]:
    text = (resources.files("timm.data") / "_info" / name).read_text()
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


@lru_cache(maxsize=None)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k WordNet ids in label order (index i is class i)."""
    return tuple(_timm_info("imagenet_synsets.txt"))


@lru_cache(maxsize=None)
def imagenet_index() -> dict[str, int]:
    """WordNet id -> ImageNet-1k label index."""
    return {w: i for i, w in enumerate(imagenet_wnids())}


def imagenet_classname(wnid: str) -> str:
    """CLIP's class name of an ImageNet WordNet id (open_clip's IMAGENET_CLASSNAMES)."""
    return open_clip.IMAGENET_CLASSNAMES[imagenet_index()[wnid]]


@lru_cache(maxsize=None)
def imagenet_subset(name: str) -> tuple[str, ...]:
    """The WordNet ids of a shipped ImageNet class subset (``imagenet_r``, ``imagenet_a``)."""
    if name not in SUBSETS:
        raise DataError(f"unknown ImageNet subset {name!r}; known: {sorted(SUBSETS)}")
    return tuple(_timm_info(SUBSETS[name]))


@lru_cache(maxsize=None)
def _clip_benchmark(name: str) -> dict[str, list[str]]:
    try:
        pkg = resources.files("clip_benchmark.datasets")
    except ModuleNotFoundError:
        raise DataError("clip_benchmark is not installed: pip install clip_benchmark (its class "
                        "names and templates are read as package data)") from None
    return json.loads((pkg / name).read_text())


def clip_benchmark_templates(dataset: str, spec: Path | str = "spec") -> tuple[str, ...]:
    """clip_benchmark's English zero-shot templates of ``dataset`` as ``"…{}…"`` strings."""
    table = _clip_benchmark("en_zeroshot_classification_templates.json")
    if dataset not in table:
        raise DataError(f"{spec}: clip_benchmark has no templates for {dataset!r}; known: "
                        f"{sorted(table)}")
    return tuple(t.replace("{c}", "{}") for t in table[dataset])


def clip_benchmark_classnames(dataset: str, spec: Path | str = "spec") -> tuple[str, ...]:
    """clip_benchmark's English class names of ``dataset``, in the dataset's label order."""
    table = _clip_benchmark("en_classnames.json")
    if dataset not in table:
        raise DataError(f"{spec}: clip_benchmark has no class names for {dataset!r}; known: "
                        f"{sorted(table)}")
    return tuple(table[dataset])
