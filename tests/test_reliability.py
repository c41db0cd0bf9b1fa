"""Failing trials, killed workers, a killed driver: nothing lost, nothing half-written.

Each test runs ``python -m search.run`` as a child process in its own session (micro CLIP, tiny
data, 2 epochs), so the test can kill it, and afterwards kills whatever is left of that session
(the local Ray instance the driver started) by process id: no ``ray stop``, which would also stop
other people's Ray instances on the machine. Faults are injected with ``search/tune/faults.py``
(``ROBUST_SEARCH_FAULT``) or a real NaN (``--set lr=1e6``).
"""
from __future__ import annotations

import json
import os
import pickle
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

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
)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_tiny_spec(tmp_path_factory.mktemp("reliability"), per_class=4)


@pytest.mark.slow
@pytest.mark.parametrize("mode", [[], ["--worker-group"]], ids=["trial-actor", "worker-group"])
def test_failing_trial_and_killed_worker(tmp_path, data, mode):
    """Two trials, ``--max-failures 1``: trial 0 raises in every attempt and ends failed with its
    error in Tune, MLflow and summary.json; the study goes on, and trial 1's worker (the Tune
    trial actor, or with --worker-group the Train worker), SIGKILLed after epoch 1, is restarted
    from that checkpoint and finishes; summary and table are written."""
    faults, out = tmp_path / "faults", tmp_path / "out"
    proc = _start(_command(tmp_path, data, 2, "--max-failures", "1", *mode), tmp_path, "driver",
                  ROBUST_SEARCH_FAULT="raise@1#0,pause@1#1", ROBUST_SEARCH_FAULT_DIR=str(faults))
    try:
        os.kill(_paused_worker(faults, 1, out, proc), signal.SIGKILL)   # the worker, mid-trial
        code = _finish(proc)
    finally:
        _cleanup(proc)
    assert code == 0, (tmp_path / "driver.err").read_text()[-3000:]

    index = {int(p.name.split("-")[1]): p.read_text().removeprefix("train-")
             for p in faults.glob("index-*")}
    attempts = {i: len((faults / f"attempts-{i}").read_text().split()) for i in index}
    # --max-failures 1: in the trial actor Tune retries once; with a worker group Train retries
    # the workers once per driver attempt and Tune the driver once: 2 x 2 for a trial that
    # always raises, and the killed worker of trial 1 is restarted by Train alone
    assert attempts == ({0: 4, 1: 2} if mode else {0: 2, 1: 2})
    results = _trial_results(out)
    assert results[index[0]] == []                   # raised before reporting anything
    error_txt = next((out / "ray" / STUDY).glob(f"run_trial_{index[0]}_*/error.txt")).read_text()
    assert "injected fault" in error_txt
    # killed worker: restarted from the epoch-1 checkpoint, so epochs continue (1, 2, final 3)
    assert [r["epoch"] for r in results[index[1]]] == [1, 2, 3]
    assert results[index[1]][-1]["final"] == 1.0

    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"] == {"total": 2, "finished": 1, "failed": 1, "stopped_early": 0}
    assert "injected fault" in summary["errors"][index[0]]
    assert summary["best_trial"] == index[1] and "wise" in summary["metrics"]
    stdout = (tmp_path / "driver.out").read_text()
    assert "Best trial" in stdout and "WiSE" in stdout and f"Failed trial {index[0]}" in stdout

    parent, children = _runs(out)
    assert parent.info.status == "FINISHED"
    runs = {c.data.tags["trial_id"]: c for c in children}
    assert sorted(runs) == sorted(index.values())
    assert runs[index[0]].info.status == "FAILED"
    assert "injected fault" in runs[index[0]].data.tags["error"]
    assert runs[index[1]].info.status == "FINISHED"
    # one namespace: the study run holds the chosen trial's final values under the same names
    chosen = runs[index[1]].data
    assert chosen.tags["best"] == "true" and chosen.params["method"] == "ft"
    final = {k for k in chosen.metrics if k.startswith(("ft/", "wise/"))}
    assert "wise/alpha" in final and "ft/id_test/acc" in final and "wise/ood/avg_acc" in final
    assert all(parent.data.metrics[k] == chosen.metrics[k] for k in final)
    assert "pretrained/id_test/acc" in parent.data.metrics
    assert not [k for k in parent.data.metrics if k.startswith(("best/", "finetuned/"))]
    assert parent.data.tags["mlflow.source.git.commit"]
    assert (out / "ray" / "train").is_dir() == bool(mode)   # Train's storage only for a group
    _check_layout(out)


