"""MLflow tracking of a study: one parent run per study, one nested child run per Tune trial.

Only the driver writes (Tune callbacks run in the driver process), through ``MlflowClient`` and
never MLflow's fluent global state, so a sqlite store sees a single writer. Runs are found again by
tag (parent: ``study_name`` + ``run_kind=study``; child: ``mlflow.parentRunId`` + ``trial_id``), so
a resumed study re-opens its parent and its trials' children instead of duplicating them.

:mod:`search.tracking.callback` records the trials (a Ray ``Callback``);
:mod:`search.tracking.registry` logs and registers the chosen model.
"""
from __future__ import annotations

import json
import numbers
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence
from unittest import mock
from urllib.parse import urlparse

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from search.result import TrialRecord, encode, frontier_point
from search.tracking.names import _flatten, _key, metrics_of, tracked
from search.tracking.plots import study_frontier_png
from trainables import metrics as M
from trainables.errors import InputError

STUDY_TAG, TRIAL_TAG, KIND_TAG = "study_name", "trial_id", "run_kind"
PARENT_TAG = "mlflow.parentRunId"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MAX_PARAM_CHARS, MAX_TAG_CHARS = 6000, 5000


class TrackingError(InputError):
    """The tracking store cannot be used; the one-line message names the URI and the fix."""


def ensure_tracking(uri: str) -> None:
    """Check that the MLflow store at ``uri`` can be written, before any training starts.

    sqlite: creates the database's folder. http(s) and other servers: one ``search_experiments``
    call with no retries and a 5 s timeout. The file store (MLflow 3 refuses it) is an error.
    """
    parsed = urlparse(uri)
    fix_local = "pass --tracking-uri sqlite:///runs/mlflow.db (or a running server's http URL)"
    if parsed.scheme == "sqlite":
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        if not path or path == ":memory:":
            raise TrackingError(f"tracking URI {uri}: needs a database file; fix: {fix_local}")
        folder = Path(path).expanduser().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingError(f"tracking URI {uri}: cannot create {folder} ({exc.strerror}); "
                                f"fix: {fix_local}") from None
        if not os.access(folder, os.W_OK):
            raise TrackingError(f"tracking URI {uri}: {folder} is not writable; "
                                f"fix: {fix_local}")
        return
    if parsed.scheme in ("", "file"):
        raise TrackingError(f"tracking URI {uri}: MLflow 3 refuses the file store; "
                            f"fix: {fix_local}")
    fail_fast = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    with mock.patch.dict(os.environ, fail_fast):  # restores the environment afterwards
        try:
            MlflowClient(uri).search_experiments(max_results=1)
        except Exception as exc:  # noqa: BLE001 - any failure means "not usable"
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise TrackingError(
                f"tracking URI {uri} is not reachable ({reason}); fix: start the server (mlflow "
                f"server --backend-store-uri sqlite:///runs/mlflow.db --host 127.0.0.1 --port 5000 "
                f"--workers 1) or {fix_local}") from None


def _log_params(client: MlflowClient, run_id: str, values: Mapping[str, Any]) -> None:
    """Log params not yet on the run (params are immutable); a changed value becomes a tag."""
    logged = client.get_run(run_id).data.params
    new: list[Param] = []
    for key, value in _flatten(values).items():
        key, text = _key(key), str(value)[:MAX_PARAM_CHARS]
        if key not in logged:
            new.append(Param(key, text))
        elif logged[key] != text:
            client.set_tag(run_id, f"changed_param/{key}", text[:MAX_TAG_CHARS])
    for i in range(0, len(new), 100):
        client.log_batch(run_id, params=new[i:i + 100])


def _log_metrics(client: MlflowClient, run_id: str, values: Mapping[str, Any], step: int) -> None:
    """Log every real-number value (bools and non-numbers skipped) at ``step``."""
    now = int(time.time() * 1000)
    metrics = [Metric(_key(k), float(v), now, step) for k, v in values.items()
               if isinstance(v, numbers.Real) and not isinstance(v, bool)]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])


