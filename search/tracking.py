"""MLflow tracking of a study: one parent run per study, one nested child run per Tune trial.

Only the driver writes (Tune callbacks run in the driver process), through ``MlflowClient`` and
never MLflow's fluent global state, so a sqlite store sees a single writer. Runs are found again by
tag (parent: ``study_name`` + ``run_kind=study``; child: ``mlflow.parentRunId`` + ``trial_id``), so
a resumed study re-opens its parent and its trials' children instead of duplicating them.

:class:`MlflowTuneCallback` is pickled into Tune's ``tuner.pkl`` (``Tuner.restore`` re-uses it), so
it holds only the tracking URI and run ids and opens its client lazily.
"""
from __future__ import annotations

import json
import numbers
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping
from unittest import mock
from urllib.parse import urlparse

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from ray.tune import Callback
from ray.tune.utils import flatten_dict

from trainables import metrics as M
from trainables.errors import InputError

from .plots import study_frontier_png, trial_frontier_png, wise_curve_png

STUDY_TAG, TRIAL_TAG, KIND_TAG = "study_name", "trial_id", "run_kind"
PARENT_TAG = "mlflow.parentRunId"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
CURVE_PREFIX = "wise_curve/"
MAX_PARAM_CHARS, MAX_TAG_CHARS = 6000, 5000
#: Ray's bookkeeping keys in a result (ray.tune.result.AUTO_RESULT_KEYS and friends): not metrics
BOOKKEEPING = frozenset({
    "done", "trial_id", "experiment_id", "experiment_tag", "date", "timestamp", "hostname",
    "node_ip", "pid", "config", "training_iteration", "epoch", "time_this_iter_s", "time_total_s",
    "time_since_restore", "timesteps_since_restore", "iterations_since_restore", "timesteps_total",
    "episodes_total", "checkpoint_path", "checkpoint_dir_name", "should_checkpoint"})
#: numbers a trial reports that describe the run, not a measurement: tags on its run
NOT_METRICS = frozenset({"final", "wise_evaluations"})
_BAD_KEY_CHARS = re.compile(r"[^\w\-. /]")


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


def _flatten(values: Mapping[str, Any]) -> dict[str, Any]:
    """Nested mappings as one level, keys joined with ``/`` (Ray's own flattening)."""
    return flatten_dict(dict(values), delimiter="/")


def _key(name: str) -> str:
    """A metric/param name MLflow accepts (letters, digits, ``_-. /``)."""
    return _BAD_KEY_CHARS.sub("_", name)


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


def metrics_of(result: Mapping[str, Any]) -> dict[str, float]:
    """The metric values of a Tune result: numeric, not Ray bookkeeping, not WiSE-curve points."""
    return {k: v for k, v in _flatten(result).items()
            if k not in BOOKKEEPING and not k.startswith((CURVE_PREFIX, "config/", "__"))
            and isinstance(v, numbers.Real) and not isinstance(v, bool)}


def tracked(result: Mapping[str, Any]) -> dict[str, float]:
    """A Tune result's metrics under their MLflow names, rounded (:func:`M.rounded`).

    The same function names a trial run's metrics and the study run's copy of the chosen trial,
    so both carry one namespace. Dropped: ``objective`` (Tune's copy of ``id_val/acc`` per epoch
    and of ``wise/id_val/acc`` at the end), and the bookkeeping in :data:`NOT_METRICS` (tags).
    ``wise_alpha`` becomes :data:`M.WISE_ALPHA`."""
    out = {}
    for key, value in metrics_of(result).items():
        if key == "objective" or key in NOT_METRICS:
            continue
        key = M.WISE_ALPHA if key == "wise_alpha" else _key(key)
        out[key] = M.rounded(key, value)
    return out


