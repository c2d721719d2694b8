"""YAML configuration files read as plain data: ``yaml.safe_load`` semantics, plus
refusal of duplicate keys.

PyYAML keeps the *last* of two equal keys of a mapping without a word, so a catalog
or cluster file edited by hand can silently mean something else than it reads
(``sources:`` twice drops every entry of the first). :func:`load_yaml` refuses that,
naming the key and both lines. Tags that make objects (``!!python/...``) are refused
as by ``safe_load``.
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["YamlError", "load_yaml"]


class YamlError(ValueError):
    """A YAML file is not valid, or not plain data, or repeats a key."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``SafeLoader`` whose mappings refuse a key given twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)  # resolves '<<' merge keys first, as SafeLoader does
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader refuses it below
                continue
            line = key_node.start_mark.line + 1
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} at line {line} (first at line {first})",
                    key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, *, source: str) -> Any:
    """Parse YAML ``text`` as plain data, refusing duplicate keys.

    Parameters
    ----------
    text : str
        The YAML document.
    source : str
        What to name in messages (the file's path).

    Raises
    ------
    YamlError
        For invalid YAML, a tag that is not plain data, or a key given twice in one
        mapping: ``"<source>: duplicate key 'sources' at line 9 (first at line 2); ..."``.
    """
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: plain data only
    except yaml.constructor.ConstructorError as e:
        if e.problem and e.problem.startswith("duplicate key"):
            raise YamlError(
                f"{source}: {e.problem}; a mapping may hold each key once: remove or rename one"
            ) from None
        raise YamlError(f"{source}: not valid YAML (plain data only): {_brief(e)}") from None
    except yaml.YAMLError as e:
        raise YamlError(f"{source}: not valid YAML: {_brief(e)}") from None


def _brief(e: yaml.YAMLError) -> str:
    """One line: the problem and where (PyYAML's own message spans several lines)."""
    problem = getattr(e, "problem", None)
    mark = getattr(e, "problem_mark", None)
    if not problem:
        return " ".join(str(e).split())
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    context = getattr(e, "context", None)
    return f"{where}{problem}" + (f" ({context})" if context else "")
