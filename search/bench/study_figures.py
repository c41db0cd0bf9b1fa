"""Benchmark figures 2 (search overhead), 4 (search efficiency) and 6 (quick-start wall time).

Figure 2 runs a whole study through ``search.study.Study`` (what ``python -m search.run`` does),
once with one-worker trials trained in the Tune trial actor (the default) and once in a Train
worker group (``--worker-group``), and splits each wall time into trial compute (the trials' own
``time/*`` training and evaluation metrics), time inside the trainables that is not compute
(process start-up, building model and data, reports, checkpoints: Tune's ``time_total_s`` minus
compute), time in Tune outside the trainables, and the study's fixed cost (Ray start, driver
set-up and zero-shot evaluation, MLflow, soups). Figure 4 runs the project's Tune wiring
(``search.tune.tuner.make_tuner`` over ``run_trial``) with random + FIFO, TPE + FIFO (the
sampler's own effect) and TPE + ASHA on the same seeds and budgets, at budgets where TPE models
(16 trials: 4 random start-up trials, then 12 model-based), and reads every reported row of the
result grids. Figure 6 times the README command in a subprocess.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

from search.bench.core import REPO, Bench, Figure, Target

COMPUTE_KEYS = ("time/epoch_train_s", "time/epoch_eval_s", "time/wise_select_s",
                "time/report_eval_s")
#: per mode: (method, space, num_samples, --set overrides)
OVERHEAD = {True: ("ft", "spaces/ft.yaml", 3, ["epochs=2", "batch_size=16", "warmup_steps=0"]),
            # 20 steps per epoch: ≈ 60-200 s of compute per trial (most of it the WiSE and OOD
            # evaluation), so the two modes run in ≈ 15 min
            False: ("car-ft", "spaces/car.yaml", 3, ["max_steps_per_epoch=20"])}
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


def row_compute(row: dict[str, Any]) -> float:
    """Training + evaluation seconds a trial reported in one result row."""
    return sum(float(row.get(k) or 0.0) for k in COMPUTE_KEYS
               if not (isinstance(row.get(k), float) and math.isnan(row[k])))


@contextmanager
def timing(obj: Any, name: str, sink: dict[str, float], key: str) -> Iterator[None]:
    """Add the seconds spent in ``obj.name`` (a function, method or class attribute) to
    ``sink[key]`` while the context is open; the attribute is restored afterwards."""
    original = getattr(obj, name)     # bound for an instance; the function for a class/module
    owned, saved = name in vars(obj), vars(obj).get(name)

    def timed(*args: Any, **kwargs: Any) -> Any:   # on a class, Python binds it like a method
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            sink[key] = sink.get(key, 0.0) + time.perf_counter() - start

    setattr(obj, name, timed)
    try:
        yield
    finally:
        if owned:
            setattr(obj, name, saved)
        else:
            delattr(obj, name)


def _study(bench: Bench, method: str, space: str, output: Path, num_samples: int, seed: int,
           overrides: list[str], flags: list[str] = ()):
    from search.cli import build_parser, parse_set
    from search.study import Study
    argv = ["--method", method, "--space", str(REPO / space), "--data", str(bench.data()),
            "--model", bench.model, "--output", str(output), "--num-samples", str(num_samples),
            "--seed", str(seed), "--quiet", *flags]
    if bench.pretrained:
        argv += ["--pretrained", bench.pretrained]
    for item in overrides:
        argv += ["--set", item]
    args = build_parser().parse_args(argv)
    return Study.from_args(args, parse_set(args.overrides), default_data=bench.data)


def trial_rows(study_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Every reported row of every trial of a finished Tune experiment, by trial id."""
    out: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(study_dir.glob("*/result.json")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            out[rows[0]["trial_id"]] = rows
    return dict(sorted(out.items()))


#: figure 2's two ways to run a one-worker trial: the default, and a Train worker group
MODES = {"trial actor": [], "worker group": ["--worker-group"]}


@dataclass
class OverheadRun:
    """One timed study: its phases (s), wall time and every trial's reported rows."""

    phases: dict[str, float]
    wall: float
    trials: dict[str, list[dict[str, Any]]]

    @property
    def compute(self) -> dict[str, float]:
        return {k: sum(row_compute(r) for r in rows) for k, rows in self.trials.items()}

    @property
    def per_trial(self) -> float:
        """Framework seconds per trial: Tune's wall time minus the trials' compute, per trial."""
        return (self.phases["Tune"] - sum(self.compute.values())) / len(self.trials)

    @property
    def fixed(self) -> float:
        """Seconds of the study outside Tune (Ray start, driver set-up, zero-shot, soups, …)."""
        return self.wall - self.phases["Tune"]


def _timed_study(bench: Bench, output: Path, flags: list[str]) -> OverheadRun:
    """Run figure 2's study once (``flags``: extra CLI flags) and time its phases: the study's
    own (:attr:`search.study.Study.phases`), and the Tune callback's MLflow logging (its public
    Ray ``Callback`` hooks, timed from outside)."""
    import search.tune.cluster as ray_setup
    from search.tracking.callback import MlflowTuneCallback
    method, space, n, overrides = OVERHEAD[bench.quick]
    ray_setup.stop_ray()           # each study starts the Ray its mode needs
    t: dict[str, float] = {}
    start = time.perf_counter()
    with ExitStack() as stack:
        for name in ("on_trial_start", "on_trial_result", "on_trial_complete"):
            stack.enter_context(timing(MlflowTuneCallback, name, t, "MLflow (Tune callback)"))
        study = _study(bench, method, space, output, n, 0, overrides, flags)
        study.run()
    wall = time.perf_counter() - start
    return OverheadRun({**study.phases, **t}, wall, trial_rows(output / "ray" / study.name))


def overhead(bench: Bench) -> Figure:
    """Figure 2: per-trial framework overhead and whole-search wall / trial compute, with
    one-worker trials trained in the Tune trial actor (default) and in a Train worker group."""
    method, space, n, overrides = OVERHEAD[bench.quick]
    runs = {mode: _timed_study(bench, bench.scratch(f"overhead-{mode.replace(' ', '-')}"), flags)
            for mode, flags in MODES.items()}
    fig = Figure(2, "Search overhead: per-trial framework time and whole-search wall / compute",
                 ["mode", "trial", "epochs reported", "compute s", "set-up (model + data) s",
                  "in trainable, not compute s", "first report beyond compute s",
                  "wall in Tune s"])
    for mode, run in runs.items():
        compute = run.compute
        for k, rows in run.trials.items():
            inside = rows[-1]["time_total_s"] - compute[k]
            first = rows[0]["time_this_iter_s"] - row_compute(rows[0])
            setup = next((r["time/setup_s"] for r in rows if "time/setup_s" in r), math.nan)
            fig.rows.append([mode, k, str(sum(1 for r in rows if "time/epoch_train_s" in r)),
                             f"{compute[k]:.1f}", f"{setup:.1f}", f"{inside:.1f}",
                             f"{first:.1f}", f"{rows[-1]['time_total_s']:.1f}"])
        fig.rows.append([mode, "all", "", f"{sum(compute.values()):.1f}", "", "", "",
                         f"Tune {run.phases['Tune']:.1f}, whole search {run.wall:.1f}, "
                         f"per trial {run.per_trial:.1f}"])
    run = runs["trial actor"]
    trials, mean_compute = len(run.trials), statistics.fmean(run.compute.values())
    ratio = run.wall / sum(run.compute.values())
    projected = (trials * (60 + run.per_trial) + run.fixed) / (trials * 60)
    big = mean_compute >= 60
    fig.targets += [
        Target("≤ 5 s framework overhead per trial (Tune wall − compute, per trial)",
               f"{run.per_trial:.1f} s (worker group: {runs['worker group'].per_trial:.1f} s)",
               run.per_trial <= 5),
        Target("whole search wall / Σ trial compute ≤ 1.15 at ≥ 60 s compute per trial",
               f"{ratio:.2f} measured at {mean_compute:.0f} s per trial"
               + ("" if big else f"; {projected:.2f} projected at 60 s per trial from the measured"
                  f" overheads ({run.per_trial:.1f} s per trial + {run.fixed:.0f} s fixed, "
                  f"{trials} trials)"), (ratio if big else projected) <= 1.15)]
    for mode, r in runs.items():
        parts = {k: v for k, v in r.phases.items() if k != "Tune"}
        fig.notes.append(f"{mode}: study phases outside the trials (s): " + ", ".join(
            f"{k} {v:.1f}" for k, v in parts.items()) + f"; fixed total {r.fixed:.1f}.")
        later = [row["time_this_iter_s"] - row_compute(row) for rows in r.trials.values()
                 for row in rows[1:]]
        if later:
            fig.notes.append(f"{mode}: each later report (epoch or final) adds "
                             f"{statistics.fmean(later):.2f} s (mean over {len(later)}, max "
                             f"{max(later):.2f}) beyond its compute: checkpoint write + copy to "
                             "storage, the report round trip.")
    fig.notes.append(f"`{method}` with {space}, {n} trials per mode, --set "
                     f"{' '.join(overrides) or '–'}, {bench.model}, data "
                     f"{bench.data().parent.name}. Set-up (building the model, the zero-shot "
                     "head and the data index) counts as overhead, not compute.")
    return fig


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
    study = _study(bench, method, space, output, n, seed,
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
        if r.get("objective") is not None and math.isfinite(r["objective"]):
            best = max(best, r["objective"])
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
    fractions: dict[int, list[float]] = {0: [], 1: []}
    gaps: dict[int, list[float]] = {0: [], 1: []}
    near: dict[str, list[float]] = {"tpe+fifo": [], "tpe+asha": []}
    ahead: list[float] = []
    for seed in seeds:
        # the arm that runs first pays the cold caches (page cache, allocator): rotate the order
        arms = list(ARMS)[seed % len(ARMS):] + list(ARMS)[:seed % len(ARMS)]
        rows = {arm: _search_rows(bench, method, space, n, overrides, seed, arm) for arm in arms}
        curves = {arm: best_vs_compute(rows[arm]) for arm in ARMS}
        rnd = curves["random+fifo"]
        target = rnd[-1][2]
        budget = min(c[-1][0] for c in curves.values())     # the seed's smallest arm, in epochs
        for arm, curve in curves.items():
            finished = sum(1 for r in rows[arm] if r.get("final") == 1.0)
            fig.rows.append([str(seed), arm, f"{finished}/{n}", f"{curve[-1][0]:.0f}",
                             f"{curve[-1][1]:.0f}", f"{curve[-1][2]:.2f}",
                             f"{best_at(curve, budget):.2f} (at {budget:.0f})",
                             _fmt_reach(reach(curve, target, 0), rnd[-1][0], 0),
                             _fmt_reach(reach(curve, target, 1), rnd[-1][1], 0)])
        for arm in ("tpe+fifo", "tpe+asha"):
            near[arm].append(reach(curves[arm], target - NEAR, 0) / rnd[-1][0])
        for unit in (0, 1):
            fractions[unit].append(reach(curves["tpe+asha"], target, unit) / rnd[-1][unit])
            # the sampler's own effect: the two FIFO arms at the smaller of their two totals
            pair = min(rnd[-1][unit], curves["tpe+fifo"][-1][unit])
            gaps[unit].append(best_at(curves["tpe+fifo"], pair, unit) - best_at(rnd, pair, unit))
        # at how many of the epoch budgets both FIFO arms spent is TPE's best at least random's
        common = int(min(rnd[-1][0], curves["tpe+fifo"][-1][0]))
        ahead.append(sum(best_at(curves["tpe+fifo"], e) >= best_at(rnd, e) - 1e-9
                         for e in range(1, common + 1)) / common)
    median = {u: statistics.median(f) for u, f in fractions.items()}
    gap = {u: statistics.median(g) for u, g in gaps.items()}

    def listed(values: list[float], fmt: str) -> str:
        return ", ".join("not reached" if math.isinf(v) else format(v, fmt) for v in values)

    fig.targets.append(Target(
        "TPE + ASHA reaches random + FIFO's final best with ≤ 30 % of its compute (median over "
        "seeds; compute in trial epochs)",
        f"median fraction {listed([median[0]], '.2f')} of random's epochs over seeds {seeds} "
        f"({listed(fractions[0], '.2f')}); in seconds {listed([median[1]], '.2f')} "
        f"({listed(fractions[1], '.2f')})", None if bench.quick else median[0] <= 0.30))
    fig.targets.append(Target(
        "TPE + FIFO is not worse than random + FIFO at equal compute (median over seeds of the "
        "difference in best ID-val objective, at the smaller of the two arms' epoch totals)",
        f"median difference {gap[0]:+.2f} points ({listed(gaps[0], '+.2f')}); at equal "
        f"seconds {gap[1]:+.2f} ({listed(gaps[1], '+.2f')})",
        None if bench.quick else gap[0] >= 0))
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
        + "; ".join(f"{arm} {statistics.median(f):.2f} ({listed(f, '.2f')})"
                    for arm, f in near.items()) + ".")
    fig.notes.append(
        "Not a target, for reading the second one: share of the epoch budgets 1, 2, … (up to both "
        "FIFO arms' common total) at which TPE + FIFO's best so far is at least random + "
        f"FIFO's: median {statistics.median(ahead):.2f} ({listed(ahead, '.2f')}).")
    return fig


def _time_command(cmd: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """(seconds until the table's 'Summary:' line, exit status, last lines of output)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen, lines = math.nan, []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("Summary:") and math.isnan(seen):
            seen = time.perf_counter() - start
    proc.wait()
    return seen, proc.returncode, "".join(lines[-30:])


def quickstart(bench: Bench) -> Figure:
    """Figure 6: the README quick start, with a fresh cache (world generated) and a warm one."""
    fig = Figure(6, "README quick start: `python -m search.run --method car-ft --space "
                    "spaces/car.yaml`", ["cache", "seconds to the printed table", "exit"])
    if bench.quick:
        fig.notes.append("Skipped in --quick.")
        return fig
    from search.tune.cluster import stop_ray
    stop_ray()                        # the command starts its own Ray
    bench.data()                      # the warm case: the world already in the cache
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cases: list[tuple[str, dict[str, str]]] = [
        ("first run (fresh cache: generates the world)",
         {**env, "ROBUST_SEARCH_CACHE": str(bench.scratch("cold-cache"))}),
        ("warm (world cached)", env)]
    for name, case_env in cases:
        cmd = [sys.executable, "-m", "search.run", "--method", "car-ft", "--space",
               "spaces/car.yaml", "--output", str(bench.work / f"quickstart-{len(fig.rows)}")]
        seconds, rc, tail = _time_command(cmd, case_env)
        if rc != 0:
            raise RuntimeError(f"quick start failed ({name}):\n{tail}")
        fig.rows.append([name, f"{seconds:.0f}", str(rc)])
    fig.notes.append("Timed from process start to the 'Summary:' line printed after the table.")
    return fig

