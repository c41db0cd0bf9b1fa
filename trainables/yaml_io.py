"""Bounded YAML: the one loader of every user-written YAML (space files, dataset specs, ``--set``).

``yaml.safe_load`` never runs code, but it happily builds an "alias bomb": nine anchors, each a
list of nine aliases to the previous one, is ~500 bytes of YAML and 9**9 nodes once anything walks
it (printing it in an error message, ``${VAR}`` expansion, JSON logging). PyYAML composes aliases
as shared nodes, so the composed graph stays small: :class:`BoundedLoader` measures how large the
document would be *expanded* before constructing any Python object, and refuses documents whose
aliases add more than :data:`MAX_ALIAS_NODES` nodes, recursive aliases (``&a [*a]``, which would
recurse forever), files over :data:`MAX_BYTES` and nesting deeper than PyYAML's recursive composer
can take. Every refusal is a :class:`YamlError` (an :class:`~trainables.errors.InputError`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from .errors import InputError

#: A space or dataset spec is a few KB; a spec listing 21k class names inline is ~1 MB.
MAX_BYTES = 4 * 1024 * 1024
#: Nodes that aliases may add beyond the document's own: reusing a template list is fine; the cap
#: also bounds any message that prints a value (~60 KB at most).
MAX_ALIAS_NODES = 10_000


class YamlError(InputError):
    """YAML that cannot be read, or that would expand beyond the bounds."""


class BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that checks each composed document's expanded size first."""

    def compose_document(self) -> Node:
        node = super().compose_document()
        _check_expansion(node)
        return node


def _check_expansion(root: Node) -> None:
    """Raise YamlError if the node graph has a cycle or expands to too many nodes.

    ``size[id]`` is a node's size once every alias is copied in (1 + its children's sizes); each
    distinct node is visited once, so this is linear in the composed (unexpanded) document."""
    size: dict[int, int] = {}
    distinct = 0
    stack: list[tuple[Node, bool]] = [(root, False)]
    open_nodes: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        children = _children(node)
        if children_done:
            open_nodes.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in children)
            continue
        if key in size:
            continue
        if key in open_nodes:
            raise YamlError("an alias refers to the node that contains it (a recursive alias)")
        distinct += 1
        open_nodes.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in open_nodes:
                raise YamlError("an alias refers to the node that contains it (a recursive "
                                "alias)")
            if id(child) not in size:
                stack.append((child, False))
    if size[id(root)] > distinct + MAX_ALIAS_NODES:
        raise YamlError(f"its aliases (*name) expand it beyond {MAX_ALIAS_NODES} extra nodes "
                        "(a YAML 'alias bomb')")


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def load_yaml(text: str | bytes, what: str) -> Any:
    """Parse ``text`` (one YAML document) with :class:`BoundedLoader`; ``what`` names it in the
    error (a file, or ``--set lr``). Raises YamlError with one line naming the problem and fix."""
    if len(text) > MAX_BYTES:
        raise YamlError(f"{what}: {len(text)} bytes is more than the {MAX_BYTES} a YAML input may "
                        "have; fix: list large data in CSV manifests, not inline")
    try:
        loader = BoundedLoader(text)      # what yaml.safe_load does, with the bounded loader
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except YamlError as err:
        raise YamlError(f"{what}: {err}; fix: write the values out, or use fewer aliases"
                        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise YamlError(f"{what}: not valid YAML ({' '.join(str(problem).split())[:200]}{where})"
                        "; fix: correct the YAML syntax") from None
    except RecursionError:
        raise YamlError(f"{what}: nested too deeply to parse; fix: flatten the document"
                        ) from None
    except UnicodeDecodeError:
        raise YamlError(f"{what}: not UTF-8 text; fix: save the file as UTF-8") from None


def read_yaml(path: str | Path, what: str | None = None) -> Any:
    """Load the YAML file at ``path``, reading at most :data:`MAX_BYTES` + 1 bytes of it."""
    path = Path(path)
    what = what or str(path)
    try:
        with path.open("rb") as fh:
            data = fh.read(min(os.fstat(fh.fileno()).st_size, MAX_BYTES) + 1)
    except OSError as err:
        raise YamlError(f"{what}: cannot read it ({err.strerror or err}); fix: pass a readable "
                        "file") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise YamlError(f"{what}: not UTF-8 text; fix: save the file as UTF-8") from None
    return load_yaml(text, what)
