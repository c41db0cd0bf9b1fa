"""Typed configuration, converted once at the edge.

A trial's flat dict (YAML defaults + Tune's sampled values + ``--set`` overrides) becomes a frozen
:class:`TrainConfig` plus the method's own frozen ``Params`` dataclass. Unknown keys are errors, so
a typo in a space file fails before anything trains. Below this edge nothing reads raw dicts.
"""
from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass, fields
from typing import Any, Mapping

from .errors import InputError


class ConfigError(InputError):
    """A configuration value or key that cannot be used; the message names the fix."""


@dataclass(frozen=True)
class TrainConfig:
    """Settings shared by every method's training loop.

    ``lr``/``weight_decay``: AdamW. ``warmup_steps`` linear warm-up then cosine decay to 0 over the
    run (paper defaults use 500 warm-up steps at batch 512; tiny runs use fewer). ``grad_clip``:
    max global grad norm (1.0 in the papers; 0 disables). ``label_smoothing`` applies to CE terms.
    ``epochs`` counts passes over ID train. ``precision``: ``"auto"`` is bf16 autocast on CUDA and
    fp32 on CPU (bf16 on these CPUs is slower for small models).
    """

    lr: float = 3e-5
    weight_decay: float = 0.1
    epochs: int = 10
    batch_size: int = 512
    warmup_steps: int = 500
    grad_clip: float = 1.0
    label_smoothing: float = 0.0
    seed: int = 0
    num_workers: int = -1         # DataLoader workers per Train worker; -1: 0 on CPU, on CUDA
                                  # the worker's CPUs - 1 (trainables.device.loader_workers)
    precision: str = "auto"       # auto | fp32 | bf16
    grad_checkpointing: bool = False
    max_steps_per_epoch: int = 0  # 0 = full epoch; >0 caps steps (smoke tests)
    compile: bool = False         # torch.compile the training step (off: not measured faster
                                  # yet; BENCHMARKS.md "GPU check"); compile time is per trial

    def __post_init__(self) -> None:
        bad = [f.name for f in fields(self) if isinstance(getattr(self, f.name), float)
               and not math.isfinite(getattr(self, f.name))]
        if bad:
            raise ConfigError(f"{bad[0]} must be a finite number, got {getattr(self, bad[0])}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be >= 1")
        if self.num_workers < -1:
            raise ConfigError(f"num_workers must be >= 0 (or -1: auto), got {self.num_workers}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        negative = [n for n in ("warmup_steps", "grad_clip", "max_steps_per_epoch")
                    if getattr(self, n) < 0]
        if negative:
            raise ConfigError(f"{negative[0]} must be >= 0, got {getattr(self, negative[0])}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert ``value`` to the dataclass field's type (YAML/Tune give ints for floats etc.)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        annotation = args[0]
    try:
        if annotation is bool:
            if isinstance(value, str):
                return value.lower() in ("1", "true", "yes", "on")
            return bool(value)
        if annotation in (int, float, str):
            if annotation is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return annotation(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected {annotation.__name__}, got {value!r}") from None
    return value


def build_dataclass(cls: type, values: Mapping[str, Any], what: str) -> Any:
    """Instantiate frozen dataclass ``cls`` from ``values``; unknown keys raise ConfigError."""
    names = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"unknown {what} key(s) {unknown}: valid keys are {sorted(names)}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _coerce(v, hints[k], k) for k, v in values.items()})


def split_config(values: Mapping[str, Any], method_params_cls: type) -> tuple[TrainConfig, Any]:
    """Split a flat trial dict into (TrainConfig, method Params); unknown keys raise ConfigError."""
    train_keys = {f.name for f in fields(TrainConfig)}
    method_keys = {f.name for f in fields(method_params_cls)}
    unknown = sorted(set(values) - train_keys - method_keys)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown}: training keys are {sorted(train_keys)}, "
                          f"this method's keys are {sorted(method_keys)}")
    train = build_dataclass(TrainConfig, {k: v for k, v in values.items() if k in train_keys},
                            "training")
    params = build_dataclass(method_params_cls,
                             {k: v for k, v in values.items() if k in method_keys}, "method")
    return train, params


__all__ = ["ConfigError", "TrainConfig", "build_dataclass", "split_config"]
