"""Running ``python -m search.run`` as a child process a test can kill, and reading what the
study left: the harness of the end-to-end tests (test_reliability, test_interrupt,
test_search_study, test_export).

Each driver runs in its own session, so a test can kill it, and afterwards whatever is left of that
session (the local Ray instance the driver started) is killed by process id: no ``ray stop``,
which would also stop other people's Ray instances on the machine.
"""
from __future__ import annotations

import fnmatch
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parent.parent
STUDY = "ft-search"
TIMEOUT_S = 900          # per driver; a busy 2-core machine is ~4x slower than an idle one

#: Everything a finished study leaves under --output (README "What --output holds"); paths are
#: relative, ``*`` matches within one path component.
LAYOUT = [
    "mlflow.db", "optuna.db", "summary.json", "mlartifacts/*/artifacts/*",
    "mlartifacts/*/artifacts/*/*", "run.lock", f"ray/{STUDY}/study.json",
    # the chosen model (README "Using the result"), and its MLflow copy (a logged model)
    "model/*", "mlartifacts/models/*/artifacts/*", "mlartifacts/models/*/artifacts/*/*/*",
    f"ray/{STUDY}/tuner.pkl", f"ray/{STUDY}/.validate_storage_marker",
    f"ray/{STUDY}/experiment_state-*.json", f"ray/{STUDY}/searcher-state-*.pkl",
    f"ray/{STUDY}/search_gen_state-*.json", f"ray/{STUDY}/basic-variant-state-*.json",
    *(f"ray/{STUDY}/run_trial_*/{name}" for name in (
        "params.json", "params.pkl", "result.json", "progress.csv", "events.out.tfevents.*",
        "error.txt", "error.pkl")),
    # a trial trained in its Tune actor (the default): Tune keeps its checkpoints
    *(f"ray/{STUDY}/run_trial_*/checkpoint_*/{name}" for name in (
        "model.safetensors", "config.json", "loop_state.pt")),
    # a trial with a Train worker group (--worker-group): Train keeps them
    "ray/train/train-*/.validate_storage_marker",
    "ray/train/train-*/checkpoint_manager_snapshot.json",
    *(f"ray/train/train-*/checkpoint_*/{name}" for name in (
        "model.safetensors", "config.json", "loop_state.pt")),
]


def _space(folder: Path, num_samples: int) -> Path:
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump({
        "method": "ft",
        "params": {"lr": {"loguniform": [1.0e-4, 3.0e-3]}, "epochs": 2, "batch_size": 16,
                   "warmup_steps": 1},
        "search": {"num_samples": num_samples, "scheduler": "fifo", "sampler": "tpe", "seed": 0,
                   "max_concurrent_trials": 1},
        "wise": {"strategy": "grid", "grid": [0.0, 0.5, 1.0]}}))
    return path


def _command(folder: Path, data: Path, num_samples: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "search.run", "--method", "ft",
            "--space", str(_space(folder, num_samples)), "--data", str(data),
            "--model", "micro-clip-16", "--pretrained", "", "--output", str(folder / "out"),
            "--quiet", *extra]


def _start(cmd: list[str], folder: Path, name: str, **env: str) -> subprocess.Popen:
    """The driver in a new session (its id is the driver's pid), working directory
    ``folder/cwd`` (which must stay empty: nothing is written outside --output), stdout/stderr
    to files."""
    (folder / "cwd").mkdir(exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **env}
    return subprocess.Popen(
        cmd, cwd=folder / "cwd", env=env, start_new_session=True,
        stdout=open(folder / f"{name}.out", "w"), stderr=open(folder / f"{name}.err", "w"))


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()   # after "pid (comm) "
            if int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(entry.name))
    return pids


def _reap(sid: int) -> None:
    """SIGKILL every process left in session ``sid`` (a test-started driver's Ray instance)."""
    deadline = time.monotonic() + 60
    while (pids := _session_pids(sid)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
    assert not _session_pids(sid), f"processes of session {sid} survived SIGKILL"


def _cleanup(proc: subprocess.Popen) -> None:
    """Kill the driver if it still runs, then everything left in its session."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    _reap(proc.pid)


def _finish(proc: subprocess.Popen) -> int:
    """Wait for the driver to exit (then clean up its session); its exit status."""
    try:
        return proc.wait(timeout=TIMEOUT_S)
    finally:
        _cleanup(proc)


def _trial_results(out: Path) -> dict[str, list[dict[str, Any]]]:
    """Tune trial id -> the results Tune recorded for it (result.json, one JSON per line)."""
    results = {}
    for path in (out / "ray" / STUDY).glob("run_trial_*/result.json"):
        trial_id = path.parent.name.split("_")[2]
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        results[trial_id] = [json.loads(ln) for ln in lines]
    return results


def _runs(out: Path) -> tuple[Any, list[Any]]:
    """(parent run, child runs) of the study in OUTPUT/mlflow.db."""
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("robust-ft-search")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("run_kind") == "study"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return parents[0], children


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        assert proc.poll() is None, f"the driver exited ({proc.returncode}) before {what}"
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _check_layout(out: Path, keep_checkpoints: int = 1) -> None:
    """--output holds what README lists and nothing else (no temporary files, at most
    ``keep_checkpoints`` checkpoints per trial), and the driver's working directory is empty."""
    assert not list((out.parent / "cwd").iterdir()), "written outside --output"
    files = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()]
    unexpected = [f for f in files if not any(
        fnmatch.fnmatch(f, pattern) and f.count("/") == pattern.count("/") for pattern in LAYOUT)]
    assert not unexpected, f"files the README does not list: {unexpected}"
    assert not [f for f in files if ".tmp-" in f or "/tmp" in f or f.endswith(".tmp")]
    runs = [*(out / "ray" / STUDY).glob("run_trial_*"), *(out / "ray" / "train").glob("*")]
    for run in runs:
        assert len([c for c in run.glob("checkpoint_*") if c.is_dir()]) <= keep_checkpoints, run


def _paused_worker(faults: Path, trial: int, out: Path, proc: subprocess.Popen) -> int:
    """Wait until trial ``trial``'s worker paused after epoch 1 and Tune recorded that epoch
    (so its checkpoint is registered); the worker's pid."""
    pid = faults / f"pid-{trial}"
    _wait_for(lambda: pid.is_file() and pid.read_text(), proc, f"trial {trial} paused")
    run = (faults / f"index-{trial}").read_text().removeprefix("train-")
    _wait_for(lambda: [r["epoch"] for r in _trial_results(out).get(run, [])] == [1], proc,
              f"Tune recorded epoch 1 of trial {trial}")
    return int(pid.read_text())
