"""MLflow tracking: one parent run per study, one nested child per trial, resumable in place."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import ray.cloudpickle as cloudpickle
from mlflow.tracking import MlflowClient

from search.tracking import (MlflowTuneCallback, StudyRecorder, TrackingError, ensure_tracking,
                             metrics_of, wise_curve)

ALPHAS = [i / 10 for i in range(11)]


class FakeTrial:
    """What the callback reads from ``ray.tune.experiment.Trial``."""

    def __init__(self, trial_id: str, config: dict[str, Any]) -> None:
        self.trial_id, self.config = trial_id, config
        self.last_result: dict[str, Any] = {}
        self.error_file: str | None = None


def epoch_result(trial: FakeTrial, epoch: int, final: bool = False) -> dict[str, Any]:
    """A Tune result as the trainable reports it, Ray's bookkeeping keys included."""
    result: dict[str, Any] = {
        "epoch": epoch, "training_iteration": epoch, "id_val/acc": 0.5 + 0.1 * epoch,
        "train/loss": 1.0 / epoch, "objective": 0.5 + 0.1 * epoch, "time_this_iter_s": 1.5,
        "timestamp": 1700000000, "date": "2025-01-01", "hostname": "h", "pid": 1,
        "node_ip": "127.0.0.1", "done": final, "trial_id": trial.trial_id, "config": trial.config,
        "checkpoint_dir_name": "checkpoint_000001"}
    if final:
        result.update({"wise_alpha": 0.6, "ft/ood/avg_acc": 0.66, "wise/id_test/acc": 0.9})
        for a in ALPHAS:
            result[f"wise_curve/{a:.2f}/id_val/acc"] = 0.79 + 0.12 * a
            result[f"wise_curve/{a:.2f}/id_test/acc"] = 0.78 + 0.13 * a
            result[f"wise_curve/{a:.2f}/ood/avg_acc"] = 0.83 + 0.1 * a * (0.6 - a)
    trial.last_result = result
    return result


def run_trial(callback: MlflowTuneCallback, trial: FakeTrial, epochs: int = 2) -> None:
    callback.on_trial_start(0, [], trial)
    for epoch in range(1, epochs + 1):
        callback.on_trial_result(0, [], trial, epoch_result(trial, epoch, final=epoch == epochs))
    callback.on_trial_complete(0, [], trial)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> MlflowClient:
    """One sqlite store for the module (creating one costs seconds); tests use own experiments."""
    folder = tmp_path_factory.mktemp("tracking") / "store"
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    ensure_tracking(uri)
    assert folder.is_dir()
    return MlflowClient(uri)


def start(client: MlflowClient, tmp_path: Path, resume: bool = False) -> StudyRecorder:
    (tmp_path / "space.yaml").write_text("method: ft\nparams: {lr: 1.0e-3}\n")
    (tmp_path / "data.json").write_text("{}")
    recorder = StudyRecorder(client, f"robust-ft-{tmp_path.name}", "study-a")
    recorder.start(tmp_path / "space.yaml", {"method": "ft", "space": {"lr": 1e-3}},
                   tmp_path / "data.json", "abc123", resume=resume)
    return recorder


def children(client: MlflowClient, recorder: StudyRecorder) -> dict[str, Any]:
    runs = client.search_runs([recorder.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{recorder.parent_run_id}'")
    return {r.data.tags["trial_id"]: r for r in runs}


def artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id, path)}


