"""Search spaces as validated YAML (`spaces/*.yaml`), checked before anything starts.

Format::

    method: car-ft                 # must equal --method
    params:                        # TrainConfig fields or the method's Params fields
      lr: {loguniform: [1.0e-5, 1.0e-3]}
      weight_decay: {uniform: [0.0, 0.5]}
      car_alpha: {uniform: [0.0, 2.0]}
      batch_size: {choice: [64, 128]}
      epochs: {int: [2, 4]}        # both ends included
      warmup_steps: 20             # a bare scalar (or {constant: 20}) is a constant
    search:
      sampler: tpe                 # tpe | random   (Optuna samplers, seeded)
      seed: 0
      n_startup_trials: 2          # TPE's random trials first (default: num_samples/4, >= 2)
      multivariate: false          # TPE over the joint space (Optuna's multivariate TPE)
      scheduler: asha              # asha | fifo    (ASHA on the per-epoch ID-val metric)
      num_samples: 4
      grace_period: 1
      reduction_factor: 2
      max_concurrent_trials: 1
    wise:
      strategy: grid               # grid | golden
      grid: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
      evaluations: 6               # budget for golden (>= 3)
    soups:
      top_k: 3                     # 0 disables soups

``n_startup_trials`` defaults to :func:`startup_trials`: a quarter of ``num_samples``, at least 2.
Optuna's own default (10) assumes budgets of a hundred trials; at this project's budgets (2-16
trials) it makes TPE random sampling throughout. A quarter leaves three quarters of the budget
model-based, and 2 is the fewest completed trials from which TPE can split "good" from "bad"
(BENCHMARKS.md, figure 4). ``multivariate`` is off by default: it has not been measured better here.

Unlisted parameters keep their TrainConfig / Params defaults; ``search``, ``wise`` and ``soups``
may be omitted (defaults above). YAML 1.1 reads ``1e-5`` as a string: numbers written that way are
converted, but prefer ``1.0e-5``. ``--set`` overrides use keys ``params.lr``,
``search.num_samples``, ``wise.strategy`` or a bare parameter name (= ``params.<name>``); the value
replaces the distribution with a constant, or a mapping (``{loguniform: [1e-5, 1e-4]}``) with a
new one.

Every problem raises :class:`SpaceError` before anything starts, with a one-line message naming
the file, the problem and the fix. Values are coerced with :mod:`trainables.config`'s own rules and
every end point is tried through :func:`~trainables.config.split_config`, so whatever the trainable
would reject (``lr: 0``, ``epochs: 2.5``) fails here, not in trial 7.
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from search.space_values import Reporter, SpaceError, base_type, field_value, known

KINDS = ("loguniform", "uniform", "int", "choice", "constant")
SAMPLERS = ("tpe", "random")
SCHEDULERS = ("asha", "fifo")
STRATEGIES = ("grid", "golden")
SECTIONS = ("method", "params", "search", "wise", "soups")


@dataclass(frozen=True)
class Distribution:
    """One parameter's distribution (``kind`` in :data:`KINDS`): ``low``/``high`` (int: both
    included), ``choices`` or ``value``, already coerced to the parameter's field type."""

    kind: str
    low: float | int | None = None
    high: float | int | None = None
    choices: tuple[Any, ...] = ()
    value: Any = None

    def to_yaml(self) -> Any:
        """The YAML form this distribution is written in."""
        return {"constant": self.value, "choice": {"choice": list(self.choices)}}.get(
            self.kind, {self.kind: [self.low, self.high]})


@dataclass(frozen=True)
class SearchSettings:
    """How trials are proposed (Optuna sampler) and stopped (Ray scheduler)."""

    sampler: str = "tpe"
    seed: int = 0
    n_startup_trials: int | None = None     # None: startup_trials(num_samples)
    multivariate: bool = False
    scheduler: str = "asha"
    num_samples: int = 4
    grace_period: int = 1
    reduction_factor: float = 2.0
    max_concurrent_trials: int = 1


