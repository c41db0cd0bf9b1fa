"""What Tune prints on the driver's console: a status table every 30 s and at the end, nothing per
trial.

Ray 2.60's default ("new") output engine ignores a ``progress_reporter`` (it warns "AIR_VERBOSITY
is set, ignoring passed-in ProgressReporter") and chooses the table's metric columns itself (the
first four a trial reports); at its default verbosity it also prints every finished trial's whole
result (~40 lines here, more with more OOD sets), a config table per started trial and a
TensorBoard hint into Ray's temporary session folder. Its legacy engine (``RAY_AIR_NEW_OUTPUT=0``)
takes a ``CLIReporter`` with the columns named, and at ``verbose=1`` prints only that status
table: no per-trial results, no TensorBoard hint (README, "MLflow layout": 170 console lines of
a 2-trial study before, 57 after).
"""
from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable

from ray.tune import CLIReporter

from search.result import ALPHA, OBJECTIVE
from trainables import metrics as M

#: Ray's switch between its two output engines; "0": the legacy one, which honours a reporter
NEW_OUTPUT_ENV = "RAY_AIR_NEW_OUTPUT"
#: seconds between two status tables (Ray's default, 5 s, would print one every epoch here)
REPORT_EVERY_S = 30
VERBOSE = 1     # legacy Verbosity.V1_EXPERIMENT: the status table only

#: result key -> column header. ``objective`` is what Tune, Optuna and ASHA maximise: the last
#: epoch's ID-val accuracy while a trial trains, then its ID-val accuracy at the selected α*.
METRIC_COLUMNS = {M.EPOCH: "epoch", M.TRAIN_LOSS: "train loss", OBJECTIVE: "objective",
                  M.at(M.FINETUNED, M.ID_VAL): "ID val α=1", ALPHA: "α*"}


class StatusTable(CLIReporter):
    """Tune's ``CLIReporter``, printing its table only when it changed (a trial started, reported
    an epoch or ended) and otherwise one line saying the study is alive; without its "Result
    logdir" line, which is the driver's staging folder in Ray's temporary session directory, not
    where the study keeps its results (``--output``; the final summary prints those paths)."""

    def report(self, trials, done: bool, *sys_info: str) -> None:
        state = [(t.trial_id, t.status, (t.last_result or {}).get("training_iteration"))
                 for t in trials]
        if not done and state == getattr(self, "_shown", None):
            counts = Counter(t.status for t in trials)
            elapsed = int(time.time() - (self._start_time or time.time()))
            self._print(f"Tune: {len(trials)}/{self._total_samples} trials ("
                        + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
                        + f"), running for {elapsed // 60}:{elapsed % 60:02d} min; the table "
                        "above is unchanged")
            return
        self._shown = state
        text = self._progress_str(trials, done, *sys_info)   # what CLIReporter.report prints
        self._print("\n".join(line for line in text.split("\n")
                               if not line.startswith("Result logdir: ")))


def use_legacy_output() -> None:
    """Select Ray's legacy output engine for this driver (an explicit setting is kept)."""
    os.environ.setdefault(NEW_OUTPUT_ENV, "0")


def progress_reporter(param_names: Iterable[str]) -> StatusTable:
    """The status table: trial, status, the searched parameters, then :data:`METRIC_COLUMNS`
    (Tune hides a column no trial has reported yet). Metric and mode come from the TuneConfig."""
    use_legacy_output()
    return StatusTable(metric_columns=dict(METRIC_COLUMNS),
                       parameter_columns=sorted(param_names) or None,
                       max_report_frequency=REPORT_EVERY_S, print_intermediate_tables=True)
