"""``python -m search.run``: the main job.

Validate every input (exit 2 with one line, nothing written), start or join Ray, evaluate the
zero-shot model once, run the Tune study (each trial: train, report per epoch, WiSE-select on ID
val), build model soups of the finished trials, and record everything in MLflow and summary.json.

Exit status: 0 done (or a finished study resumed with nothing to do), 1 every trial failed, 2 bad
input (any :class:`~trainables.errors.InputError`, one line; any other exception is a bug and
keeps its traceback), 130 / 143 stopped by SIGINT / SIGTERM (the line printed says how to resume).
"""
from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from pathlib import Path

from search import interrupt, lock, validate
from search.cli import UsageError, build_parser, fail, parse_set
from trainables.errors import InputError

EXIT_FAILED = 1   # the study ran but every trial failed (bad input exits 2, before anything runs)
#: Loggers of the project (and this script): their INFO lines are progress the user asked for.
PROJECT_LOGGERS = ("search", "trainables", "__main__")
#: Libraries that log INFO lines of their own: open_clip logs to the root logger, MLflow and
#: alembic while opening a store. Kept at WARNING so an error is the one line printed.
QUIET_LIBRARIES = ("mlflow", "alembic", "open_clip", "urllib3", "filelock", "matplotlib",
                   "ray.tune")   # Tune: "Wrote the latest version of all result files…"


def _default_data() -> Path:
    from trainables.world.generate import default_world_dir, ensure_world
    return ensure_world(default_world_dir())


class _ProjectInfoOnly(logging.Filter):
    """Below WARNING, pass only the project's own loggers (open_clip logs INFO to the root)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return (record.levelno >= logging.WARNING
                or record.name.split(".")[0] in PROJECT_LOGGERS)


def configure_logging(quiet: bool, verbose: bool = False) -> None:
    """The console handler (when none is configured yet: a caller's own handlers, such as
    pytest's, are left alone) shows the project's INFO progress and everyone's warnings;
    ``verbose``: the libraries' INFO lines too."""
    fresh = not logging.getLogger().handlers
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose:
        os.environ["ROBUST_SEARCH_VERBOSE"] = "1"   # search.tune.trial.VERBOSE_ENV, for the workers
        return
    for handler in logging.getLogger().handlers if fresh else ():
        handler.addFilter(_ProjectInfoOnly())
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    # MLflow sets its own logger's level when it is imported (MLFLOW_LOGGING_LEVEL, default
    # INFO) and Optuna its own when first used: both are told, not only their loggers
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # MLflow draws a tqdm bar per artifact download (logging the model copies its folder): on a
    # log file it is one long line of carriage returns, and the copy takes under a second
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def resume_command(argv: list[str]) -> str:
    """The command that continues this study: the same arguments plus ``--resume``."""
    args = list(argv) + ([] if "--resume" in argv else ["--resume"])
    return shlex.join([Path(sys.executable).name, "-m", "search.run", *args])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
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
    resume = resume_command(argv)
    interrupt.install(f"stopped at once; continue the study with: {resume}")
    from search.resume import NothingToDo, state_path
    from search.study import Study, StudyFailed

    held = None
    try:
        validate.check_args(args)             # plain values, --output, tracking URI, --address
        held = lock.probe(args.output)        # a running study on this --output: stop now
        overrides = parse_set(args.overrides)
        study = Study.from_args(args, overrides, default_data=_default_data)
        interrupt.reinstall()                 # ray.init replaced the SIGTERM handler
        held = lock.acquire(study.output, held)
        if not args.resume and state_path(study.output, study.name).exists():
            raise UsageError(f"{study.output} already holds study {study.name!r} (started while "
                             "this run was validating): pass --resume to continue it, or choose "
                             "another --output")
    except InputError as err:
        _stop_ray()     # a check after joining/starting Ray failed: leave no Ray behind
        fail(str(err))
    except NothingToDo as done:
        _stop_ray()
        print(done)
        return 0
    except interrupt.Interrupted as stop:
        _stop_ray()
        print(f"error: interrupted by {stop} before the study started; nothing was run",
              file=sys.stderr)
        return stop.exit_code
    start = time.perf_counter()
    try:
        summary = study.run()
    except StudyFailed as err:      # every trial failed: summary.json written, parent FAILED
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return EXIT_FAILED
    except interrupt.Interrupted as stop:   # runs marked KILLED, no summary.json written
        _stop_ray()
        print(f"error: interrupted by {stop}: study {study.name!r} is incomplete (its MLflow "
              f"runs are marked KILLED, no summary written); continue it with: {resume}",
              file=sys.stderr)
        return stop.exit_code
    finally:
        held.release()
    study.print_summary(summary, time.perf_counter() - start)
    return 0


def _stop_ray() -> None:
    if "ray" in sys.modules:            # never import Ray only to find it was not started
        from search.tune.cluster import stop_ray
        stop_ray()


if __name__ == "__main__":
    sys.exit(main())