@dataclass(frozen=True)
class WiseSettings:
    """How each trial searches the WiSE-FT α on ID val: a fixed grid, or golden-section search."""

    strategy: str = "grid"
    grid: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
    evaluations: int = 6


@dataclass(frozen=True)
class SoupSettings:
    """Model soups over the study's own trials: the ``top_k`` by ID val (0 disables)."""

    top_k: int = 3


@dataclass(frozen=True)
class Space:
    """A validated search space, loaded from ``source``."""

    method: str
    params: dict[str, Distribution]
    search: SearchSettings
    wise: WiseSettings
    soups: SoupSettings
    source: Path


def _params_class(method: str) -> type:
    """The method's frozen Params dataclass (imported lazily: it pulls in torch/open_clip)."""
    from trainables.methods import get_method_class

    return get_method_class(method).Params


def _distribution(name: str, spec: Any, annotation: Any, rep: Reporter) -> Distribution:
    """Parse one ``params`` entry into a :class:`Distribution`."""
    where = f"params.{name}"
    if isinstance(spec, list):
        rep.fail(where, f"a bare list {spec!r} is not a distribution", "write {choice: [...]}")
    if not isinstance(spec, Mapping):
        return Distribution("constant", value=field_value(spec, where, annotation, rep))
    if len(spec) != 1 or next(iter(spec)) not in KINDS:
        rep.fail(where, f"{dict(spec)!r} is not exactly one of {list(KINDS)}",
                 "write e.g. {loguniform: [1.0e-5, 1.0e-3]}, {int: [2, 4]}, {choice: [64, 128]}")
    kind, arg = next(iter(spec.items()))
    if kind == "constant":
        return Distribution("constant", value=field_value(arg, where, annotation, rep))
    if kind == "choice":
        if not isinstance(arg, list) or not arg:
            rep.fail(where, f"choice needs a non-empty list, got {arg!r}", "write {choice: [a, b]}")
        choices = tuple(field_value(v, where, annotation, rep) for v in arg)
        return Distribution("choice", choices=choices)
    if not isinstance(arg, list) or len(arg) != 2:
        rep.fail(where, f"{kind} bounds must be a list of two numbers, got {arg!r}",
                 f"write {{{kind}: [low, high]}}")
    base, _ = base_type(annotation)
    if base not in (int, float):
        rep.fail(where, f"{name} is a {getattr(base, '__name__', base)}, so a {kind} distribution "
                 "cannot sample it", "use {choice: [...]} or a constant")
    if base is int and kind != "int":
        rep.fail(where, f"{name} is an integer, a {kind} distribution samples floats",
                 "use {int: [low, high]}")
    low, high = (field_value(v, where, int if kind == "int" else float, rep) for v in arg)
    if low >= high:
        rep.fail(where, f"bounds [{low}, {high}] are inverted or empty (low >= high)",
                 "write [low, high] with low < high, or a constant for a single value")
    if kind == "loguniform" and low <= 0:
        rep.fail(where, f"loguniform bounds must be > 0, got [{low}, {high}]",
                 "use a positive low bound, or uniform")
    return Distribution(kind, low=low, high=high)


def _check_values(params: dict[str, Distribution], params_cls: type, rep: Reporter) -> None:
    """Build TrainConfig + Params from the constants, then with each end point of each distribution
    (the rest at their defaults), so the dataclasses' own checks (``lr > 0``, ...) run now."""
    from trainables.config import ConfigError, split_config

    constants = {k: d.value for k, d in params.items() if d.kind == "constant"}
    probes = [(f"params.{k}", {k: v}) for k, v in constants.items()] + [("params", constants)]
    probes += [(f"params.{k}", {**constants, k: v}) for k, d in params.items()
               if d.kind != "constant" for v in (d.choices or (d.low, d.high))]
    for where, values in probes:
        try:
            split_config(values, params_cls)
        except ConfigError as exc:
            rep.fail(where, str(exc), "change the value or bound so the trainable accepts it")
        except TypeError:
            return  # a Params class without defaults cannot be probed one field at a time


