"""Write the embedded world to disk: PNG images, CSV splits and the dataset spec ``world.yaml``.

Every image is drawn from a NumPy generator seeded by ``(seed, crc32(split), index)``, so any image
can be re-drawn on its own (pretraining re-draws its pool in memory) and a split can be cut into
chunks for several processes; the same seed gives the same bytes (the PNG writer stores no
timestamps or other metadata). The dataset is written to ``DIR.tmp-<pid>`` and renamed to ``DIR``
at the end, so a killed run leaves no half-written dataset.

    python -m trainables.world.generate --out DIR [--seed 0] [--sizes default|small]
"""
from __future__ import annotations

import argparse
import csv
import functools
import json
import multiprocessing as mp
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm import tqdm

from ..files import atomic_write, cache_root
from .captions import CLASS_TEMPLATES, CONTEXT_TEMPLATES, STYLE_TEMPLATES, caption, noisy_caption
from .render import (
    BACKGROUNDS,
    COLOURS,
    HELDOUT_CLASSES,
    ID_CLASSES,
    SHAPES,
    SIZES,
    STYLES,
    render,
    sample_geometry,
)

VERSION = "world-v1"
SHARD = 5000  # images per folder


@dataclass(frozen=True)
class SplitSpec:
    """One generated split: which classes and styles it draws, how many images, what to write."""

    name: str
    classes: tuple[str, ...]
    styles: tuple[str, ...]
    csv: str  # CSV path relative to the world root
    label: str = "class"  # "class" or "style": what the CSV's label column holds
    kind: str = "split"  # "split" (path,label), "captions" (path,caption), "corpus" (all columns)


#: name -> (default size, small size); classes/styles balanced by index, other attributes random.
SIZES_TABLE: dict[str, tuple[int, int]] = {
    "id-train": (10000, 100), "id-val": (1000, 20), "id-test": (1000, 20),
    "ood-sketch": (1000, 20), "ood-cartoon": (1000, 20), "ood-painting": (1000, 20),
    "zeroshot": (1000, 40), "context": (1000, 80), "candidates": (20000, 80),
    "pretrain": (20000, 80),
}  # small: the fewest images that still cover every class x style combination of each split
_ALL = tuple(SHAPES)
SPECS: dict[str, SplitSpec] = {s.name: s for s in [
    SplitSpec("id-train", tuple(ID_CLASSES), ("photo",), "id/train.csv"),
    SplitSpec("id-val", tuple(ID_CLASSES), ("photo",), "id/val.csv"),
    SplitSpec("id-test", tuple(ID_CLASSES), ("photo",), "id/test.csv"),
    *[SplitSpec(f"ood-{s}", tuple(ID_CLASSES), (s,), f"ood/{s}.csv") for s in STYLES[1:]],
    SplitSpec("zeroshot", tuple(HELDOUT_CLASSES), tuple(STYLES), "zeroshot/heldout-classes.csv"),
    SplitSpec("context", _ALL, tuple(STYLES), "context/style.csv", label="style"),
    SplitSpec("candidates", _ALL, tuple(STYLES), "pool/candidates.csv", kind="captions"),
    SplitSpec("pretrain", _ALL, tuple(STYLES), "pretrain/corpus.csv", kind="corpus"),
]}
CAPTIONS_CSV = "id/captions.csv"  # noisy captions of every ID train image
CORPUS_COLUMNS = ["path", "caption", "label", "style", "colour", "size", "background"]


def split_sizes(sizes: str) -> dict[str, int]:
    """Number of images per split for a size preset (``default`` or ``small``)."""
    if sizes not in ("default", "small"):
        raise ValueError(f"unknown sizes {sizes!r}: use 'default' or 'small'")
    return {k: v[0] if sizes == "default" else v[1] for k, v in SIZES_TABLE.items()}


def _rng(seed: int, split: str, index: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index, stream])