def wise_curve(result: Mapping[str, Any]) -> dict[float, dict[str, float]]:
    """``{alpha: {metric: value}}`` from a result's ``wise_curve/<alpha:.2f>/<metric>`` keys."""
    curve: dict[float, dict[str, float]] = {}
    for key, value in _flatten(result).items():
        if key.startswith(CURVE_PREFIX) and isinstance(value, numbers.Real):
            alpha, _, metric = key[len(CURVE_PREFIX):].partition("/")
            curve.setdefault(float(alpha), {})[metric] = float(value)
    return dict(sorted(curve.items()))


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
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    import warnings
    # a local path resolves to MLflow's "local" dataset source; MLflow warns that a path could
    # also be read by other (here: unused) registered sources, and picks the local one
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The specified dataset source can be")
        source = resolve_dataset_source(str(spec.resolve()))
    dataset = MetaDataset(source=source, name=spec.stem or spec.name)
    client.log_inputs(run_id, [DatasetInput(dataset._to_mlflow_entity(),
                                            [InputTag("mlflow.data.context", "train")])])


def results_note(study_name: str, table: Mapping[str, Any], best: Mapping[str, Any],
                 soups: Mapping[str, Any], best_id: str) -> str:
    """The study run's description (``mlflow.note.content``): the results table in Markdown."""
    from .table import format_table
    rows: dict[str, dict[str, float]] = {}
    if isinstance(table.get("zeroshot"), Mapping):
        rows["zero-shot"] = dict(table["zeroshot"])
    if isinstance(table.get("finetuned"), Mapping):
        rows["fine-tuned (α=1)"] = dict(table["finetuned"])
    alpha = best.get("wise_alpha", (best.get("metrics") or {}).get("wise_alpha"))
    if isinstance(table.get("wise"), Mapping) and alpha is not None:
        rows[f"WiSE (α*={alpha:.2f})"] = dict(table["wise"])
    for kind, entry in soups.items():
        if isinstance(entry, Mapping) and isinstance(entry.get("soup"), Mapping):
            n = len(entry.get("trials", []))
            rows[f"{kind} soup ({n} trial{'s' if n != 1 else ''})"] = dict(entry["soup"])
            if isinstance(entry.get("wise"), Mapping):
                rows[f"{kind} soup + WiSE (α*={entry['selected_alpha']:.2f})"] = dict(entry["wise"])
    head = f"**Study {study_name}**" + (f", chosen trial `{best_id}` (selected on ID val)"
                                        if best_id else "")
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

    def callback(self) -> "MlflowTuneCallback":
        """The Tune callback that records this study's trials as nested runs."""
        return MlflowTuneCallback(self)

    def finish(self, best: Mapping[str, Any] | None, table: Mapping[str, Any],
               frontier_points: list[Mapping[str, Any]], soups: Mapping[str, Any],
               importances: Mapping[str, float]) -> None:
        """Log the study's outcome on the parent run and mark it FINISHED.

        The study run holds the chosen trial's metrics and full configuration under the names its
        trial run uses (:func:`tracked`), so the columns of the runs table line up; the chosen
        trial's run gets the tag ``best``.

        ``best`` (None if no trial finished): ``trial_id``, ``params`` (or ``config``), its
        ``wise_alpha`` (or inside ``metrics``) and ``metrics`` (its final Tune result).
        ``table``: the report's rows; ``zeroshot`` is logged as ``pretrained/<metric>``, other
        rows already on the run as the chosen trial's ``ft/`` and ``wise/`` metrics are not
        repeated. ``frontier_points``: one dict per trial with ``trial_id`` and either ``curve``
        (``{alpha: {metric: value}}``) plus ``selected_alpha``, or ``metrics`` holding its
        ``wise_curve/...`` keys and ``wise_alpha``. ``soups``: kind -> ``{"soup": metrics,
        "wise": metrics, "selected_alpha": α, "trials": [...]}`` (or the soup's metrics alone),
        logged as ``soup/<kind>/<metric>``, ``soup/<kind>/wise/<metric>`` and
        ``soup/<kind>/wise/alpha``. ``importances``: ``importance/<param>``.
        """
        client, run_id = self.client, self._require_parent()
        best = best or {}
        best_id = str(best.get("trial_id", ""))
        metrics = tracked(best.get("metrics", {}))
        if best_id:
            client.set_tag(run_id, "best_trial_id", best_id)
            child = _search(client, self.experiment_id,
                            f"tags.`{PARENT_TAG}` = '{run_id}' AND tags.{TRIAL_TAG} = '{best_id}'")
            if child:
                client.set_tag(run_id, "best_run_id", child[0].info.run_id)
                client.set_tag(child[0].info.run_id, "best", "true")
            params = best.get("params") or best.get("config") or {}
            _log_params(client, run_id, {**self.trial_defaults, **params})
            alpha = best.get("wise_alpha", best.get("metrics", {}).get("wise_alpha"))
            if alpha is not None:
                metrics[M.WISE_ALPHA] = M.rounded(M.WISE_ALPHA, alpha)
        for row, values in table.items():
            if row == "zeroshot" and isinstance(values, Mapping):
                metrics.update({f"{M.PRETRAINED}/{k}": M.rounded(k, v)
                                for k, v in metrics_of(values).items()})
            elif not isinstance(values, Mapping):       # a flat metric of the whole study
                metrics.update(tracked({row: values}))
        soup_tags = {}
        for kind, entry in soups.items():
            if not isinstance(entry, Mapping):
                continue
            plain = entry["soup"] if isinstance(entry.get("soup"), Mapping) else entry
            metrics.update({M.soup(kind, k): M.rounded(k, v) for k, v in metrics_of(plain).items()})
            if isinstance(entry.get("wise"), Mapping):
                metrics.update({M.soup(kind, k, wise=True): M.rounded(k, v)
                                for k, v in metrics_of(entry["wise"]).items()})
            if entry.get("selected_alpha") is not None:
                metrics[M.soup(kind, "alpha", wise=True)] = M.rounded(
                    "alpha", entry["selected_alpha"])
            members = entry.get("trials", entry.get("members"))
            if members:
                soup_tags[f"soup/{kind}/trials"] = ",".join(map(str, members))[:MAX_TAG_CHARS]
        for tag, value in soup_tags.items():
            client.set_tag(run_id, tag, value)
        metrics.update({f"importance/{k}": M.rounded("importance", v)
                        for k, v in importances.items()})
        _log_metrics(client, run_id, metrics, step=0)
        trials = [{**_frontier_trial(t), "best": str(t.get("trial_id")) == best_id}
                  for t in frontier_points]
        _log_png(client, run_id, lambda t, s, p: study_frontier_png(
            t, p, s, zeroshot=self.zeroshot or table.get("zeroshot")), "study_frontier.png",
            trials, {k: v for k, v in soups.items() if isinstance(v, Mapping)})
        client.set_tag(run_id, "mlflow.note.content", results_note(
            self.study_name, table, best, soups, best_id))
        summary = {"study_name": self.study_name, "best": best, "table": table, "soups": soups,
                   "importances": importances, "frontier": trials}
        client.log_dict(run_id, json.loads(json.dumps(summary, default=_json_default)),
                        "summary.json")
        client.set_terminated(run_id, "FINISHED")

    def fail(self, message: str) -> None:
        """End the parent run FAILED (the driver could not finish), ``message`` as tag ``error``."""
        run_id = self._require_parent()
        self.client.set_tag(run_id, "error", message[:MAX_TAG_CHARS])
        self.client.set_terminated(run_id, "FAILED")

    def _require_parent(self) -> str:
        if self.parent_run_id is None:
            raise RuntimeError("StudyRecorder.start() has not been called")
        return self.parent_run_id