def _settings(cls: type, raw: Any, section: str, rep: Reporter) -> Any:
    """Parse the ``search``/``wise``/``soups`` section into its frozen dataclass."""
    if raw is None:
        return cls()
    if not isinstance(raw, Mapping):
        rep.fail(section, f"must be a mapping, got {raw!r}", f"write {section}: {{key: value}}")
    hints = typing.get_type_hints(cls)
    known(raw, hints, f"{section}.", f"{section} key(s)", rep)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"{section}.{key}"
        if typing.get_origin(hints[key]) is not tuple:
            values[key] = field_value(value, where, hints[key], rep)
        elif isinstance(value, list):  # the α grid
            values[key] = tuple(field_value(v, where, float, rep) for v in value)
        else:
            rep.fail(where, f"expected a list of numbers, got {value!r}", "write [0.0, 0.5, 1.0]")
    return cls(**values)


#: allowed values and lower bounds of the settings sections, checked by :func:`_check_settings`
_ALLOWED = {"search.sampler": SAMPLERS, "search.scheduler": SCHEDULERS, "wise.strategy": STRATEGIES}
_MINIMUM = {"search.num_samples": 1, "search.n_startup_trials": 1, "search.grace_period": 1,
            "search.max_concurrent_trials": 1,
            "wise.evaluations": 3, "soups.top_k": 0}


def _check_settings(sections: dict[str, Any], rep: Reporter) -> None:
    """The value rules of the ``search``/``wise``/``soups`` sections."""
    def get(key: str) -> Any:
        section, name = key.split(".")
        return getattr(sections[section], name)

    for key, allowed in _ALLOWED.items():
        if get(key) not in allowed:
            rep.fail(key, f"unknown {key.split('.')[1]} {get(key)!r}",
                     f"use one of {list(allowed)}")
    for key, minimum in _MINIMUM.items():
        if get(key) is not None and get(key) < minimum:
            why = " (golden-section search)" if key == "wise.evaluations" else ""
            rep.fail(key, f"must be >= {minimum}{why}, got {get(key)}", f"use {minimum} or more")
    if sections["search"].reduction_factor <= 1:
        rep.fail("search.reduction_factor", f"must be > 1, got {get('search.reduction_factor')}",
                 "use 2 to 4")
    grid = sections["wise"].grid
    if not grid:
        rep.fail("wise.grid", "the α grid is empty", "list α values in [0, 1], e.g. [0.0, 1.0]")
    if any(not 0.0 <= a <= 1.0 for a in grid):
        rep.fail("wise.grid", f"α values {[a for a in grid if not 0 <= a <= 1]} are outside "
                 "[0, 1]", "keep every α in [0, 1]")


def _read(source: Path, rep: Reporter) -> dict[str, Any]:
    """The file's top-level mapping."""
    from trainables.yaml_io import YamlError, read_yaml

    if not source.is_file():
        rep.fail("", "space file not found", "pass an existing file, e.g. spaces/ft.yaml")
    try:
        raw = read_yaml(source)          # bounded: size, alias expansion, nesting
    except YamlError as exc:
        raise SpaceError(str(exc)) from None
    if not isinstance(raw, dict):
        rep.fail("", f"the top level is {type(raw).__name__}, not a mapping",
                 "start the file with 'method: <name>' and 'params:'")
    return raw


