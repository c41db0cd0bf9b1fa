"""``${VAR}`` and ``${VAR:-default}`` references in dataset spec values, read from the environment.

Built-in benchmark specs name their data root this way (``root: ${IMAGENET_ROOT}``), so one spec
file serves every machine; :func:`env_vars` lists what a spec needs, so the driver can forward
exactly those variables to Ray workers on other nodes.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .errors import DataError
from .yaml_io import YamlError, load_yaml, read_yaml

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def env_vars(obj: Any) -> set[str]:
    """Names of the environment variables that ``${VAR}`` references in ``obj`` use."""
    if isinstance(obj, dict):
        return set().union(*(env_vars(v) for v in obj.values())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(env_vars(v) for v in obj)) if obj else set()
    return {m.group(1) for m in _ENV.finditer(obj)} if isinstance(obj, str) else set()


def expand_env(obj: Any, spec: Path) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string value of ``obj``; a value that is
    only a reference is re-read as YAML (``shots: ${SHOTS:-16}`` gives the int 16)."""
    if isinstance(obj, dict):
        return {k: expand_env(v, spec) for k, v in obj.items()}
    if isinstance(obj, list):
        return [expand_env(v, spec) for v in obj]
    if not isinstance(obj, str) or "${" not in obj:
        return obj

    def sub(m: re.Match) -> str:
        value = os.environ.get(m.group(1)) or m.group(2)
        if value is None:
            raise DataError(f"{spec}: set the environment variable {m.group(1)} (used by this "
                            "spec; see trainables/benchmarks/README.md)")
        return value

    out = _ENV.sub(sub, obj)
    if not (_ENV.fullmatch(obj) and out.strip()):
        return out
    try:
        return load_yaml(out, f"{spec}: the value of {obj}")
    except YamlError as err:
        raise DataError(str(err)) from None


def spec_env_vars(path: str | Path) -> set[str]:
    """The environment variables a spec file refers to (empty for a missing or bad file)."""
    try:
        return env_vars(read_yaml(Path(path).expanduser()))
    except (OSError, YamlError):
        return set()
