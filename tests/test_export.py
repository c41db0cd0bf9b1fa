"""The study's product is a model: OUTPUT/model, the registered MLflow model, search.export and
search.predict reproduce exactly the accuracies the study reported.

One study (micro CLIP, tiny data, 3 ``ft`` trials of which the first fails by injected fault) is
run once for the module with ``python -m search.run``; every check then runs in a fresh Python
process, as a user would.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from search.bench.tiny_data import write_tiny_spec

from .study_driver import ROOT, _command, _finish, _start

pytestmark = pytest.mark.slow
PROJECT = ("ray", "trainables", "search")     # modules the exported model must not need


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict[str, Any]:
    """Run the study; its folder, summary and the ID test split as (path, class name) rows."""
    folder = tmp_path_factory.mktemp("export")
    data = write_tiny_spec(folder / "data", per_class=8)
    code = _finish(_start(_command(folder, data, 3), folder, "driver",
                          ROBUST_SEARCH_FAULT="raise@1#0",
                          ROBUST_SEARCH_FAULT_DIR=str(folder / "faults")))
    assert code == 0, (folder / "driver.err").read_text()[-3000:]
    out = folder / "out"
    test = sorted((data.parent / "test_folder").glob("*/*.png"))
    rows = [(str(p), p.parent.name) for p in test]
    csv = folder / "test.csv"
    csv.write_text("path,label\n" + "".join(f"{p},{y}\n" for p, y in rows))
    return {"folder": folder, "out": out, "summary": json.loads((out / "summary.json").read_text()),
            "test": rows, "csv": csv}


def _reported_id_test(summary: dict[str, Any]) -> float:
    """The ID-test accuracy the study reported for the model it chose (trial or soup, at its
    selected α)."""
    export = summary["export"]
    if export["source"] == "soup":
        return summary["soups"][export["name"]]["wise"]["id_test/acc"]
    assert export["name"] == summary["best_trial"]
    return summary["metrics"]["wise"]["id_test/acc"]


def _python(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter outside the repository, without PYTHONPATH."""
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          env={**clean, "HF_HUB_OFFLINE": "1", **env}, timeout=600)


def _accuracy(predicted: list[str], rows: list[tuple[str, str]]) -> float:
    """As the study scores (trainables/scoring.py): 100 · correct / n."""
    return 100.0 * sum(p == y for p, (_, y) in zip(predicted, rows)) / len(rows)


def test_summary_names_the_exported_and_registered_model(study):
    summary, out = study["summary"], study["out"]
    export = summary["export"]
    assert summary["trials"]["failed"] == 1 and summary["trials"]["finished"] == 2
    assert export["path"] == str(out / "model") and (out / "model" / "model.json").is_file()
    assert export["registered_model"] == "ft-search" and export["version"] == 1
    assert export["mlflow_model_uri"].startswith("models:/")
    info = json.loads((out / "model" / "model.json").read_text())
    assert info["alpha"] == export["alpha"] and info["data"]["name"] == "tiny"
    assert info["hyperparameters"]["epochs"] == 2 and "lr" in info["hyperparameters"]
    assert info["code_version"] and info["classes"] == ["red", "green", "blue", "yellow"]
    card = (out / "model" / "README.md").read_text()
    assert "zero-shot (α = 0)" in card and f"this model (α = {export['alpha']:.2f})" in card
    # the choice: the best trial unless a soup has a strictly higher ID-val accuracy
    best = summary["metrics"]["wise"]["id_val/acc"]
    soups = {n: s["wise"]["id_val/acc"] for n, s in summary["soups"].items()}
    expected = max(soups, key=soups.get) if soups and max(soups.values()) > best else None
    assert export["name"] == (expected or summary["best_trial"])
    # logged on the study's parent run
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    model = client.get_logged_model(export["mlflow_model_uri"].removeprefix("models:/"))
    assert model.source_run_id == summary["mlflow"]["parent_run_id"]


