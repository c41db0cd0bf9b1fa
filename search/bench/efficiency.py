"""Benchmark figure 4: search efficiency.

Runs the project's Tune wiring (``search.tune.tuner.make_tuner`` over ``run_trial``) with
random + FIFO, TPE + FIFO (the sampler's own effect) and TPE + ASHA on the same seeds and
budgets, at budgets where TPE models (16 trials: 4 random start-up trials, then 12
model-based), and reads every reported row of the result grids. Compute is counted in trial
epochs (judged: other jobs on shared cores cannot distort it) and in seconds.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field, replace
from typing import Any

from search.bench.core import Bench, Figure, Target
from search.bench.study_figures import make_study, row_compute, trial_rows
from search.result import FINAL, OBJECTIVE

EFFICIENCY = {True: ("ft", "spaces/ft.yaml", 4, ["epochs=3", "batch_size=16", "warmup_steps=0"],
                     [0, 1]),
              # α = 1 only: figure 3 measures the α search; here it would only add the same
              # end-of-trial evaluation (11 ID-val + 11 OOD passes) to every finished trial.
              # 16 trials: TPE's default start-up at that budget is 4 (search/space.py), so 12
              # trials per arm are model-based.
              False: ("ft", "spaces/ft.yaml", 16, ["max_steps_per_epoch=10", "wise.grid=[1.0]"],
                      [0, 1, 2])}
#: figure 4's tolerance for "came close to random's final best", in objective points
NEAR = 0.5
#: one core and one torch thread per trial: beside other jobs on the 2 cores, a trial with 2
#: threads took 50 s of compute against 22 s with one (the same objectives); the figure's unit,
#: trial epochs, does not depend on it
EFFICIENCY_FLAGS = ["--cpus-per-worker", "1"]
ARMS = {"random+fifo": ("random", "fifo"), "tpe+fifo": ("tpe", "fifo"),
        "tpe+asha": ("tpe", "asha")}



def _search_rows(bench: Bench, method: str, space: str, n: int, overrides: list[str],
                 seed: int, arm: str) -> list[dict[str, Any]]:
    """Run one search arm; every reported row in the order the (sequential) trials ran. An arm
    that finished in an earlier run with the same ``--work`` is read back (rows.json), so an
    interrupted figure resumes."""
    from search.inputs import param_space
    from search.tune.tuner import make_tuner
    sampler, scheduler = ARMS[arm]
    output = bench.scratch(f"efficiency/{arm}-seed{seed}-n{n}")
    done = output / "rows.json"
    if done.is_file():
        return json.loads(done.read_text())
    if (output / "ray").exists():          # an arm interrupted part-way: run it again
        import shutil
        shutil.rmtree(output / "ray")
    study = make_study(bench, method, space, output, n, seed,
                   overrides + [f"search.sampler={sampler}", f"search.scheduler={scheduler}",
                                "search.max_concurrent_trials=1"], EFFICIENCY_FLAGS)
    # the figure reads the ID-val objective only: no end-of-trial OOD/test reporting pass
    setup = replace(study.setup, run=replace(study.setup.run, report_eval=False))
    params = param_space(study.space, study.setup)
    s = study.space.search
    grid = make_tuner(setup, params, study_name=study.name, sampler=sampler, seed=seed,
                      scheduler=scheduler, grace_period=s.grace_period,
                      reduction_factor=s.reduction_factor, num_samples=n,
                      max_concurrent_trials=1, callbacks=[], storage_path=output / "ray",
                      n_startup_trials=s.n_startup_trials, multivariate=s.multivariate).fit()
    if grid.num_terminated + grid.num_errors < n:    # Ctrl-C: Tune stops and returns early
        raise RuntimeError(f"figure 4, arm {arm} seed {seed}: only {grid.num_terminated} of "
                           f"{n} trials ended (interrupted?); run it again to redo this arm")
    # trials run one at a time: order them by when they started (Tune's trial ids are random)
    trials = sorted(trial_rows(output / "ray" / study.name).values(),
                    key=lambda rows: rows[0]["timestamp"] - rows[0]["time_total_s"])
    rows = [r for trial in trials for r in trial]
    done.write_text(json.dumps(rows, default=str))
    return rows


def best_vs_compute(rows: list[dict[str, Any]]) -> list[tuple[float, float, float]]:
    """(cumulative epochs trained, cumulative compute s, best ID-val objective so far) after
    every reported row. A trial's end-of-trial row trains no epoch: its objective is α = 1's
    ID val, the last epoch's weights again (``wise.grid=[1.0]``)."""
    out, epochs, spent, best = [], 0, 0.0, -math.inf
    for r in rows:
        epochs += "time/epoch_train_s" in r
        spent += row_compute(r)
        if r.get(OBJECTIVE) is not None and math.isfinite(r[OBJECTIVE]):
            best = max(best, r[OBJECTIVE])
        out.append((float(epochs), spent, best))
    return out


