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