def _apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any],
                     rep: Reporter) -> dict[str, Any]:
    """``raw`` with the ``--set`` values written in (keys ``section.name`` or a bare param name)."""
    raw = copy.deepcopy(raw)
    for key, value in overrides.items():
        section, dot, name = str(key).partition(".")
        if not dot:
            section, name = "params", section
        if section not in SECTIONS[1:] or not name:
            rep.fail(f"--set {key}", "unknown override key",
                     "use params.<name>, search.<key>, wise.<key>, soups.<key> or a bare "
                     "parameter name (the method comes from --method)")
        raw[section] = raw.get(section) or {}
        if not isinstance(raw[section], dict):
            rep.fail(section, f"must be a mapping, got {raw[section]!r}", "write a mapping")
        raw[section][name] = value
        rep.overridden.add(f"{section}.{name}")
    return raw


def load_space(path: str | Path, method: str,
               overrides: Mapping[str, Any] | None = None) -> Space:
    """Read, override and validate a search-space file for ``method``; raise SpaceError if unusable.
    ``overrides``: ``--set`` values already parsed (YAML), keyed as in the module docstring."""
    source = Path(path)
    rep = Reporter(source)
    raw = _apply_overrides(_read(source, rep), overrides or {}, rep)
    known(raw, SECTIONS, "", "top-level key(s)", rep)
    if raw.get("method") is None:
        rep.fail("method", "the file names no method", f"add 'method: {method}' at the top")
    if raw["method"] != method:
        rep.fail("method", f"the file is for method {raw['method']!r} but --method is {method!r}",
                 f"pass --method {raw['method']} or a space file written for {method}")
    try:
        params_cls = _params_class(method)
    except ValueError as exc:
        rep.fail("method", str(exc), "use a registered method name")
    raw_params = raw.get("params") or {}
    if not isinstance(raw_params, Mapping):
        rep.fail("params", f"must be a mapping, got {raw_params!r}",
                 "write params: {name: distribution}")
    from trainables.config import TrainConfig

    annotations = {**typing.get_type_hints(TrainConfig), **typing.get_type_hints(params_cls)}
    known(raw_params, annotations, "params.", f"parameter(s) for method {method}", rep)
    params = {str(k): _distribution(str(k), v, annotations[k], rep) for k, v in raw_params.items()}
    _check_values(params, params_cls, rep)
    sections = {name: _settings(cls, raw.get(name), name, rep) for name, cls in
                (("search", SearchSettings), ("wise", WiseSettings), ("soups", SoupSettings))}
    _check_settings(sections, rep)
    wise = dataclasses.replace(sections["wise"], grid=tuple(sorted(set(sections["wise"].grid))))
    return Space(method, params, sections["search"], wise, sections["soups"], source)


def startup_trials(configured: int | None, num_samples: int) -> int:
    """TPE's random start-up trials: ``configured`` (the space's ``n_startup_trials``), else a
    quarter of the budget (rounded), at least 2 (module docstring gives the reason)."""
    return configured if configured is not None else max(2, round(num_samples / 4))


def tune_param_space(space: Space) -> dict[str, Any]:
    """Ray Tune search-space objects for ``Tuner(param_space=...)`` + OptunaSearch; constants stay
    plain values. ``int`` bounds are inclusive here, Tune's ``randint`` upper bound is exclusive."""
    from ray import tune

    bounded = {"loguniform": tune.loguniform, "uniform": tune.uniform,
               "int": lambda low, high: tune.randint(low, high + 1)}
    return {name: d.value if d.kind == "constant" else tune.choice(list(d.choices))
            if d.kind == "choice" else bounded[d.kind](d.low, d.high)
            for name, d in space.params.items()}


def space_as_dict(space: Space) -> dict[str, Any]:
    """The space as plain data (its YAML form plus the source path), for logging."""
    return {"method": space.method, "params": {k: d.to_yaml() for k, d in space.params.items()},
            "search": dataclasses.asdict(space.search),
            "wise": {**dataclasses.asdict(space.wise), "grid": list(space.wise.grid)},
            "soups": dataclasses.asdict(space.soups), "source": str(space.source)}


__all__ = ["Distribution", "SearchSettings", "SoupSettings", "Space", "SpaceError", "WiseSettings",
           "load_space", "space_as_dict", "startup_trials", "tune_param_space"]
