"""Security properties of the code base: no unsafe deserialisation or shell, local-only services,
study names that cannot leave --output, checkpoints that cannot run code when loaded.

Most source checks are ruff's bandit rules (``[tool.ruff.lint]`` in pyproject.toml, run by the
README's test command before this suite); each check this file used to make itself is now:

- ``yaml.load``                                   -> S506
- ``pickle.load(s)`` / ``dill.load(s)``           -> S301
- ``os.system`` / ``os.popen``                    -> S605
- ``exec``                                        -> S102
- ``eval`` (unless justified by ``# noqa: S307``) -> S307
- ``shell=True``                                  -> S602 (subprocess) and S604 (any call)
- ``"0.0.0.0"`` in a source file                  -> S104 (string literals: a comment binds nothing)

What ruff has no rule for stays below, on the syntax tree of every module under search/ and
trainables/ (so a string or comment that merely mentions ``torch.load`` does not count):
``yaml.unsafe_load``/``full_load``/``load_all``, ``cloudpickle``, ``shell=`` set from an
expression, ``torch.load`` without ``weights_only=True``, open_clip loaders without it,
``np.load(allow_pickle=...)``, ``trust_remote_code``, and Ray's token auth left as it is.
:func:`test_ruff_keeps_the_security_rules` fails if the ruff configuration drops one of them."""
from __future__ import annotations

import ast
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(p for folder in ("search", "trainables") for p in (ROOT / folder).rglob("*.py"))
RUFF_SECURITY_RULES = {"S102", "S104", "S301", "S307", "S506", "S602", "S604", "S605"}


def _name(node: ast.AST) -> str:
    """``a.b.c`` for an attribute chain or name, else ''."""
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def _keyword(call: ast.Call, name: str) -> object:
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "<expr>"
    return None


def _findings(path: Path, root: Path = ROOT) -> list[str]:
    """Unsafe calls in ``path`` that ruff's rules do not see."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        func, where = _name(node.func), f"{path.relative_to(root)}:{node.lineno}"
        if func in ("yaml.unsafe_load", "yaml.full_load", "yaml.load_all"):
            out.append(f"{where}: {func} (use yaml.safe_load)")
        if func in ("cloudpickle.load", "cloudpickle.loads"):
            out.append(f"{where}: {func} (use safetensors / JSON)")
        if _keyword(node, "shell") == "<expr>":
            out.append(f"{where}: shell=... (pass an argument list)")
        if func == "torch.load" and _keyword(node, "weights_only") is not True:
            out.append(f"{where}: torch.load without weights_only=True")
        if func.endswith(("create_model_and_transforms", "open_clip.create_model",
                          "open_clip.load_checkpoint")) \
                and _keyword(node, "weights_only") is not True:
            out.append(f"{where}: {func} without weights_only=True")
        if func.endswith("np.load") and _keyword(node, "allow_pickle") not in (None, False):
            out.append(f"{where}: np.load(allow_pickle=...)")
        if _keyword(node, "trust_remote_code") not in (None, False):
            out.append(f"{where}: trust_remote_code")
    return out


def test_sources_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in SOURCES}
    assert {"search/tune/cluster.py", "trainables/checkpoint.py", "trainables/spec.py"} <= names


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_unsafe_loading_or_shell(path):
    assert _findings(path) == []


def test_the_checker_catches_what_it_should(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import yaml, cloudpickle, torch, subprocess, numpy as np\n"
                   "yaml.unsafe_load(open('x'))\ncloudpickle.loads(b'')\n"
                   "torch.load('x')\ntorch.load('x', weights_only=False)\n"
                   "subprocess.run('ls', shell=flag)\nnp.load('x', allow_pickle=True)\n"
                   "AutoModel.from_pretrained('x', trust_remote_code=True)\n"
                   "torch.load('x', weights_only=True)\nsubprocess.run(['ls'], shell=False)\n")
    assert len(_findings(bad, tmp_path)) == 7


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib: standard library since 3.11")
def test_ruff_keeps_the_security_rules():
    """The rules that replaced this file's own checks stay selected and are not ignored."""
    import tomllib
    lint = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]
    assert RUFF_SECURITY_RULES <= set(lint["select"])
    assert not RUFF_SECURITY_RULES & set(lint.get("ignore", []))
    for path, codes in lint.get("per-file-ignores", {}).items():
        assert not RUFF_SECURITY_RULES & set(codes), path