def test_study_parent_children_metrics_and_artifacts(client: MlflowClient, tmp_path: Path) -> None:
    recorder = start(client, tmp_path)
    callback = cloudpickle.loads(cloudpickle.dumps(recorder.callback()))  # as Tuner pickles it
    trials = [FakeTrial(f"t_{i:05d}", {"lr": 10.0 ** -(i + 3), "epochs": 2}) for i in range(3)]
    run_trial(callback, trials[0])
    run_trial(callback, trials[1])
    callback.on_trial_start(0, [], trials[2])
    callback.on_trial_result(0, [], trials[2], epoch_result(trials[2], 1))
    error_file = tmp_path / "error.txt"
    error_file.write_text("Failure # 1\nTraceback (most recent call last):\n  File \"x.py\"\n"
                          "ValueError: loss is NaN\n")
    trials[2].error_file = str(error_file)
    callback.on_trial_error(0, [], trials[2])

    curve = wise_curve(trials[0].last_result)
    frontier = [{"trial_id": t.trial_id, "curve": curve, "selected_alpha": 0.6} for t in trials[:2]]
    soups = {"uniform": {"id_test/acc": 0.88, "ood/avg_acc": 0.8, "members": ["t_00000"]}}
    recorder.finish(best={"trial_id": "t_00000", "params": trials[0].config, "wise_alpha": 0.6},
                    table={"id_test/acc": 0.91, "wise": {"id_test/acc": 0.89}},
                    frontier_points=frontier, soups=soups, importances={"lr": 0.8})

    runs = children(client, recorder)
    assert set(runs) == {t.trial_id for t in trials}
    done = runs["t_00000"]
    assert done.info.status == "FINISHED" and done.data.params["lr"] == "0.001"
    history = client.get_metric_history(done.info.run_id, "id_val/acc")
    assert [(m.step, round(m.value, 3)) for m in history] == [(1, 0.6), (2, 0.7)]
    assert "time_this_iter_s" not in done.data.metrics and "pid" not in done.data.metrics
    assert "training_iteration" not in done.data.metrics
    assert done.data.metrics["wise_alpha"] == 0.6 and "ft/ood/avg_acc" in done.data.metrics
    assert not any(k.startswith("wise_curve/0") for k in done.data.metrics)
    points = client.get_metric_history(done.info.run_id, "wise_curve/id_val/acc")
    assert sorted(m.step for m in points) == list(range(0, 101, 10))
    assert "plots/frontier.png" in artifacts(client, done.info.run_id, "plots")
    assert "wise_curve.json" in artifacts(client, done.info.run_id)

    failed = runs["t_00002"]
    assert failed.info.status == "FAILED"
    assert failed.data.tags["error"] == "ValueError: loss is NaN"
    assert "error.txt" in artifacts(client, failed.info.run_id)

    parent = client.get_run(recorder.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["study_name"] == "study-a"
    assert parent.data.tags["best_trial_id"] == "t_00000"
    assert parent.data.tags["best_run_id"] == done.info.run_id
    assert parent.data.params["best/lr"] == "0.001" and parent.data.params["method"] == "ft"
    assert parent.data.params["space/lr"] == "0.001"
    assert parent.data.tags["data_spec"] == str(tmp_path / "data.json")
    metrics = parent.data.metrics
    assert metrics["importance/lr"] == 0.8 and metrics["best/wise_alpha"] == 0.6
    assert metrics["wise/id_test/acc"] == 0.89 and metrics["soup/uniform/id_test/acc"] == 0.88
    top = artifacts(client, recorder.parent_run_id)
    assert {"config.json", "summary.json", "inputs", "plots"} <= top
    assert artifacts(client, recorder.parent_run_id, "inputs") == {"inputs/space.yaml",
                                                                   "inputs/data.json"}
    assert "plots/study_frontier.png" in artifacts(client, recorder.parent_run_id, "plots")


def test_resume_reuses_parent_and_children(client: MlflowClient, tmp_path: Path) -> None:
    recorder = start(client, tmp_path)
    callback = recorder.callback()
    pickled = cloudpickle.dumps(callback)  # what Tuner.restore gets back
    finished, killed = FakeTrial("t_00000", {"lr": 1e-3}), FakeTrial("t_00001", {"lr": 1e-4})
    run_trial(callback, finished)
    callback.on_trial_start(0, [], killed)
    callback.on_trial_result(0, [], killed, epoch_result(killed, 1))  # then the driver dies

    again = start(MlflowClient(client.tracking_uri), tmp_path, resume=True)
    assert again.parent_run_id == recorder.parent_run_id
    runs = children(client, again)
    assert runs["t_00001"].info.status == "KILLED" and "killed driver" in runs["t_00001"].data.tags[
        "killed"]
    assert runs["t_00000"].info.status == "FINISHED"
    parent = client.get_run(again.parent_run_id)
    assert parent.info.status == "RUNNING" and parent.data.tags["resumes"] == "1"

    restored = cloudpickle.loads(pickled)
    restored.on_trial_start(0, [], killed)  # Tune restarts the unfinished trial
    restored.on_trial_result(0, [], killed, epoch_result(killed, 2, final=True))
    restored.on_trial_complete(0, [], killed)
    runs = children(client, again)
    assert len(runs) == 2 and runs["t_00001"].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(runs["t_00001"].info.run_id, "id_val/acc")]
    assert steps == [1, 2]

    fresh = start(client, tmp_path, resume=False)
    assert fresh.parent_run_id != recorder.parent_run_id


def test_metrics_of_skips_bookkeeping() -> None:
    trial = FakeTrial("t", {"lr": 1.0})
    result = epoch_result(trial, 2, final=True)
    result["nested"] = {"acc": 0.5}
    metrics = metrics_of(result)
    assert {"id_val/acc", "train/loss", "objective", "wise_alpha", "nested/acc"} <= set(metrics)
    assert not {"epoch", "done", "timestamp", "config/lr", "hostname"} & set(metrics)
    assert wise_curve(result)[0.3]["id_val/acc"] == pytest.approx(0.826)


def test_ensure_tracking_fails_fast_on_unreachable_server() -> None:
    began = time.monotonic()
    with pytest.raises(TrackingError) as info:
        ensure_tracking("http://127.0.0.1:9")
    assert time.monotonic() - began < 15
    message = str(info.value)
    assert "http://127.0.0.1:9" in message and "fix:" in message and "\n" not in message


def test_ensure_tracking_rejects_file_store(tmp_path: Path) -> None:
    with pytest.raises(TrackingError, match="file store"):
        ensure_tracking(str(tmp_path / "mlruns"))
