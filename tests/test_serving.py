"""The exported model through an MLflow tracking server: logged and registered over HTTP
(``search.tracking.registry.log_model``), loaded with
``mlflow.pyfunc.load_model("models:/NAME/1")`` in a fresh process, and served by
``mlflow models serve --env-manager local`` on 127.0.0.1, offline;
each gives the predictions of the folder itself."""
from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from clipmodel import folder as model_folder
from search.tracking.registry import log_model
from trainables.heads import build_classifier

from .conftest import MICRO_MODEL

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
COLOURS = [(220, 30, 30), (30, 200, 40), (30, 40, 220), (230, 220, 30), (120, 120, 120)]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], log: Path, **extra: str) -> subprocess.Popen:
    """``args`` in its own session; the venv's bin first on PATH (MLflow execs uvicorn)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **extra}
    return subprocess.Popen(args, env=env, start_new_session=True, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen) -> None:
    """Stop a process this test started, with its session (uvicorn's workers), by id."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} not up after {timeout:.0f}s: {log.read_text()[-2000:]}")


def test_tracking_server_registry_and_serving(tmp_path, micro_bundle, tiny_task):
    model = build_classifier(micro_bundle.clip, micro_bundle.tokenizer, tiny_task.classnames,
                             tiny_task.templates, "cpu").eval()
    target = tmp_path / "model"
    model_folder.write(target, model.clip, MICRO_MODEL, "linear",
                       {"weight": model.head.weight, "bias": model.head.bias},
                       tiny_task.classnames, {"alpha": 1.0}, "# card\n")
    images = []
    for i, colour in enumerate(COLOURS):
        images.append(tmp_path / f"{i}.png")
        Image.new("RGB", (18, 18), colour).save(images[-1])
    expected, _ = model_folder.load(target).predict(model_folder.read_image(p) for p in images)

    port, procs = _port(), []
    try:
        procs.append(_start([str(BIN / "mlflow"), "server", "--backend-store-uri",
                             f"sqlite:///{tmp_path / 'mlflow.db'}", "--artifacts-destination",
                             str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port",
                             str(port), "--workers", "1"], tmp_path / "server.log"))
        uri = f"http://127.0.0.1:{port}"
        _wait_http(f"{uri}/health", procs[-1], tmp_path / "server.log")
        client = MlflowClient(uri)
        run = client.create_run(client.create_experiment("serving")).info.run_id
        logged = log_model(uri, run, target, "served", {
            "classes": tiny_task.classnames, "alpha": 1.0, "method": "ft", "source": "trial"})
        assert logged["registered_model"] == "served" and logged["version"] == 1
        assert client.get_run(run).info.status == "FINISHED"

        code = (f"import json, mlflow, pandas as pd\n"
                f"m = mlflow.pyfunc.load_model('models:/served/1')"
                f"\nprint(json.dumps(list(m.predict(pd.DataFrame({{'path': "
                f"{[str(p) for p in images]!r}}}))['label'])))")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_TRACKING_URI": uri}
        env.pop("PYTHONPATH", None)
        proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads(proc.stdout.strip().splitlines()[-1]) == expected

        serve_port = _port()
        procs.append(_start([str(BIN / "mlflow"), "models", "serve", "-m", "models:/served/1",
                             "--env-manager", "local", "--host", "127.0.0.1", "--port",
                             str(serve_port)], tmp_path / "serve.log", MLFLOW_TRACKING_URI=uri))
        served = f"http://127.0.0.1:{serve_port}"
        _wait_http(f"{served}/ping", procs[-1], tmp_path / "serve.log")
        body = {"dataframe_split": {"columns": ["image"], "data": [
            [base64.b64encode(p.read_bytes()).decode()] for p in images]}}
        request = urllib.request.Request(f"{served}/invocations", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            predictions = json.loads(response.read())["predictions"]
        assert [p["label"] for p in predictions] == expected
        assert all(len(p["probabilities"]) == len(tiny_task.classnames) for p in predictions)
    finally:
        for proc in reversed(procs):
            _stop(proc)
