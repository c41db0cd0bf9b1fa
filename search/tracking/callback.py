"""The Ray Tune side of the MLflow record: one nested child run per Tune trial.

Kept apart from :mod:`search.tracking.recorder` (the MLflow client side) because it is a Ray
``Callback``. It is pickled into Tune's ``tuner.pkl`` (``Tuner.restore`` re-uses it), so it holds
only the tracking URI and run ids and opens its client lazily.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from mlflow.tracking import MlflowClient
from ray.tune import Callback

from search.result import TrialResult, decode, is_final
from search.tracking.names import (
    curve_table,
    tracked,
    trial_run_name,
)
from search.tracking.plots import trial_frontier_png, wise_curve_png
from search.tracking.recorder import (
    KIND_TAG,
    MAX_TAG_CHARS,
    PARENT_TAG,
    STUDY_TAG,
    TRIAL_TAG,
    StudyRecorder,
    _log_metrics,
    _log_params,
    _log_png,
    _search,
)


class MlflowTuneCallback(Callback):
    """Records each Tune trial as a child run nested under the study's parent run.

    Start: run name ``trial-NN <searched values>``, params = the trial's full configuration (the
    study's constants and its searched values). Each result: :func:`tracked` metrics at step
    ``epoch`` (else ``training_iteration``). Complete: the run name gains ``α*``; the WiSE curve
    as the table ``wise_curve.json`` (:func:`curve_table`, shown in MLflow's artifact view) and the
    plots ``plots/wise_curve.png`` and ``plots/frontier.png``; tag ``wise_evaluations``; FINISHED
    (tag ``stopped_early`` when the scheduler stopped it before its final result). Error: FAILED,
    tag ``error`` = the traceback's last line, ``error.txt`` = Tune's error file.
    """

    def __init__(self, recorder: StudyRecorder | str, parent_run_id: str | None = None,
                 study_name: str = "", trial_defaults: Mapping[str, Any] | None = None,
                 zeroshot: Mapping[str, float] | None = None) -> None:
        """``MlflowTuneCallback(recorder)`` after ``recorder.start()``, or with the tracking URI
        and the parent run id: it keeps only those strings and two small dicts (it must pickle)."""
        if isinstance(recorder, StudyRecorder):
            parent_run_id, study_name = recorder._require_parent(), recorder.study_name
            trial_defaults, zeroshot = recorder.trial_defaults, recorder.zeroshot
            recorder = recorder.client.tracking_uri
        if parent_run_id is None:
            raise ValueError("MlflowTuneCallback needs the parent run id")
        self.tracking_uri, self.parent_run_id, self.study_name = recorder, parent_run_id, study_name
        self.trial_defaults = dict(trial_defaults or {})
        self.zeroshot = dict(zeroshot or {})
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] = {}
        self.number_offset = 0      # trials of a study's earlier experiments (search.experiments)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "_runs": {}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"trial_defaults": {}, "zeroshot": {}, "number_offset": 0,
                              **state})  # older pickles

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def run_id(self, trial: Any) -> str:
        """The trial's child run: cached, else found by tag (a resumed study), else created."""
        trial_id = str(trial.trial_id)
        if trial_id not in self._runs:
            parent = self.client.get_run(self.parent_run_id)
            found = _search(self.client, parent.info.experiment_id,
                            f"tags.`{PARENT_TAG}` = '{self.parent_run_id}' "
                            f"AND tags.{TRIAL_TAG} = '{trial_id}'")
            if found:
                run_id = found[0].info.run_id
                if found[0].info.status != "RUNNING":
                    self.client.update_run(run_id, status="RUNNING")
                    self.client.set_tag(run_id, "reopened", "trial resumed with the study")
            else:
                name = self._name(trial)
                source = {k: v for k, v in parent.data.tags.items()     # same code, same user
                          if k.startswith("mlflow.source.") or k == "mlflow.user"}
                run_id = self.client.create_run(parent.info.experiment_id, run_name=name, tags={
                    PARENT_TAG: self.parent_run_id, TRIAL_TAG: trial_id, KIND_TAG: "trial",
                    STUDY_TAG: self.study_name, **source}).info.run_id
            self._runs[trial_id] = run_id
        return self._runs[trial_id]

    def _name(self, trial: Any, alpha: float | None = None) -> str:
        # Tune numbers its trials in experiment_tag ("3_lr=0.0006,..."); its trial id is a hash
        number = str(getattr(trial, "experiment_tag", "")).partition("_")[0]
        return trial_run_name(str(trial.trial_id), dict(trial.config), alpha,
                              int(number) + self.number_offset if number.isdigit() else None)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _log_params(self.client, self.run_id(trial), {**self.trial_defaults, **trial.config})

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        step = int(result.get("epoch", result.get("training_iteration", 0)) or 0)
        if is_final(result):               # the WiSE result comes after the last epoch's: it
            step = max(0, step - 1)          # belongs to that epoch, not to an extra one
        _log_metrics(self.client, self.run_id(trial), tracked(result), step=step)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # Tune has already passed every result (the last included) to on_trial_result.
        run_id, last = self.run_id(trial), trial.last_result or {}
        result = decode(last) if is_final(last) else None
        if result is None:
            self.client.set_tag(run_id, "stopped_early", "stopped by the scheduler before "
                                "its WiSE selection")
        else:
            self.client.set_tag(run_id, "wise_evaluations", f"{result.evaluations:g}")
            self._log_curve(run_id, trial, result)
            self.client.update_run(run_id, name=self._name(trial, result.alpha))
        self.client.set_terminated(run_id, "FINISHED")

    def _log_curve(self, run_id: str, trial: Any, result: TrialResult) -> None:
        """The WiSE curve as the table ``wise_curve.json`` and the plots ``wise_curve.png`` and
        ``frontier.png``."""
        if not result.curve:
            return
        alpha = result.alpha
        table = curve_table(result.curve_points(), result.finetuned, self.zeroshot)
        self.client.log_table(run_id, table, "wise_curve.json")
        title = f"WiSE-FT of {self._name(trial, alpha)}"
        _log_png(self.client, run_id, lambda t, a, p: wise_curve_png(t, a, p, title),
                 "wise_curve.png", table, alpha)
        full = {a: {k: table[k][i] for k in table if k != "alpha" and table[k][i] == table[k][i]}
                for i, a in enumerate(table["alpha"])}      # v == v: not NaN
        _log_png(self.client, run_id, lambda c, a, p: trial_frontier_png(c, a, p, title),
                 "frontier.png", dict(sorted(full.items())), alpha)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self.run_id(trial)
        error_file = getattr(trial, "error_file", None)
        text = ""
        if error_file and Path(error_file).is_file():
            text = Path(error_file).read_text(errors="replace")
            self.client.log_artifact(run_id, error_file)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        self.client.set_tag(run_id, "error", (lines[-1] if lines else "unknown error (Tune "
                                              "wrote no error file)")[:MAX_TAG_CHARS])
        self.client.set_terminated(run_id, "FAILED")


__all__ = ["MlflowTuneCallback"]
