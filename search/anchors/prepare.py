"""Offline preparation commands; today one: ``anchors`` (ARF's caption and retrieval anchor sets).

    python -m search.prepare anchors --data SPEC [--candidates CSV|TSV|SHARDS_GLOB]
        [--captioner HUB_ID_OR_PATH|world] [--model M] [--pretrained P] [--k 4]
        [--index exact|ivf|hnsw] [--cache DIR] [--batch-size N] [--device cpu|cuda]

Prints the derived dataset spec's path on stdout (progress and a summary go to stderr), so
``SPEC=$(python -m search.prepare anchors --data world.yaml)`` works; pass it to
``search.run --data``. Bad input exits with status 2 and one ``error:`` line.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from search.anchors.build import AnchorError, AnchorSettings, default_device, prepare_anchors
from search.anchors.captioning import CaptionerError
from search.anchors.retrieval import INDEX_TYPES, CandidateError, IndexSettings
from search.cli import fail
from trainables.data import DataError
from trainables.models import DEFAULT_MODEL, ModelError, default_pretrained


def build_parser() -> argparse.ArgumentParser:
    from search.cli_help import Parser
    p = Parser(prog="python -m search.prepare",
                                description="Offline preparation steps (cached).")
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser(
        "anchors", help="ARF anchors: caption the training images and retrieve candidates",
        description="Caption every ID training image and retrieve, for each, the top-k candidate "
                    "(image, text) pairs by f(x)·g(t) with the zero-shot CLIP (FAISS); cache the "
                    "result and print the derived dataset spec's path.")
    a.add_argument("--data", type=Path, required=True, help="dataset spec YAML")
    a.add_argument("--candidates", help="candidate set: a CSV/TSV with path,caption columns (or "
                   "CC3M's caption<TAB>path TSV) or a glob of WebDataset .tar shards (default: the "
                   "spec's anchors.candidates)")
    a.add_argument("--captioner", help="a transformers image-to-text model (hub id from the local "
                   "cache, or a folder), or 'world' to use the spec's anchors.captions (default: "
                   "world when the spec has them)")
    a.add_argument("--model", default=DEFAULT_MODEL, help="open_clip architecture of the "
                   f"zero-shot CLIP (default: {DEFAULT_MODEL})")
    a.add_argument("--pretrained", default=None, help="open_clip tag or local weights file "
                   "(default: the embedded tiny CLIP's weights for the default model)")
    a.add_argument("--k", type=int, default=4, help="candidates retrieved per training image")
    a.add_argument("--index", default="exact", help=f"FAISS index: {', '.join(INDEX_TYPES)} "
                   "(approximate ones report their recall@k against exact search)")
    a.add_argument("--nlist", type=int, help="IVF cells (default 4·sqrt(N))")
    a.add_argument("--nprobe", type=int, default=32, help="IVF cells scanned per query")
    a.add_argument("--ef-search", type=int, default=128, help="HNSW search breadth")
    a.add_argument("--recall-sample", type=int, default=1000,
                   help="queries on which an approximate index's recall is measured")
    a.add_argument("--cache", type=Path, help="cache folder (default: $ROBUST_SEARCH_CACHE/anchors "
                   "or ~/.cache/robust-clip-search/anchors)")
    a.add_argument("--batch-size", type=int, default=256, help="CLIP embedding batch size")
    a.add_argument("--caption-batch-size", type=int, default=32, help="captioning batch size")
    a.add_argument("--max-new-tokens", type=int, default=30, help="caption length limit")
    a.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    a.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="image-loading processes")
    a.add_argument("--candidate-images", action="store_true",
                   help="also embed the candidates' images (not needed for retrieval)")
    a.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def settings_from_args(args: argparse.Namespace) -> AnchorSettings:
    """Validate the CLI values (raising AnchorError) and build the settings."""
    if args.index not in INDEX_TYPES:
        raise AnchorError(f"unknown index type {args.index!r}: use one of {', '.join(INDEX_TYPES)}")
    for name in ("k", "batch_size", "caption_batch_size", "max_new_tokens", "nprobe", "ef_search",
                 "recall_sample"):
        if getattr(args, name) < 1:
            raise AnchorError(f"--{name.replace('_', '-')} must be >= 1")
    device = args.device or default_device()
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise AnchorError(f"unknown device {device!r}: use cpu or cuda")
    pretrained = default_pretrained(args.model, args.pretrained)
    index = IndexSettings(args.index, nlist=args.nlist, nprobe=args.nprobe,
                          ef_search=args.ef_search, recall_sample=args.recall_sample)
    return AnchorSettings(model=args.model, pretrained=pretrained or None,
                          candidates=args.candidates, captioner=args.captioner, k=args.k,
                          index=index, batch_size=args.batch_size,
                          caption_batch_size=args.caption_batch_size,
                          max_new_tokens=args.max_new_tokens, device=device,
                          workers=max(0, args.workers), cache_dir=args.cache,
                          candidate_images=args.candidate_images, progress=not args.quiet)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("search").setLevel(logging.INFO)
    try:
        spec = prepare_anchors(args.data, settings_from_args(args))
    except (AnchorError, CandidateError, CaptionerError, DataError, ModelError) as err:
        fail(str(err))
    info = json.loads((spec.parent / "info.json").read_text())
    recall = (f", recall@{info['k']} {info['recall_at_k']:.3f} on {info['recall_queries']} "
              "queries" if info["recall_queries"] else "")
    print(f"anchors: {info['train_images']} training images, captions from {info['captioner']}; "
          f"{info['retrieved']} distinct candidates of {info['candidates']} retrieved "
          f"(k={info['k']}, {info['index']['kind']} index{recall})", file=sys.stderr)
    print(spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
