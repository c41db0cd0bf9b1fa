"""Benchmark figures 2 (search overhead), 4 (search efficiency) and 6 (quick-start wall time).

Figure 2 runs a whole study through ``search.study.Study`` (what ``python -m search.run`` does) and
splits its wall time into trial compute (the trials' own ``time/*`` metrics), time inside the
trainables that is not compute (worker-group start, reports, checkpoints: Tune's ``time_total_s``
minus compute), time in Tune outside the trainables, and the study's fixed cost (Ray start, driver
set-up and zero-shot evaluation, MLflow, soups). Figure 4 runs the project's Tune wiring
(``search.tuner.make_tuner`` over ``run_trial``) with TPE + ASHA and with random + FIFO on the same
seeds and budgets, and reads every reported row of the result grids. Figure 6 times the README
command in a subprocess.
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
from pathlib import Path
from typing import Any, Iterator

from .bench import REPO, Bench, Figure, Target, _shutdown_ray

COMPUTE_KEYS = ("time/epoch_train_s", "time/epoch_eval_s", "time/wise_select_s",
                "time/report_eval_s")
#: per mode: (method, space, num_samples, --set overrides)
OVERHEAD = {True: ("ft", "spaces/ft.yaml", 3, ["epochs=2", "batch_size=16", "warmup_steps=0"]),
            False: ("car-ft", "spaces/car.yaml", 3, [])}
EFFICIENCY = {True: ("ft", "spaces/ft.yaml", 4, ["epochs=3", "batch_size=16", "warmup_steps=0"],
                     [0, 1]),
              # α = 1 only: figure 3 measures the α search; here it would only add the same
              # end-of-trial evaluation (11 ID-val + 11 OOD passes) to every finished trial
              False: ("ft", "spaces/ft.yaml", 6, ["max_steps_per_epoch=10", "wise.grid=[1.0]"],
                      [0, 1, 2])}
ARMS = {"tpe+asha": ("tpe", "asha"), "random+fifo": ("random", "fifo")}


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
           overrides: list[str]):
    from .cli import build_parser, parse_set
    from .study import Study
    argv = ["--method", method, "--space", str(REPO / space), "--data", str(bench.data()),
            "--model", bench.model, "--output", str(output), "--num-samples", str(num_samples),
            "--seed", str(seed), "--quiet"]
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


def overhead(bench: Bench) -> Figure:
    """Figure 2: per-trial framework overhead and whole-search wall time over trial compute."""
    import search.ray_setup as ray_setup
    from .tracking import MlflowTuneCallback, StudyRecorder
    method, space, n, overrides = OVERHEAD[bench.quick]
    output = bench.scratch("overhead")
    t: dict[str, float] = {}
    start = time.perf_counter()
    with ExitStack() as stack:
        stack.enter_context(timing(ray_setup, "init_ray", t, "ray start"))
        for name in ("start", "finish"):
            stack.enter_context(timing(StudyRecorder, name, t, "MLflow (driver)"))
        for name in ("on_trial_start", "on_trial_result", "on_trial_complete"):
            stack.enter_context(timing(MlflowTuneCallback, name, t, "MLflow (Tune callback)"))
        study = _study(bench, method, space, output, n, 0, overrides)
        t["validation + driver set-up"] = time.perf_counter() - start - t.get("ray start", 0.0)
        stack.enter_context(timing(study.parts.evaluator, "evaluate", t, "zero-shot evaluation"))
        stack.enter_context(timing(study, "_tune", t, "Tune"))
        stack.enter_context(timing(study, "_soups", t, "soups"))
        stack.enter_context(timing(study, "_importances", t, "importances"))
        study.run()
    wall = time.perf_counter() - start
    trials = trial_rows(output / "ray" / study.name)
    compute = {k: sum(row_compute(r) for r in rows) for k, rows in trials.items()}
    in_trainable = {k: rows[-1]["time_total_s"] - compute[k] for k, rows in trials.items()}
    first = {k: rows[0]["time_this_iter_s"] - row_compute(rows[0]) for k, rows in trials.items()}
    later = [r["time_this_iter_s"] - row_compute(r) for rows in trials.values() for r in rows[1:]]
    total_compute = sum(compute.values())
    outside = t["Tune"] - sum(rows[-1]["time_total_s"] for rows in trials.values())
    per_trial = (t["Tune"] - total_compute) / len(trials)
    fixed = wall - t["Tune"]
    ratio = wall / total_compute
    projected = (len(trials) * (60 + per_trial) + fixed) / (len(trials) * 60)
    fig = Figure(2, "Search overhead: per-trial framework time and whole-search wall / compute",
                 ["trial", "epochs reported", "compute s", "in trainable, not compute s",
                  "first report: start-up s", "wall in Tune s"])
    for k, rows in trials.items():
        fig.rows.append([k, str(sum(1 for r in rows if "time/epoch_train_s" in r)),
                         f"{compute[k]:.1f}", f"{in_trainable[k]:.1f}", f"{first[k]:.1f}",
                         f"{rows[-1]['time_total_s']:.1f}"])
    fig.rows.append(["all", "", f"{total_compute:.1f}", f"{sum(in_trainable.values()):.1f}",
                     "", f"Tune {t['Tune']:.1f}, whole search {wall:.1f}"])
    big = statistics.fmean(compute.values()) >= 60
    inside = statistics.fmean(in_trainable.values())
    fig.targets += [
        Target("≤ 5 s framework overhead per trial (Tune wall − compute, per trial)",
               f"{per_trial:.1f} s (inside the trainable {inside:.1f} s, in Tune between "
               f"trainables {outside / len(trials):.1f} s)", per_trial <= 5),
        Target("whole search wall / Σ trial compute ≤ 1.15 at ≥ 60 s compute per trial",
               f"{ratio:.2f} measured at {statistics.fmean(compute.values()):.0f} s per trial"
               + ("" if big else f"; {projected:.2f} projected at 60 s per trial from the measured"
                  f" overheads ({per_trial:.1f} s per trial + {fixed:.0f} s fixed, {len(trials)} "
                  "trials)"), (ratio if big else projected) <= 1.15)]
    parts = {k: v for k, v in t.items() if k != "Tune"}
    fig.notes.append("Study phases outside the trials (s): " + ", ".join(
        f"{k} {v:.1f}" for k, v in parts.items()) + f"; fixed total {fixed:.1f}.")
    if later:
        fig.notes.append(f"Each later report (epoch or final) adds {statistics.fmean(later):.2f} s "
                         f"(mean over {len(later)}, max {max(later):.2f}) beyond its compute: "
                         "checkpoint write + copy to storage, the Train report round trip.")
    fig.notes.append(f"`{method}` with {space}, {n} trials, --set {' '.join(overrides) or '–'}, "
                     f"{bench.model}, data {bench.data().parent.name}.")
    return fig


def _search_rows(bench: Bench, method: str, space: str, n: int, overrides: list[str],
                 seed: int, arm: str) -> list[dict[str, Any]]:
    """Run one search arm; every reported row in the order the (sequential) trials ran."""
    from .space import tune_param_space
    from .tuner import make_tuner
    sampler, scheduler = ARMS[arm]
    output = bench.scratch(f"efficiency/{arm}-seed{seed}")
    study = _study(bench, method, space, output, n, seed,
                   overrides + [f"search.sampler={sampler}", f"search.scheduler={scheduler}",
                                "search.max_concurrent_trials=1"])
    params = {k: v for k, v in tune_param_space(study.space).items()
              if k not in study.setup.base_params}
    s = study.space.search
    make_tuner(study.setup, params, study_name=study.name, sampler=sampler, seed=seed,
               scheduler=scheduler, grace_period=s.grace_period,
               reduction_factor=s.reduction_factor, num_samples=n, max_concurrent_trials=1,
               callbacks=[], storage_path=output / "ray").fit()
    return [r for rows in trial_rows(output / "ray" / study.name).values() for r in rows]


def best_vs_compute(rows: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(cumulative compute s, best ID-val objective so far) after every reported row."""
    out, spent, best = [], 0.0, -math.inf
    for r in rows:
        spent += row_compute(r)
        if r.get("objective") is not None and math.isfinite(r["objective"]):
            best = max(best, r["objective"])
        out.append((spent, best))
    return out


