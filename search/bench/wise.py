"""Benchmark figure 3: the WiSE mixing search, 11-point grid against golden-section search.

Each (method, seed) is trained once the way ``search.bench.report.run_one`` trains it (paper
defaults, ``search.tune.trial.prepare`` → ``trainables.loop.train``), with a capped number of
steps so the figure stays short; then both strategies of :func:`search.selection.select_alpha`
search α on ID val for the same θ_zs and θ_ft. ID val is loaded once before timing, so both
strategies pay only the interpolation and the image-tower passes.
"""
from __future__ import annotations

import statistics
import time

from search.bench.core import Bench, Figure, Target
from search.bench.report import defaults
from search.runspec import RunSpec
from search.selection import select_alpha
from search.tune.trial import prepare
from trainables import metrics as M
from trainables.evaluate import SELECTION
from trainables.wise import interpolate

GRID = [round(i / 10, 1) for i in range(11)]
GOLDEN_EVALUATIONS = 6
QUICK = dict(methods=["ft", "car-ft"], seeds=[0], params=dict(epochs=2, batch_size=16))
FULL = dict(methods=["ft", "lp-ft", "flyp", "car-ft", "l2-sp"], seeds=[0, 1],
            params=dict(max_steps_per_epoch=25))


def compare(setup: RunSpec, params: dict) -> dict[str, float]:
    """Train once, then search α on ID val with both strategies; their choices and costs."""
    from trainables.loop import train
    parts = prepare(setup, params)
    start = time.perf_counter()
    train(parts.model, parts.method, parts.ctx, parts.data, parts.train_cfg,
          eval_transform=parts.bundle.preprocess_val)
    train_s = time.perf_counter() - start
    theta_ft = parts.method.final_state_dict(parts.model)
    keys = parts.method.trained_names(parts.model)
    evaluator, model, method = parts.evaluator, parts.model, parts.method

    def id_val_at(alpha: float) -> float:
        model.load_state_dict(interpolate(parts.theta_zs, theta_ft, alpha, keys))
        return evaluator.evaluate(model, method, SELECTION)[M.ID_VAL]

    id_val_at(1.0)          # loads and caches ID val: neither strategy pays the decoding
    out = {"train_s": train_s}
    for strategy in ("grid", "golden"):
        start = time.perf_counter()
        alpha, curve = select_alpha(id_val_at, strategy, GRID, GOLDEN_EVALUATIONS)
        out.update({f"{strategy}_alpha": alpha, f"{strategy}_acc": curve[alpha],
                    f"{strategy}_evals": len(curve),
                    f"{strategy}_s": time.perf_counter() - start})
    return out


def wise_search(bench: Bench) -> Figure:
    """Figure 3: evaluations, seconds, agreement and ID-val gap of golden vs the 11-point grid."""
    preset = QUICK if bench.quick else FULL
    from search.anchors.build import with_anchors
    rows = []
    for method in preset["methods"]:
        setup = with_anchors(RunSpec(method=method, model=bench.model,
                                     pretrained=bench.pretrained, data=str(bench.data())))
        for seed in preset["seeds"]:
            params = {**defaults(method), **preset["params"], "seed": seed}
            rows.append((method, seed, compare(setup, params)))
    fig = Figure(3, "WiSE α search: 11-point grid vs golden-section search (ID val)",
                 ["method", "seed", "grid α", "grid ID val", "golden α", "golden ID val",
                  "golden evals", "grid s", "golden s", "train s"])
    for method, seed, r in rows:
        fig.rows.append([method, str(seed), f"{r['grid_alpha']:.1f}", f"{r['grid_acc']:.2f}",
                         f"{r['golden_alpha']:.3f}", f"{r['golden_acc']:.2f}",
                         str(r["golden_evals"]), f"{r['grid_s']:.2f}", f"{r['golden_s']:.2f}",
                         f"{r['train_s']:.0f}"])
    results = [r for _, _, r in rows]
    same = [abs(r["grid_alpha"] - r["golden_alpha"]) <= 0.1 + 1e-9 for r in results]
    gaps = [r["grid_acc"] - r["golden_acc"] for r in results]
    evals = max(r["golden_evals"] for r in results)
    speed = statistics.fmean(r["grid_s"] for r in results) / statistics.fmean(
        r["golden_s"] for r in results)
    judge = None if bench.quick else True
    fig.targets += [
        Target("golden ≤ 6 evaluations (grid: 11)", f"at most {evals}",
               judge and evals <= 6),
        Target("same α as the grid (within 0.1) in ≥ 90 % of trials",
               f"{sum(same)}/{len(same)} = {100 * sum(same) / len(same):.0f} %",
               judge and sum(same) >= 0.9 * len(same)),
        Target("ID-val gap (grid best − golden's choice) ≤ 0.2 points",
               f"mean {statistics.fmean(gaps):.2f}, max {max(gaps):.2f}",
               judge and max(gaps) <= 0.2)]
    fig.notes.append(f"Golden is {speed:.1f}× faster than the grid per trial (mean seconds). "
                     f"{bench.model} ({'pretrained' if bench.pretrained else 'random init'}); "
                     f"paper defaults (search.bench.report) with {preset['params']}; seeds "
                     f"{preset['seeds']}.")
    return fig
