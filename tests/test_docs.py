"""The documentation travels with the project.

Code, space files and docs cite only what a user of the repository has: ``docs/…`` pages (which
must exist, anchors included) or the papers. Comments and docstrings in the packages give
reasons, not incident history, so they carry no dates (BENCHMARKS.md is the dated record).
"""
from __future__ import annotations

import ast
import io
import os
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = {".py", ".yaml", ".yml", ".md", ".toml", ".txt", ".cfg", ".ini", ".sh"}
SKIP_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", "runs", "outputs", "mlruns",
             "build", "dist"}

# Documents that exist only on the developers' machines (a sibling folder of the repository).
# Assembled from pieces so that this file does not match its own patterns.
_OUTSIDE = [r"\.\./" + "shared",
            r"\b" + "shared/" + r"(?:METHODS|STYLE|ENVIRONMENT|WORLD|README|seeds|hooks)",
            r"\b" + "METHODS" + r"\.md\b", r"\b" + "WORLD" + r"-NOTES\b",
            r"\b" + "ENVIRONMENT" + r"\.md\b", r"\b" + "STYLE" + r"\.md\b",
            r"(?<![\w-])" + "seeds" + r"/"]
OUTSIDE = re.compile("|".join(_OUTSIDE))
DOCS_REF = re.compile(r"(?<![\w./-])docs/[A-Za-z0-9_./-]*[A-Za-z0-9_/](?:#[A-Za-z0-9_-]+)?")
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
DATE = re.compile(r"\b20\d\d-[01]\d-[0-3]\d\b")


def _text_files() -> list[Path]:
    out = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        for name in sorted(files):
            path = Path(folder, name)
            if path.suffix in TEXT_SUFFIXES or path.relative_to(ROOT).parts[0] == ".ci":
                out.append(path)
    return out


FILES = _text_files()


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(md: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$",
                                                   md.read_text(encoding="utf-8"), re.M)}


def _check_target(target: Path, anchor: str | None, where: str) -> list[str]:
    if not target.exists():
        return [f"{where}: {target.relative_to(ROOT)} does not exist"]
    if anchor and target.suffix == ".md" and anchor not in _anchors(target):
        return [f"{where}: no heading #{anchor} in {target.relative_to(ROOT)}"]
    return []


def test_files_were_found() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in FILES}
    assert {"README.md", "docs/methods.md", "docs/world.md", "trainables/wise.py",
            "spaces/ft.yaml", "constraints.txt"} <= names


def test_nothing_cites_documents_outside_the_repository() -> None:
    this = Path(__file__).resolve()
    hits = []
    for path in FILES:
        if path.resolve() == this:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not hits, "cite docs/… or the paper instead:\n" + "\n".join(hits)


def test_every_cited_docs_path_exists() -> None:
    cited_by_code, problems = set(), []
    for path in FILES:
        text = path.read_text(encoding="utf-8")
        for number, line in enumerate(text.splitlines(), 1):
            where = f"{path.relative_to(ROOT)}:{number}"
            for ref in DOCS_REF.findall(line):
                file, _, anchor = ref.partition("#")
                if path in PACKAGE_FILES:
                    cited_by_code.add(file)
                problems += _check_target(ROOT / file.rstrip("/"), anchor or None, where)
            if path.suffix == ".md":        # relative Markdown links, e.g. (world.md#the-world)
                for link in MD_LINK.findall(line):
                    if re.match(r"[a-z]+:", link):
                        continue            # http:, https:, mailto:
                    file, _, anchor = link.partition("#")
                    target = (path.parent / file) if file else path
                    problems += _check_target(target.resolve(), anchor or None, where)
    assert {"docs/methods.md", "docs/world.md"} <= cited_by_code
    assert not problems, "\n".join(problems)


def _comments_and_docstrings(path: Path) -> list[tuple[int, str]]:
    source = path.read_text(encoding="utf-8")
    out = [(tok.start[0], tok.string)
           for tok in tokenize.generate_tokens(io.StringIO(source).readline)
           if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                out.append((getattr(node, "lineno", 1), doc))
    return out


PACKAGE_FILES = [p for p in FILES if p.relative_to(ROOT).parts[0] in ("search", "trainables",
                                                                      "spaces")]


@pytest.mark.parametrize("path", [p for p in PACKAGE_FILES if p.suffix in (".py", ".yaml")],
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_comments_give_reasons_not_dates(path: Path) -> None:
    if path.suffix == ".py":
        notes = _comments_and_docstrings(path)
    else:
        notes = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1)
                 if line.lstrip().startswith("#")]
    dated = [f"{path.relative_to(ROOT)}:{n}" for n, text in notes if DATE.search(text)]
    assert not dated, f"incident dates in comments (keep the reason, drop the date): {dated}"