def log_model(tracking_uri: str, run_id: str, folder: Path, register_as: str | None,
              info: Mapping[str, Any]) -> dict[str, Any]:
    """Log the model folder on run ``run_id`` as an MLflow pyfunc model and, unless
    ``register_as`` is None, register it under that name in the Model Registry. Returns
    ``{mlflow_model_uri, registered_model, version}``.

    The pyfunc (``clipmodel.pyfunc``) is logged as code, ``clipmodel/mlflow_model.py`` with the
    ``clipmodel`` package (nothing pickled), with an input/output signature and an input example
    (one encoded image).

    MLflow's ``log_model`` is fluent (it logs on the active run of the tracking URI in effect):
    the URI is set through the environment for this call only, and the finished parent run is
    re-opened for it and closed again (FINISHED)."""
    import io

    import clipmodel
    import mlflow
    import numpy as np
    import open_clip
    import pandas as pd
    import PIL
    import PIL.Image
    import safetensors
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import DataType
    from mlflow.types.schema import Array, ColSpec, Schema
    from clipmodel.pyfunc import ARTIFACT

    package = Path(clipmodel.__file__).parent
    signature = ModelSignature(
        inputs=Schema([ColSpec(DataType.string, "path", required=False),
                       ColSpec(DataType.binary, "image", required=False)]),
        outputs=Schema([ColSpec(DataType.string, "label"),
                        ColSpec(Array(DataType.double), "probabilities")]))
    # the input example: one encoded image (portable, unlike a path on this machine)
    example = io.BytesIO()
    PIL.Image.fromarray(np.full((32, 32, 3), 127, np.uint8)).save(example, format="PNG")
    requirements = [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
                    f"open_clip_torch=={open_clip.__version__}",
                    f"safetensors=={safetensors.__version__}", f"pillow=={PIL.__version__}",
                    f"pandas=={pd.__version__}"]
    with mock.patch.dict(os.environ, {"MLFLOW_TRACKING_URI": tracking_uri,
                                      "MLFLOW_REGISTRY_URI": tracking_uri}):
        with mlflow.start_run(run_id=run_id):
            model = mlflow.pyfunc.log_model(
                name="model", python_model=str(package / "mlflow_model.py"),
                artifacts={ARTIFACT: str(folder)}, code_paths=[str(package)],
                signature=signature, input_example=pd.DataFrame({"image": [example.getvalue()]}),
                pip_requirements=requirements, registered_model_name=register_as,
                metadata={"classes": list(info["classes"]), "alpha": info["alpha"],
                          "method": info["method"], "source": info["source"]})
    return {"mlflow_model_uri": model.model_uri, "registered_model": register_as,
            "version": None if register_as is None else int(model.registered_model_version)}