def sample_meta(spec: SplitSpec, seed: int, index: int
                ) -> tuple[dict[str, Any], np.random.Generator]:
    """Metadata of image ``index`` of ``spec`` and the generator to render it with.

    Class and style are balanced (``index`` cycles through classes, then styles); colour, size,
    background, position and rotation are random.
    """
    rng = _rng(seed, spec.name, index)
    k = len(spec.classes)
    meta: dict[str, Any] = {
        "label": spec.classes[index % k], "style": spec.styles[(index // k) % len(spec.styles)],
        "colour": list(COLOURS)[int(rng.integers(len(COLOURS)))],
        "size": SIZES[int(rng.integers(len(SIZES)))],
        "background": BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))],
    }
    meta.update(sample_geometry(meta["size"], rng))
    return meta, rng


def render_range(split: str, seed: int, start: int, stop: int) -> tuple[np.ndarray, list[dict]]:
    """Images ``start:stop`` of a split in memory: (N, 32, 32, 3) uint8 and their metadata."""
    spec = SPECS[split]
    images, metas = [], []
    for i in range(start, stop):
        meta, rng = sample_meta(spec, seed, i)
        images.append(render(meta, rng))
        metas.append(meta)
    return np.stack(images), metas


def image_path(split: str, index: int) -> str:
    """Path of an image relative to the world root."""
    return f"images/{split}/{index // SHARD:02d}/{index:06d}.png"


def png_bytes(img: np.ndarray) -> bytes:
    """A (H, W, 3) uint8 image as a PNG file (8-bit RGB, no filter, zlib level 6, no metadata).

    About 2.5x faster than PIL's writer for these tiny images, and deterministic by construction.
    """
    h, w, _ = img.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), img.reshape(h, w * 3)], 1).tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit truecolour, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6))
            + chunk(b"IEND", b""))


def _write_chunk(job: tuple[str, int, int, int, str]) -> list[dict[str, str]]:
    """Render and write images ``start:stop`` of a split under ``root``; returns the CSV rows."""
    split, seed, start, stop, root = job
    spec = SPECS[split]
    images, metas = render_range(split, seed, start, stop)
    rows = []
    for i, img, meta in zip(range(start, stop), images, metas):
        rel = image_path(split, i)
        path = Path(root, rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(img))
        row = {"path": rel, "label": meta["style"] if spec.label == "style" else meta["label"]}
        text_rng = _rng(seed, split, i, stream=1)
        if spec.kind == "corpus":
            row = {"path": rel, "caption": caption(meta, text_rng),
                   **{k: meta[k] for k in CORPUS_COLUMNS[2:]}}
        elif spec.kind == "captions":
            row = {"path": rel, "caption": caption(meta, text_rng)}
        elif split == "id-train":  # the stand-in captioner's output, for ARF's L_Cap
            row["caption"] = noisy_caption(meta, text_rng)
        rows.append(row)
    return rows


