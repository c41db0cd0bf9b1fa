"""Search spaces: each bad case fails early with a one-line SpaceError; shipped spaces load."""
from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import search.space as space_mod
from search.space import Distribution, SpaceError, load_space, space_as_dict, tune_param_space

SPACES = sorted((Path(__file__).resolve().parents[1] / "spaces").glob("*.yaml"))


@dataclass(frozen=True)
class FakeCarParams:
    """Stands in for car-ft's Params so these tests do not depend on trainables.methods."""

    car_alpha: float = 1.0
    ctx_variant: str = "all"
    mask_same_class: bool = False


@pytest.fixture
def fake_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    def params_class(method: str) -> type:
        if method != "car-ft":
            raise ValueError(f"unknown method {method!r}: choose one of ['car-ft']")
        return FakeCarParams

    monkeypatch.setattr(space_mod, "_params_class", params_class)


VALID = """\
method: car-ft
params:
  lr: {loguniform: [1.0e-5, 1.0e-3]}
  weight_decay: {uniform: [0.0, 0.5]}
  car_alpha: {uniform: [0.0, 2.0]}
  batch_size: {choice: [64, 128]}
  epochs: {int: [2, 4]}
  warmup_steps: 20
search: {sampler: tpe, seed: 0, scheduler: asha, num_samples: 4}
wise: {strategy: grid, grid: [0.0, 0.5, 1.0]}
soups: {top_k: 3}
"""


def parse_set(items: list[str]) -> dict:
    """What the CLI does with --set key=value: YAML-parse each value."""
    return {k: yaml.safe_load(v) for k, _, v in (item.partition("=") for item in items)}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def with_params(params: str, extra: str = "") -> str:
    return f"method: car-ft\nparams:\n{textwrap.indent(params, '  ')}\n{extra}"


BAD = [
    ("method: [unclosed\n", "not valid YAML"),
    ("- a\n- b\n", "not a mapping"),
    (VALID + "serch: {}\n", "unknown top-level key"),
    ("params: {}\n", "names no method"),
    ("method: ft\nparams: {}\n", "--method is 'car-ft'"),
    (VALID + "extra: 1\n", "extra"),
    (with_params("lr: 1.0e-4", "search: {num_sample: 3}"), "unknown search key"),
    (with_params("lr: 1.0e-4", "wise: {alphas: [0.5]}"), "unknown wise key"),
    (with_params("lr: 1.0e-4", "soups: {greedy: true}"), "unknown soups key"),
    (with_params("lrr: 1.0e-4"), "unknown parameter(s) for method car-ft: ['lrr']"),
    (with_params("lr: {normal: [0.0, 1.0]}"), "not exactly one of"),
    (with_params("lr: {uniform: [0.1, 0.2], int: [1, 2]}"), "not exactly one of"),
    (with_params("lr: [1.0e-4, 1.0e-3]"), "bare list"),
    (with_params("lr: {uniform: [0.1]}"), "list of two numbers"),
    (with_params("lr: {uniform: [a, 0.1]}"), "expected a number"),
    (with_params("lr: {uniform: 0.1}"), "list of two numbers"),
    (with_params("lr: {uniform: [0.5, 0.1]}"), "inverted"),
    (with_params("car_alpha: {uniform: [1.0, 1.0]}"), "inverted"),
    (with_params("lr: {loguniform: [0.0, 1.0e-3]}"), "loguniform bounds must be > 0"),
    (with_params("batch_size: {choice: []}"), "non-empty list"),
    (with_params("epochs: 2.5"), "expected int"),
    (with_params("epochs: {uniform: [1, 3]}"), "is an integer"),
    (with_params("epochs: {int: [1.5, 3]}"), "expected int"),
    (with_params("mask_same_class: 3"), "true or false"),
    (with_params("ctx_variant: {uniform: [0.0, 1.0]}"), "is a str"),
    (with_params("ctx_variant: 3"), "expected a string"),
    (with_params("lr: 0"), "lr must be > 0"),
    (with_params("lr: {uniform: [0.0, 1.0e-3]}"), "lr must be > 0"),
    (with_params("lr: abc"), "expected a number"),
    (with_params("lr: 1.0e-4", "wise: {grid: [0.0, 1.5]}"), "outside [0, 1]"),
    (with_params("lr: 1.0e-4", "wise: {grid: []}"), "grid is empty"),
    (with_params("lr: 1.0e-4", "search: {sampler: grid}"), "unknown sampler"),
    (with_params("lr: 1.0e-4", "search: {scheduler: pbt}"), "unknown scheduler"),
    (with_params("lr: 1.0e-4", "search: {num_samples: 0}"), "must be >= 1"),
    (with_params("lr: 1.0e-4", "search: {num_samples: 2.5}"), "expected int"),
    (with_params("lr: 1.0e-4", "wise: {strategy: golden, evaluations: 2}"), "must be >= 3"),
    (with_params("lr: 1.0e-4", "wise: {strategy: bisect}"), "unknown strategy"),
]


