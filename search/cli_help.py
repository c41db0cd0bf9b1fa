"""What every command line of the project shares: defaults shown in ``--help``, ``--version``,
and parse errors as the project's one line with exit status 2 (search.run, search.report,
search.prepare, search.bench). Console logging: search/run.py's configure_logging."""
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
            self.add_argument("--version", action="version",
                              version=f"%(prog)s {package_version()}",
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

