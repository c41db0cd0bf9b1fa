"""``python -m search.run``: the main job.

Validate every input (exit 2 with one line, nothing written), start or join Ray, evaluate the
zero-shot model once, run the Tune study (each trial: train, report per epoch, WiSE-select on ID
val), build model soups of the finished trials, and record everything in MLflow and summary.json.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from .cli import UsageError, build_parser, fail, parse_set


def _default_data() -> Path:
    from trainables.world.generate import default_world_dir, ensure_world
    return ensure_world(default_world_dir())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .study import Study, StudyError

    try:
        overrides = parse_set(args.overrides)
        study = Study.from_args(args, overrides, default_data=_default_data)
    except (UsageError, StudyError, ValueError, FileNotFoundError) as err:
        fail(str(err))
    start = time.perf_counter()
    summary = study.run()
    study.print_summary(summary, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
