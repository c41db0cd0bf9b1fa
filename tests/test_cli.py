"""``python -m search.run`` bad input: one line on stderr naming the problem, exit status 2, and
nothing written under --output."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from search.run import main

from .tiny_data import write_tiny_spec

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
    "unknown method": (["--method", "nope"], "unknown method 'nope'"),
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
                   "--max-concurrent-trials", "--workers-per-trial", "--gpus-per-worker",
                   "--address", "--output", "--tracking-uri", "--experiment", "--seed",
                   "--resume", "--set"):
        assert option in proc.stdout