def _frontier_trial(entry: Mapping[str, Any]) -> dict[str, Any]:
    """``{trial_id, curve, selected_alpha}`` from a trial given by its curve or by its metrics."""
    metrics = entry.get("metrics") or {}
    curve = entry.get("curve") or wise_curve(metrics)
    if any(isinstance(k, str) for k in curve):  # flat wise_curve/... keys
        curve = wise_curve(curve)
    return {"trial_id": str(entry.get("trial_id", "")), "curve": curve,
            "selected_alpha": entry.get("selected_alpha", metrics.get("wise_alpha")),
            # the report panel's points: the trial at α = 1 and at α*
            "metrics": {k: v for k, v in metrics.items()
                        if k.startswith((f"{M.FINETUNED}/", f"{M.WISE}/"))}}


def _json_default(value: Any) -> Any:
    """numpy scalars as floats, anything else JSON cannot write as its string."""
    return float(value) if isinstance(value, numbers.Real) else str(value)


def _short(value: Any) -> str:
    """A searched value for a run name: ``3.2e-4``, ``0.21``, ``16``, ``adamw``."""
    if isinstance(value, float):
        if value != 0 and not 1e-2 <= abs(value) < 1e4:
            mantissa, _, exponent = f"{value:.1e}".partition("e")
            return f"{mantissa}e{int(exponent)}"
        return f"{value:.2g}"
    return str(value)