@pytest.mark.parametrize("text,needle", BAD, ids=[needle for _, needle in BAD])
def test_bad_space_is_one_line_error(fake_methods: None, tmp_path: Path, text: str,
                                     needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SpaceError) as info:
        load_space(path, "car-ft")
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and "fix:" in message
    assert needle in message


def test_missing_file_and_unknown_method(fake_methods: None, tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match="space file not found"):
        load_space(tmp_path / "nope.yaml", "car-ft")
    with pytest.raises(SpaceError, match="unknown method 'nope'"):
        load_space(write(tmp_path, "method: nope\nparams: {}\n"), "nope")


def test_valid_space_and_tune_conversion(fake_methods: None, tmp_path: Path) -> None:
    from ray.tune.search.sample import Categorical, Float, Integer

    space = load_space(write(tmp_path, VALID), "car-ft")
    assert space.params["lr"] == Distribution("loguniform", low=1e-5, high=1e-3)
    assert space.params["epochs"] == Distribution("int", low=2, high=4)
    assert space.params["warmup_steps"] == Distribution("constant", value=20)
    assert space.search.num_samples == 4 and space.wise.grid == (0.0, 0.5, 1.0)
    tune_space = tune_param_space(space)
    assert isinstance(tune_space["lr"], Float) and tune_space["lr"].lower == 1e-5
    assert isinstance(tune_space["epochs"], Integer)
    assert tune_space["epochs"].upper == 5  # Tune's upper bound is exclusive
    assert isinstance(tune_space["batch_size"], Categorical)
    assert tune_space["warmup_steps"] == 20
    logged = space_as_dict(space)
    assert logged["params"]["lr"] == {"loguniform": [1e-5, 1e-3]} and logged["wise"]["grid"]


def test_docstring_example_is_valid(fake_methods: None, tmp_path: Path) -> None:
    doc = space_mod.__doc__ or ""
    block = doc.split("Format::", 1)[1].split("\n\n", 2)[1]
    space = load_space(write(tmp_path, textwrap.dedent(block)), "car-ft")
    assert space.params["car_alpha"].kind == "uniform"


def test_set_overrides(fake_methods: None, tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    overrides = parse_set(["lr=1e-4", "params.car_alpha={uniform: [0.5, 1e0]}",
                           "search.num_samples=2", "wise.strategy=golden", "soups.top_k=0"])
    space = load_space(path, "car-ft", overrides)
    assert space.params["lr"] == Distribution("constant", value=1e-4)
    assert space.params["car_alpha"] == Distribution("uniform", low=0.5, high=1.0)
    assert space.search.num_samples == 2 and space.wise.strategy == "golden"
    assert space.soups.top_k == 0
    with pytest.raises(SpaceError, match=r"params.lr \(from --set\): bounds"):
        load_space(path, "car-ft", parse_set(["lr={uniform: [1e-3, 1e-4]}"]))
    with pytest.raises(SpaceError, match="unknown override key"):
        load_space(path, "car-ft", {"method.x": 1})
    with pytest.raises(SpaceError, match="unknown search key"):
        load_space(path, "car-ft", {"search.nope": 1})


def _registry() -> dict:
    from trainables.methods import METHODS
    return METHODS


@pytest.mark.parametrize("path", SPACES, ids=[p.name for p in SPACES])
def test_shipped_space_loads(path: Path) -> None:
    _registry()
    method = yaml.safe_load(path.read_text())["method"]
    space = load_space(path, method)
    assert space.params and tune_param_space(space)


def test_every_method_has_a_space() -> None:
    trainable = {name for name, cls in _registry().items() if not cls.trains_nothing}
    shipped = {yaml.safe_load(p.read_text())["method"] for p in SPACES}
    assert trainable <= shipped, f"methods without a space file: {sorted(trainable - shipped)}"