def best_at(curve: list[tuple[float, float, float]], budget: float, unit: int = 0) -> float:
    """The best objective reached within ``budget`` compute (``unit``: 0 epochs, 1 seconds;
    -inf if none)."""
    return max((p[2] for p in curve if p[unit] <= budget + 1e-9), default=-math.inf)


def reach(curve: list[tuple[float, float, float]], target: float, unit: int = 0) -> float:
    """Compute spent (``unit``: 0 epochs, 1 seconds) when the best first reaches ``target``."""
    return next((p[unit] for p in curve if p[2] >= target - 1e-9), math.inf)


def _fmt_reach(spent: float, total: float, digits: int) -> str:
    return "not reached" if math.isinf(spent) else f"{spent:.{digits}f} ({spent / total:.2f})"


def efficiency(bench: Bench) -> Figure:
    """Figure 4: compute TPE + ASHA needs to reach random search's final best, and each arm's
    best at equal compute; compute counted in trial epochs (judged) and in seconds."""
    method, space, n, overrides, seeds = EFFICIENCY[bench.quick]
    fig = Figure(4, "Search efficiency: random + FIFO, TPE + FIFO and TPE + ASHA",
                 ["seed", "arm", "trials run to the end", "epochs trained", "compute s",
                  "final best", "best at equal compute (epochs)",
                  "epochs to reach random's final best (fraction)",
                  "seconds to reach it (fraction)"])
    tally = Tally()
    for seed in seeds:
        # the arm that runs first pays the cold caches (page cache, allocator): rotate the order
        arms = list(ARMS)[seed % len(ARMS):] + list(ARMS)[:seed % len(ARMS)]
        rows = {arm: _search_rows(bench, method, space, n, overrides, seed, arm) for arm in arms}
        fig.rows += _seed_rows(seed, n, rows)
        tally.add({arm: best_vs_compute(rows[arm]) for arm in ARMS})
    _targets(fig, tally, seeds, bench.quick)
    _notes(fig, tally, bench, method, space, n, overrides)
    return fig


def _seed_rows(seed: int, n: int, rows: dict[str, list[dict[str, Any]]]) -> list[list[str]]:
    """One seed's table rows, an arm each."""
    curves = {arm: best_vs_compute(rows[arm]) for arm in ARMS}
    rnd = curves["random+fifo"]
    target = rnd[-1][2]
    budget = min(c[-1][0] for c in curves.values())     # the seed's smallest arm, in epochs
    out = []
    for arm, curve in curves.items():
        finished = sum(1 for r in rows[arm] if r.get(FINAL) == 1.0)
        out.append([str(seed), arm, f"{finished}/{n}", f"{curve[-1][0]:.0f}",
                    f"{curve[-1][1]:.0f}", f"{curve[-1][2]:.2f}",
                    f"{best_at(curve, budget):.2f} (at {budget:.0f})",
                    _fmt_reach(reach(curve, target, 0), rnd[-1][0], 0),
                    _fmt_reach(reach(curve, target, 1), rnd[-1][1], 0)])
    return out


@dataclass
class Tally:
    """Per seed, what the targets and notes read (``unit``: 0 epochs, 1 seconds)."""

    fractions: dict[int, list[float]] = field(default_factory=lambda: {0: [], 1: []})
    gaps: dict[int, list[float]] = field(default_factory=lambda: {0: [], 1: []})
    near: dict[str, list[float]] = field(
        default_factory=lambda: {"tpe+fifo": [], "tpe+asha": []})
    ahead: list[float] = field(default_factory=list)

    def add(self, curves: dict[str, list[tuple[float, float, float]]]) -> None:
        rnd = curves["random+fifo"]
        target = rnd[-1][2]
        for arm in ("tpe+fifo", "tpe+asha"):
            self.near[arm].append(reach(curves[arm], target - NEAR, 0) / rnd[-1][0])
        for unit in (0, 1):
            self.fractions[unit].append(reach(curves["tpe+asha"], target, unit) / rnd[-1][unit])
            # the sampler's own effect: the two FIFO arms at the smaller of their two totals
            pair = min(rnd[-1][unit], curves["tpe+fifo"][-1][unit])
            self.gaps[unit].append(best_at(curves["tpe+fifo"], pair, unit)
                                   - best_at(rnd, pair, unit))
        # at how many of the epoch budgets both FIFO arms spent is TPE's best at least random's
        common = int(min(rnd[-1][0], curves["tpe+fifo"][-1][0]))
        self.ahead.append(sum(best_at(curves["tpe+fifo"], e) >= best_at(rnd, e) - 1e-9
                              for e in range(1, common + 1)) / common)


