"""Progress for the long stretches without training output: a tqdm bar on a terminal, a plain line
now and then everywhere else.

WiSE selection and the report evaluation run inside Ray trial processes, whose stdout/stderr are
pipes: Ray forwards each *line* to the driver's console behind a ``(run_trial pid=…)`` prefix, so
tqdm's carriage-return redraws would arrive as one ever-growing line. Off a terminal the bar is
therefore drawn as separate lines, and only for a stage that has already run ``delay_s`` (a short
stage prints nothing) and then at most every ``every_s`` seconds, ending with one last line.
"""
from __future__ import annotations

import sys
from typing import IO, Any

from tqdm import tqdm

#: off a terminal: no line before a stage has run this long, then at most one line this often
LINE_DELAY_S = 20.0
LINE_EVERY_S = 20.0


class _Lines:
    """A file for tqdm that turns each redraw (``\\r`` + bar) into a line of its own."""

    def __init__(self, stream: IO[str]):
        self.stream = stream
        self.last = ""

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text and text != self.last:      # close() redraws the last state once more
            self.stream.write(text + "\n")
            self.last = text

    def flush(self) -> None:
        self.stream.flush()


def bar(desc: str, total: int | None = None, unit: str = "it", *,
        stream: IO[str] | None = None, delay_s: float | None = None,
        every_s: float | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar on ``stream`` (stderr): a live bar when it is a terminal, else lines (module
    docstring; ``delay_s``/``every_s`` default to :data:`LINE_DELAY_S`/:data:`LINE_EVERY_S`).
    Use as a context manager or ``close()`` it."""
    stream = stream if stream is not None else sys.stderr
    delay_s = LINE_DELAY_S if delay_s is None else delay_s
    every_s = LINE_EVERY_S if every_s is None else every_s
    if getattr(stream, "isatty", lambda: False)():
        return tqdm(total=total, desc=desc, unit=unit, file=stream, **kwargs)
    fmt = ("{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%), {elapsed} elapsed, "
           "~{remaining} left" if total else "{desc}: {n_fmt} {unit}, {elapsed} elapsed")
    return tqdm(total=total, desc=desc, unit=unit, file=_Lines(stream), bar_format=fmt,
                delay=delay_s, mininterval=every_s, maxinterval=max(every_s, 10.0), **kwargs)
