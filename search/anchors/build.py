"""ARF's anchor sets, prepared offline and cached: captions and retrieved (image, text) pairs.

ARF (Han et al., CVPR 2024, §4.2; docs/methods.md#arf) regularises fine-tuning with two sets of
image-text pairs:

- ``captions``: every ID training image with a caption from a pretrained captioner (the paper:
  BLIP-2; here any ``transformers`` image-to-text model, see :mod:`search.anchors.captioning`, or
  ``world``: the captions already in the spec's ``anchors.captions``, the embedded world's
  stand-in captioner);
- ``retrieved``: for every training image x the k candidates maximising ``f(x) · g(t_can)`` with
  the zero-shot CLIP (Eq. 4), searched with FAISS (:mod:`search.anchors.retrieval`) in a web-like
  candidate set (the paper: CC3M), deduplicated.

Candidates are a CSV/TSV of ``path,caption`` (a header row naming both; or CC3M's header-less
``caption<TAB>path``), or WebDataset tar shards (``KEY.jpg|png|webp`` + ``KEY.txt``) whose images
are extracted once under the cache. Embeddings go to memory-mapped ``.npy`` files, so millions fit.

Caching. The result lives in ``<cache>/<key>/`` (``spec.yaml``, ``captions.csv``,
``retrieved.csv``, ``neighbours.npz``, ``info.json``), where the key is a sha256 of: the model name
and its weights file's sha256 (or its pretrained tag), the spec file's path and content, the train
and candidate manifests' content hashes, k, the index settings and the captioner. Intermediate
stages (image/text embeddings, model captions) are cached under their own, smaller keys, so changing
k recomputes only the search. Manifests are hashed by content, images by path: an image rewritten in
place under the same name is not noticed (delete the cache). File hashes are memoised by (path,
size, mtime). Every write goes to a temporary path renamed into place. :data:`COUNTS` counts the
work actually done (tests prove a second run computes nothing).

Caveat: when the spec has no ``id.val``, validation is held out of ``id.train`` at training time,
so those images are captioned and used as retrieval queries too (a warning is logged).
"""
from __future__ import annotations

import csv
import glob
import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import yaml

from search.anchors.retrieval import (
    IndexSettings,
    embed_images,
    embed_texts,
    iter_shards,
    read_table,
    retrieve,
    unique_candidates,
)
from search.runspec import RunSpec
from trainables import files
from trainables.data import read_pairs, read_samples
from trainables.errors import InputError
from trainables.models import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    ClipBundle,
    create_clip,
    is_local_weights,
)
from trainables.spec import DataSpec, Split, load_spec

log = logging.getLogger(__name__)

WORLD = "world"                     # --captioner world: the spec's own anchors.captions
FORMAT = 2                          # bump when the cache layout or the algorithm changes (2: root)
COUNTS: Counter = Counter()         # embed_images, embed_texts, caption, retrieve, extract, hit


class AnchorError(InputError):
    """Bad input for anchor preparation; one line naming the problem and the fix."""


@dataclass(frozen=True)
class AnchorSettings:
    """How to prepare anchors. ``candidates=None``: the spec's ``anchors.candidates``;
    ``captioner=None``: ``world`` when the spec has ``anchors.captions``."""

    model: str = DEFAULT_MODEL
    pretrained: str | None = DEFAULT_PRETRAINED
    candidates: str | None = None
    captioner: str | None = None
    k: int = 4
    index: IndexSettings = field(default_factory=IndexSettings)
    batch_size: int = 256
    caption_batch_size: int = 32
    max_new_tokens: int = 30
    device: str = "cpu"
    workers: int = 0
    cache_dir: Path | None = None
    candidate_images: bool = False   # also embed the candidates' images (retrieval needs texts)
    progress: bool = True


def cache_root(cache_dir: Path | None = None) -> Path:
    """``cache_dir``, else ``anchors/`` under :func:`trainables.files.cache_root`
    (``$ROBUST_SEARCH_CACHE``, else ``~/.cache/robust-clip-search``)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser().resolve()
    return files.cache_root().resolve() / "anchors"


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_digest(path: Path, root: Path) -> str:
    """sha256 of a file's bytes, memoised in ``root/digests.json`` by (path, size, mtime)."""
    st = path.stat()
    memo_path, memo_key = root / "digests.json", f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    memo = json.loads(memo_path.read_text()) if memo_path.is_file() else {}
    if memo_key not in memo:
        memo[memo_key] = files.sha256_file(path)
        root.mkdir(parents=True, exist_ok=True)
        files.atomic_write_text(memo_path, json.dumps(memo))
    return memo[memo_key]


