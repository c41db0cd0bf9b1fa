"""Retrieval for ARF: the candidate set, zero-shot CLIP embeddings in memory-mapped arrays, and
FAISS top-k search.

Candidate sets: a CSV/TSV of (image path, caption) with a header naming ``path`` and ``caption``, or
CC3M's header-less ``caption<TAB>url-or-path``; or WebDataset tar shards (``KEY.jpg|jpeg|png|webp``
+ ``KEY.txt``, KEY = the member name up to its first dot) read in-stream with :mod:`tarfile`.

Embeddings: images through ``bundle.preprocess_val`` and ``encode_image(normalize=True)``, texts
through ``bundle.tokenizer`` and ``encode_text(normalize=True)``, batched, under ``no_grad`` (fp16
autocast on a GPU), written batch by batch into a float32 ``.npy`` opened with
``numpy.lib.format.open_memmap`` (so millions of rows never sit in RAM at once).

ARF (Han et al., CVPR 2024, Eq. 4) retrieves, for every training image x, the candidates maximising
``f(x) · g(t_can)`` with the zero-shot CLIP. Features are L2-normalised, so the inner product is
the cosine similarity and :class:`faiss.IndexFlatIP` is the exact search (the default). For
candidate sets in the millions (CC3M: 3.3 M) two approximate indexes trade recall for speed
(measured on 2 CPU cores, 100k clustered D=128 candidates, 10k queries: exact search ~4 s, IVF
build ~5 s, HNSW build ~50 s single-threaded; exact cost grows linearly with N):

- ``ivf``: :class:`faiss.IndexIVFFlat` with ``nlist ≈ 4·sqrt(N)`` k-means cells (inner-product
  quantiser), trained on at most ``64·nlist`` candidates; a query scans ``nprobe`` cells.
- ``hnsw``: :class:`faiss.IndexHNSWFlat` (``M`` links per node, inner-product metric), searched with
  ``efSearch``.

An approximate index's recall@k against exact search is measured on a sample of the queries
(:func:`retrieve` returns it, the caller logs and stores it).
"""
from __future__ import annotations

import csv
import logging
import math
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import faiss
import numpy as np
import torch
from numpy.lib.format import open_memmap
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from trainables import files
from trainables.data import load_image
from trainables.errors import InputError
from trainables.models import ClipBundle

log = logging.getLogger(__name__)

INDEX_TYPES = ("exact", "ivf", "hnsw")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


class CandidateError(InputError):
    """A candidate set that cannot be read; the message names the file and the fix."""


_ADD_CHUNK = 65536          # rows copied from a memory map into the index at a time


@dataclass(frozen=True)
class IndexSettings:
    """Which index and its search-time knobs. ``nlist=None``: ``4·sqrt(N)`` clipped so that every
    cell has at least 39 training points (FAISS's own minimum)."""

    kind: str = "exact"
    nlist: int | None = None
    nprobe: int = 32
    hnsw_m: int = 32
    ef_search: int = 128
    ef_construction: int = 80
    recall_sample: int = 1000   # queries on which an approximate index is compared with exact
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in INDEX_TYPES:
            raise ValueError(f"unknown index type {self.kind!r}: use one of {list(INDEX_TYPES)}")


@dataclass(frozen=True)
class Retrieval:
    """Top-k neighbours: ``ids`` (Q, k) candidate rows (best first), ``scores`` (Q, k) inner
    products, and the approximate index's recall@k on ``recall_queries`` sampled queries (1.0 and
    0 for exact search)."""

    ids: np.ndarray
    scores: np.ndarray
    recall: float
    recall_queries: int


# --- candidate sets ------------------------------------------------------------------------
def read_table(path: Path, base: Path | None = None) -> list[tuple[str, str]]:
    """(image path or URL, caption) rows of a CSV/TSV with a header naming ``path`` and
    ``caption``, or of a header-less 2-column TSV ``caption<TAB>path`` (CC3M); relative paths are
    resolved against ``base`` (default: the table's folder)."""
    base = path.parent if base is None else base
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh, delimiter=delimiter))
    if not rows:
        raise CandidateError(f"candidate table {path} is empty")
    header = [c.strip().lower() for c in rows[0]]
    if "path" in header and "caption" in header:
        ip, ic = header.index("path"), header.index("caption")
        pairs = [(r[ip], r[ic]) for r in rows[1:] if len(r) > max(ip, ic)]
    elif delimiter == "\t" and all(len(r) == 2 for r in rows):
        pairs = [(r[1], r[0]) for r in rows]
    else:
        raise CandidateError(f"candidate table {path}: needs a header row with path and caption "
                             "columns (or a 2-column TSV caption<TAB>path)")
    if not pairs:
        raise CandidateError(f"candidate table {path} has no rows")
    return [(p if "://" in p else str((base / p).resolve()), c) for p, c in pairs]


