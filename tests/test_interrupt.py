"""Ctrl-C and SIGTERM during a study (issue 19): the study stops cleanly, its MLflow runs are
KILLED, no summary is written, one line says how to resume, the exit status is 130 / 143, the
lock is released, and the printed --resume command finishes the study; resuming the finished
study then does nothing. Drivers run as child processes in their own sessions (helpers of
tests/study_driver.py)."""
from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from search import lock
from search.bench.tiny_data import write_tiny_spec

from .study_driver import (
    STUDY,
    _check_layout,
    _cleanup,
    _command,
    _finish,
    _paused_worker,
    _runs,
    _start,
    _trial_results,
    _wait_for,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_spec(tmp_path_factory.mktemp("interrupt"), per_class=4)


def _status(out) -> str:
    return json.loads((out / "ray" / STUDY / "study.json").read_text())["status"]


@pytest.mark.slow
def test_sigint_stops_cleanly_and_the_printed_command_resumes(tmp_path, data):
    faults, out = tmp_path / "faults", tmp_path / "out"
    cmd = _command(tmp_path, data, 3)
    proc = _start(cmd, tmp_path, "first", ROBUST_SEARCH_FAULT="pause@1#1",
                  ROBUST_SEARCH_FAULT_DIR=str(faults))
    try:
        _paused_worker(faults, 1, out, proc)       # trial 0 finished, trial 1 mid-way
        os.killpg(proc.pid, signal.SIGINT)          # its process group, as Ctrl-C in a terminal
        code = proc.wait(timeout=300)
    finally:
        _cleanup(proc)
    err = (tmp_path / "first.err").read_text().strip().splitlines()
    assert code == 130, "\n".join(err[-30:])
    assert err[-1].startswith("error: interrupted by SIGINT") and "--resume" in err[-1]
    assert not (out / "summary.json").exists() and _status(out) == "running"
    parent, children = _runs(out)
    assert parent.info.status == "KILLED" and "interrupted" in parent.data.tags
    interrupted = (faults / "index-1").read_text().removeprefix("train-")
    states = {c.data.tags["trial_id"]: c.info.status for c in children}
    assert states[interrupted] == "KILLED"
    assert sorted(states.values()) == ["FINISHED", "KILLED"], states
    lock.acquire(out).release()                      # the lock went with the driver

    # the printed command (python -m search.run ... --resume), run with this interpreter
    resume = shlex.split(err[-1].partition("continue it with: ")[2])
    assert resume[1:3] == ["-m", "search.run"] and resume[3:] == cmd[3:] + ["--resume"]
    code = _finish(_start([sys.executable, *resume[1:]], tmp_path, "resumed"))
    assert code == 0, (tmp_path / "resumed.err").read_text()[-3000:]
    results = _trial_results(out)
    assert len(results) == 3 and all(r[-1]["final"] == 1.0 for r in results.values())
    parent, children = _runs(out)
    assert parent.info.status == "FINISHED" and len(children) == 3
    assert all(c.info.status == "FINISHED" for c in children)
    assert _status(out) == "finished"
    _check_layout(out)

    # a finished study resumed: nothing to do, nothing changed (no Ray started)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    code = _finish(_start([sys.executable, *resume[1:]], tmp_path, "again"))
    assert code == 0 and "already finished" in (tmp_path / "again.out").read_text()
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps
    assert _runs(out)[0].info.status == "FINISHED"


@pytest.mark.slow
def test_sigterm_then_a_second_signal_stops_at_once(tmp_path, data):
    """SIGTERM asks for a clean stop (exit 143); a second signal while that is under way ends
    the driver at once, still 143, leaving state that --resume accepts."""
    faults, out = tmp_path / "faults", tmp_path / "out"
    cmd = _command(tmp_path, data, 2)
    proc = _start(cmd, tmp_path, "driver", ROBUST_SEARCH_FAULT="pause@1#0",
                  ROBUST_SEARCH_FAULT_DIR=str(faults))
    try:
        _paused_worker(faults, 0, out, proc)
        os.kill(proc.pid, signal.SIGTERM)
        _wait_for(lambda: "SIGTERM received" in (tmp_path / "driver.err").read_text(), proc,
                  "the driver acknowledged SIGTERM", timeout=60)
        os.kill(proc.pid, signal.SIGINT)
        start = time.monotonic()
        code = proc.wait(timeout=60)
        took = time.monotonic() - start
    finally:
        _cleanup(proc)
    err = (tmp_path / "driver.err").read_text().strip().splitlines()
    assert code == 143, "\n".join(err[-30:])
    assert took < 30 and "stopped at once" in err[-1] and "--resume" in err[-1]
    assert not (out / "summary.json").exists() and _status(out) == "running"
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    assert client.search_experiments()                 # the store opens: not corrupted
    lock.acquire(out).release()


_OUTSIDE_FIT = """
import os, signal, sys
from search import interrupt
interrupt.install("bye")
try:
    os.kill(os.getpid(), signal.SIG{name})
    signal.pause()           # the handler raises before this returns
except interrupt.Interrupted as stop:
    print(stop.exit_code, interrupt.received() == signal.SIG{name}, flush=True)
    os.kill(os.getpid(), signal.SIGINT)     # a second signal: os._exit at once
"""


@pytest.mark.parametrize("name, code", [("INT", 130), ("TERM", 143)])
def test_signal_outside_tune_raises_then_second_signal_exits(name, code):
    """Outside Tuner.fit() the first signal raises Interrupted (exit status 128 + signal); the
    second ends the process at once with that status."""
    import subprocess
    from pathlib import Path
    proc = subprocess.run([sys.executable, "-c", _OUTSIDE_FIT.format(name=name)],
                          capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.stdout.split() == [str(code), "True"], proc.stderr
    assert proc.returncode == code and proc.stderr.strip().splitlines()[-1].endswith("bye")
