"""Benchmark figures 2 (search overhead) and 6 (quick-start wall time); figure 4 (search
efficiency) is search/bench/efficiency.py and shares this module's study set-up.

Figure 2 runs a whole study through ``search.study.Study`` (what ``python -m search.run`` does),
once with one-worker trials trained in the Tune trial actor (the default) and once in a Train
worker group (``--worker-group``), and splits each wall time into trial compute (the trials' own
``time/*`` training and evaluation metrics), time inside the trainables that is not compute
(process start-up, building model and data, reports, checkpoints: Tune's ``time_total_s`` minus
compute), time in Tune outside the trainables, and the study's fixed cost (Ray start, driver
set-up and zero-shot evaluation, MLflow, soups). Figure 6 times the README command in a
subprocess.
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
from dataclasses import dataclass
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


def make_study(bench: Bench, method: str, space: str, output: Path, num_samples: int, seed: int,
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
        study = make_study(bench, method, space, output, n, 0, overrides, flags)
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