def test_registered_model_reproduces_the_reported_accuracy(study):
    """``mlflow.pyfunc.load_model("models:/ft-search/1")`` in a fresh process predicts the ID
    test split with exactly the ID-test accuracy the study reported at the selected α, and
    needs neither Ray nor the project."""
    summary, out = study["summary"], study["out"]
    uri = f"models:/{summary['export']['registered_model']}/{summary['export']['version']}"
    code = f"""
import json, sys, mlflow, pandas as pd
model = mlflow.pyfunc.load_model({uri!r})
out = model.predict(pd.DataFrame({{"path": {[p for p, _ in study['test']]!r}}}))
paths = {[p for p, _ in study['test']]!r}
with_bytes = model.predict(pd.DataFrame({{"image": [open(p, "rb").read() for p in paths]}}))
assert list(with_bytes["label"]) == list(out["label"])
print(json.dumps({{"labels": list(out["label"]),
                  "imported": sorted(m for m in sys.modules if m.split(".")[0] in {PROJECT!r})}}))
"""
    proc = _python(code, study["folder"], MLFLOW_TRACKING_URI=f"sqlite:///{out / 'mlflow.db'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["imported"] == []
    assert _accuracy(result["labels"], study["test"]) == _reported_id_test(summary)


def test_model_folder_with_open_clip_alone(study):
    """The model card's snippet (open_clip, torch, safetensors, Pillow), run as written on the
    ID test images in a fresh process, gives exactly the reported ID-test accuracy."""
    out = study["out"]
    card = (out / "model" / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", card, re.S)[1]
    snippet = re.sub(r'^folder = .*$', f"folder = {str(out / 'model')!r}", snippet, flags=re.M)
    snippet = re.sub(r'^paths = .*$', f"paths = {[p for p, _ in study['test']]!r}", snippet,
                     flags=re.M)
    snippet = snippet.replace("print([classes[i] for i in logits.argmax(-1).tolist()])",
                              "import json, sys\nprint(json.dumps({'labels': [classes[i] for i in "
                              "logits.argmax(-1).tolist()], 'imported': sorted(m for m in "
                              f"sys.modules if m.split('.')[0] in {PROJECT!r})}}))")
    assert "'imported'" in snippet          # the card's last line was replaced as intended
    proc = _python(snippet, study["folder"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["imported"] == []
    assert _accuracy(result["labels"], study["test"]) == _reported_id_test(study["summary"])


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def _predicted_accuracy(model: Path, csv: Path) -> float:
    proc = _run("search.predict", "--model", str(model), "--csv", str(csv))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return float(re.search(r"accuracy: ([\d.]+)%", proc.stdout)[1])


def test_export_alpha_0_is_zero_shot_and_alpha_1_the_trial(study):
    """``search.export --alpha 0`` reproduces the zero-shot model's ID-test accuracy and
    ``--alpha 1`` the fine-tuned best trial's (read back by ``search.predict --csv``)."""
    summary, folder = study["summary"], study["folder"]
    for alpha, expected in (("0", summary["metrics"]["zeroshot"]["id_test/acc"]),
                            ("1", summary["metrics"]["finetuned"]["id_test/acc"])):
        target = folder / f"alpha{alpha}"
        proc = _run("search.export", "--output", str(study["out"]), "--alpha", alpha,
                    "--to", str(target))
        assert proc.returncode == 0, proc.stderr[-3000:]
        info = json.loads((target / "model.json").read_text())
        assert info["alpha"] == float(alpha) and info["name"] == summary["best_trial"]
        assert info["metrics"]["exported"]["id_test/acc"] == expected
        # search.predict prints 2 decimals
        assert _predicted_accuracy(target, study["csv"]) == pytest.approx(expected, abs=0.005)


def test_export_soup_and_bad_requests(study):
    """``--soup greedy`` exports the recorded ingredients; a failed trial, an unknown trial and
    α outside [0, 1] are one-line errors (exit 2) that write nothing."""
    summary, folder, out = study["summary"], study["folder"], study["out"]
    target = folder / "greedy"
    proc = _run("search.export", "--output", str(out), "--soup", "greedy", "--to", str(target))
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((target / "model.json").read_text())
    soup = summary["soups"]["greedy"]
    assert info["trials"] == soup["trials"] and info["alpha"] == soup["selected_alpha"]
    assert info["metrics"]["exported"]["id_test/acc"] == soup["wise"]["id_test/acc"]

    failed = next(iter(summary["errors"]))
    for args, message in ((["--trial", failed], f"trial {failed} failed"),
                          (["--trial", "nosuchtrial"], "no trial 'nosuchtrial'"),
                          (["--alpha", "1.5"], "outside [0, 1]")):
        bad = folder / "bad"
        proc = _run("search.export", "--output", str(out), *args, "--to", str(bad))
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
        assert not bad.exists() and not list(folder.glob(".bad*"))
