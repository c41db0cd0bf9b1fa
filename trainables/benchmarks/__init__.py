"""Built-in benchmarks: dataset specs read from the data's real directory layouts.

A built-in spec (``trainables/benchmarks/specs/<name>.yaml``) is a YAML mapping with a
``benchmark:`` key naming a builder registered here (``imagenet``, ``domainnet``, ``domainbed``,
``coop``, ``iwildcam``, ``fmow``) and a ``root: ${SOME_ROOT}`` pointing at the data. The builder
scans the real layout (class folders, split files, metadata CSVs) and returns the same
:class:`~trainables.data.DataSpec` as a hand-written spec, so everything downstream is unchanged.
See ``README.md`` beside this file for each benchmark's layout, options and environment variables.

:func:`resolve_data` turns ``--data`` values into a spec path: a file, a built-in name
(``imagenet``), or ``NAME:ROOT`` (``pacs:/data/domainbed``), which sets that spec's root variable.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable

from ..errors import DataError
from ..spec import DataSpec
from ..spec_env import spec_env_vars

SPEC_DIR = Path(__file__).parent / "specs"
Builder = Callable[[dict[str, Any], Path], DataSpec]
BUILDERS: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator: register a builder under ``name`` (the spec's ``benchmark:`` value)."""
    def deco(fn: Builder) -> Builder:
        if name in BUILDERS:
            raise ValueError(f"benchmark builder {name!r} registered twice")
        BUILDERS[name] = fn
        return fn
    return deco


def build_spec(raw: dict[str, Any], spec: Path) -> DataSpec:
    """The DataSpec of a built-in benchmark spec (``raw`` already has ``${VAR}`` expanded)."""
    name = raw.get("benchmark")
    if name not in BUILDERS:
        raise DataError(f"{spec}: unknown benchmark {name!r}; known: {sorted(BUILDERS)}")
    return BUILDERS[name](raw, spec)


def builtin_specs() -> dict[str, Path]:
    """Built-in spec name -> file (``specs/*.yaml``)."""
    return {p.stem: p for p in sorted(SPEC_DIR.glob("*.yaml"))}


def root_variable(spec: Path) -> str:
    """The environment variable a spec's ``root`` reads (``${IMAGENET_ROOT}`` -> IMAGENET_ROOT)."""
    from ..yaml_io import read_yaml
    raw = read_yaml(spec)
    root = str(raw.get("root", "") if isinstance(raw, dict) else "")
    match = re.fullmatch(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}", root)
    if not match:
        raise DataError(f"{spec}: root is not a ${{VAR}} reference, so NAME:ROOT cannot set it")
    return match.group(1)


def resolve_data(arg: str | Path) -> Path:
    """The spec file for a ``--data`` value.

    An existing file is returned as is. ``NAME`` is the built-in spec ``specs/NAME.yaml``.
    ``NAME:ROOT`` is that spec with its root variable set to ``ROOT`` in this process's
    environment (Ray workers get it through the runtime environment, see
    :func:`search.tune.cluster.init_ray`).
    """
    text = str(arg)
    path = Path(text).expanduser()
    if path.is_file():
        return path.resolve()
    name, sep, root = text.partition(":")
    if path.is_dir() or "/" in name or name.endswith((".yaml", ".yml")):
        return path.resolve()       # a path, not a name: load_spec says what is wrong with it
    specs = builtin_specs()
    if name not in specs:
        raise DataError(f"--data {text}: neither a spec file nor a built-in benchmark; built-in: "
                        f"{sorted(specs)} (NAME or NAME:ROOT)")
    if sep:
        if not Path(root).expanduser().is_dir():
            raise DataError(f"--data {text}: data root {root} is not a directory")
        os.environ[root_variable(specs[name])] = str(Path(root).expanduser().resolve())
    return specs[name]


def required_env(spec: str | Path) -> dict[str, str]:
    """The environment variables ``spec`` reads that are set here (to forward to workers)."""
    return {k: os.environ[k] for k in sorted(spec_env_vars(spec)) if k in os.environ}


# Builders register themselves on import.
from . import domains, fewshot, imagenet, wilds  # noqa: E402,F401
