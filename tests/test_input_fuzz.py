"""Property-based tests (Hypothesis) of the space and dataset-spec loaders: arbitrary YAML
documents, structural mutations of valid files and raw-text edits either load or raise the
project's InputError -- never another exception -- in bounded time (Hypothesis' deadline) and
bounded memory (tracemalloc peak per example)."""
from __future__ import annotations

import copy
import os
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search.bench.tiny_data import write_tiny_spec
from search.cli import UsageError, parse_set
from search.space import load_space
from trainables.errors import InputError
from trainables.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
MAX_PEAK_BYTES = 64 * 1024 * 1024
SETTINGS = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "60")), deadline=3000,
                    derandomize="FUZZ_EXAMPLES" not in os.environ,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])

SPACE_KEYS = ["method", "params", "search", "wise", "soups", "lr", "epochs", "batch_size",
              "weight_decay", "label_smoothing", "loguniform", "uniform", "int", "choice",
              "constant", "num_samples", "sampler", "scheduler", "grid", "strategy", "top_k"]
SPEC_KEYS = ["name", "root", "id", "ood", "zeroshot", "context", "anchors", "classes",
             "classes_file", "templates", "templates_file", "context_templates", "train", "val",
             "test", "csv", "imagefolder", "val_fraction", "metrics", "shots", "base_to_new",
             "on_corrupt", "subset", "exclude_groups", "file"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(["ft", "train.csv", "test_folder", "a photo of a {}.", "openai_imagenet",
                     "macro_f1", "skip", "${HOME}", "${NOPE_UNSET}", "1e-5", ".nan"]))


def values(keys: list[str]) -> st.SearchStrategy:
    key = st.one_of(st.sampled_from(keys), st.text(max_size=8), st.integers(0, 3))
    return st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(key, inner, max_size=4)), max_leaves=12)


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into nested dicts/lists."""
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


def _mutate(doc: Any, path: tuple, how: str, value: Any) -> Any:
    doc = copy.deepcopy(doc)
    if not path:
        return value
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    last = path[-1]
    if how == "delete":
        del parent[last]
    elif how == "add" and isinstance(parent[last], dict):
        parent[last]["extra_key"] = value
    else:
        parent[last] = value
    return doc


def _bounded(load, path: Path) -> None:
    """``load(path)`` returns or raises InputError naming the file, with a bounded allocation
    peak."""
    tracemalloc.start()
    try:
        load(path)
    except InputError as err:
        assert str(path) in str(err), err
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < MAX_PEAK_BYTES, peak


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def valid_spec(folder) -> tuple[Path, dict]:
    spec = write_tiny_spec(folder / "data", per_class=2)
    return spec, yaml.safe_load(spec.read_text())


VALID_SPACE = yaml.safe_load((ROOT / "spaces" / "ft.yaml").read_text())


def _load_space(path: Path) -> None:
    load_space(path, "ft")


@SETTINGS
@given(doc=values(SPACE_KEYS))
def test_arbitrary_space_documents(folder, doc):
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(doc))
    _bounded(_load_space, path)


@SETTINGS
@given(data=st.data(), how=st.sampled_from(["replace", "delete", "add"]),
       value=values(SPACE_KEYS))
def test_mutated_space_files(folder, data, how, value):
    path = data.draw(st.sampled_from(_paths(VALID_SPACE)))
    doc = _mutate(VALID_SPACE, path, how, value)
    file = folder / "space.yaml"
    file.write_text(yaml.safe_dump(doc))
    _bounded(_load_space, file)


@SETTINGS
@given(doc=values(SPEC_KEYS))
def test_arbitrary_spec_documents(valid_spec, doc):
    path = valid_spec[0].parent / "fuzz.yaml"      # beside the data: relative paths can resolve
    path.write_text(yaml.safe_dump(doc))
    _bounded(load_spec, path)


@SETTINGS
@given(data=st.data(), how=st.sampled_from(["replace", "delete", "add"]),
       value=values(SPEC_KEYS))
def test_mutated_spec_files(valid_spec, data, how, value):
    spec, raw = valid_spec
    path = data.draw(st.sampled_from(_paths(raw)))
    file = spec.parent / "fuzz.yaml"
    file.write_text(yaml.safe_dump(_mutate(raw, path, how, value)))
    _bounded(load_spec, file)


@SETTINGS
@given(data=st.data(), insert=st.text(alphabet=st.sampled_from(list("&*!|>{}[],:-#'\"\n ab1")),
                                     max_size=12))
def test_text_edits_of_valid_files(valid_spec, folder, data, insert):
    """Characters with YAML meaning (anchors, aliases, tags, flow brackets) spliced into the
    text of a valid space file and a valid spec."""
    for source, load, target in (
            (ROOT / "spaces" / "ft.yaml", _load_space, folder / "space.yaml"),
            (valid_spec[0], load_spec, valid_spec[0].parent / "fuzz.yaml")):
        text = source.read_text()
        at = data.draw(st.integers(0, len(text)))
        target.write_text(text[:at] + insert + text[at:])
        _bounded(load, target)


@SETTINGS
@given(items=st.lists(st.text(max_size=30), max_size=3))
def test_set_values(items):
    """Any --set text parses to values or is a one-line UsageError."""
    try:
        parse_set(items)
    except UsageError:
        pass
