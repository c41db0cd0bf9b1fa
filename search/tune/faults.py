"""Test-only fault injection into the Ray Train worker (tests/test_reliability.py).

Off unless ``ROBUST_SEARCH_FAULT`` is set; nothing in a normal run reads it. The value is a
comma-separated list of ``KIND@EPOCH[#TRIAL]``:

- ``raise@E``: the worker raises ``RuntimeError("injected fault ...")`` at the end of epoch E,
  before reporting it (a crashing trial; with ``--max-failures N`` it is retried N times).
- ``pause@E``: after reporting epoch E (metrics + checkpoint), the worker writes its pid to
  ``$ROBUST_SEARCH_FAULT_DIR/pid-<T>`` and waits up to 5 minutes, once per trial, for the test
  to kill it (a Train worker killed mid-trial, to be restarted from its last checkpoint).
- ``#T`` restricts a fault to the T-th trial to start (0-based); without it every trial is hit.

``ROBUST_SEARCH_FAULT_DIR`` (required with a fault) holds the bookkeeping: ``index-<T>`` (which
Train run is trial T), ``attempts-<T>`` (one line per worker start, so retries can be counted),
``pid-<T>`` and ``paused-<T>``. It must lie outside ``--output``.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

FAULT_ENV, FAULT_DIR_ENV = "ROBUST_SEARCH_FAULT", "ROBUST_SEARCH_FAULT_DIR"
_ITEM = re.compile(r"(raise|pause)@(\d+)(?:#(\d+))?")


def trial_index(run_name: str) -> int | None:
    """The 0-based start order of the Train run ``run_name`` (stable across its retries), and
    one more line in its ``attempts`` file; None when no fault is configured."""
    if not os.environ.get(FAULT_ENV):
        return None
    folder = Path(os.environ[FAULT_DIR_ENV])
    folder.mkdir(parents=True, exist_ok=True)
    index = 0
    for path in sorted(folder.glob("index-*")):
        if path.read_text() == run_name:
            index = int(path.name.split("-")[1])
            break
    else:
        while True:     # claim the next free index atomically (concurrent trials)
            try:
                fd = os.open(folder / f"index-{index}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                index += 1
                continue
            os.write(fd, run_name.encode())
            os.close(fd)
            break
    with open(folder / f"attempts-{index}", "a") as fh:
        fh.write(f"{os.getpid()}\n")
    return index


def inject(kind: str, epoch: int, index: int | None) -> None:
    """Apply the configured fault of ``kind`` ("raise" or "pause") at ``epoch``, if any."""
    spec = os.environ.get(FAULT_ENV)
    if not spec or index is None:
        return
    folder = Path(os.environ[FAULT_DIR_ENV])
    for item in spec.split(","):
        match = _ITEM.fullmatch(item.strip())
        if match is None:
            raise ValueError(f"{FAULT_ENV}: cannot parse {item!r} (KIND@EPOCH[#TRIAL])")
        if (match[1] != kind or int(match[2]) != epoch
                or (match[3] is not None and int(match[3]) != index)):
            continue
        if kind == "raise":
            raise RuntimeError(f"injected fault: raise at epoch {epoch} of trial {index}")
        marker = folder / f"paused-{index}"
        if not marker.exists():
            marker.touch()
            (folder / f"pid-{index}").write_text(str(os.getpid()))
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                time.sleep(0.2)
