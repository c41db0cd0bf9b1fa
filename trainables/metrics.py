"""Metric names, defined once. Everything that logs, selects or reports uses these.

Selection (Optuna's objective, ASHA, the WiSE α, greedy soups) may read only :data:`ID_VAL`;
:func:`is_selectable` is the guard the selection code asserts with.
"""
from __future__ import annotations

ID_VAL = "id_val/acc"
ID_TEST = "id_test/acc"
OOD_AVG = "ood/avg_acc"
ZEROSHOT_AVG = "zeroshot/avg_acc"
TRAIN_LOSS = "train/loss"
EPOCH = "epoch"


def ood(name: str) -> str:
    """Accuracy on the OOD (domain-shift) set ``name``."""
    return f"ood/{name}/acc"


def zeroshot(name: str) -> str:
    """Accuracy on the zero-shot (other classes) set ``name``."""
    return f"zeroshot/{name}/acc"


def context(name: str) -> str:
    """Accuracy on the context task ``name`` (e.g. style recognition)."""
    return f"context/{name}/acc"


def at(prefix: str, metric: str) -> str:
    """A metric of a particular model: ``at("wise", ID_TEST)`` -> ``"wise/id_test/acc"``."""
    return f"{prefix}/{metric}"


def curve(alpha: float, metric: str) -> str:
    """A point of the WiSE curve: ``curve(0.3, ID_VAL)`` -> ``"wise_curve/0.30/id_val/acc"``."""
    return f"wise_curve/{alpha:.2f}/{metric}"


def is_selectable(name: str) -> bool:
    """Whether a metric may drive selection: ID validation only."""
    return name == ID_VAL or name.endswith("/" + ID_VAL)
