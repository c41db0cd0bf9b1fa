"""``python -m search.report``: every method at its paper defaults, without and with WiSE-FT.

The miniature of the papers' tables on the embedded world (or any dataset spec): rows = methods
(and each method + WiSE at the ID-val-selected α), columns = ID test, each domain shift and their
mean, each zero-shot set and their mean, context accuracy; mean ± std over seeds. Runs go through
the same code as a search trial (``search.tune.trial.prepare`` → ``trainables.loop.train`` →
``search.tune.trial.wise_evaluation``), in this process, without Ray (no search is involved).

Paper defaults are for ViT-B/16 at batch 512 on ImageNet. The embedded tiny CLIP needs a larger
step to move at all (docs/world.md: FT's 3e-5 does nothing, 1e-3 shows the phenomenon), so every
method's paper learning rate (and SWA's swa_lr) is multiplied by ONE common factor,
``LR_SCALE = 1e-3 / 3e-5``; loss weights, schedules and ratios stay the papers'. Nothing is tuned
per method.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import torch

from search.anchors.build import with_anchors
from search.result import TrialResult, decode, encode, frontier_point
from search.runspec import RunSpec
from search.tracking.table import format_table
from search.tune.trial import prepare, wise_evaluation
from trainables import metrics as M
from trainables.methods import METHODS
from trainables.models import DEFAULT_MODEL, DEFAULT_PRETRAINED

LR_SCALE = 1e-3 / 3e-5
COMMON = dict(epochs=3, batch_size=128, warmup_steps=20, weight_decay=0.1, grad_clip=1.0)
ORDER = ["zeroshot", "lp", "ft", "lp-ft", "l2-sp", "flyp", "car-ft", "clip-cite", "arf", "ce-swa"]


def defaults(method: str) -> dict[str, Any]:
    """The report's settings for ``method``: :data:`COMMON`, then the method class's
    ``paper_defaults`` with its paper learning rates (``paper_lrs``) times :data:`LR_SCALE`
    (docs/methods.md#the-methods-report-paper-defaults-on-the-embedded-world)."""
    cls = METHODS[method]
    paper = {k: v * LR_SCALE if k in cls.paper_lrs else v for k, v in cls.paper_defaults.items()}
    return {**COMMON, **paper}


def run_one(method: str, seed: int, data: str, model: str, pretrained: str | None,
            wise_grid: tuple[float, ...] = tuple(i / 10 for i in range(11))) -> TrialResult:
    """Train ``method`` once at its defaults; its WiSE result (``timings`` adds ``train_s``)."""
    from trainables.loop import train
    params = {**defaults(method), "seed": seed}
    # ARF: retrieved anchors, prepared once and cached
    setup = with_anchors(RunSpec(method=method, model=model, pretrained=pretrained, data=data,
                                 wise_grid=tuple(wise_grid)))
    if METHODS[method].trains_nothing:
        params = {"seed": seed}
    parts = prepare(setup, params)
    start = time.perf_counter()
    if not parts.method.trains_nothing:
        train(parts.model, parts.method, parts.ctx, parts.data, parts.train_cfg,
              eval_transform=parts.bundle.preprocess_val)
    train_s = time.perf_counter() - start
    out = wise_evaluation(parts, parts.method.final_state_dict(parts.model), setup)
    return replace(out, timings={**out.timings, "train_s": train_s})


def aggregate(runs: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and standard deviation over seeds of every metric of the first run."""
    mean = {k: statistics.fmean(r[k] for r in runs) for k in runs[0]}
    std = {k: statistics.pstdev(r[k] for r in runs) if len(runs) > 1 else 0.0 for k in runs[0]}
    return mean, std


def mean_result(runs: list[TrialResult]) -> tuple[TrialResult, dict[str, float], dict[str, float]]:
    """The seeds' mean result (metrics at α = 1, at α*, along the curve; α*), and the standard
    deviations of the α = 1 and α* metrics."""
    ft, ft_std = aggregate([r.finetuned for r in runs])
    wise, wise_std = aggregate([r.wise for r in runs])
    curve = tuple((a, aggregate([dict(r.curve)[a] for r in runs])[0]) for a, _ in runs[0].curve)
    mean = TrialResult(objective=statistics.fmean(r.objective for r in runs),
                       alpha=statistics.fmean(r.alpha for r in runs), finetuned=ft, wise=wise,
                       curve=curve)
    return mean, ft_std, wise_std


def build_parser() -> argparse.ArgumentParser:
    from search.cli_help import Parser
    p = Parser(prog="python -m search.report", description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, help="dataset spec (default: the embedded world)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="open_clip architecture")
    p.add_argument("--pretrained", default=DEFAULT_PRETRAINED,
                   help="open_clip pretrained tag or a local .safetensors file")
    p.add_argument("--methods", nargs="+", default=ORDER, choices=ORDER, metavar="METHOD",
                   help=f"methods to train ({', '.join(ORDER)}), each at its defaults, one row "
                        "(and WiSE row) each")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                   help="seeds per method; the table shows mean ± std over them")
    p.add_argument("--output", type=Path, default=Path("runs/report"),
                   help="where raw results (results.json), the table and the plot go; finished "
                        "runs found there are reused, so an interrupted report resumes")
    p.add_argument("--wise-grid", type=float, nargs="+", default=[i / 10 for i in range(11)],
                   help="α values evaluated on ID val (selection) and on OOD (frontier)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    p.add_argument("--table-only", action="store_true",
                   help="write the table and plot from results.json without training")
    return p


def _rows(methods: list[str], seeds: int, results: dict[str, TrialResult]
          ) -> tuple[dict, dict, list, dict[str, float] | None]:
    """The table's rows (each method, and + WiSE), their spreads over seeds, the frontier's
    points and the zero-shot row (a method that trains nothing: θ_zs)."""
    rows, spread, frontier = {}, {}, []
    zeroshot: dict[str, float] | None = None
    for method in methods:
        runs = [v for k, v in results.items() if k.split("/")[0] == method]
        if not runs:
            continue
        mean, ft_std, wise_std = mean_result(runs)
        wanted = 1 if METHODS[method].trains_nothing else seeds
        label = method if len(runs) >= wanted else f"{method} (only {len(runs)} seed(s))"
        rows[label], spread[label] = mean.finetuned, ft_std
        if not METHODS[method].trains_nothing:
            name = f"{label} + WiSE (α={mean.alpha:.2f})"
            rows[name], spread[name] = mean.wise, wise_std
            frontier.append(frontier_point(method, mean))
        else:
            zeroshot = mean.finetuned
    return rows, spread, frontier, zeroshot


def _run_missing(args: argparse.Namespace, raw: dict[str, dict[str, Any]], raw_path: Path
                 ) -> None:
    """Train every (method, seed) not yet in ``raw``, saving ``raw`` after each (resumable:
    finished runs are kept)."""
    for method in args.methods:
        seeds = [0] if METHODS[method].trains_nothing else args.seeds
        for seed in seeds:
            key = f"{method}/seed{seed}"
            if key in raw:
                continue
            t0 = time.perf_counter()
            result = run_one(method, seed, str(args.data), args.model, args.pretrained,
                             tuple(args.wise_grid))
            raw[key] = encode(result)
            print(f"{key}: ID test {result.finetuned[M.ID_TEST]:.1f}, shift "
                  f"{result.finetuned.get(M.OOD_AVG, float('nan')):.1f}, WiSE α "
                  f"{result.alpha:.1f} ({time.perf_counter() - t0:.0f}s)", flush=True)
            raw_path.write_text(json.dumps(raw, indent=1))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data is None:
        from trainables.world.generate import default_world_dir, ensure_world
        args.data = ensure_world(default_world_dir())
    args.output.mkdir(parents=True, exist_ok=True)
    raw_path = args.output / "results.json"
    raw: dict[str, dict[str, Any]] = json.loads(raw_path.read_text()) if raw_path.exists() else {}
    started = time.perf_counter()
    if not args.table_only:
        _run_missing(args, raw, raw_path)
    rows, spread, frontier, zeroshot = _rows(args.methods, len(args.seeds),
                                             {k: decode(v) for k, v in raw.items()})
    table = format_table(rows, spread, markdown=True)
    from search.tracking.plots import study_frontier_png
    plot = study_frontier_png(frontier, args.output / "frontier.png",
                              title="ID–OOD frontier across methods (mean over seeds)",
                              zeroshot=zeroshot)
    grid = " ".join(f"{a:g}" for a in args.wise_grid)
    header = (f"Command: `python -m search.report --seeds {' '.join(map(str, args.seeds))} "
              f"--wise-grid {grid}`  \n"
              f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, "
              f"{platform.processor() or 'CPU'}; date {date.today()}; seeds {args.seeds}; "
              + ("rendered from results.json (--table-only)\n" if args.table_only else
                 f"wall {time.perf_counter() - started:.0f}s for the runs not cached\n"))
    (args.output / "table.md").write_text(header + "\n" + table + "\n")
    print(header)
    print(table)
    print(f"\nplot: {plot}\nraw: {raw_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
