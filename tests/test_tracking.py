"""MLflow tracking: one parent run per study, one nested child per trial, resumable in place."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import ray.cloudpickle as cloudpickle
from mlflow.tracking import MlflowClient

from search.result import TrialRecord
from search.tracking.callback import MlflowTuneCallback
from search.tracking.names import curve_table, metrics_of, tracked, trial_run_name, wise_curve
from search.tracking.plots import frontier_data, study_frontier_png
from search.tracking.recorder import StudyRecorder, TrackingError, ensure_tracking
from trainables import metrics as M

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
    if final:   # the trial's last result, after its last epoch: WiSE selection and report
        del result["id_val/acc"], result["train/loss"]
        result.update({"wise_alpha": 0.6, "ft/ood/avg_acc": 66.0, "wise/id_test/acc": 90.0,
                       "ft/id_val/acc": 88.123456, "final": 1.0, "wise_evaluations": 11.0})
        for a in ALPHAS:
            result[f"wise_curve/{a:.2f}/id_val/acc"] = 0.79 + 0.12 * a
            result[f"wise_curve/{a:.2f}/id_test/acc"] = 0.78 + 0.13 * a
            result[f"wise_curve/{a:.2f}/ood/avg_acc"] = 0.83 + 0.1 * a * (0.6 - a)
    trial.last_result = result
    return result


def run_trial(callback: MlflowTuneCallback, trial: FakeTrial, epochs: int = 2) -> None:
    callback.on_trial_start(0, [], trial)
    for epoch in range(1, epochs + 2):
        callback.on_trial_result(0, [], trial, epoch_result(trial, epoch, final=epoch > epochs))
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
    recorder.start(tmp_path / "space.yaml", {"method": "ft", "space": {"lr": 1e-3}, "setup": {
        "method": "ft", "storage_path": "ray", "base_params": {"wd": 0.1}}},
                   tmp_path / "data.json", "abc1234-dirty", resume=resume)
    return recorder


def children(client: MlflowClient, recorder: StudyRecorder) -> dict[str, Any]:
    runs = client.search_runs([recorder.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{recorder.parent_run_id}'")
    return {r.data.tags["trial_id"]: r for r in runs}


def artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id, path)}


def test_study_parent_children_metrics_and_artifacts(client: MlflowClient, tmp_path: Path) -> None:
    recorder = start(client, tmp_path)
    # as Tuner pickles it
    callback = cloudpickle.loads(cloudpickle.dumps(MlflowTuneCallback(recorder)))
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

    recorder.log_pretrained({"id_val/acc": 70.0, "id_test/acc": 69.0, "ood/avg_acc": 60.0,
                             "zeroshot/avg_acc": 55.0})
    frontier = [TrialRecord.from_metrics(t.trial_id, t.config, t.last_result) for t in trials[:2]]
    soup = {"trials": ["t_00000", "t_00001"], "selected_alpha": 0.7,
            "soup": {"id_test/acc": 88.0, "ood/avg_acc": 80.0},
            "wise": {"id_test/acc": 89.0, "ood/avg_acc": 81.0}}
    table = {"zeroshot": {"id_test/acc": 69.0, "zeroshot/avg_acc": 55.0},
             "finetuned": {"id_test/acc": 91.0}, "wise": {"id_test/acc": 65.39999999999999}}
    recorder.finish(best=frontier[0], table=table, frontier=frontier,
                    soups={"uniform": soup, "greedy": dict(soup)}, importances={"lr": 0.8})

    runs = children(client, recorder)
    assert set(runs) == {t.trial_id for t in trials}
    done = runs["t_00000"]
    assert done.info.status == "FINISHED" and done.data.params["lr"] == "0.001"
    # the full configuration: the study's constants and setup, not only the searched values
    assert done.data.params["wd"] == "0.1" and done.data.params["method"] == "ft"
    assert "storage_path" not in done.data.params
    assert done.info.run_name == "trial-00 lr=1.0e-3 epochs=2 α*=0.60"
    assert done.data.tags["best"] == "true" and "best" not in runs["t_00001"].data.tags
    assert done.data.tags["wise_evaluations"] == "11"
    assert done.data.tags["mlflow.source.git.commit"] == "abc1234"     # the study's code
    history = client.get_metric_history(done.info.run_id, "id_val/acc")
    assert [(m.step, round(m.value, 3)) for m in history] == [(1, 0.6), (2, 0.7)]
    assert "time_this_iter_s" not in done.data.metrics and "pid" not in done.data.metrics
    assert "training_iteration" not in done.data.metrics
    # bookkeeping is not a metric; Tune's objective duplicates id_val/acc and wise/id_val/acc
    assert not {"final", "wise_evaluations", "objective", "wise_alpha"} & set(done.data.metrics)
    assert done.data.metrics["wise/alpha"] == 0.6 and done.data.metrics["ft/ood/avg_acc"] == 66.0
    assert done.data.metrics["ft/id_val/acc"] == 88.12                   # to 0.01 points
    # the final result (Tune's epoch 3) belongs to the last trained epoch, not an invented one
    assert [m.step for m in client.get_metric_history(done.info.run_id, "wise/alpha")] == [2]
    assert not any(k.startswith("wise_curve") for k in done.data.metrics)  # a table, not steps
    assert {"plots/frontier.png", "plots/wise_curve.png"} <= artifacts(client, done.info.run_id,
                                                                        "plots")
    assert "wise_curve.json" in artifacts(client, done.info.run_id)
    wise_table = json.loads(Path(client.download_artifacts(done.info.run_id, "wise_curve.json",
                                                           str(tmp_path))).read_text())
    assert wise_table["columns"] == ["alpha", "id_val/acc", "ood/avg_acc"]
    rows = {row[0]: row for row in wise_table["data"]}
    assert sorted(rows) == ALPHAS and rows[0.0][1] == 0.79   # the curve's own α = 0 point wins

    failed = runs["t_00002"]
    assert failed.info.status == "FAILED"
    assert failed.data.tags["error"] == "ValueError: loss is NaN"
    assert "error.txt" in artifacts(client, failed.info.run_id)

    parent = client.get_run(recorder.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["study_name"] == "study-a"
    assert parent.data.tags["best_trial_id"] == "t_00000"
    assert parent.data.tags["best_run_id"] == done.info.run_id
    assert parent.data.tags["mlflow.source.git.commit"] == "abc1234"
    assert "| model |" in parent.data.tags["mlflow.note.content"]
    assert parent.data.params["lr"] == "0.001" and parent.data.params["method"] == "ft"
    assert parent.data.params["space/lr"] == "0.001" and parent.data.params["wd"] == "0.1"
    assert parent.data.tags["data_spec"] == str(tmp_path / "data.json")
    (dataset,) = parent.inputs.dataset_inputs
    assert dataset.dataset.name == "data" and dataset.dataset.source_type == "local"
    metrics = parent.data.metrics
    # one namespace: the study run holds the chosen trial's values under the trial's names
    final_names = set(done.data.metrics) - {"id_val/acc", "train/loss"}   # per-epoch only
    assert final_names <= set(metrics)
    assert all(metrics[k] == done.data.metrics[k] for k in final_names)
    assert not [k for k in metrics if k.startswith(("best/", "finetuned/", "zeroshot/zeroshot"))]
    assert "final" not in metrics and "wise_evaluations" not in metrics
    assert metrics["importance/lr"] == 0.8 and metrics["wise/alpha"] == 0.6
    assert metrics["pretrained/id_test/acc"] == 69.0 and metrics["pretrained/ood/avg_acc"] == 60.0
    assert metrics["pretrained/zeroshot/avg_acc"] == 55.0
    for kind in ("uniform", "greedy"):
        assert metrics[f"soup/{kind}/id_test/acc"] == 88.0
        assert metrics[f"soup/{kind}/wise/id_test/acc"] == 89.0
        assert metrics[f"soup/{kind}/wise/alpha"] == 0.7
        assert parent.data.tags[f"soup/{kind}/trials"] == "t_00000,t_00001"
    top = artifacts(client, recorder.parent_run_id)
    assert {"config.json", "summary.json", "inputs", "plots"} <= top
    assert artifacts(client, recorder.parent_run_id, "inputs") == {"inputs/space.yaml",
                                                                   "inputs/data.json"}
    assert "plots/study_frontier.png" in artifacts(client, recorder.parent_run_id, "plots")


def test_metric_values_are_rounded_to_what_was_measured() -> None:
    assert M.rounded("wise/id_test/acc", 65.39999999999999) == 65.4
    assert M.rounded("ood/avg_acc", 65.4567) == 65.46
    assert M.rounded("wise/alpha", 0.763932) == 0.7639
    assert M.rounded("time/setup_s", 12.345) == 12.3
    assert M.rounded("train/loss", 0.123456) == 0.1235
    assert tracked({"objective": 1.0, "wise_alpha": 0.5, "final": 1.0, "id_val/acc": 70.004}) == {
        "wise/alpha": 0.5, "id_val/acc": 70.0}


def test_trial_run_names() -> None:
    assert trial_run_name("ab12_00003", {"lr": 3.2e-4, "wd": 0.21}, 0.7639) == \
        "trial-03 lr=3.2e-4 wd=0.21 α*=0.76"
    assert trial_run_name("x", {"optimizer": "adamw", "flag": True}) == "trial-x optimizer=adamw"


def test_wise_table_adds_zero_shot_and_fine_tuned_ends() -> None:
    curve = {0.3: {"id_val/acc": 80.0}, 0.7639: {"id_val/acc": 82.0}}
    table = curve_table(curve, {"id_val/acc": 81.0, "ood/a/acc": 50.0, "ood/avg_acc": 50.0},
                        {"id_val/acc": 70.0, "ood/a/acc": 60.0, "ood/avg_acc": 60.0})
    assert table["alpha"] == [0.0, 0.3, 0.7639, 1.0]
    assert table["id_val/acc"] == [70.0, 80.0, 82.0, 81.0]
    assert table["ood/avg_acc"][0] == 60.0 and table["ood/avg_acc"][3] == 50.0


def test_frontier_marks_the_selected_alpha_zero_shot_and_both_soups(tmp_path: Path) -> None:
    curve = {a: {"id_val/acc": 70 + 10 * a, "ood/avg_acc": 60 - a} for a in
             (0.0, 0.382, 0.618, 0.7639, 1.0)}          # golden-section α, stored to 4 decimals
    trials = [{"trial_id": "t1", "curve": curve, "selected_alpha": 0.7639, "best": True,
               "metrics": {"ft/id_test/acc": 79.0, "ft/ood/avg_acc": 59.0,
                           "wise/id_test/acc": 78.0, "wise/ood/avg_acc": 59.5}}]
    same = {"soup": {"id_test/acc": 80.0, "ood/avg_acc": 58.0},
            "wise": {"id_test/acc": 81.0, "ood/avg_acc": 58.5}}
    soups = {"uniform": same, "greedy": dict(same)}
    zeroshot = {"id_test/acc": 69.0, "id_val/acc": 70.0, "ood/avg_acc": 60.0}
    data = frontier_data(trials, soups, zeroshot)
    (entry,) = data["selection"]
    assert entry["selected"] == (0.7639, 60 - 0.7639, 70 + 7.639)
    assert entry["wise"] == (59.5, 78.0) and entry["ft"] == (59.0, 79.0)
    assert data["zero_shot"] == (60.0, 69.0)
    labels = [(s["label"], s["offset"]) for s in data["soups"]]
    assert labels == [("uniform soup", 0), ("uniform soup + WiSE", 0), ("greedy soup", 1),
                      ("greedy soup + WiSE", 1)]                 # coinciding soups: offset labels
    assert study_frontier_png(trials, tmp_path / "f.png", soups, zeroshot=zeroshot).is_file()


def test_resume_reuses_parent_and_children(client: MlflowClient, tmp_path: Path) -> None:
    recorder = start(client, tmp_path)
    callback = MlflowTuneCallback(recorder)
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
    restored.on_trial_result(0, [], killed, epoch_result(killed, 2))
    restored.on_trial_result(0, [], killed, epoch_result(killed, 3, final=True))
    restored.on_trial_complete(0, [], killed)
    runs = children(client, again)
    assert len(runs) == 2 and runs["t_00001"].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(runs["t_00001"].info.run_id, "id_val/acc")]
    assert steps == [1, 2]

    fresh = start(client, tmp_path, resume=False)
    assert fresh.parent_run_id != recorder.parent_run_id


def test_metrics_of_skips_bookkeeping() -> None:
    trial = FakeTrial("t", {"lr": 1.0})
    result = {**epoch_result(trial, 2), **epoch_result(trial, 3, final=True)}
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
