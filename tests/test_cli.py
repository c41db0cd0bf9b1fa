"""``python -m search.run`` bad input: one line on stderr naming the problem, exit status 2, and
nothing written under --output."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from search.bench.tiny_data import write_tiny_spec
from search.run import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    return write_tiny_spec(tmp_path_factory.mktemp("cli"), per_class=4)


def _space(tmp_path, **edits) -> Path:
    raw = yaml.safe_load((ROOT / "spaces" / "ft.yaml").read_text())
    for key, value in edits.items():
        section, _, name = key.partition(".")
        if value is None:
            raw[section].pop(name)
        else:
            raw.setdefault(section, {})[name] = value
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _run(capsys, args: list[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code, capsys.readouterr().err


CASES = {
    "unknown method": (["--method", "nope"], "invalid choice: 'nope'"),
    "space of another method": (["--method", "car-ft", "--space", "spaces/ft.yaml"], "ft"),
    "unknown key": (["--method", "ft", "--space", "SPACE:params.colour=1"], "colour"),
    "inverted log bounds": (["--method", "ft", "--space",
                             "SPACE:params.lr={loguniform: [1.0e-3, 1.0e-5]}"], "lr"),
    "non-positive log bound": (["--method", "ft", "--space",
                                "SPACE:params.lr={loguniform: [0, 1.0e-3]}"], "lr"),
    "alpha outside [0, 1]": (["--method", "ft", "--space", "SPACE:wise.grid=[0.0, 0.5, 1.5]"],
                             "grid"),
    "missing data spec": (["--method", "ft", "--space", "spaces/ft.yaml", "--data",
                           "/nonexistent/spec.yaml"], "does not exist"),
    "missing weights": (["--method", "ft", "--space", "spaces/ft.yaml", "--model",
                         "micro-clip-16", "--pretrained", "/nonexistent/w.safetensors"],
                        "weights file not found"),
    "bad --set": (["--method", "ft", "--space", "spaces/ft.yaml", "--set", "lr"], "key=value"),
    "space required": (["--method", "ft"], "--space is required"),
    "unreachable tracking uri": (["--method", "ft", "--space", "spaces/ft.yaml", "--model",
                                  "micro-clip-16", "--pretrained", "", "--tracking-uri",
                                  "http://127.0.0.1:9"], "127.0.0.1:9"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, capsys, tmp_path, spec,
                                                             monkeypatch):
    monkeypatch.chdir(ROOT)
    args, needle = CASES[case]
    args = list(args)
    for i, a in enumerate(args):
        if a.startswith("SPACE:"):
            key, _, value = a[len("SPACE:"):].partition("=")
            args[i] = str(_space(tmp_path, **{key: yaml.safe_load(value)}))
    if "--data" not in args:
        args += ["--data", str(spec)]
    out = tmp_path / "out"
    code, err = _run(capsys, args + ["--output", str(out)])
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0]
    assert not out.exists()


def test_help_documents_every_option():
    proc = subprocess.run([sys.executable, "-m", "search.run", "--help"], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0
    for option in ("--method", "--space", "--data", "--model", "--pretrained", "--num-samples",
                   "--max-concurrent-trials", "--workers-per-trial", "--worker-group",
                   "--trial-runner",
                   "--gpus-per-worker",
                   "--address", "--output", "--tracking-uri", "--experiment", "--seed",
                   "--resume", "--set"):
        assert option in proc.stdout


# --- bad data, weights, resources and names ----------------------------------------------------
def _edit_spec(spec_path: Path, **id_edits) -> Path:
    raw = yaml.safe_load(spec_path.read_text())
    raw["id"].update(id_edits)
    spec_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return spec_path


def _empty_data_dir(tmp_path: Path) -> list[str]:
    (tmp_path / "empty").mkdir()
    return ["--data", str(tmp_path / "empty")]


def _empty_split_dir(tmp_path: Path) -> list[str]:
    spec = write_tiny_spec(tmp_path / "data", per_class=2)
    (tmp_path / "data" / "empty_test").mkdir()
    return ["--data", str(_edit_spec(spec, test={"imagefolder": "empty_test"}))]


def _class_without_images(tmp_path: Path) -> list[str]:
    spec = write_tiny_spec(tmp_path / "data", per_class=2)
    manifest = tmp_path / "data" / "train.csv"
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(ln for ln in lines if not ln.endswith(",yellow")) + "\n")
    return ["--data", str(spec)]


def _corrupt_image(tmp_path: Path, **id_edits) -> Path:
    spec = write_tiny_spec(tmp_path / "data", per_class=2)
    (tmp_path / "data" / "images" / "train" / "red_0.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return _edit_spec(spec, **id_edits) if id_edits else spec


def _weights_of_another_architecture(tmp_path: Path) -> list[str]:
    from trainables.checkpoint import save_weights
    from trainables.models import create_clip
    path = save_weights(tmp_path / "micro.safetensors",
                        create_clip("micro-clip-16", None).clip.state_dict())
    return ["--model", "tiny-clip-32", "--pretrained", str(path)]


FIXED = ["--method", "ft", "--space", "spaces/ft.yaml", "--model", "micro-clip-16",
         "--pretrained", ""]
DATA_CASES = {
    "data is an empty directory": (_empty_data_dir, "empty directory"),
    "split directory empty": (_empty_split_dir, "missing or empty"),
    "class with no images": (_class_without_images, "['yellow'] have no images"),
    "corrupt image (on_corrupt: error)": (
        lambda tmp: ["--data", str(_corrupt_image(tmp))], "on_corrupt: skip"),
    "bad on_corrupt value": (
        lambda tmp: ["--data", str(_corrupt_image(tmp, on_corrupt="ignore"))], "on_corrupt"),
    "weights for another architecture": (_weights_of_another_architecture, "do not fit"),
    "too many workers": (lambda tmp: ["--workers-per-trial", "64"], "64 Train workers"),
    "too many GPUs": (lambda tmp: ["--gpus-per-worker", "1"], "--gpus-per-worker"),
    "study name escapes --output": (lambda tmp: ["--study-name", "../../x"], "--study-name"),
    "study name taken by the Train runs": (lambda tmp: ["--study-name", "train"], "'train'"),
    "resume without a study": (lambda tmp: ["--resume"], "no study"),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_bad_data_weights_resources_exit_2(case, capsys, tmp_path, spec, monkeypatch):
    monkeypatch.chdir(ROOT)
    make, needle = DATA_CASES[case]
    args = FIXED + make(tmp_path)
    if "--data" not in args:
        args += ["--data", str(spec)]
    if "--model" in args[len(FIXED):]:        # the case brings its own model and weights
        args = args[:6] + args[8:]
    out = tmp_path / "out"
    code, err = _run(capsys, args + ["--output", str(out)])
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0]
    assert not out.exists()


def test_corrupt_image_skipped_with_a_counted_warning(capsys, tmp_path, caplog, monkeypatch):
    """on_corrupt: skip drops the image and counts it; the data passes validation (the run then
    stops at the next check, a GPU request this machine cannot serve, before starting Ray)."""
    monkeypatch.chdir(ROOT)
    spec = _corrupt_image(tmp_path, on_corrupt="skip")
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="trainables.data"):
        code, err = _run(capsys, FIXED + ["--data", str(spec), "--gpus-per-worker", "1",
                                          "--output", str(out)])
    assert code == 2 and "GPUs" in err
    warnings = [r.getMessage() for r in caplog.records if "corrupt" in r.getMessage()]
    assert warnings and "skipped 1 corrupt or unreadable image(s) of 8" in warnings[0]
    assert not out.exists()


def _stored_inputs(spec: Path, **changes) -> dict:
    """The inputs study.json holds for ``FIXED + --data spec --gpus-per-worker 1`` (what a
    driver started with that command wrote), with ``changes`` applied."""
    from search.resume import study_inputs
    from search.space import load_space, space_as_dict
    space = load_space(ROOT / "spaces" / "ft.yaml", "ft")
    inputs = dict(method="ft", space=space_as_dict(space), data=str(Path(spec).resolve()),
                  model="micro-clip-16", pretrained="", num_samples=space.search.num_samples,
                  seed=space.search.seed, max_concurrent=space.search.max_concurrent_trials,
                  workers_per_trial=1, gpus_per_worker=1.0, trial_runner="auto",
                  experiment="robust-ft-search")
    inputs.update(changes)
    return study_inputs(**inputs)


def _stored_study(out: Path, inputs: dict, status: str) -> list[Path]:
    from search.resume import write_state
    write_state(out, "ft-search", inputs, status)
    (out / "mlflow.db").touch()
    return sorted(out.rglob("*"))


def test_resume_of_a_driver_killed_before_tune_saved_state_is_accepted(capsys, tmp_path, spec,
                                                                        monkeypatch):
    """A driver killed before its first trial leaves its study.json (status running) but no Tune
    state: --resume with the same inputs passes validation (and would start the trials afresh
    under the re-opened parent run); here the run then stops at the GPU check, before Ray starts,
    and changes nothing under --output."""
    monkeypatch.chdir(ROOT)
    out = tmp_path / "out"
    before = _stored_study(out, _stored_inputs(spec), "running")
    code, err = _run(capsys, FIXED + ["--data", str(spec), "--resume", "--gpus-per-worker", "1",
                                      "--output", str(out)])
    assert code == 2 and "GPUs" in err and "no study" not in err, err
    assert sorted(out.rglob("*")) == before