def _listed(values: list[float], fmt: str) -> str:
    return ", ".join("not reached" if math.isinf(v) else format(v, fmt) for v in values)


def _targets(fig: Figure, tally: Tally, seeds: list[int], quick: bool) -> None:
    median = {u: statistics.median(f) for u, f in tally.fractions.items()}
    gap = {u: statistics.median(g) for u, g in tally.gaps.items()}
    fig.targets.append(Target(
        "TPE + ASHA reaches random + FIFO's final best with ≤ 30 % of its compute (median over "
        "seeds; compute in trial epochs)",
        f"median fraction {_listed([median[0]], '.2f')} of random's epochs over seeds {seeds} "
        f"({_listed(tally.fractions[0], '.2f')}); in seconds {_listed([median[1]], '.2f')} "
        f"({_listed(tally.fractions[1], '.2f')})", None if quick else median[0] <= 0.30))
    fig.targets.append(Target(
        "TPE + FIFO is not worse than random + FIFO at equal compute (median over seeds of the "
        "difference in best ID-val objective, at the smaller of the two arms' epoch totals)",
        f"median difference {gap[0]:+.2f} points ({_listed(tally.gaps[0], '+.2f')}); at equal "
        f"seconds {gap[1]:+.2f} ({_listed(tally.gaps[1], '+.2f')})",
        None if quick else gap[0] >= 0))


def _notes(fig: Figure, tally: Tally, bench: Bench, method: str, space: str, n: int,
           overrides: list[str]) -> None:
    fig.notes.append(
        f"`{method}` with {space} on {bench.data().parent.name} ({bench.model}): {n} trials per "
        f"arm and seed, one at a time on one core ({' '.join(EFFICIENCY_FLAGS)}: one torch "
        f"thread), --set {' '.join(overrides)}"
        + (" (steps capped per epoch, α = 1 only)" if "wise.grid=[1.0]" in overrides else "")
        + "; TPE's start-up trials: the default for "
        f"{n} trials ({max(2, round(n / 4))}), univariate. With the same seed TPE's start-up "
        "trials are the random sampler's first draws. The arms' order rotates with the seed.")
    fig.notes.append(
        "Compute is counted in trial epochs trained (each epoch: the same capped number of "
        "training steps and one ID-val pass, the objective the sampler and ASHA read); the "
        "targets are judged on it, because other jobs on the shared cores inflate seconds. "
        "Seconds = Σ the trials' train + eval seconds (time/*), for comparison. Best = highest "
        "ID-val objective reported so far. Equal compute in the table = the seed's smallest "
        "arm total in epochs. A trial's end ("
        + ("α = 1's ID val: the last epoch's weights again" if "wise.grid=[1.0]" in overrides
           else "the WiSE α selection on ID val: its seconds count")
        + ") counts no epoch; the end-of-trial reporting evaluation (OOD and test sets) is off "
        "(`RunSpec.report_eval`): no arm reads it.")
    fig.notes.append(
        f"Not a target, for reading the first one: epochs to come within {NEAR:g} points of "
        "random + FIFO's final best, as a fraction of random's epochs (median; per seed): "
        + "; ".join(f"{arm} {statistics.median(f):.2f} ({_listed(f, '.2f')})"
                    for arm, f in tally.near.items()) + ".")
    fig.notes.append(
        "Not a target, for reading the second one: share of the epoch budgets 1, 2, … (up to both "
        "FIFO arms' common total) at which TPE + FIFO's best so far is at least random + "
        f"FIFO's: median {statistics.median(tally.ahead):.2f} ({_listed(tally.ahead, '.2f')}).")
