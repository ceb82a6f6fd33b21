"""YAML reading that refuses alias bombs ("billion laughs") before anything is built.

``yaml.safe_load`` shares the object behind an alias, so a file of a few hundred bytes can
describe a structure of 10^9 elements that is cheap to load and endless to walk: printing it,
comparing it or converting it to strings then runs until killed. :func:`load_yaml` composes the
document's node graph first (aliases are references there too, so this is cheap), counts the
nodes a full expansion would visit (an alias counts the whole size of its target; sizes are
memoised per node so the count is linear in the graph) and refuses a document above a limit, or
one that refers to itself, with one line naming the file. Only then are Python objects built.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from delfx.errors import InputError

#: Nodes (scalars, lists and mappings) a document may expand to: far above any experiment file.
MAX_NODES = 100_000


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def expanded_size(root: yaml.Node, limit: int = MAX_NODES) -> int:
    """Nodes a full expansion of ``root`` visits, counting each alias as a copy of its target.

    Stops as soon as the count passes ``limit`` (the value returned is then above ``limit`` but
    not the full size). Iterative, so deep nesting does not hit the recursion limit.

    Raises:
        ValueError: the graph has a cycle (an alias inside the node it refers to).
    """
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            size = 1 + sum(sizes[id(c)] for c in _children(node))
            sizes[key] = size
            if size > limit:
                return size
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise ValueError("recursive alias")
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            cid = id(child)
            if cid in on_path:
                raise ValueError("recursive alias")
            if cid not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def loads_yaml(text: str, source: str | os.PathLike[str], *, max_nodes: int = MAX_NODES) -> Any:
    """Parse one YAML document (safe tags only) whose expansion stays within ``max_nodes``.

    Args:
        text: the document.
        source: what to name in error messages (usually the file path).
        max_nodes: the most nodes the document may expand to.

    Returns:
        The document's Python value (None for an empty document).

    Raises:
        InputError: not valid YAML, nested too deeply, self-referring, or larger than
            ``max_nodes`` once expanded; one line naming ``source``.
    """
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"{source}: not valid YAML ({first})") from None
        except RecursionError:
            raise InputError(f"{source}: YAML nested too deeply") from None
        if node is None:
            return None
        try:
            size = expanded_size(node, max_nodes)
        except ValueError:
            raise InputError(f"{source}: YAML alias refers to itself (recursive data)") from None
        if size > max_nodes:
            raise InputError(f"{source}: YAML expands to more than {max_nodes} nodes (alias bomb?)")
        try:
            return loader.construct_document(node)
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"{source}: not valid YAML ({first})") from None
        except RecursionError:
            raise InputError(f"{source}: YAML nested too deeply") from None
    finally:
        loader.dispose()


def load_yaml(path: str | os.PathLike[str], *, max_nodes: int = MAX_NODES) -> Any:
    """Read a UTF-8 YAML file with :func:`loads_yaml`; errors name ``path``.

    Raises:
        InputError: not UTF-8, or any refusal of :func:`loads_yaml`.
        OSError: the file cannot be read.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not valid YAML (not UTF-8 text: {exc.reason})") from None
    return loads_yaml(text, path, max_nodes=max_nodes)
