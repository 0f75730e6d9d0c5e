"""Reading YAML written by people who may be careless or hostile: bounded in size, strict about duplicate keys.

``yaml.safe_load`` builds only plain data, but it still accepts two things that hurt a benchmark harness:

- **alias bombs** ("billion laughs"): a few hundred bytes of anchors and aliases (``&a [*b, *b, ...]``) that
  expand to billions of nodes once anything walks the data (validation, hashing, printing). The loader here
  counts the nodes of the document *as if every alias were expanded* while composing it, and refuses it as soon
  as the count passes ``max_nodes``, before any Python object is built; a recursive alias (a node that contains
  itself) is refused the same way, and so is nesting deeper than ``max_depth``.
- **duplicate keys**: YAML keeps the last of two equal keys without a word, so a second ``recipe:`` silently
  replaces the first. Here it is an error naming the key and both lines (``<<:`` merge keys may still be
  overridden, as YAML intends).

Files larger than ``max_bytes`` are refused before parsing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

MAX_BYTES = 1 << 20  # 1 MiB: a suite file is a few kilobytes (its grid is a product, never spelled out)
MAX_NODES = 100_000  # nodes of the document with every alias expanded
MAX_DEPTH = 64  # nesting of collections
_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlInputError(ValueError):
    """A YAML document refused: ``line`` (1-based, or None) and a message that says what to change."""

    def __init__(self, message: str, line: int | None = None) -> None:
        self.line = line
        super().__init__(message)


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _line(node: Node) -> int:
    return node.start_mark.line + 1


class BoundedSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that bounds the expanded size and depth of a document and refuses duplicate keys.

    The expanded size of every composed node is kept (an alias costs the size of the node it names), so the
    check is one addition per node and the document's expanded size is known without expanding anything."""

    max_nodes = MAX_NODES
    max_depth = MAX_DEPTH

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._expanded_size: dict[Node, int] = {}
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        is_alias = self.check_event(yaml.AliasEvent)
        self._depth += 1
        try:
            if self._depth > self.max_depth:
                raise YamlInputError(f"nested more than {self.max_depth} levels deep; a suite needs a handful",
                                     self.peek_event().start_mark.line + 1)
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        size = self._expanded_size.get(node)
        if size is None:
            if is_alias:
                raise YamlInputError("an alias refers to a collection that contains it (a recursive structure): "
                                     "write the data out instead", _line(node))
            size = 1 + sum(self._expanded_size[child] for child in _children(node))
            self._expanded_size[node] = size
        if size > self.max_nodes:
            raise YamlInputError(f"the document expands to more than {self.max_nodes:,} values once its aliases "
                                 f"(*name) are expanded (an alias bomb?); write the values out, or use fewer "
                                 f"nested aliases", _line(node))
        return node

    def construct_mapping(self, node: Node, deep: bool = False) -> dict:
        if isinstance(node, MappingNode):
            self._refuse_duplicate_keys(node)
        return super().construct_mapping(node, deep=deep)

    def _refuse_duplicate_keys(self, node: MappingNode) -> None:
        """Keys equal as Python values (``1`` and ``1.0`` too: a dict would keep only one) are refused."""
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                seen = key in first_line
            except TypeError:
                continue  # an unhashable key: the constructor reports it
            if seen:
                raise YamlInputError(f"duplicate key {key!r} (first at line {first_line[key]}): YAML would "
                                     f"silently keep only the last one; merge the two entries into one",
                                     _line(key_node))
            first_line[key] = _line(key_node)


def load_yaml_file(path: str | Path, max_bytes: int = MAX_BYTES) -> Any:
    """The data of a one-document YAML file, or YamlInputError (too large, alias bomb, too deep, duplicate key)
    or yaml.YAMLError (not YAML). Reads at most ``max_bytes + 1`` bytes, so a device or a pipe cannot fill memory."""
    with open(path, "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise YamlInputError(f"larger than {max_bytes:,} bytes: not a suite file (a suite's grid is a product of "
                             f"a few lists, a few kilobytes)")
    loader = BoundedSafeLoader(data)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