def _search(client: MlflowClient, experiment_id: str, filter_string: str) -> list[Any]:
    """Every run of the experiment matching ``filter_string`` (all pages), newest first."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=1000,
                                  order_by=["attributes.start_time DESC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _log_png(client: MlflowClient, run_id: str, draw: Any, name: str, *args: Any) -> None:
    """Draw a plot into a temporary file with ``draw(*args, path)`` and log it under ``plots/``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = draw(*args, Path(tmp) / name)
        if path is not None:
            client.log_artifact(run_id, str(path), "plots")


def source_tags(code_version: str) -> dict[str, str]:
    """MLflow's standard source fields: the commit (``git describe`` output without ``-dirty``
    when it is a bare hash), the entry point, the user."""
    import getpass
    import sys
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)   # python -m search.run
    entry = (f"python -m {spec.name}" if spec is not None and spec.name
             else Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "search.run")
    tags = {"mlflow.source.name": entry, "mlflow.source.type": "LOCAL"}
    # git describe: "<hash>" or "<tag>-<n>-g<hash>", "-dirty" appended for uncommitted changes
    found = re.search(r"(?:^|-g)([0-9a-f]{7,40})$", code_version.removesuffix("-dirty"))
    if found:
        tags["mlflow.source.git.commit"] = found.group(1)
    try:
        tags["mlflow.user"] = getpass.getuser()
    except (KeyError, OSError):      # no passwd entry (some containers)
        pass
    return tags


def trial_defaults(resolved_config: Mapping[str, Any]) -> dict[str, Any]:
    """What every trial's configuration holds besides its searched values: the study setup's
    fields (method, model, WiSE settings, ...) and the space's constants (``base_params``)."""
    setup = dict(resolved_config.get("setup") or {})
    base = dict(setup.pop("base_params", None) or {})
    setup.pop("storage_path", None)                  # Ray's folder, not part of the model
    return {**setup, **base}


def _log_dataset(client: MlflowClient, run_id: str, spec: Path) -> None:
    """The data spec (a file or a generated folder) as the run's MLflow dataset input."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    # a local path resolves to MLflow's "local" dataset source; MLflow warns that a path could
    # also be read by other (here: unused) registered sources, and picks the local one
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The specified dataset source can be")
        source = resolve_dataset_source(str(spec.resolve()))
    dataset = MetaDataset(source=source, name=spec.stem or spec.name)
    client.log_inputs(run_id, [DatasetInput(dataset._to_mlflow_entity(),
                                            [InputTag("mlflow.data.context", "train")])])


def results_note(study_name: str, table: Mapping[str, Mapping[str, float]],
                 best: TrialRecord | None, soups: Mapping[str, Any]) -> str:
    """The study run's description (``mlflow.note.content``): the results table in Markdown."""
    from search.tracking.table import format_table
    rows: dict[str, dict[str, float]] = {}
    for key, label in (("zeroshot", "zero-shot"), ("finetuned", "fine-tuned (α=1)")):
        if key in table:
            rows[label] = dict(table[key])
    if "wise" in table and best is not None:
        rows[f"WiSE (α*={best.result.alpha:.2f})"] = dict(table["wise"])
    for kind, entry in soups.items():
        n = len(entry["trials"])
        rows[f"{kind} soup ({n} trial{'s' if n != 1 else ''})"] = dict(entry["soup"])
        rows[f"{kind} soup + WiSE (α*={entry['selected_alpha']:.2f})"] = dict(entry["wise"])
    head = f"**Study {study_name}**" + (f", chosen trial `{best.trial_id}` (selected on ID val)"
                                        if best else "")
    body = format_table(rows, markdown=True) if rows else "(no results)"
    return f"{head}\n\nAccuracy in %.\n\n{body}\n"