def _write_csv(path: Path, rows: list[dict[str, str]], columns: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def world_spec() -> dict[str, Any]:
    """The dataset spec written as ``world.yaml`` (paths relative to the spec file)."""
    split = lambda name: {"csv": SPECS[name].csv}  # noqa: E731
    return {
        "name": "embedded-world",
        "id": {"classes": list(ID_CLASSES), "templates": list(CLASS_TEMPLATES),
               "context_templates": list(CONTEXT_TEMPLATES), "train": split("id-train"),
               "val": split("id-val"), "test": split("id-test")},
        "ood": {s: split(f"ood-{s}") for s in STYLES[1:]},
        "zeroshot": {"heldout-classes": {"classes": list(HELDOUT_CLASSES),
                                         "templates": list(CLASS_TEMPLATES),
                                         "test": split("zeroshot")}},
        "context": {"style": {"classes": list(STYLES), "templates": list(STYLE_TEMPLATES),
                              "test": split("context")}},
        "anchors": {"captions": {"csv": CAPTIONS_CSV}, "candidates": split("candidates")},
        "pretrain": {"corpus": split("pretrain")},
    }


def generate_world(out: Path, seed: int = 0, sizes: str = "default", workers: int = 2) -> Path:
    """Generate the whole world into ``out`` (which must not exist); returns ``out/world.yaml``."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists: remove it or use ensure_world()")
    counts = split_sizes(sizes)
    atomic_write(out, functools.partial(_write_world, counts=counts, seed=seed, sizes=sizes,
                                        workers=workers))
    return out / "world.yaml"


def _write_world(tmp: Path, *, counts: dict[str, int], seed: int, sizes: str,
                 workers: int) -> None:
    """Every split's images, tables, manifest and spec into the new folder ``tmp``."""
    tmp.mkdir(parents=True)
    jobs = [(name, seed, a, min(a + 1000, n), str(tmp))
            for name, n in counts.items() for a in range(0, n, 1000)]
    # a bar: generating the default world takes minutes on 2 cores
    bar = tqdm(total=len(jobs), desc="generating the world", unit="chunk",
               disable=len(jobs) < 2)
    if workers > 1 and len(jobs) > 1:
        with mp.get_context("fork").Pool(min(workers, 2)) as pool:  # at most 2 processes
            results = []
            for result in pool.imap(_write_chunk, jobs, chunksize=1):   # in job order
                results.append(result)
                bar.update()
    else:
        results = []
        for job in jobs:
            results.append(_write_chunk(job))
            bar.update()
    bar.close()
    rows: dict[str, list[dict[str, str]]] = {name: [] for name in counts}
    for job, chunk in zip(jobs, results):
        rows[job[0]].extend(chunk)
    for name, spec in SPECS.items():
        columns = {"split": ["path", "label"], "captions": ["path", "caption"],
                   "corpus": CORPUS_COLUMNS}[spec.kind]
        _write_csv(tmp / spec.csv, rows[name], columns)
    _write_csv(tmp / CAPTIONS_CSV, rows["id-train"], ["path", "caption"])
    manifest = {"version": VERSION, "seed": seed, "sizes": sizes, "counts": counts}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (tmp / "world.yaml").write_text(yaml.safe_dump(world_spec(), sort_keys=False, width=100))


def default_world_dir(seed: int = 0) -> Path:
    """``world-v1-seed<seed>`` under :func:`trainables.files.cache_root`
    (``$ROBUST_SEARCH_CACHE``, default ``~/.cache/robust-clip-search``)."""
    return cache_root() / f"{VERSION}-seed{seed}"


def ensure_world(root: Path, seed: int = 0, sizes: str = "default", workers: int = 2) -> Path:
    """The spec path ``root/world.yaml``, generating the world first only if it is missing.

    Safe when several processes race: each writes its own temporary folder and the losers of the
    final rename discard theirs.
    """
    root = Path(root).expanduser()
    spec = root / "world.yaml"
    if spec.is_file():
        return spec
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()
    elif root.exists():
        raise FileExistsError(f"{root} exists but holds no world.yaml: remove it or pick another")
    root.parent.mkdir(parents=True, exist_ok=True)
    total = sum(split_sizes(sizes).values())
    print(f"Generating the embedded world ({total} images, once) in {root} ...", flush=True)
    try:
        return generate_world(root, seed=seed, sizes=sizes, workers=workers)
    except OSError:
        if spec.is_file():  # another process finished first
            return spec
        raise


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: $ROBUST_SEARCH_CACHE/world-v1-seed<seed>)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sizes", choices=["default", "small"], default="default")
    parser.add_argument("--workers", type=int, default=2, help="processes (at most 2)")
    args = parser.parse_args(argv)
    out = args.out or default_world_dir(args.seed)
    start = time.perf_counter()
    if (out / "world.yaml").is_file():
        print(f"{out / 'world.yaml'} exists; nothing to do")
        return
    spec = ensure_world(out, seed=args.seed, sizes=args.sizes, workers=args.workers)
    total = sum(split_sizes(args.sizes).values())
    print(f"wrote {total} images and {spec} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
