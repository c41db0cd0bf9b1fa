"""``python -m search.bench`` runs in ``--quick`` mode and writes its section; no timing is asserted
(the figures are measurements, not pass/fail checks of this machine's speed)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from search.bench.core import SECTION, write_section

REPO = Path(__file__).resolve().parent.parent


def test_quick_bench_prints_figures_and_writes_section(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    out.write_text(f"# Benchmarks\n\nIntro kept.\n\n{SECTION}\n\nStale intro.\n\n"
                   "## Later section\n\nKept too.\n")
    proc = subprocess.run(
        [sys.executable, "-m", "search.bench", "--quick", "--only", "1,3,5", "--write", str(out),
         "--work", str(tmp_path / "work")],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for figure in ("### 1.", "### 3.", "### 5."):
        assert figure in proc.stdout
    # figure 1: a throughput ratio; 3: golden's evaluation count; 5: a memory ratio for FT
    assert re.search(r"\| cpu \| micro-clip-16 \|.*\| \d+\.\d{3} \|", proc.stdout)
    assert re.search(r"golden ≤ 6 evaluations \(grid: 11\)\. Measured: at most [1-6]\b",
                     proc.stdout)
    assert re.search(r"\| ft \| \d+ \| 1\.00 \|", proc.stdout)
    text = out.read_text()
    assert text.startswith("# Benchmarks\n\nIntro kept.\n")
    assert text.index(SECTION) < text.index("## Later section") and "Kept too." in text
    assert "Stale intro." not in text            # the section was replaced in place
    section = text[text.index(SECTION):text.index("## Later section")]
    assert [int(n) for n in re.findall(r"^### (\d+)\.", section, re.M)] == [1, 3, 5]
    assert "not measured: no GPU" in section or "| cuda |" in section


def test_write_section_replaces_only_the_measured_figures(tmp_path: Path) -> None:
    path = tmp_path / "B.md"
    write_section(path, {1: "### 1. One\n\nold one\n", 2: "### 2. Two\n\nold two\n"}, "intro")
    write_section(path, {2: "### 2. Two\n\nnew two\n", 4: "### 4. Four\n\nfour\n"}, "intro")
    text = path.read_text()
    assert text.count(SECTION) == 1
    assert "old one" in text and "new two" in text and "old two" not in text
    assert text.index("### 1.") < text.index("### 2.") < text.index("### 4.")


def test_figure4_counts_compute_in_epochs_and_seconds() -> None:
    """Figure 4's curves: an epoch row adds one epoch and its seconds; a trial's end row adds its
    seconds but no epoch; reach/best_at read either unit."""
    from search.bench.efficiency import best_at, best_vs_compute, reach
    rows = [{"objective": 60.0, "time/epoch_train_s": 5.0, "time/epoch_eval_s": 1.0},
            {"objective": 70.0, "time/epoch_train_s": 5.0, "time/epoch_eval_s": 1.0},
            {"objective": 70.0, "final": 1.0, "time/wise_select_s": 1.0},
            {"objective": 65.0, "time/epoch_train_s": 20.0, "time/epoch_eval_s": 4.0}]
    curve = best_vs_compute(rows)
    assert curve == [(1.0, 6.0, 60.0), (2.0, 12.0, 70.0), (2.0, 13.0, 70.0), (3.0, 37.0, 70.0)]
    assert reach(curve, 70.0, 0) == 2.0 and reach(curve, 70.0, 1) == 12.0
    assert reach(curve, 71.0, 0) == float("inf")
    assert best_at(curve, 1.0, 0) == 60.0 and best_at(curve, 11.0, 1) == 60.0
    assert best_at(curve, 0.5, 0) == float("-inf")


def test_report_eval_off_keeps_the_objective_and_drops_only_reporting(tmp_path: Path) -> None:
    """``RunSpec.report_eval=False`` (figure 4) leaves the selection (objective, α) as it is
    and skips the end-of-trial OOD/test evaluation."""
    from dataclasses import replace

    import torch

    from search.bench.tiny_data import write_tiny_spec
    from search.result import encode
    from search.runspec import RunSpec
    from search.tune.trial import prepare, wise_evaluation
    from trainables.loop import train
    spec = write_tiny_spec(tmp_path / "tiny", per_class=6)
    run = RunSpec(method="ft", model="micro-clip-16", pretrained=None, data=str(spec),
                  wise_grid=(1.0,), base_params=dict(epochs=1, batch_size=8, warmup_steps=0,
                                                     seed=0))
    parts = prepare(run, {"lr": 3e-3})
    train(parts.model, parts.method, parts.ctx, parts.data, parts.train_cfg)
    theta_ft = parts.method.final_state_dict(parts.model)
    full = encode(wise_evaluation(parts, theta_ft, run))
    short = encode(wise_evaluation(parts, theta_ft, replace(run, report_eval=False)))
    assert any(k.startswith("ft/ood") for k in full) and "time/report_eval_s" in full
    same = ("objective", "wise_alpha", "final", "wise_evaluations")
    assert {k: short[k] for k in same} == {k: full[k] for k in same}      # selection unchanged
    assert set(short) == {"objective", "wise_alpha", "final", "time/wise_select_s",
                          "wise_evaluations"}
    state = parts.model.state_dict()              # the model is left at θ_ft, as before
    assert all(torch.equal(state[k], v) for k, v in theta_ft.items())
