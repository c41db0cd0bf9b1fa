"""Every command line: defaults and help text in --help, --method choices from the registry,
--version, one-line parse errors, and console scripts alongside ``python -m``."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import tomllib

from search import cli
from search.anchors import prepare
from search.bench import core as bench
from search.bench import report
from trainables.methods import METHODS

ROOT = Path(__file__).resolve().parent.parent
PARSERS = {"search.run": cli.build_parser, "search.report": report.build_parser,
           "search.prepare": prepare.build_parser, "search.bench": bench.build_parser}


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parser and its subcommands' parsers."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [parser] + [p for s in subs for p in s.choices.values()]


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_option_has_help_and_its_default_is_shown(name, capsys):
    for parser in _parsers(PARSERS[name]()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) or not action.option_strings:
                continue
            assert action.help and action.help.strip(), f"{name} {action.option_strings}: no help"
            shown = parser.formatter_class(parser.prog)._get_help_string(action)
            if action.default not in (None, False, [], argparse.SUPPRESS):
                assert "default" in shown, f"{name} {action.option_strings}: default not shown"
    with pytest.raises(SystemExit) as exc:
        PARSERS[name]().parse_args(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith(f"python -m {name} ")


def test_method_choices_come_from_the_registry_and_a_bad_one_is_one_line(capsys):
    (method,) = [a for a in cli.build_parser()._actions if "--method" in a.option_strings]
    assert method.choices == sorted(METHODS)
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(["--method", "nope"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert exc.value.code == 2 and len(err) == 1 and "invalid choice: 'nope'" in err[0]
    assert "(default: robust-ft-search)" in " ".join(cli.build_parser().format_help().split())


def test_console_scripts_point_at_the_module_mains():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"robust-search": "search.run:main",
                       "robust-search-report": "search.bench.report:main",
                       "robust-search-prepare": "search.anchors.prepare:main",
                       "robust-search-bench": "search.bench.core:main"}
    for target in scripts.values():
        module, _, func = target.partition(":")
        assert callable(getattr(__import__(module, fromlist=[func]), func))