@pytest.mark.slow
def test_all_trials_nan_fail_the_study(tmp_path, data):
    """``--set lr=1e6`` (batch 4) makes the loss NaN by step 3 (NonFiniteLossError) in every trial:
    each trial fails with its error recorded, summary.json is still written, the MLflow parent is
    FAILED and the run exits 1 with one line naming the problem."""
    code = _finish(_start(_command(tmp_path, data, 2, "--set", "lr=1.0e6",
                                   "--set", "batch_size=4"), tmp_path, "driver"))
    err = (tmp_path / "driver.err").read_text().strip().splitlines()
    assert code == 1, "\n".join(err[-30:])
    assert err[-1].startswith("error: all 2 trials failed") and "non-finite loss" in err[-1]
    assert "lower the learning rate" in err[-1]
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"]["failed"] == 2 and summary["trials"]["finished"] == 0
    assert all("non-finite loss" in e for e in summary["errors"].values())
    parent, children = _runs(out)
    assert parent.info.status == "FAILED" and "all 2 trials failed" in parent.data.tags["error"]
    assert len(children) == 2
    assert all(c.info.status == "FAILED" and "NonFiniteLossError" in c.data.tags["error"]
               for c in children)
    _check_layout(out)


def _searcher_trials(out: Path) -> list[Any]:
    """The Optuna trials in the newest saved OptunaSearch state (Tune pickles it; test only).

    Newest by name, as Tune itself chooses (``_load_newest_checkpoint``: the names carry the
    session's start time). Not by mtime: every sync of the experiment folder rewrites all the
    state files, the previous session's included, so their mtimes are a few ms apart in any
    order."""
    newest = max((out / "ray" / STUDY).glob("searcher-state-*.pkl"), key=lambda p: p.name)
    with newest.open("rb") as fh:
        state = pickle.load(fh)  # noqa: S301 -- the searcher state Tune itself wrote in tmp_path
    return state["_ot_study"].trials


@pytest.mark.slow
def test_killed_driver_resumes(tmp_path, data):
    """SIGKILL the driver (and its local Ray) while trial 1 of 3 runs (paused after epoch 1),
    then rerun the same command with ``--resume``: exactly 3 trials, the Optuna history restored
    (its 3 trials are the 2 started before the kill plus 1), no duplicate MLflow child runs, the
    runs the kill left open marked killed, the interrupted trial resumed from its checkpoint."""
    faults, out = tmp_path / "faults", tmp_path / "out"
    cmd = _command(tmp_path, data, 3)
    proc = _start(cmd, tmp_path, "first", ROBUST_SEARCH_FAULT="pause@1#1",
                  ROBUST_SEARCH_FAULT_DIR=str(faults))
    try:
        _paused_worker(faults, 1, out, proc)
        time.sleep(3)                       # > TUNE_GLOBAL_CHECKPOINT_S: Tune saved its state
        os.killpg(proc.pid, signal.SIGKILL)         # the driver and its process group
    finally:
        _cleanup(proc)                               # and the rest of its session (Ray)
    interrupted = (faults / "index-1").read_text().removeprefix("train-")
    before = _trial_results(out)
    assert len(before) == 2 and [r["epoch"] for r in before[interrupted]] == [1]
    # one-worker trials train in their Tune actor, which the next trial reuses: one process,
    # and each trial reports how long building its model and data took
    assert len({rows[0]["pid"] for rows in before.values()}) == 1, before
    assert all(rows[0]["time/setup_s"] > 0 for rows in before.values())
    assert not (out / "summary.json").exists()
    parent, children = _runs(out)
    assert parent.info.status == "RUNNING"          # what the kill left open
    assert {c.data.tags["trial_id"]: c.info.status for c in children}[interrupted] == "RUNNING"
    optuna_before = [(t.number, t.params) for t in _searcher_trials(out)]
    assert len(optuna_before) == 2

    code = _finish(_start(cmd + ["--resume"], tmp_path, "resumed"))   # no faults this time
    assert code == 0, (tmp_path / "resumed.err").read_text()[-3000:]

    results = _trial_results(out)
    assert len(results) == 3 and set(before) < set(results)
    assert all(r[-1]["final"] == 1.0 for r in results.values())
    # the interrupted trial's Train run resumed from its epoch-1 checkpoint: epochs continue
    epochs = [r["epoch"] for r in results[interrupted]]
    assert epochs[-2:] == [2, 3] and epochs.count(1) <= 1, epochs
    last = next(k for k in results if k not in before)
    assert results[last][0]["pid"] == results[interrupted][-1]["pid"]   # the resumed actor, reused
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"] == {"total": 3, "finished": 3, "failed": 0, "stopped_early": 0}

    optuna_after = _searcher_trials(out)
    assert [(t.number, t.params) for t in optuna_after[:2]] == optuna_before
    assert len(optuna_after) == 3 and all(t.state.name == "COMPLETE" for t in optuna_after)
    lrs = sorted(round(r[-1]["config"]["lr"], 12) for r in results.values())
    assert lrs == sorted(round(t.params["lr"], 12) for t in optuna_after)
    assert len(set(lrs)) == 3                        # the restored sampler did not repeat itself

    parent, children = _runs(out)
    assert parent.info.status == "FINISHED" and parent.data.tags["resumes"] == "1"
    ids = [c.data.tags["trial_id"] for c in children]
    assert sorted(ids) == sorted(results) and len(set(ids)) == len(ids) == 3
    assert all(c.info.status == "FINISHED" for c in children)
    resumed_child = next(c for c in children if c.data.tags["trial_id"] == interrupted)
    assert "killed" in resumed_child.data.tags and "reopened" in resumed_child.data.tags
    # Tune restarted the interrupted trial's result.json at epoch 2; MLflow kept every epoch
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    for child in children:
        # every trained epoch once (the interrupted trial's epoch 1 logged before the kill, epoch 2
        # after the resume); the final WiSE result adds no invented epoch
        history = client.get_metric_history(child.info.run_id, "id_val/acc")
        assert sorted(m.step for m in history) == [1, 2], child.data.tags["trial_id"]
    _check_layout(out)


