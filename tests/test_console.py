"""The console (issue 18): progress for WiSE selection and the report evaluation, readable off a
terminal (Ray forwards a trial's output line by line), and Tune's status table with the objective
and ID val instead of a per-trial result dump."""
from __future__ import annotations

import io
import os

from search import progress
from search.bench.tiny_data import write_tiny_spec
from search.result import encode
from search.runspec import RunSpec
from search.tune.console import (
    METRIC_COLUMNS,
    NEW_OUTPUT_ENV,
    StatusTable,
    progress_reporter,
)
from search.tune.trial import prepare, wise_evaluation


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_a_short_stage_prints_nothing():
    out = io.StringIO()
    with progress.bar("WiSE α search", 11, "α", stream=out) as bar:
        bar.update(11)
    assert out.getvalue() == ""


def test_off_a_terminal_a_long_stage_prints_whole_lines():
    out = io.StringIO()
    with progress.bar("trial 1: WiSE α search on ID val", 3, "α", stream=out, delay_s=0,
                      every_s=0) as bar:
        for _ in range(3):
            bar.update()
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[-1].startswith("trial 1: WiSE α search on ID val: 3/3 α (100%)")
    assert len(lines) == len(set(lines)) >= 2      # one line per state, no repeats


def test_on_a_terminal_it_is_a_live_bar():
    out = _Terminal()
    with progress.bar("greedy soup", 2, "soup", stream=out) as bar:
        bar.update(2)
    assert "\r" in out.getvalue() and "2/2" in out.getvalue()


def test_wise_evaluation_reports_its_progress(tmp_path, monkeypatch, capsys):
    """Both silent stretches of a trial's end report progress (delays lowered to 0 here, as if
    each stage had run longer than progress.LINE_DELAY_S)."""
    monkeypatch.setattr(progress, "LINE_DELAY_S", 0.0)
    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.0)
    spec = write_tiny_spec(tmp_path, per_class=2)
    run = RunSpec(method="ft", model="micro-clip-16", pretrained=None, data=str(spec),
                  wise_grid=(0.0, 0.5, 1.0),
                  base_params={"epochs": 1, "batch_size": 8, "warmup_steps": 0, "seed": 0})
    parts = prepare(run, {})
    result = wise_evaluation(parts, parts.method.final_state_dict(parts.model), run,
                             label="trial 7")
    # the status table's columns of a finished trial are keys its final result holds
    assert {"objective", "ft/id_val/acc", "wise_alpha"} <= set(encode(result)) & set(METRIC_COLUMNS)
    err = capsys.readouterr().err.splitlines()
    assert "trial 7: WiSE α search on ID val: 3/3 α (100%)" in "\n".join(err)
    # the OOD set at each of the 3 curve points, then α = 1 and α*
    assert "trial 7: report sets along the curve, at α=1 and α*: 5/5 pass (100%)" in "\n".join(err)


def _no_engine_choice(monkeypatch) -> None:
    """Unset Ray's engine switch for the test; monkeypatch restores the variable afterwards."""
    monkeypatch.setenv(NEW_OUTPUT_ENV, "unset by the test")
    monkeypatch.delenv(NEW_OUTPUT_ENV)


def test_status_table_names_the_objective_and_id_val(monkeypatch):
    _no_engine_choice(monkeypatch)
    reporter = progress_reporter({"lr": None, "weight_decay": None})
    assert isinstance(reporter, StatusTable)
    # the legacy engine is selected: Ray 2.60's default engine would ignore the reporter
    assert os.environ[NEW_OUTPUT_ENV] == "0"
    assert reporter._metric_columns == METRIC_COLUMNS
    assert {"objective", "ft/id_val/acc"} <= set(METRIC_COLUMNS)
    assert reporter._parameter_columns == ["lr", "weight_decay"]


def test_status_table_drops_the_session_folder_line(capsys, monkeypatch):
    _no_engine_choice(monkeypatch)
    reporter = progress_reporter({"lr": None})
    monkeypatch.setattr(reporter, "_progress_str", lambda trials, done, *info: (
        "== Status ==\nResult logdir: /tmp/ray/session_x/artifacts\nNumber of trials: 1/2\n"))
    reporter.report([], False)
    out = capsys.readouterr().out
    assert "Result logdir" not in out and "Number of trials: 1/2" in out


def test_status_table_prints_again_only_when_it_changed(capsys, monkeypatch):
    from types import SimpleNamespace
    _no_engine_choice(monkeypatch)
    reporter = progress_reporter({"lr": None})
    reporter.setup(start_time=0.0, total_samples=2)
    monkeypatch.setattr(reporter, "_progress_str", lambda trials, done, *info: "TABLE\n")
    trial = SimpleNamespace(trial_id="a", status="RUNNING", last_result={"training_iteration": 1})
    reporter.report([trial], False)
    reporter.report([trial], False)                 # nothing changed: one line
    trial.last_result = {"training_iteration": 2}   # an epoch reported: the table again
    reporter.report([trial], False)
    reporter.report([trial], True)                  # the end: always the table
    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    assert lines[0] == "TABLE" and lines[2:] == ["TABLE", "TABLE"], lines
    assert lines[1].startswith("Tune: 1/2 trials (1 RUNNING), running for ") and \
        lines[1].endswith("the table above is unchanged"), lines