def trial_run_name(trial_id: str, searched: Mapping[str, Any], alpha: float | None = None,
                   index: int | None = None) -> str:
    """``trial-03 lr=3.2e-4 wd=0.21 α*=0.76``: the trial's number (Tune's ``<hash>_00003``), its
    searched values and, once known, the WiSE coefficient α* selected on ID val."""
    tail = trial_id.rpartition("_")[2]
    number = index if index is not None else int(tail) if tail.isdigit() else None
    parts = [f"trial-{number:02d}" if number is not None else f"trial-{trial_id}"]
    parts += [f"{k}={_short(v)}" for k, v in searched.items()
              if isinstance(v, (numbers.Real, str)) and not isinstance(v, bool)]
    if alpha is not None:
        parts.append(f"α*={alpha:.2f}")
    return " ".join(parts)[:250]


def curve_table(curve: Mapping[float, Mapping[str, float]], final: Mapping[str, Any],
                zeroshot: Mapping[str, float]) -> dict[str, list[float]]:
    """The WiSE curve as columns: ``alpha``, ``id_val/acc``, each ``ood/<set>/acc``,
    ``ood/avg_acc``. α = 0 is the study's zero-shot result (the same weights θ_zs for every
    trial) and α = 1 the trial's ``ft/`` metrics whenever the search did not evaluate them."""
    points = {round(float(a), 4): dict(v) for a, v in curve.items()}
    ft = {k[len(M.FINETUNED) + 1:]: v for k, v in final.items()
          if k.startswith(M.FINETUNED + "/") and isinstance(v, numbers.Real)}
    for alpha, known in ((0.0, zeroshot), (1.0, ft)):
        if known:
            row = points.setdefault(alpha, {})
            for k, v in known.items():
                row.setdefault(k, v)
    wanted = [M.ID_VAL] + sorted({k for p in points.values() for k in p
                                  if k.startswith("ood/") and k != M.OOD_AVG}) + [M.OOD_AVG]
    columns = [k for k in wanted if any(k in p for p in points.values())]
    table: dict[str, list[float]] = {"alpha": sorted(points)}
    for k in columns:
        table[k] = [M.rounded(k, points[a][k]) if k in points[a] else float("nan")
                    for a in table["alpha"]]
    return table


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

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "_runs": {}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"trial_defaults": {}, "zeroshot": {}, **state})  # older pickles

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
                              int(number) if number.isdigit() else None)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _log_params(self.client, self.run_id(trial), {**self.trial_defaults, **trial.config})

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        step = int(result.get("epoch", result.get("training_iteration", 0)) or 0)
        if result.get("final") == 1.0:     # the WiSE result comes after the last epoch's: it
            step = max(0, step - 1)          # belongs to that epoch, not to an extra one
        _log_metrics(self.client, self.run_id(trial), tracked(result), step=step)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # Tune has already passed every result (the last included) to on_trial_result.
        run_id, result = self.run_id(trial), trial.last_result or {}
        curve, alpha = wise_curve(result), result.get("wise_alpha")
        for tag in sorted(NOT_METRICS - {"final"}):
            if tag in result:
                self.client.set_tag(run_id, tag, f"{result[tag]:g}")
        if result.get("final") != 1.0:
            self.client.set_tag(run_id, "stopped_early", "stopped by the scheduler before "
                                "its WiSE selection")
        if curve:
            table = curve_table(curve, metrics_of(result), self.zeroshot)
            self.client.log_table(run_id, table, "wise_curve.json")
            title = f"WiSE-FT of {self._name(trial, alpha)}"
            _log_png(self.client, run_id, lambda t, a, p: wise_curve_png(t, a, p, title),
                     "wise_curve.png", table, alpha)
            full = {a: {k: table[k][i] for k in table if k != "alpha" and table[k][i] == table[k][i]}
                    for i, a in enumerate(table["alpha"])}      # v == v: not NaN
            _log_png(self.client, run_id, lambda c, a, p: trial_frontier_png(c, a, p, title),
                     "frontier.png", dict(sorted(full.items())), alpha)
        if alpha is not None:
            self.client.update_run(run_id, name=self._name(trial, alpha))
        self.client.set_terminated(run_id, "FINISHED")

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


__all__ = ["MlflowTuneCallback", "StudyRecorder", "TrackingError", "curve_table",
           "ensure_tracking", "log_model", "metrics_of", "tracked", "trial_run_name",
           "wise_curve"]