def iter_shards(paths: Sequence[Path]) -> Iterator[tuple[str, str, bytes, str]]:
    """(shard stem, image file name, image bytes, caption) per WebDataset sample, read in-stream;
    the file name is the member's path with ``/`` turned into ``__`` (safe to write anywhere)."""
    for shard in paths:
        pending: dict[str, dict[str, Any]] = {}
        with tarfile.open(shard, mode="r|*") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                ext = base.partition(".")[2].lower()
                if not member.isfile() or (ext not in IMAGE_EXTS and ext != "txt"):
                    continue
                key = member.name[:len(member.name) - len(base) + base.index(".")]
                entry = pending.setdefault(key, {})
                data = tar.extractfile(member).read()
                if ext == "txt":
                    entry["caption"] = " ".join(data.decode("utf-8").split())
                else:
                    name = "__".join(p for p in member.name.split("/") if p not in ("", "."))
                    entry["image"] = (name, data)
                if "image" in entry and "caption" in entry:
                    yield shard.stem, *entry["image"], entry["caption"]
                    del pending[key]
        if pending:
            log.warning("%s: %d sample(s) without both an image and a .txt skipped", shard,
                        len(pending))


# --- embeddings ------------------------------------------------------------------------------
class _Images(Dataset):
    def __init__(self, paths: Sequence[str], transform: Callable):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(load_image(self.paths[i]))


def _to_memmap(out: Path, n: int, batches: Iterator[torch.Tensor]) -> np.ndarray:
    """Write (B, D) feature batches into a new (n, D) float32 ``.npy`` at ``out`` (atomically)."""

    def fill(tmp: Path) -> None:
        arr, row = None, 0
        for feats in batches:
            if arr is None:
                arr = open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, feats.shape[1]))
            arr[row:row + len(feats)] = feats.float().cpu().numpy()
            row += len(feats)
        assert arr is not None and row == n, f"embedded {row} of {n} rows"
        arr.flush()

    files.atomic_write(out, fill)
    return np.load(out, mmap_mode="r")


@torch.no_grad()
def embed_images(bundle: ClipBundle, paths: Sequence[str], out: Path, batch_size: int = 256,
                 device: str = "cpu", workers: int = 0, progress: bool = True) -> np.ndarray:
    """f(x) (N, D) of image files, L2-normalised, into the memory-mapped ``out`` (.npy)."""
    dev = torch.device(device)
    loader = DataLoader(_Images(paths, bundle.preprocess_val), batch_size=batch_size,
                        num_workers=workers, pin_memory=dev.type == "cuda")
    clip = bundle.clip.to(dev).eval()
    with torch.autocast(dev.type, enabled=dev.type == "cuda"):
        feats = (clip.encode_image(x.to(dev, non_blocking=True), normalize=True)
                 for x in tqdm(loader, desc="embedding images", disable=not progress))
        return _to_memmap(out, len(paths), feats)


@torch.no_grad()
def embed_texts(bundle: ClipBundle, texts: Sequence[str], out: Path, batch_size: int = 256,
                device: str = "cpu", workers: int = 0, progress: bool = True) -> np.ndarray:
    """g(t) (N, D) of texts, L2-normalised, into the memory-mapped ``out`` (.npy); ``workers``
    processes tokenise (the bottleneck on a GPU for millions of captions)."""
    dev = torch.device(device)
    loader = DataLoader(list(texts), batch_size=batch_size, num_workers=workers,
                        collate_fn=bundle.tokenizer)
    clip = bundle.clip.to(dev).eval()
    with torch.autocast(dev.type, enabled=dev.type == "cuda"):
        feats = (clip.encode_text(tokens.to(dev), normalize=True)
                 for tokens in tqdm(loader, desc="embedding texts", disable=not progress))
        return _to_memmap(out, len(texts), feats)