@pytest.mark.slow
def test_resume_with_more_samples_extends_the_study(tmp_path, data):
    """A finished 2-trial study resumed with ``--num-samples 3`` runs one more trial as a second
    Tune experiment (``ray/ft-search-more-1``) on the same Optuna study and MLflow parent run;
    the summary, the soups and the export see all 3 trials. Resumed again with 3: nothing to do.
    With 2: a one-line error. The console of the first run has Tune's status table with the
    objective and ID val, and no per-trial result dump or TensorBoard hint (issue 18)."""
    import optuna

    out = tmp_path / "out"
    cmd = _command(tmp_path, data, 2, "--set", "epochs=1")
    assert _finish(_start(cmd, tmp_path, "first")) == 0, (tmp_path / "first.err").read_text()
    console = (tmp_path / "first.out").read_text()
    assert "objective" in console and "ID val α=1" in console, console
    assert "TensorBoard" not in console and "wise_curve/" not in console, console

    more = cmd + ["--resume", "--num-samples", "3"]
    assert _finish(_start(more, tmp_path, "more")) == 0, (tmp_path / "more.err").read_text()

    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"] == {"total": 3, "finished": 3, "failed": 0, "stopped_early": 0}
    state = json.loads((out / "ray" / STUDY / "study.json").read_text())
    assert state["status"] == "finished" and state["inputs"]["num_samples"] == 3
    assert state["experiments"] == [
        {"name": STUDY, "num_samples": 2, "finished": True},
        {"name": f"{STUDY}-more-1", "num_samples": 1, "finished": True}]
    extra = list((out / "ray" / f"{STUDY}-more-1").glob("run_trial_*/result.json"))
    assert len(extra) == 1
    assert len(_trial_results(out)) == 2            # the first experiment kept its 2 trials

    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{out / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert len({round(t.params["lr"], 12) for t in study.trials}) == 3   # no replayed draw

    parent, children = _runs(out)
    assert parent.info.status == "FINISHED" and len(children) == 3
    assert all(c.info.status == "FINISHED" for c in children)
    assert sorted(c.info.run_name.split()[0] for c in children) == [
        "trial-01", "trial-02", "trial-03"]        # numbered on across the experiments
    assert len({c.data.tags["trial_id"] for c in children}) == 3
    assert [c.data.tags["trial_id"] for c in children
            if c.data.tags.get("best") == "true"] == [summary["best_trial"]]
    assert summary["export"]["path"] and (out / "model" / "model.json").is_file()

    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "run.lock")
    stamps = [p.stat().st_mtime_ns for p in files]
    assert _finish(_start(more, tmp_path, "again")) == 0
    assert "already finished" in (tmp_path / "again.out").read_text()
    assert sorted(p for p in out.rglob("*") if p.is_file() and p.name != "run.lock") == files
    assert [p.stat().st_mtime_ns for p in files] == stamps

    assert _finish(_start(cmd + ["--resume"], tmp_path, "fewer")) == 2
    err = (tmp_path / "fewer.err").read_text().strip().splitlines()
    assert len(err) == 1 and "cannot shrink it" in err[0], err
