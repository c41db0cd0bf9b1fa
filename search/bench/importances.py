"""``python -m search.bench.importances``: how many finished trials parameter importances need.

Synthetic studies, no training: two searched parameters shaped like ``spaces/ft.yaml`` (lr
log-uniform on [1e-4, 3e-3], weight decay uniform on [0, 0.5]); the objective depends on lr only
(a peak of 85 % at lr = 1e-3, minus 4 points per decade squared) plus Gaussian noise of 0.5 points
(the spread of ID-val accuracy between seeds on a small validation set). For each study size,
30 random studies: how often Optuna's fANOVA ranks lr above weight decay, and lr's importance.
This sets ``search.tune.optuna_study.MIN_IMPORTANCE_TRIALS``.
"""
from __future__ import annotations

import argparse
import math
import random
import statistics
import warnings

import optuna


def run(sizes: list[int], studies: int) -> list[str]:
    """One Markdown table row per study size."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    dists = {"lr": optuna.distributions.FloatDistribution(1e-4, 3e-3, log=True),
             "weight_decay": optuna.distributions.FloatDistribution(0.0, 0.5)}
    rows = []
    for n in sizes:
        right, lr_importance = 0, []
        for seed in range(studies):
            rng = random.Random(seed)
            study = optuna.create_study(direction="maximize")
            for _ in range(n):
                lr = math.exp(rng.uniform(math.log(1e-4), math.log(3e-3)))
                value = 85 - 4 * (math.log10(lr) + 3) ** 2 + rng.gauss(0, 0.5)
                study.add_trial(optuna.trial.create_trial(
                    params={"lr": lr, "weight_decay": rng.uniform(0, 0.5)}, distributions=dists,
                    value=value))
            imp = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
            right += imp["lr"] > imp["weight_decay"]
            lr_importance.append(imp["lr"])
        rows.append(f"| {n} | {right}/{studies} | {statistics.fmean(lr_importance):.2f} "
                    f"| {min(lr_importance):.2f} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m search.bench.importances",
                                description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[3, 4, 6, 8, 10, 12, 16])
    p.add_argument("--studies", type=int, default=30)
    args = p.parse_args(argv)
    print("| finished trials | lr ranked first | lr importance, mean | lr importance, min |")
    print("|---|---|---|---|")
    print("\n".join(run(args.sizes, args.studies)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