def split_digest(split: Split, root: Path) -> str:
    """A CSV manifest's content hash with its folder; an ImageFolder's listing (name, size)."""
    if split.kind == "csv":
        return _sha([str(split.path.parent), file_digest(split.path, root)])
    listing = sorted((str(p.relative_to(split.path)), p.stat().st_size)
                     for p in split.path.rglob("*") if p.is_file())
    return _sha([str(split.path), listing])


def model_identity(model: str, pretrained: str | None, root: Path) -> str:
    """``name|sha256-of-weights`` for a local file, ``name|tag`` for a tag, ``name|random-init``."""
    if pretrained and Path(pretrained).expanduser().is_file():
        return f"{model}|{file_digest(Path(pretrained).expanduser(), root)}"
    if pretrained and is_local_weights(pretrained):
        raise AnchorError(f"weights file not found: {pretrained} (pass --pretrained with an "
                          "existing file or an open_clip tag)")
    return f"{model}|{pretrained or 'random-init'}"


def captioner_identity(captioner: str, root: Path) -> str:
    """``world``, a hub id, or a folder's file hashes (weights, config, processor)."""
    path = Path(captioner).expanduser()
    if captioner == WORLD or not path.is_dir():
        return captioner
    return _sha(sorted((p.name, file_digest(p, root)) for p in path.iterdir() if p.is_file()))


# --- candidates ------------------------------------------------------------------------------
def extract_shards(paths: Sequence[Path], dest: Path) -> list[tuple[str, str]]:
    """Extract shards' images under ``dest/<shard>/`` (once: atomic, reused) and return the
    (image path, caption) pairs; ``dest/pairs.csv`` records them."""
    table = dest / "pairs.csv"
    if not table.is_file():
        COUNTS["extract"] += 1

        def extract(tmp: Path) -> None:
            rows = []
            for stem, name, data, cap in iter_shards(paths):
                (tmp / stem).mkdir(parents=True, exist_ok=True)
                (tmp / stem / name).write_bytes(data)
                rows.append({"path": f"{stem}/{name}", "caption": cap})
            _write_pairs(tmp / "pairs.csv", rows)
            shutil.rmtree(dest, ignore_errors=True)     # a folder left without its pairs.csv

        files.atomic_write(dest, extract)
    return read_table(table)


def _candidate_source(source: str, root: Path, base: Path | None
                      ) -> tuple[str, Callable[[], list]]:
    """(content digest, loader of (path, caption) pairs) of a table file (relative image paths
    against ``base``, default its folder) or a shard glob."""
    if source.endswith(".tar") or glob.has_magic(source):
        shards = sorted(Path(p).resolve() for p in glob.glob(os.path.expanduser(source)))
        if not shards:
            raise AnchorError(f"no candidate shards match {source!r}")
        digest = _sha([file_digest(s, root) for s in shards])
        return digest, lambda: extract_shards(shards, root / "shards" / digest)
    path = Path(source).expanduser().resolve()
    if not path.is_file():
        raise AnchorError(f"candidate set {path} does not exist (pass --candidates CSV|TSV|"
                          "SHARDS_GLOB)")
    base = path.parent if base is None else base
    return _sha([str(base), file_digest(path, root)]), lambda: read_table(path, base)


def _cached(path: Path, stage: str, compute: Callable[[Path], np.ndarray]) -> np.ndarray:
    """The memory-mapped array at ``path``, computed (and counted in COUNTS[stage]) if absent."""
    if path.is_file():
        return np.load(path, mmap_mode="r")
    COUNTS[stage] += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    return compute(path)


