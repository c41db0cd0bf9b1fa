"""``python -m search.run``: the main job.

Validate every input (exit 2 with one line, nothing written), start or join Ray, evaluate the
zero-shot model once, run the Tune study (each trial: train, report per epoch, WiSE-select on ID
val), build model soups of the finished trials, and record everything in MLflow and summary.json.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from .cli import UsageError, build_parser, fail, parse_set
from .cli_help import configure_logging

EXIT_FAILED = 1   # the study ran but every trial failed (bad input exits 2, before anything runs)


def _default_data() -> Path:
    from trainables.world.generate import default_world_dir, ensure_world
    return ensure_world(default_world_dir())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # Tune saves its experiment and searcher state at most every 10 s by default; every 2 s means
    # a killed driver loses no trial it had started, so --resume continues every one of them.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    # Tune forces an experiment-state snapshot whenever a trial has saved num_to_keep
    # (--keep-checkpoints, 1) checkpoints since the last one, so that a resumed study never points
    # at a checkpoint already deleted; with a checkpoint every epoch that is every epoch of every
    # trial, which is what --resume needs, and Tune's "snapshotting has been triggered multiple
    # times" warning about it says nothing to act on: it is turned off (0), not the snapshots.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    configure_logging(args.quiet, args.verbose)
    from .study import Study, StudyError, StudyFailed

    try:
        overrides = parse_set(args.overrides)
        study = Study.from_args(args, overrides, default_data=_default_data)
    except (UsageError, StudyError, ValueError, FileNotFoundError) as err:
        _stop_ray()     # a check after joining/starting Ray failed: leave no Ray behind
        fail(str(err))
    start = time.perf_counter()
    try:
        summary = study.run()
    except StudyFailed as err:      # every trial failed: summary.json written, parent FAILED
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return EXIT_FAILED
    study.print_summary(summary, time.perf_counter() - start)
    return 0


def _stop_ray() -> None:
    if "ray" in sys.modules:
        import ray
        if ray.is_initialized():
            ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
