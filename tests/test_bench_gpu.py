"""The GPU check (``python -m search.bench --only gpu``) prepared on CPU: its ``--quick`` mode runs
the same code (loop vs bare throughput with and without ``torch.compile``, a whole ``flyp`` trial
through ``search.tune.trial.run_worker`` without Ray, the data path) in a process where Ray, MLflow
and Optuna cannot be imported at all, as on the bare GPU machine. No timing is asserted."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from search.bench.gpu import GPU_TITLE, QUICK_TITLE, SECTION, write_subsection

REPO = Path(__file__).resolve().parent.parent

#: Run Python with Ray, MLflow and Optuna made unimportable (a meta-path finder that refuses
#: them), as on the GPU machine that does not have them.
BLOCKER = """
import importlib.abc, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ray", "mlflow", "optuna"):
            raise ImportError(f"{name} is not installed on the GPU machine")
        return None
sys.meta_path.insert(0, Refuse())
"""


def _python(code: str, tmp_path: Path, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + code], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp_path)})


def test_worker_and_check_import_without_ray(tmp_path):
    proc = _python("import search.bench.core, search.bench.gpu, search.tune.trial\n"
                   "import trainables.loop\n"
                   "from search.tune.trial import run_worker, LocalSession\n"
                   "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                   "('ray', 'mlflow', 'optuna')))", tmp_path, 300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    # and the blocker does refuse them
    proc = _python("import ray", tmp_path, 60)
    assert proc.returncode != 0 and "not installed on the GPU machine" in proc.stderr


@pytest.mark.slow
def test_quick_gpu_check_runs_without_ray_and_writes_its_section(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\nKept.\n\n## Later\n\nKept too.\n")
    proc = _python("from search.bench.core import main\n"
                   f"sys.exit(main(['--quick', '--only', 'gpu', '--write', {str(out)!r}, "
                   f"'--work', {str(tmp_path / 'work')!r}]))", tmp_path, 1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stdout = proc.stdout
    # 1: both loops, eager and compiled, with images/s
    for loop in ("ours (trainables.loop)", "bare PyTorch"):
        for compiled in ("no", "yes"):
            assert re.search(rf"\| {re.escape(loop)} \| {compiled} \| [\d.]+ \| \d+ \|", stdout)
    # 2: the whole trial's time split, every part present and a total
    for part in ("set-up", "training", "per-epoch ID val", "WiSE selection",
                 "report evaluation", "**whole trial**"):
        assert f"| {part}" in stdout, part
    # 3: the data path against the step's demand
    assert re.search(r"supply / demand = \*\*\d+\.\d\d\*\*", stdout)
    assert "no Ray, MLflow or Optuna module was imported" in stdout
    text = out.read_text()
    assert text.startswith("# Benchmarks\n\nKept.\n") and "Kept too." in text
    assert text.index("## Later") < text.index(SECTION)      # a new section goes at the end
    section = text[text.index(SECTION):]
    assert QUICK_TITLE in section and "not GPU figures" in section
    assert GPU_TITLE in section and "Not measured" in section


def test_write_subsection_keeps_the_other_run(tmp_path):
    path = tmp_path / "B.md"
    path.write_text("# B\n\n## Other\n\nx\n")
    write_subsection(path, QUICK_TITLE, f"{QUICK_TITLE}\n\nquick one\n")
    write_subsection(path, GPU_TITLE, f"{GPU_TITLE}\n\ngpu figures\n")
    write_subsection(path, QUICK_TITLE, f"{QUICK_TITLE}\n\nquick two\n")
    text = path.read_text()
    assert text.count(SECTION) == 1 and "## Other\n\nx" in text
    assert "gpu figures" in text and "quick two" in text and "quick one" not in text
    assert "Not measured" not in text
    assert text.index(GPU_TITLE) < text.index(QUICK_TITLE)


def test_a_failing_part_is_reported_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    """On the GPU machine one failing part (say, too little shared memory for the DataLoader
    workers) must not lose the other figures: it is written as failed, and the exit status is 1."""
    import search.bench.gpu as bg

    def broken(*args):
        raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Bus error")

    monkeypatch.setattr(bg, "write_jpeg_spec", lambda root, sizes: root / "spec.yaml")
    monkeypatch.setattr(bg, "throughput", lambda sizes, device: ([["ours", "no", "1.0", "2",
                                                                   "n/a"]], 50.0))
    monkeypatch.setattr(bg, "data_path", broken)
    monkeypatch.setattr(bg, "whole_trial", lambda *a: [["training", "1.0", "100 %"]])
    out = tmp_path / "B.md"
    assert bg.run(True, tmp_path, out, "cmd") == 1
    text = out.read_text()
    assert "**3. Data path** **failed**: RuntimeError: DataLoader worker" in text
    assert "| ours | no | 1.0 | 2 | n/a |" in text and "| training | 1.0 | 100 % |" in text
