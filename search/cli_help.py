"""What every command line of the project shares: defaults shown in ``--help``, ``--version``,
and parse errors as the project's one line with exit status 2 (search.run, search.report,
search.prepare, search.bench)."""
from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any, NoReturn

EXIT_USAGE = 2


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to an option's help unless the help already names its default
    (many say what an unset option means, e.g. "default: the space's") or there is none to show
    (None, False, an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser with :class:`DefaultsFormatter`, ``--version``, and a bad argument
    reported as ``error: <message>`` on one line, exit status 2 (no usage dump)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)
        if kwargs.get("add_help", True):      # the top parser (subparsers share it)
            self.add_argument("--version", action="version", version=f"%(prog)s {package_version()}",
                              help="print the version and exit")

    def error(self, message: str) -> NoReturn:
        print(f"error: {' '.join(message.split())} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def package_version() -> str:
    try:
        return version("robust-clip-search")
    except PackageNotFoundError:         # run from a checkout that is not installed
        return "unknown"


def method_names() -> list[str]:
    """The registered methods (``trainables.methods.METHODS``), for ``choices=``."""
    from trainables.methods import METHODS
    return sorted(METHODS)


#: the project's loggers: INFO on the console; everything else (open_clip logs to the root
#: logger, MLflow, Ray's library loggers) WARNING unless --verbose
PROJECT_LOGGERS = ("search", "trainables")


def configure_logging(quiet: bool = False, verbose: bool = False) -> None:
    """Console logging of a command: the project's own loggers at INFO (WARNING with
    ``quiet``), every other logger at WARNING (INFO with ``verbose``)."""
    import logging
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.INFO)
    if not verbose:
        import os
        # MLflow sets its own logger's level when it is imported (MLFLOW_LOGGING_LEVEL, INFO);
        # Optuna its own when first used: both are told, not only their loggers
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        for name in ("mlflow", "alembic", "open_clip"):
            logging.getLogger(name).setLevel(logging.WARNING)
        import optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