def test_ruff_flags_what_this_file_used_to_check(tmp_path):
    """The project's ruff configuration finds each unsafe call this file no longer looks for."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os, yaml, pickle, subprocess\n"
                   "yaml.load(open('x'))\npickle.load(open('x', 'rb'))\nos.system('ls')\n"
                   "exec('1')\neval('1')\nsubprocess.run('ls', shell=True)\nHOST = '0.0.0.0'\n")
    ruff = Path(sys.executable).parent / "ruff"     # installed by the test extra
    proc = subprocess.run([str(ruff), "check", "--no-cache", "--output-format", "concise",
                           "--config", str(ROOT / "pyproject.toml"), str(bad)],
                          capture_output=True, text=True)
    found = {line.split(" ")[1] for line in proc.stdout.splitlines() if line.startswith(str(bad))}
    assert found >= {"S506", "S301", "S605", "S102", "S307", "S602", "S104"}, proc.stdout


def test_ray_token_auth_is_left_as_it_is():
    for path in SOURCES:
        text = path.read_text()
        assert "RAY_AUTH" not in text and "auth_mode" not in text, path  # Ray's token auth as is


def test_local_ray_dashboard_binds_to_localhost(monkeypatch):
    """``init_ray`` starting a local Ray passes ``dashboard_host="127.0.0.1"`` (ray.init mocked)."""
    from search.runspec import RunSpec
    from search.tune import cluster as ray_setup
    from search.tune.trial import StudySetup
    calls = []
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")   # init_ray sets a default
    monkeypatch.setattr(ray_setup.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray_setup.ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(ray_setup, "check_resources", lambda *a, **k: None)
    monkeypatch.setattr(ray_setup, "check_cluster", lambda *a, **k: None)
    setup = StudySetup(RunSpec(method="ft", model="micro-clip-16", pretrained=None,
                               data=str(ROOT / "nonexistent.yaml")), storage_path="/nonexistent")
    ray_setup.init_ray(None, setup, 1)
    assert len(calls) == 1 and calls[0]["dashboard_host"] == "127.0.0.1"


@pytest.mark.parametrize("name", ["../../x", "..", ".hidden", "a/b", "/abs", "a\\b", "", "x" * 101,
                                  "train", "it's", "sp ace", "~home"])
def test_study_names_that_could_escape_output_are_refused(name):
    from search.study import StudyError, check_study_name
    with pytest.raises(StudyError, match="--study-name"):
        check_study_name(name)


@pytest.mark.parametrize("name", ["ft-search", "car_ft.v2", "A1", "x" * 100])
def test_plain_study_names_pass(name):
    from search.study import check_study_name
    check_study_name(name)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_checkpoint_cannot_run_code_when_loaded(tmp_path, monkeypatch):
    """A loop_state.pt carrying a pickled callable is refused by ``torch.load(weights_only=True)``;
    weights are safetensors (no code), the config JSON."""
    from trainables.checkpoint import LOOP_STATE, WEIGHTS, load_checkpoint, save_checkpoint
    from trainables.loop import LoopState
    monkeypatch.chdir(tmp_path)
    ckpt = save_checkpoint(tmp_path / "ckpt", {"w": torch.ones(2)}, {"method": "ft"}, LoopState())
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.json", LOOP_STATE, WEIGHTS]
    state, config, loop = load_checkpoint(ckpt)             # the honest checkpoint loads
    assert torch.equal(state["w"], torch.ones(2)) and config == {"method": "ft"} and loop
    with (ckpt / LOOP_STATE).open("wb") as fh:
        pickle.dump({"stage_index": _Payload()}, fh, protocol=2)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(ckpt)
    assert not (tmp_path / "PWNED").exists()
