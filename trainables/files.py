"""Files the project writes and reads back: atomic writes, content digests, the cache folder.

One place for each, so every writer leaves either the old file or the whole new one (never half a
file after a crash or a kill), and every digest of a file's bytes is the same sha256.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Callable


def cache_root() -> Path:
    """``$ROBUST_SEARCH_CACHE``, else ``~/.cache/robust-clip-search``: the generated world and
    the prepared ARF anchors live under it."""
    return Path(os.environ.get("ROBUST_SEARCH_CACHE", "~/.cache/robust-clip-search")).expanduser()


def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` a file (or folder) beside ``path``, then rename it to ``path`` in one step.

    ``tmp`` is ``<stem>.tmp-<pid><suffix>`` in the same folder (a rename across file systems
    would not be atomic; the suffix stays for writers that look at it, e.g. numpy's ``.npy``).
    A failing ``write`` removes what it left; an existing folder at ``path`` is not replaced
    (``os.replace`` refuses a non-empty one), so the caller removes it first if it means to."""
    path = Path(path)
    tmp = path.with_name(f"{path.stem}.tmp-{os.getpid()}{path.suffix}")
    _remove(tmp)            # left by a killed process that had the same pid
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    return path


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> Path:
    """:func:`atomic_write` of a text file."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