# --- preparation -----------------------------------------------------------------------------
def _write_pairs(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "caption"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _absolute_paths(obj: Any, root: Path) -> Any:
    """The raw spec with every split path (csv/imagefolder) and ``classes_file`` made absolute."""
    if isinstance(obj, dict):
        return {k: (str((root / v).resolve()) if k in ("csv", "imagefolder", "classes_file")
                    and isinstance(v, str) else _absolute_paths(v, root)) for k, v in obj.items()}
    return [_absolute_paths(v, root) for v in obj] if isinstance(obj, list) else obj


def resolve_inputs(spec: DataSpec, settings: AnchorSettings) -> tuple[str, str]:
    """(candidate source, captioner) after defaults; raises AnchorError when either is missing."""
    from search.anchors.captioning import check_captioner
    source = settings.candidates or (str(spec.anchors["candidates"].path)
                                     if "candidates" in spec.anchors else None)
    if source is None:
        raise AnchorError(f"{spec.source}: no candidate set: pass --candidates CSV|TSV|SHARDS_GLOB "
                          "or add anchors.candidates to the spec")
    captioner = settings.captioner or (WORLD if "captions" in spec.anchors else None)
    if captioner is None or (captioner == WORLD and "captions" not in spec.anchors):
        raise AnchorError(f"{spec.source}: no captions: pass --captioner HUB_ID_OR_PATH "
                          "(--captioner world needs anchors.captions in the spec)")
    if captioner != WORLD:
        check_captioner(captioner)
    return source, captioner


def prepare_anchors(spec_path: Path, settings: AnchorSettings = AnchorSettings(),
                    bundle: ClipBundle | None = None) -> Path:
    """Caption the training images, retrieve their top-k candidates, cache both, and return the
    derived spec (``<cache>/<key>/spec.yaml``: the input with absolute paths plus
    ``anchors.captions`` and ``anchors.retrieved``). A cached result is returned without any work.
    ``bundle`` overrides the CLIP built from ``settings.model``/``pretrained`` (tests)."""
    if settings.k < 1:
        raise AnchorError(f"k must be >= 1, got {settings.k}")
    spec = load_spec(spec_path)
    root = cache_root(settings.cache_dir)
    source, captioner = resolve_inputs(spec, settings)
    cand_digest, load_candidates = _candidate_source(   # the spec's paths are relative to it
        source, root, None if settings.candidates else spec.root)
    model_id = model_identity(settings.model, settings.pretrained, root)
    train_digest = split_digest(spec.train, root)
    cap_id = captioner_identity(captioner, root)
    key = _sha({"format": FORMAT, "model": model_id, "spec": [str(spec.source),
                file_digest(spec.source, root)], "train": train_digest, "candidates": cand_digest,
                "k": settings.k, "index": asdict(settings.index), "captioner": cap_id,
                "max_new_tokens": settings.max_new_tokens if captioner != WORLD else None})
    entry = root / key
    if (entry / "spec.yaml").is_file():
        COUNTS["hit"] += 1
        return entry / "spec.yaml"
    if spec.val is None:
        log.warning("%s has no id.val: the images held out for validation at training time are "
                    "captioned and used as retrieval queries too", spec.source)
    train = sorted({p for p, _ in read_samples(spec.train, spec.classes, spec.root)})
    cap_table = _caption_table(spec, train, captioner, cap_id, train_digest, settings, root)
    queries, texts, pairs = _embeddings(settings, bundle, root, model_id, train, train_digest,
                                        cand_digest, load_candidates)
    COUNTS["retrieve"] += 1
    found = retrieve(queries, texts, settings.k, settings.index)
    chosen = unique_candidates(found.ids)
    absent = [pairs[i][0] for i in chosen if not Path(pairs[i][0]).is_file()]
    if absent:
        raise AnchorError(f"{len(absent)} retrieved candidate image(s) are not local files, e.g. "
                          f"{absent[0]} (download the candidate images and list their paths)")
    info = {"key": key, "model": model_id, "captioner": captioner, "candidates_source": source,
            "train_images": len(train), "candidates": len(pairs), "k": settings.k,
            "index": asdict(settings.index), "retrieved": len(chosen),
            "recall_at_k": found.recall, "recall_queries": found.recall_queries}
    log.debug("anchors: %s", json.dumps(info))
    return _write_entry(entry, spec, cap_table, [pairs[i] for i in chosen], found, train, info)


def _embeddings(settings: AnchorSettings, bundle: ClipBundle | None, root: Path, model_id: str,
                train: list[str], train_digest: str, cand_digest: str,
                load_candidates: Callable[[], list]) -> tuple[np.ndarray, np.ndarray, list]:
    """Retrieval's inputs (Eq. 4): f(x) of the training images (N, D), g(t) of the candidates'
    texts (M, D), and the candidates' (path, caption) pairs; embeddings are cached by content,
    and the CLIP is built only when one is not cached."""
    clip: list[ClipBundle] = [bundle] if bundle is not None else []

    def get_clip() -> ClipBundle:
        if not clip:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)            # a random-init model (tests) is reproducible
                clip.append(create_clip(settings.model, settings.pretrained, "cpu"))
        return clip[0]

    kw = dict(batch_size=settings.batch_size, device=settings.device, workers=settings.workers,
              progress=settings.progress)
    emb = root / "embeddings"
    queries = _cached(emb / f"{_sha([model_id, train_digest, 'img'])}.npy", "embed_images",
                      lambda out: embed_images(get_clip(), train, out, **kw))
    pairs = load_candidates()
    texts = _cached(emb / f"{_sha([model_id, cand_digest, 'txt'])}.npy", "embed_texts",
                    lambda out: embed_texts(get_clip(), [c for _, c in pairs], out, **kw))
    if settings.candidate_images:
        _cached(emb / f"{_sha([model_id, cand_digest, 'img'])}.npy", "embed_candidate_images",
                lambda out: embed_images(get_clip(), [p for p, _ in pairs], out, **kw))
    return queries, texts, pairs