def efficiency(bench: Bench) -> Figure:
    """Figure 4: compute TPE + ASHA needs to reach random search's final best (same budget)."""
    method, space, n, overrides, seeds = EFFICIENCY[bench.quick]
    fig = Figure(4, "Search efficiency: Optuna TPE + ASHA vs random search + FIFO",
                 ["seed", "random best", "random compute s", "TPE+ASHA best",
                  "TPE+ASHA compute s", "TPE+ASHA compute to reach random's best",
                  "fraction of random's compute"])
    fractions = []
    for seed in seeds:
        curves = {arm: best_vs_compute(_search_rows(bench, method, space, n, overrides, seed, arm))
                  for arm in ARMS}
        rnd, tpe = curves["random+fifo"], curves["tpe+asha"]
        target = rnd[-1][1]
        reach = next((c for c, b in tpe if b >= target - 1e-9), math.inf)
        fractions.append(reach / rnd[-1][0])
        fig.rows.append([str(seed), f"{target:.2f}", f"{rnd[-1][0]:.0f}", f"{tpe[-1][1]:.2f}",
                         f"{tpe[-1][0]:.0f}", "not reached" if math.isinf(reach) else
                         f"{reach:.0f}", f"{fractions[-1]:.2f}"])
    median = statistics.median(fractions)
    fig.targets.append(Target("TPE + ASHA reaches random's final best with ≤ 50 % of its compute",
                              f"median fraction {median:.2f} over seeds {seeds}",
                              None if bench.quick else median <= 0.5))
    fig.notes.append(f"`{method}` with {space}: {n} trials per arm and seed, one at a time, --set "
                     f"{' '.join(overrides)}; compute = Σ trial train + eval seconds (time/*), "
                     "best = highest ID-val objective reported so far (per epoch, or WiSE-selected "
                     "at the end). Optuna's TPE samples at random for its first 10 trials, so with "
                     f"{n} trials the arms differ mainly by ASHA's early stopping.")
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
    _shutdown_ray()                   # the command starts its own Ray
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

