"""Metric names, defined once. Everything that logs, selects or reports uses these.

Selection (Optuna's objective, ASHA, the WiSE α, greedy soups) may read only :data:`ID_VAL`;
:func:`is_selectable` is the guard the selection code asserts with.

Every set reports top-1 accuracy (``…/acc``); a spec may ask for more kinds per set
(:data:`MACRO_F1` for iWildCam, :data:`WORST_GROUP_ACC` for FMoW's worst region), named by
:func:`with_kind`. Base-to-new few-shot runs also report B, N and their harmonic mean.
"""
from __future__ import annotations

ID_VAL = "id_val/acc"
ID_TEST = "id_test/acc"
OOD_AVG = "ood/avg_acc"
ZEROSHOT_AVG = "zeroshot/avg_acc"
TRAIN_LOSS = "train/loss"
EPOCH = "epoch"

# Kinds of per-set metrics: accuracy always, the others when the dataset spec asks for them.
ACC = "acc"
MACRO_F1 = "macro_f1"                 # mean over the classes present in the labels of per-class F1
WORST_GROUP_ACC = "worst_group_acc"   # min over groups (CSV column ``group``) of group accuracy
METRIC_KINDS = (ACC, MACRO_F1, WORST_GROUP_ACC)

# Base-to-new few-shot protocol (CoCoOp): base = ID test, new = the held-back classes' test set.
B2N_BASE = "b2n/base_acc"
B2N_NEW = "b2n/new_acc"
B2N_HM = "b2n/hm"                     # harmonic mean 2BN / (B + N)


def ood(name: str) -> str:
    """Accuracy on the OOD (domain-shift) set ``name``."""
    return f"ood/{name}/acc"


def zeroshot(name: str) -> str:
    """Accuracy on the zero-shot (other classes) set ``name``."""
    return f"zeroshot/{name}/acc"


def context(name: str) -> str:
    """Accuracy on the context task ``name`` (e.g. style recognition)."""
    return f"context/{name}/acc"


def with_kind(metric: str, kind: str) -> str:
    """The same set's metric of another kind: ``with_kind("ood/x/acc", MACRO_F1)`` ->
    ``"ood/x/macro_f1"``; ``with_kind(OOD_AVG, MACRO_F1)`` -> ``"ood/avg_macro_f1"``."""
    if kind not in METRIC_KINDS:
        raise ValueError(f"unknown metric kind {kind!r}; known: {METRIC_KINDS}")
    head, _, last = metric.rpartition("/")
    if last == "avg_acc":
        return f"{head}/avg_{kind}"
    if last != ACC:
        raise ValueError(f"{metric!r} is not an accuracy metric name")
    return f"{head}/{kind}"


def at(prefix: str, metric: str) -> str:
    """A metric of a particular model: ``at("wise", ID_TEST)`` -> ``"wise/id_test/acc"``."""
    return f"{prefix}/{metric}"


def curve(alpha: float, metric: str) -> str:
    """A point of the WiSE curve: ``curve(0.3, ID_VAL)`` -> ``"wise_curve/0.3000/id_val/acc"``.

    α keeps 4 decimals, as :func:`rounded` stores the selected α, so the selected point is found on
    the curve by equality (a golden-section α such as 0.7639 is not collapsed to 0.76)."""
    return f"wise_curve/{alpha:.4f}/{metric}"


def is_selectable(name: str) -> bool:
    """Whether a metric may drive selection: ID validation only."""
    return name == ID_VAL or name.endswith("/" + ID_VAL)


# --- MLflow names (search/tracking/names.py) --------------------------------------------------
# One namespace on the study run and its trial runs: a model's prefix, then the metric name above.
PRETRAINED = "pretrained"      # the zero-shot model θ_zs (α = 0), evaluated once per study
FINETUNED = "ft"               # θ_ft (α = 1)
WISE = "wise"                  # θ(α*) with α* selected on ID val
WISE_ALPHA = "wise/alpha"      # α*, logged under this name (a Tune result says ``wise_alpha``)


def soup(kind: str, metric: str, wise: bool = False) -> str:
    """A soup's metric: ``soup("greedy", ID_TEST)`` -> ``"soup/greedy/id_test/acc"``; with
    ``wise=True`` the soup + WiSE model's: ``"soup/greedy/wise/id_test/acc"``."""
    return f"soup/{kind}/{WISE + '/' if wise else ''}{metric}"


def rounded(name: str, value: float) -> float:
    """``value`` to the precision it was measured with: accuracies and F1 (percentages) to 0.01
    points, α to 4 decimals, seconds to 0.1 s, anything else (losses, importances) to 4
    significant digits."""
    last = name.rpartition("/")[2]
    if last in METRIC_KINDS or last.startswith("avg_") or name in (B2N_HM,) or last == "hm":
        return round(float(value), 2)
    if last == "alpha" or name == "wise_alpha":
        return round(float(value), 4)
    if name.startswith("time/") or last.endswith("_s"):
        return round(float(value), 1)
    return float(f"{float(value):.4g}")