def _write_entry(entry: Path, spec: DataSpec, cap_table: Path, retrieved: list[tuple[str, str]],
                 found: Any, train: list[str], info: dict[str, Any]) -> Path:
    """Write the cache entry into a temporary folder and rename it into place; the spec path."""
    raw = _absolute_paths(yaml.safe_load(spec.source.read_text()), spec.root)
    raw["root"] = str(spec.root)      # image rows of the manifests stay relative to the data root
    raw.setdefault("anchors", {})
    raw["anchors"]["captions"] = {"csv": str(entry / "captions.csv")}
    raw["anchors"]["retrieved"] = {"csv": str(entry / "retrieved.csv")}

    def write_entry(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        shutil.copyfile(cap_table, tmp / "captions.csv")
        _write_pairs(tmp / "retrieved.csv", [{"path": p, "caption": c} for p, c in retrieved])
        np.savez(tmp / "neighbours.npz", ids=found.ids, scores=found.scores,
                 queries=np.array(train))
        (tmp / "info.json").write_text(json.dumps(info, indent=2) + "\n")
        (tmp / "spec.yaml").write_text(yaml.safe_dump(raw, sort_keys=False, width=100))

    try:
        files.atomic_write(entry, write_entry)
    except OSError:
        if not (entry / "spec.yaml").is_file():   # else another process finished first: keep it
            raise
    return entry / "spec.yaml"


def _caption_table(spec: DataSpec, train: list[str], captioner: str, cap_id: str,
                   train_digest: str, settings: AnchorSettings, root: Path) -> Path:
    """The cached ``path,caption`` table: the spec's own captions (``world``) or a captioner's."""
    if captioner == WORLD:
        split = spec.anchors["captions"]
        key = ["world", str(spec.root), file_digest(split.path, root)]
    else:
        key = [cap_id, train_digest, settings.max_new_tokens]
    path = root / "captions" / f"{_sha(key)}.csv"
    if path.is_file():
        return path
    if captioner == WORLD:
        captions = dict(read_pairs(split, spec.root))
        missing = sum(1 for p in train if p not in captions)
        if missing:
            log.warning("%d of %d training images have no caption in %s", missing, len(train),
                        split.path)
    else:
        from search.anchors.captioning import Captioner
        COUNTS["caption"] += 1
        model = Captioner.load(captioner, settings.device, settings.max_new_tokens)
        captions = dict(zip(train, model.caption(train, settings.caption_batch_size,
                                                 settings.progress)))
    rows = [{"path": p, "caption": c} for p, c in captions.items()]
    return files.atomic_write(path, lambda tmp: _write_pairs(tmp, rows))


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def ensure_retrieved(spec_path: Path, model: str, pretrained: str | None) -> Path:
    """The spec extended with ``anchors.captions`` and ``anchors.retrieved``, prepared with the
    defaults (captioner ``world``, the spec's ``anchors.candidates``, k=4, exact search) and
    cached; ``search.run --method arf`` calls it once per study, in the driver."""
    spec = prepare_anchors(Path(spec_path), AnchorSettings(model=model, pretrained=pretrained,
                                                           device=default_device(),
                                                           progress=False))
    log.info("ARF anchors for %s: %s", spec_path, spec)
    return spec


def with_anchors(run: RunSpec) -> RunSpec:
    """``run`` with its data spec extended by retrieved anchors when its method needs them and
    the spec has none (ARF: :func:`ensure_retrieved`, prepared once and cached); else ``run``."""
    from dataclasses import replace

    from trainables.methods import get_method_class
    if ("retrieved" in get_method_class(run.method).anchor_sets
            and "retrieved" not in load_spec(run.data).anchors):
        return replace(run, data=str(ensure_retrieved(Path(run.data), run.model, run.pretrained)))
    return run
