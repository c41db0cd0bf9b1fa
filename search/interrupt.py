"""Ctrl-C and SIGTERM: stop the study cleanly once, at once the second time.

:func:`install` makes SIGINT and SIGTERM set a flag instead of killing the driver, and turns off
Tune's own SIGINT handler (``TUNE_DISABLE_SIGINT_HANDLER``), which would otherwise swallow Ctrl-C
and return a partial ``ResultGrid`` that looks like a finished study. While ``Tuner.fit()`` runs
(:func:`tune_running`), the first signal is handed to Tune's SIGUSR1 handler, Tune's own
graceful stop (Ray 2.60 ``tune.py``: the loop ends, the experiment state is saved one last time);
elsewhere it raises :class:`Interrupted` in the main thread. Either way the study then marks its
MLflow runs KILLED, writes no summary and exits 128 + signal (130 for SIGINT, 143 for SIGTERM).

A second signal ends the process at once with ``os._exit``: the state on disk is then what a
SIGKILL leaves (Tune writes its state files whole; the MLflow store is a transactional database),
which ``--resume`` recovers (tests/test_reliability.py, test_killed_driver_resumes).
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The driver received SIGINT/SIGTERM. A BaseException, like KeyboardInterrupt: ``except
    Exception`` clean-up code (which would mark the study FAILED) lets it through."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_state: dict[str, object] = {"signum": None, "in_fit": False, "message": ""}


def received() -> int | None:
    """The first signal received, or None."""
    return _state["signum"]            # type: ignore[return-value]


def install(second_message: str = "") -> None:
    """Handle SIGINT/SIGTERM in this (main) thread; ``second_message`` is printed when a second
    signal stops the process at once."""
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    _state.update(signum=None, in_fit=False, message=second_message)
    for sig in SIGNALS:
        signal.signal(sig, _handler)


def reinstall() -> None:
    """Take SIGINT/SIGTERM back after ``ray.init``: Ray's core worker installs a C++ SIGTERM
    handler in the driver (it prints a stack trace and aborts, seen with Ray 2.60)."""
    for sig in SIGNALS:
        signal.signal(sig, _handler)


def _handler(signum: int, frame) -> None:
    first = _state["signum"]
    if first is not None:               # the second signal: stop now
        message = _state["message"] or "stopped at once"
        print(f"error: {signal.Signals(signum).name} again: {message}", file=sys.stderr,
              flush=True)
        os._exit(128 + int(first))      # noqa: SLF001 - deliberate: no clean-up, like SIGKILL
    _state["signum"] = signum
    print(f"{signal.Signals(signum).name} received: stopping the study after the running "
          "step (send it again to stop at once)", file=sys.stderr, flush=True)
    tune_stop = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
    if _state["in_fit"] and callable(tune_stop):
        # Tune's own messages would say "Press CTRL+C to skip" and "Resume experiment with:
        # Tuner.restore(...)"; the line printed at exit gives the right command instead
        logging.getLogger("ray.tune.tune").setLevel(logging.ERROR)
        tune_stop(signal.SIGUSR1, frame)   # Tune's graceful stop; fit() then returns
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def tune_running() -> Iterator[None]:
    """Around ``Tuner.fit()``: a signal asks Tune to stop instead of raising; after ``fit()``
    returns, :class:`Interrupted` is raised if a signal came."""
    _state["in_fit"] = True
    try:
        yield
    finally:
        _state["in_fit"] = False
    check()


def check() -> None:
    """Raise :class:`Interrupted` if a signal was received."""
    if _state["signum"] is not None:
        raise Interrupted(int(_state["signum"]))    # type: ignore[arg-type]
