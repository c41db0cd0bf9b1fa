"""Security properties of the code base: no unsafe deserialisation or shell, local-only services,
study names that cannot leave --output, checkpoints that cannot run code when loaded.

The source checks walk the syntax tree of every module under search/ and trainables/ (so a
string or comment that merely mentions ``torch.load`` does not count)."""
from __future__ import annotations

import ast
import os
import pickle
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(p for folder in ("search", "trainables") for p in (ROOT / folder).rglob("*.py"))


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
    """Unsafe calls in ``path``; an ``eval`` is allowed only on a line that justifies it with
    ``# noqa: S307`` (bandit's code; e.g. evaluating the project's own type annotations)."""
    out, lines = [], path.read_text().splitlines()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        func, where = _name(node.func), f"{path.relative_to(root)}:{node.lineno}"
        if func in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all"):
            out.append(f"{where}: {func} (use yaml.safe_load)")
        if func.startswith(("pickle.", "cloudpickle.", "dill.")) and func.endswith(
                (".load", ".loads")):
            out.append(f"{where}: {func} (use safetensors / JSON)")
        if func in ("os.system", "os.popen", "exec") or (
                func == "eval" and "noqa: S307" not in lines[node.lineno - 1]):
            out.append(f"{where}: {func}")
        if _keyword(node, "shell") is not None and _keyword(node, "shell") is not False:
            out.append(f"{where}: shell=... (pass an argument list)")
        if func == "torch.load" and _keyword(node, "weights_only") is not True:
            out.append(f"{where}: torch.load without weights_only=True")
        if func.endswith(("create_model_and_transforms", "open_clip.create_model",
                          "open_clip.load_checkpoint")) and _keyword(node, "weights_only") is not True:
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
    bad.write_text("import yaml, pickle, torch, subprocess\n"
                   "yaml.load(open('x'))\npickle.load(open('x', 'rb'))\n"
                   "torch.load('x')\ntorch.load('x', weights_only=False)\n"
                   "subprocess.run('ls', shell=True)\neval('1')\n")
    assert len(_findings(bad, tmp_path)) == 6


def test_no_service_binds_to_every_interface_or_turns_off_ray_auth():
    for path in SOURCES:
        text = path.read_text()
        assert "0.0.0.0" not in text, path        # MLflow / dashboard hints bind 127.0.0.1
        assert "RAY_AUTH" not in text and "auth_mode" not in text, path  # Ray's token auth as is


def test_local_ray_dashboard_binds_to_localhost(monkeypatch):
    """``init_ray`` starting a local Ray passes ``dashboard_host="127.0.0.1"`` (ray.init mocked)."""
    from search.tune import cluster as ray_setup
    from search.runspec import RunSpec
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
