"""The selection protocol: what is chosen (trial and WiSE α) depends on ID val only.

Two trials are trained for real on the tiny benchmark, WiSE-selected, and the best is picked; the
same is repeated with the OOD labels permuted and with the OOD images replaced by noise. The OOD
accuracies change (the test can tell the data apart), the choices do not.
"""
from __future__ import annotations

import csv
import random
import shutil

import numpy as np
import pytest
from PIL import Image

from search.bench.tiny_data import write_tiny_spec
from search.result import TrialResult
from search.runspec import RunSpec
from search.selection import best_trial, select_alpha
from search.tune.trial import prepare, wise_evaluation
from trainables import metrics as M
from trainables.loop import train

TRIALS = [{"lr": 3e-4}, {"lr": 3e-3}]


def _permute_ood_labels(root) -> None:
    path = root / "ood_noisy.csv"
    rows = list(csv.DictReader(path.open()))
    labels = [r["label"] for r in rows]
    random.Random(0).shuffle(labels)
    labels = labels[1:] + labels[:1]          # guarantees most labels move
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label"])
        w.writeheader()
        for r, lab in zip(rows, labels):
            w.writerow({"path": r["path"], "label": lab})


def _replace_ood_images(root) -> None:
    rng = np.random.default_rng(1)
    for r in csv.DictReader((root / "ood_noisy.csv").open()):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / r["path"])


def _study(spec) -> tuple[int, float, list[TrialResult]]:
    results = []
    for params in TRIALS:
        setup = RunSpec(method="ft", model="micro-clip-16", pretrained=None, data=str(spec),
                        base_params=dict(epochs=3, batch_size=8, warmup_steps=0, seed=0,
                                         weight_decay=0.0))
        parts = prepare(setup, params)
        train(parts.model, parts.method, parts.ctx, parts.data, parts.train_cfg)
        results.append(wise_evaluation(parts, parts.method.final_state_dict(parts.model), setup))
    best = best_trial(results, "objective")
    return best, results[best].alpha, results


@pytest.mark.parametrize("corrupt", [_permute_ood_labels, _replace_ood_images])
def test_changing_ood_data_never_changes_what_is_selected(tmp_path, corrupt):
    original = write_tiny_spec(tmp_path / "a", per_class=8)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    corrupt(tmp_path / "b")
    best_a, alpha_a, res_a = _study(original)
    best_b, alpha_b, res_b = _study(tmp_path / "b" / "spec.yaml")
    ood = M.ood("noisy")
    assert any(abs(ra.wise[ood] - rb.wise[ood]) > 0 for ra, rb in zip(res_a, res_b)), \
        "the corrupted OOD set should score differently (else this test proves nothing)"
    assert (best_a, alpha_a) == (best_b, alpha_b)
    for ra, rb in zip(res_a, res_b):
        assert ra.objective == rb.objective and ra.alpha == rb.alpha


def test_select_alpha_sees_only_the_id_val_callable():
    seen = []

    def id_val_at(alpha: float) -> float:
        seen.append(alpha)
        return 50 + 10 * alpha - 12 * alpha ** 2     # peak at α ≈ 0.42

    alpha, curve = select_alpha(id_val_at, "grid", [i / 10 for i in range(11)])
    assert alpha == 0.4 and len(seen) == 11 and set(curve) == set(seen)
    alpha_g, curve_g = select_alpha(id_val_at, "golden", evaluations=6)
    assert len(curve_g) <= 6 and abs(alpha_g - 0.42) < 0.1


def test_ties_go_to_the_smaller_alpha_and_ood_metrics_are_refused():
    alpha, _ = select_alpha(lambda a: 80.0, "grid", [0.0, 0.5, 1.0])
    assert alpha == 0.0
    with pytest.raises(ValueError, match="ID val only"):
        best_trial([{M.OOD_AVG: 1.0}], M.OOD_AVG)


@pytest.mark.parametrize("strategy", ["grid", "golden"])
def test_final_report_equals_a_full_evaluation_at_both_alphas(tmp_path, strategy):
    """The report reuses the OOD numbers of the curve at α = 1 and α*; they must be exactly what
    a fresh evaluation of every set gives (and nothing may go missing)."""
    from dataclasses import replace

    from trainables.wise import interpolate
    spec = write_tiny_spec(tmp_path / "a", per_class=8)
    setup = RunSpec(method="ft", model="micro-clip-16", pretrained=None, data=str(spec),
                    wise_strategy=strategy,
                    base_params=dict(epochs=2, batch_size=8, warmup_steps=0, seed=0))
    parts = prepare(setup, {"lr": 3e-3})
    train(parts.model, parts.method, parts.ctx, parts.data, parts.train_cfg)
    theta_ft = parts.method.final_state_dict(parts.model)
    out = wise_evaluation(parts, theta_ft, replace(setup))
    keys = parts.method.trained_names(parts.model)
    for got, alpha in ((out.finetuned, 1.0), (out.wise, out.alpha)):
        parts.model.load_state_dict(interpolate(parts.theta_zs, theta_ft, alpha, keys))
        full = parts.evaluator.evaluate(parts.model, parts.method, parts.evaluator.report_sets)
        assert got == full
