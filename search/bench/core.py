"""``python -m search.bench``: the project's performance figures, each a ratio measured in one run.

    python -m search.bench [--quick] [--only 1,3,5] [--write BENCHMARKS.md]
    python -m search.bench [--quick] --only gpu [--write BENCHMARKS.md]   # search/bench/gpu.py

1. training-step throughput of ``trainables.loop.train`` against a bare PyTorch loop;
2. per-trial framework overhead of a search, and the whole search's wall time over trial compute;
3. the WiSE mixing search: 11-point grid against golden-section search on trained models;
4. search efficiency: random + FIFO, TPE + FIFO and TPE + ASHA at budgets where TPE models;
5. peak training memory of every method relative to FT;
6. wall time of the README quick-start command (first run and warm cache).

``--quick`` runs everything on the tiny test spec with the micro CLIP (a smoke test: seconds to
minutes, the targets are then only indicative) and skips 6; the full run uses the embedded default
(generated world + tiny CLIP) and ViT-S-32 for 1. ``--write`` replaces each measured figure's
subsection inside the ``## Performance (search.bench)`` section of the given Markdown file.
Figures live in ``bench_train`` (1, 5), ``bench_wise`` (3) and ``bench_search`` (2, 4, 6).

``--only ddp`` (``bench_ddp``) prints, per trainable method, how far a 2-worker DDP run strays from
the 1-worker run at the same global batch (``METHOD max_rel_step_loss_diff=X ...``) and exits 1 if
any X > 1e-4.
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

SECTION = "## Performance (search.bench)"
REPO = Path(__file__).resolve().parents[2]     # search/bench/core.py -> the repository


@dataclass
class Target:
    """One target: what it asks, what was measured, and whether it is met (None: not judged)."""

    goal: str
    measured: str
    met: bool | None

    def line(self) -> str:
        verdict = {True: "**met**", False: "**missed**", None: "not judged"}[self.met]
        return f"- Target: {self.goal}. Measured: {self.measured}: {verdict}."


@dataclass
class Figure:
    """A measured figure: a table, its targets and notes; rendered as one Markdown subsection."""

    number: int
    title: str
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def markdown(self, stamp: str) -> str:
        out = [f"### {self.number}. {self.title}", "", stamp, ""]
        if self.header:
            out += ["| " + " | ".join(self.header) + " |",
                    "|" + "|".join("---" for _ in self.header) + "|"]
            out += ["| " + " | ".join(r) + " |" for r in self.rows]
            out.append("")
        out += [t.line() for t in self.targets]
        out += [f"- {n}" for n in self.notes]
        out.append(f"- Bench time for this figure: {self.seconds:.0f} s.")
        return "\n".join(out).rstrip() + "\n"


@dataclass
class Bench:
    """What every figure shares: the mode, a scratch folder, the data spec and the model."""

    quick: bool
    work: Path
    _data: Path | None = None

    @property
    def model(self) -> str:
        from trainables.models import DEFAULT_MODEL
        return "micro-clip-16" if self.quick else DEFAULT_MODEL

    @property
    def pretrained(self) -> str | None:
        """The embedded weights (full mode, when shipped), else a random initialisation."""
        from trainables.models import DEFAULT_PRETRAINED
        return None if self.quick or not Path(DEFAULT_PRETRAINED).is_file() else DEFAULT_PRETRAINED

    def data(self) -> Path:
        """The dataset spec: the tiny test spec (quick) or the embedded world (generated once)."""
        if self._data is None:
            if self.quick:
                # The tiny spec of the test suite: a dev tool run from the repository root.
                sys.path.insert(0, str(REPO))
                from search.bench.tiny_data import write_tiny_spec
                self._data = write_tiny_spec(self.work / "tiny", per_class=32)
            else:
                from trainables.world.generate import default_world_dir, ensure_world
                self._data = ensure_world(default_world_dir())
        return self._data

    def scratch(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def _figures() -> dict[int, Callable[[Bench], Figure]]:
    from search.bench import efficiency, study_figures, train, wise
    return {1: train.throughput, 2: study_figures.overhead, 3: wise.wise_search,
            4: efficiency.efficiency, 5: train.memory, 6: study_figures.quickstart}


def machine() -> str:
    """Platform, cores, torch threads and accelerator, in one line."""
    import torch
    gpu = (f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU")
    load = "/".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (f"{platform.platform()}, {platform.machine()}, {os.cpu_count()} cores, torch "
            f"{torch.__version__} with {torch.get_num_threads()} threads, {gpu}; load average "
            f"{load} (1/5/15 min) when the figure ended")


def write_section(path: Path, blocks: dict[int, str], intro: str) -> None:
    """Replace (or add) each figure's ``### N.`` block inside the section; keep the others."""
    text = path.read_text() if path.exists() else ""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.strip() == SECTION), None)
    if start is None:
        before, body, after = lines, [], []
        if before and before[-1].strip():
            before.append("")
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
                   len(lines))
        before, body, after = lines[:start], lines[start + 1:end], lines[end:]
    old: dict[int, str] = {}
    current = None
    for ln in body:
        if ln.startswith("### ") and ln[4:].split(".")[0].isdigit():
            current = int(ln[4:].split(".")[0])
            old[current] = ""
        if current is not None:
            old[current] += ln + "\n"
    merged = {**old, **blocks}
    section = [SECTION, "", intro, ""]
    for number in sorted(merged):
        section += merged[number].rstrip("\n").splitlines() + [""]
    path.write_text("\n".join(before + section + after).rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = build_parser()
    args = p.parse_args(argv)
    return _main(p, args, argv)


def build_parser() -> argparse.ArgumentParser:
    from search.cli_help import Parser
    p = Parser(prog="python -m search.bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="micro CLIP on the tiny test spec (a smoke test; skips 6)")
    p.add_argument("--only", default="1,2,3,4,5,6",
                   help="figures to run, e.g. 1,3,5; or one named check: 'gpu' (the GPU "
                        "check) or 'ddp' (2 DDP workers vs 1 for every method)")
    p.add_argument("--write", type=Path, default=None,
                   help="Markdown file whose '## Performance (search.bench)' section is updated")
    p.add_argument("--work", type=Path, default=None,
                   help="scratch folder (default: a temporary folder, removed at the end)")
    return p


def _main(p: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> int:
    if args.only.strip() == "ddp":      # a check, not a figure: its own output and exit status
        from search.bench import ddp
        with tempfile.TemporaryDirectory(prefix="search-bench-") as tmp:
            return ddp.main(Bench(True, Path(args.work or tmp).resolve()).data())
    if args.only.strip() in _CHECKS:        # a named check, run on its own
        return _run_check(args.only.strip(), args, argv)
    try:
        only = sorted({int(x) for x in args.only.split(",") if x.strip()})
    except ValueError:
        p.error(f"--only {args.only!r}: give figure numbers, e.g. 1,3,5, or one of "
                f"{', '.join([*_CHECKS, 'ddp'])}")
    figures = _figures()
    if not only or any(n not in figures for n in only):
        p.error(f"--only {args.only!r}: figures are {sorted(figures)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    import logging
    logging.basicConfig(level=logging.WARNING)
    command = "python -m search.bench " + shlex.join(argv)
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="search-bench-")
    bench = Bench(args.quick, (args.work or Path(tmp.name)).resolve())
    bench.work.mkdir(parents=True, exist_ok=True)
    blocks: dict[int, str] = {}
    try:
        for number in only:
            start = time.perf_counter()
            figure = figures[number](bench)
            figure.seconds = time.perf_counter() - start
            quick = " (--quick: micro CLIP, tiny spec; indicative only)" if args.quick else ""
            stamp = (f"Command: `{command}`  \nMachine: {machine()}  \n"
                     f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC{quick}")
            blocks[number] = figure.markdown(stamp)
            print(blocks[number], flush=True)
            if args.write:       # after every figure: a long run keeps what it measured
                write_section(args.write, {number: blocks[number]}, _INTRO)
    finally:
        if "ray" in sys.modules:        # never import Ray only to find it was not started
            from search.tune.cluster import stop_ray
            stop_ray()
        if tmp is not None:
            tmp.cleanup()
    if args.write:
        print(f"wrote {len(blocks)} figure(s) to {args.write}")
    return 0


#: Named checks (``--only NAME``), each in its own module with ``run(quick, work, write,
#: command) -> exit status``. ``gpu``: search/bench/gpu.py (imports no Ray, MLflow or Optuna).
_CHECKS = {"gpu": "search.bench.gpu"}


def _run_check(name: str, args: argparse.Namespace, argv: list[str]) -> int:
    import importlib
    import logging
    logging.basicConfig(level=logging.WARNING)
    module = importlib.import_module(_CHECKS[name])
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix=f"search-bench-{name}-")
    work = (args.work or Path(tmp.name)).resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        command = "python -m search.bench " + shlex.join(argv)
        return module.run(args.quick, work, args.write, command)
    finally:
        if tmp is not None:
            tmp.cleanup()


_INTRO = ("Measured by `python -m search.bench` (each figure is a ratio taken within one run; "
          "re-run a figure with `--only N --write BENCHMARKS.md`).")


if __name__ == "__main__":
    raise SystemExit(main())