class StudyRecorder:
    """The study's parent run: opened (or re-opened on resume) by :meth:`start`, closed by
    :meth:`finish` with the selected trial, the report table, the frontier plot and importances."""

    def __init__(self, client: MlflowClient | str, experiment_name: str, study_name: str,
                 artifact_location: str | Path | None = None) -> None:
        """``artifact_location``: where a NEW experiment stores artifacts. For a sqlite store pass
        a folder under the run's output: MLflow's default is ``./mlruns`` in the current
        directory, which would write outside ``--output``."""
        if "'" in study_name:
            raise ValueError(f"study name {study_name!r} may not contain a quote")
        self.client = MlflowClient(client) if isinstance(client, str) else client
        self.study_name = study_name
        experiment = self.client.get_experiment_by_name(experiment_name)
        self.experiment_id = (experiment.experiment_id if experiment is not None
                              else self.client.create_experiment(
                                  experiment_name, artifact_location=None if artifact_location
                                  is None else Path(artifact_location).resolve().as_uri(),
                                  # the UI then opens on the runs table, not the GenAI overview
                                  tags={EXPERIMENT_KIND_TAG: "custom_model_development"}))
        self.parent_run_id: str | None = None
        self.trial_defaults: dict[str, Any] = {}        # every trial's constant configuration
        self.zeroshot: dict[str, float] = {}            # metrics of θ_zs (α = 0)

    def start(self, space_source_path: str | Path | None, resolved_config: Mapping[str, Any],
              data_spec_path: str | Path | None, code_version: str, resume: bool) -> str:
        """Open the parent run and log the study's inputs; return its run id.

        ``resume``: re-open the newest parent tagged with this study name (a fresh one if none),
        and mark its children still RUNNING as KILLED (their driver died). Without ``resume`` a
        new parent is created even if the name was used before.
        """
        client, parent = self.client, None
        if resume:
            found = _search(client, self.experiment_id,
                            f"tags.{STUDY_TAG} = '{self.study_name}' AND tags.{KIND_TAG} = 'study'")
            parent = found[0] if found else None
        if parent is None:
            run = client.create_run(self.experiment_id, run_name=self.study_name, tags={
                STUDY_TAG: self.study_name, KIND_TAG: "study", "code_version": code_version,
                **source_tags(code_version)})
            run_id = run.info.run_id
        else:
            run_id = parent.info.run_id
            client.update_run(run_id, status="RUNNING")
            resumes = int(parent.data.tags.get("resumes", "0")) + 1
            client.set_tag(run_id, "resumes", str(resumes))
            client.set_tag(run_id, f"code_version/resume_{resumes}", code_version)
            self._close_orphans(run_id)
        self.parent_run_id = run_id
        self.trial_defaults = trial_defaults(resolved_config)
        _log_params(client, run_id, resolved_config)
        client.log_dict(run_id, json.loads(json.dumps(resolved_config, default=str)), "config.json")
        for tag, path in (("space_file", space_source_path), ("data_spec", data_spec_path)):
            if path is not None:  # a folder (e.g. a generated data set) is named, not copied
                client.set_tag(run_id, tag, str(path))
                if Path(path).is_file():
                    client.log_artifact(run_id, str(path), "inputs")
        if data_spec_path is not None:
            _log_dataset(client, run_id, Path(data_spec_path))
        return run_id

    def log_pretrained(self, zeroshot: Mapping[str, float]) -> None:
        """The zero-shot model's metrics (α = 0, evaluated once per study) as ``pretrained/...``
        on the study run; trials' WiSE tables take their α = 0 row from them."""
        self.zeroshot = dict(zeroshot)
        _log_metrics(self.client, self._require_parent(),
                     {f"{M.PRETRAINED}/{k}": M.rounded(k, v) for k, v in zeroshot.items()}, 0)

    def _close_orphans(self, parent_run_id: str) -> None:
        """Mark children left RUNNING by a killed driver as KILLED, saying so in a tag."""
        orphans = _search(self.client, self.experiment_id, f"tags.`{PARENT_TAG}` = "
                          f"'{parent_run_id}' AND attributes.status = 'RUNNING'")
        for run in orphans:
            self.client.set_tag(run.info.run_id, "killed",
                                "left RUNNING by a killed driver; closed when the study resumed")
            self.client.set_terminated(run.info.run_id, "KILLED")

    def finish(self, best: TrialRecord | None, table: Mapping[str, Mapping[str, float]],
               frontier: Sequence[TrialRecord], soups: Mapping[str, Mapping[str, Any]],
               importances: Mapping[str, float]) -> None:
        """Log the study's outcome on the parent run and mark it FINISHED.

        The study run holds the chosen trial's metrics and full configuration under the names its
        trial run uses (:func:`tracked`), so the columns of the runs table line up; the chosen
        trial's run gets the tag ``best``.

        ``best``: the chosen trial (None if no trial finished). ``table``: the report's rows as
        summary.json has them; ``zeroshot`` is logged as ``pretrained/<metric>``, the others are
        the chosen trial's ``ft/`` and ``wise/`` metrics, already logged. ``frontier``: the
        finished trials (their WiSE curves on the frontier plot). ``soups``: kind ->
        ``{"soup": metrics, "wise": metrics, "selected_alpha": α, "trials": [...]}``, logged as
        ``soup/<kind>/<metric>``, ``soup/<kind>/wise/<metric>`` and ``soup/<kind>/wise/alpha``.
        ``importances``: ``importance/<param>``.
        """
        client, run_id = self.client, self._require_parent()
        metrics = self._mark_best(best) if best is not None else {}
        metrics.update({f"{M.PRETRAINED}/{k}": M.rounded(k, v)
                        for k, v in metrics_of(table.get("zeroshot", {})).items()})
        for kind, entry in soups.items():
            metrics.update({M.soup(kind, k): M.rounded(k, v)
                            for k, v in metrics_of(entry["soup"]).items()})
            metrics.update({M.soup(kind, k, wise=True): M.rounded(k, v)
                            for k, v in metrics_of(entry["wise"]).items()})
            metrics[M.soup(kind, "alpha", wise=True)] = M.rounded("alpha", entry["selected_alpha"])
            client.set_tag(run_id, f"soup/{kind}/trials",
                           ",".join(map(str, entry["trials"]))[:MAX_TAG_CHARS])
        metrics.update({f"importance/{k}": M.rounded("importance", v)
                        for k, v in importances.items()})
        _log_metrics(client, run_id, metrics, step=0)
        best_id = best.trial_id if best is not None else None
        trials = [{**frontier_point(t.trial_id, t.result), "best": t.trial_id == best_id}
                  for t in frontier]
        _log_png(client, run_id, lambda t, s, p: study_frontier_png(
            t, p, s, zeroshot=self.zeroshot or table.get("zeroshot")), "study_frontier.png",
            trials, dict(soups))
        client.set_tag(run_id, "mlflow.note.content", results_note(
            self.study_name, table, best, soups))
        summary = {"study_name": self.study_name, "best": best.as_dict() if best else {},
                   "table": table, "soups": soups, "importances": importances, "frontier": trials}
        client.log_dict(run_id, json.loads(json.dumps(summary, default=_json_default)),
                        "summary.json")
        client.set_terminated(run_id, "FINISHED")

    def _mark_best(self, best: TrialRecord) -> dict[str, float]:
        """Tag the chosen trial (on the study run and its own run; a trial an earlier choice
        tagged, before ``--resume`` extended the study, loses its tag), log its configuration on
        the study run; returns its final metrics under their MLflow names."""
        client, run_id = self.client, self._require_parent()
        client.set_tag(run_id, "best_trial_id", best.trial_id)
        trials = f"tags.`{PARENT_TAG}` = '{run_id}'"
        for earlier in _search(client, self.experiment_id, f"{trials} AND tags.best = 'true'"):
            client.delete_tag(earlier.info.run_id, "best")
        child = _search(client, self.experiment_id,
                        f"{trials} AND tags.{TRIAL_TAG} = '{best.trial_id}'")
        if child:
            client.set_tag(run_id, "best_run_id", child[0].info.run_id)
            client.set_tag(child[0].info.run_id, "best", "true")
        _log_params(client, run_id, {**self.trial_defaults, **best.params})
        metrics = tracked(encode(best.result))
        metrics[M.WISE_ALPHA] = M.rounded(M.WISE_ALPHA, best.result.alpha)
        return metrics

    def fail(self, message: str) -> None:
        """End the parent run FAILED (the driver could not finish), ``message`` as tag ``error``."""
        run_id = self._require_parent()
        self.client.set_tag(run_id, "error", message[:MAX_TAG_CHARS])
        self.client.set_terminated(run_id, "FAILED")

    def _require_parent(self) -> str:
        if self.parent_run_id is None:
            raise RuntimeError("StudyRecorder.start() has not been called")
        return self.parent_run_id


def _json_default(value: Any) -> Any:
    """numpy scalars as floats, anything else JSON cannot write as its string."""
    return float(value) if isinstance(value, numbers.Real) else str(value)


__all__ = ["StudyRecorder", "TrackingError", "ensure_tracking"]
