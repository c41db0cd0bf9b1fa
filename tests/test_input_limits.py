"""Issue 19, without starting Ray: values that used to pass validation and fail only after Ray
started, YAML alias bombs, corrupt and non-finite weights, 16-bit images, the --output lock, and
--resume with changed inputs. Each bad input: one line on stderr, exit 2, nothing written."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from search import lock, validate
from search.bench.tiny_data import write_tiny_spec
from search.run import main
from trainables.errors import InputError

from .test_cli import FIXED, ROOT, _run, _stored_inputs, _stored_study

BOMB = "\n".join(["a: &a [x, x, x, x, x, x, x, x, x]"] + [
    f"{n}: &{n} [{', '.join(['*' + p] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi")]) + "\n"


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    return write_tiny_spec(tmp_path_factory.mktemp("limits"), per_class=2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _space_with(tmp_path: Path, text_edit=None, **params) -> str:
    raw = yaml.safe_load((ROOT / "spaces" / "ft.yaml").read_text())
    raw["params"].update(params)
    path = tmp_path / "space.yaml"
    text = yaml.safe_dump(raw)
    path.write_text(text_edit(text) if text_edit else text)
    return str(path)


def _weights(tmp_path: Path, kind: str) -> str:
    import torch

    from trainables.checkpoint import save_weights
    from trainables.models import create_clip
    path = tmp_path / f"w.{'pt' if kind == 'corrupt-pt' else 'safetensors'}"
    if kind.startswith("corrupt"):
        path.write_bytes(b"\x00not weights" * 8)
    else:                       # every tensor NaN
        state = create_clip("micro-clip-16", None).clip.state_dict()
        save_weights(path, {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                            for k, v in state.items()})
    return str(path)


def _bomb_spec(tmp_path: Path, spec: Path) -> str:
    path = tmp_path / "bomb.yaml"
    path.write_text(spec.read_text() + BOMB.replace("a:", "junk_a:", 1))
    return str(path)


def _with_id(tmp_path: Path, spec: Path, **edits) -> str:
    raw = yaml.safe_load(spec.read_text())
    raw["id"].update(edits)
    path = spec.parent / f"edited-{len(list(spec.parent.glob('edited-*')))}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


#: case -> (extra arguments given (tmp_path, spec), text the one line must contain)
CASES = {
    "negative seed": (lambda t, s: ["--seed", "-1"], "--seed -1"),
    "empty experiment": (lambda t, s: ["--experiment", ""], "--experiment"),
    "in-memory tracking store": (lambda t, s: ["--tracking-uri", "sqlite:///:memory:"],
                                 "not a persistent store"),
    "negative CPUs": (lambda t, s: ["--cpus-per-worker", "-1"], "--cpus-per-worker"),
    "infinite GPUs": (lambda t, s: ["--gpus-per-worker", "inf"], "finite"),
    "zero samples": (lambda t, s: ["--num-samples", "0"], "--num-samples 0"),
    "zero concurrency": (lambda t, s: ["--max-concurrent-trials", "0"],
                         "--max-concurrent-trials 0"),
    "negative max failures": (lambda t, s: ["--max-failures", "-1"], "--max-failures -1"),
    "dead cluster address": (lambda t, s: ["--address", f"127.0.0.1:{_free_port()}"],
                             "nothing answers"),
    "NaN bound": (lambda t, s: ["--set", "lr={loguniform: [.nan, 1.0e-3]}"], "not a finite"),
    "lr: .nan in the space": (lambda t, s: ["--space", _space_with(t, lr=float("nan"))],
                              "params.lr"),
    "label smoothing 5": (lambda t, s: ["--set", "label_smoothing=5"], "label_smoothing"),
    "malformed --set YAML": (lambda t, s: ["--set", "lr=[1, 2"], "--set lr: not valid YAML"),
    "alias bomb in a space": (lambda t, s: ["--space", _space_with(
        t, text_edit=lambda text: text + BOMB.replace("a:", "junk:", 1))], "alias bomb"),
    "alias bomb in a dataset spec": (lambda t, s: ["--data", _bomb_spec(t, s)], "alias bomb"),
    "alias bomb in --set": (lambda t, s: ["--set", "lr=" + "{" + BOMB.replace("\n", ", ")
                                          .rstrip(", ") + "}"], "--set lr"),
    "template with stray braces": (lambda t, s: ["--data", _with_id(
        t, s, templates=["a {} of {kind}"])], "braces"),
    "classes not a list": (lambda t, s: ["--data", _with_id(t, s, classes=7)],
                           "id.classes must be a list"),
    "val_fraction not a number": (lambda t, s: ["--data", _with_id(t, s, val_fraction=[1])],
                                  "val_fraction"),
    "corrupt safetensors": (lambda t, s: ["--pretrained", _weights(t, "corrupt-st")],
                            "w.safetensors cannot be read"),
    "corrupt torch file": (lambda t, s: ["--pretrained", _weights(t, "corrupt-pt")],
                           "w.pt cannot be read"),
    "all-NaN weights": (lambda t, s: ["--pretrained", _weights(t, "nan")], "NaN"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_value_is_one_line_before_ray(case, capsys, tmp_path, spec, monkeypatch):
    monkeypatch.chdir(ROOT)
    make, needle = CASES[case]
    extra = make(tmp_path, spec)
    args = list(FIXED)
    for flag in ("--space", "--pretrained"):        # the case's own value replaces FIXED's
        if flag in extra:
            i = args.index(flag)
            del args[i:i + 2]
    args += extra + ([] if "--data" in extra else ["--data", str(spec)])
    out = tmp_path / "out"
    tracemalloc.start()
    try:
        code, err = _run(capsys, args + ["--output", str(out)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0], lines[0]
    assert len(lines[0]) <= 2010
    assert not out.exists()
    assert peak < 512 * 2**20          # the bombs stay small (Python allocations)
    import ray
    assert not ray.is_initialized()


@pytest.mark.parametrize("where", ["a file", "below a file", "read-only"])
def test_unusable_output(where, capsys, tmp_path, spec, monkeypatch):
    monkeypatch.chdir(ROOT)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = {"a file": blocker, "below a file": blocker / "sub" / "out",
           "read-only": tmp_path / "ro" / "out"}[where]
    if where == "read-only":        # no read-only mount in a test: statvfs's flag, patched
        real = validate._read_only
        monkeypatch.setattr(validate, "_read_only", lambda p: p == tmp_path or real(p))
    code, err = _run(capsys, FIXED + ["--data", str(spec), "--output", str(out)])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "--output" in lines[0], err
    assert blocker.read_text() == "x" and not (tmp_path / "ro").exists()


def test_errors_after_the_model_loads_are_one_line_at_info_level(tmp_path, spec):
    """The GPU check runs after the model and data are loaded: open_clip logs INFO lines to the
    root logger then, which used to reach stderr before the error."""
    proc = subprocess.run(       # the default model and its shipped weights
        [sys.executable, "-m", "search.run", "--method", "ft", "--space", "spaces/ft.yaml",
         "--data", str(spec), "--gpus-per-worker",
         "1", "--output", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "GPUs" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


# --- the --output lock ------------------------------------------------------------------------
_HOLDER = """
import sys, time
from pathlib import Path
from search import lock
lock.acquire(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(600)
"""


def test_lock_refuses_a_second_run_and_is_released_by_sigkill(capsys, tmp_path, spec,
                                                              monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = sorted(out.rglob("*"))
        code, err = _run(capsys, FIXED + ["--data", str(spec), "--output", str(out)])
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "in use by another running study" in lines[0]
        assert sorted(out.rglob("*")) == before == [out / lock.LOCK_FILE]
        with pytest.raises(lock.LockedError):
            lock.acquire(out)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    held = lock.acquire(out)           # the kernel released the dead holder's lock
    held.release()


# --- --resume with changed inputs --------------------------------------------------------------
RESUME = FIXED + ["--resume", "--gpus-per-worker", "1"]


@pytest.mark.parametrize("change, needle", [
    ({"num_samples": 8}, "--num-samples 4 cannot shrink it"),
    ({"seed": 7}, "--seed differs"),
    ({"model": "tiny-clip-32"}, "--model differs"),
    ({"method": "lp"}, "--method differs"),
])
def test_resume_with_changed_inputs_is_refused(change, needle, capsys, tmp_path, spec,
                                               monkeypatch):
    """The stored study was started with ``change`` applied; the command differs from it."""
    monkeypatch.chdir(ROOT)
    out = tmp_path / "out"
    before = _stored_study(out, _stored_inputs(spec, **change), "running")
    code, err = _run(capsys, RESUME + ["--data", str(spec), "--output", str(out)])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and needle in lines[0], err
    assert sorted(out.rglob("*")) == before


def test_resume_with_a_larger_budget_passes_the_resume_check(capsys, tmp_path, spec,
                                                             monkeypatch):
    """A study stored with 1 trial, resumed with the space's 4: an extension, not a difference
    (tests/test_reliability.py::test_resume_with_more_samples_extends_the_study runs one); here
    the run then stops at the GPU check, before Ray starts, and changes nothing."""
    monkeypatch.chdir(ROOT)
    out = tmp_path / "out"
    before = _stored_study(out, _stored_inputs(spec, num_samples=1), "finished")
    code, err = _run(capsys, RESUME + ["--data", str(spec), "--output", str(out)])
    assert code == 2 and "GPUs" in err and "differs" not in err and "shrink" not in err, err
    assert sorted(out.rglob("*")) == before


def test_resume_with_a_re_ranged_parameter_names_it(capsys, tmp_path, spec, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "out"
    _stored_study(out, _stored_inputs(spec), "running")
    code, err = _run(capsys, RESUME + ["--data", str(spec), "--output", str(out),
                                       "--set", "lr={loguniform: [1.0e-4, 1.0e-2]}"])
    assert code == 2 and "space's params.lr" in err and len(err.strip().splitlines()) == 1, err


def test_resume_of_another_method_is_refused(capsys, tmp_path, spec, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "out"
    _stored_study(out, _stored_inputs(spec), "finished")
    code, err = _run(capsys, ["--method", "lp", "--space", "spaces/lp.yaml", "--resume",
                              "--data", str(spec), "--output", str(out)])
    assert code == 2 and "no study 'lp-search'" in err and "ft-search" in err, err


def test_resume_of_a_finished_study_does_nothing(capsys, tmp_path, spec, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "out"
    before = _stored_study(out, _stored_inputs(spec), "finished")
    stamps = [p.stat().st_mtime_ns for p in before]
    code = main(RESUME + ["--data", str(spec), "--output", str(out)])
    captured = capsys.readouterr()
    assert code == 0 and "already finished" in captured.out and not captured.err
    assert sorted(out.rglob("*")) == before and [p.stat().st_mtime_ns for p in before] == stamps


# --- 16-bit images -----------------------------------------------------------------------------
def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    from trainables.images import load_image
    ramp = (np.arange(256, dtype=np.uint32) * 257).astype(np.uint16).reshape(16, 16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    rgb = np.asarray(load_image(str(tmp_path / "g16.png")))
    assert rgb.shape == (16, 16, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], np.arange(256).reshape(16, 16))  # 257k -> k
    assert len(np.unique(rgb)) == 256                                          # not near-binary


def test_out_of_range_wide_image_is_refused(tmp_path):
    from trainables.errors import DataError
    from trainables.images import load_image
    Image.fromarray(np.full((4, 4), -5, dtype=np.int32)).save(tmp_path / "neg.tif")
    Image.fromarray(np.ones((4, 4), dtype=np.float32)).save(tmp_path / "f.tif")
    for name in ("neg.tif", "f.tif"):
        with pytest.raises(DataError, match=name):
            load_image(str(tmp_path / name))


def test_every_bad_input_error_is_an_input_error():
    from search.anchors.build import AnchorError
    from search.cli import UsageError
    from search.resume import ResumeError
    from search.space import SpaceError
    from search.study import StudyError
    from search.tracking.recorder import TrackingError
    from search.tune.cluster import ClusterError, ResourceError
    from trainables.config import ConfigError
    from trainables.errors import DataError
    from trainables.models import ModelError
    from trainables.yaml_io import YamlError
    for cls in (AnchorError, UsageError, ClusterError, ResourceError, ResumeError, SpaceError,
                StudyError, TrackingError, ConfigError, DataError, ModelError, YamlError,
                lock.LockedError):
        assert issubclass(cls, InputError), cls


def test_dead_address_fails_fast():
    start = time.monotonic()
    with pytest.raises(InputError, match="nothing answers"):
        validate.check_address(f"127.0.0.1:{_free_port()}")
    assert time.monotonic() - start < validate.CONNECT_TIMEOUT_S + 1