# --- FAISS ---------------------------------------------------------------------------------
def _add_chunked(index: faiss.Index, vectors: np.ndarray) -> None:
    for start in range(0, len(vectors), _ADD_CHUNK):
        index.add(np.ascontiguousarray(vectors[start:start + _ADD_CHUNK], dtype=np.float32))


def default_nlist(n: int) -> int:
    """``4·sqrt(N)`` cells, at most ``N // 39`` (at least 1)."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def build_index(vectors: np.ndarray, settings: IndexSettings = IndexSettings()) -> faiss.Index:
    """An inner-product index over ``vectors`` (N, D) float32 (a memory map is fine: it is added in
    chunks, the index holds its own copy)."""
    n, dim = vectors.shape
    if settings.kind == "exact":
        index = faiss.IndexFlatIP(dim)
    elif settings.kind == "ivf":
        nlist = settings.nlist or default_nlist(n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(settings.seed)
        sample = np.sort(rng.choice(n, size=min(n, 64 * nlist), replace=False))
        index.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
        index.nprobe = min(settings.nprobe, nlist)
    else:
        index = faiss.IndexHNSWFlat(dim, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = settings.ef_construction
        index.hnsw.efSearch = settings.ef_search
    _add_chunked(index, vectors)
    return index


def search(index: faiss.Index, queries: np.ndarray, k: int, batch: int = 16384
           ) -> tuple[np.ndarray, np.ndarray]:
    """(scores (Q, k), ids (Q, k)) of the top-k rows of ``index`` for each query, in batches."""
    scores = np.empty((len(queries), k), np.float32)
    ids = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), batch):
        q = np.ascontiguousarray(queries[start:start + batch], dtype=np.float32)
        scores[start:start + len(q)], ids[start:start + len(q)] = index.search(q, k)
    return scores, ids


def exact_topk(queries: np.ndarray, candidates: np.ndarray, k: int, chunk: int = _ADD_CHUNK
               ) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force (scores (Q, k), ids (Q, k)) by inner product, streaming ``candidates`` in chunks
    (no second copy of a memory-mapped candidate set: the reference for recall@k)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for start in range(0, len(candidates), chunk):
        s = q @ np.asarray(candidates[start:start + chunk], dtype=np.float32).T   # (Q, chunk)
        top = np.argpartition(-s, min(k, s.shape[1]) - 1, axis=1)[:, :k]
        best_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], axis=1)
        best_i = np.concatenate([best_i, top + start], axis=1)
        keep = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
    return best_s, best_i


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean over queries of |approx top-k ∩ exact top-k| / k (both (Q, k))."""
    k = exact_ids.shape[1]
    hits = [len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx_ids, exact_ids)]
    return float(np.mean(hits)) / k if hits else 1.0


def retrieve(queries: np.ndarray, candidates: np.ndarray, k: int,
             settings: IndexSettings = IndexSettings()) -> Retrieval:
    """Top-k candidates (N, D) for each query (Q, D) by inner product; for an approximate index
    also its recall@k against exact search on up to ``settings.recall_sample`` queries."""
    k = min(k, len(candidates))
    scores, ids = search(build_index(candidates, settings), queries, k)
    recall, sampled = 1.0, 0
    if settings.kind != "exact":
        rng = np.random.default_rng(settings.seed)
        rows = np.sort(rng.choice(len(queries), size=min(len(queries), settings.recall_sample),
                                  replace=False))
        _, exact = exact_topk(queries[rows], candidates, k)
        recall, sampled = recall_at_k(ids[rows], exact), len(rows)
        log.info("%s index: recall@%d = %.4f against exact search on %d queries",
                 settings.kind, k, recall, sampled)
    return Retrieval(ids, scores, recall, sampled)


def unique_candidates(ids: np.ndarray) -> np.ndarray:
    """The distinct candidate rows of ``ids`` (Q, k), ascending: a candidate retrieved by several
    queries appears once (FAISS's -1 "no result" is dropped)."""
    flat = np.unique(ids.ravel())
    return flat[flat >= 0]
