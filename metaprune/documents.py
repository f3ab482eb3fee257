"""Bounded parsing of JSON and YAML documents that come from users or clients.

Python's ``json`` and PyYAML parsers recurse once per nesting level, so a few kilobytes
of ``[[[[...`` end in a ``RecursionError`` (or worse, a crash deep in C code); an
oversized document costs memory before anything looks at it. Every document metaprune
reads from outside (spec metadata, configs, metanetwork files) goes through here: its size
is checked against ``Limits.max_spec_bytes``, its nesting depth against
``Limits.max_json_depth`` *before* the parser runs (a flat, non-recursive scan), and any
parser failure leaves as :class:`~metaprune.errors.InvalidInputError`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from metaprune.errors import InvalidInputError, LimitExceededError, describe_exception
from metaprune.limits import DEFAULT_LIMITS, Limits

__all__ = ["check_depth", "parse_json", "parse_yaml", "text_depth"]


def text_depth(text: str) -> int:
    """The maximum bracket nesting of JSON (or flow-style YAML) ``text``, ignoring brackets
    inside quoted strings; a cheap, non-recursive check run before parsing. (YAML block
    nesting is bounded after parsing by :func:`check_depth`; a parser recursion error on
    absurd indentation depth is caught and reported as invalid input.)"""
    depth = deepest = 0
    in_string: str | None = None
    escaped = False
    for char in text:
        if in_string is not None:
            if escaped:
                escaped = False
            elif char == "\\" and in_string == '"':
                escaped = True
            elif char == in_string:
                in_string = None
        elif char in "\"'":
            in_string = char
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(0, depth - 1)
    return deepest


def check_depth(value: Any, limits: Limits = DEFAULT_LIMITS, what: str = "document") -> None:
    """Raise :class:`LimitExceededError` if plain data ``value`` nests deeper than
    ``limits.max_json_depth`` (iterative: safe on any depth).

    YAML aliases can make a small document a huge tree ("billion laughs"); the walk visits
    at most ``limits.max_spec_bytes`` containers, as many as a document of that size can
    hold without aliases, and refuses the rest.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    visited = 0
    while stack:
        node, depth = stack.pop()
        if isinstance(node, Mapping):
            children: Any = node.values()
        elif isinstance(node, (list, tuple)):
            children = node
        else:
            continue
        if depth > limits.max_json_depth:
            raise LimitExceededError("max_json_depth", limits.max_json_depth, depth, what)
        visited += 1
        if visited > limits.max_spec_bytes:
            raise InvalidInputError(
                f"{what} expands to more than {limits.max_spec_bytes:,} nested containers "
                "(YAML aliases?)"
            )
        stack.extend((child, depth + 1) for child in children)


def _check_text(text: object, limits: Limits, what: str) -> str:
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as err:
            raise InvalidInputError(f"{what} is not UTF-8 text ({err.reason})") from None
    if not isinstance(text, str):
        raise InvalidInputError(f"{what} must be text (found {type(text).__name__})")
    size = len(text.encode("utf-8", "replace"))
    limits.check("max_spec_bytes", size, what)
    depth = text_depth(text)
    if depth > limits.max_json_depth:
        raise LimitExceededError("max_json_depth", limits.max_json_depth, depth, what)
    return text


def parse_json(text: str | bytes, limits: Limits = DEFAULT_LIMITS, what: str = "JSON") -> Any:
    """``json.loads(text)`` with size and depth bounds; NaN/Infinity literals are refused.

    Raises:
        LimitExceededError: over ``max_spec_bytes`` or ``max_json_depth``.
        InvalidInputError: not valid JSON.
    """
    text = _check_text(text, limits, what)

    def refuse_constant(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        return json.loads(text, parse_constant=refuse_constant)
    except (ValueError, RecursionError) as err:
        raise InvalidInputError(f"{what} is not valid JSON: {describe_exception(err)}") from None


def parse_yaml(text: str | bytes, limits: Limits = DEFAULT_LIMITS, what: str = "YAML") -> Any:
    """``yaml.safe_load(text)`` (a superset of JSON) with size and depth bounds.

    Raises:
        LimitExceededError: over ``max_spec_bytes`` or ``max_json_depth``.
        InvalidInputError: not valid YAML, or aliases that expand past the bounds.
    """
    import yaml

    text = _check_text(text, limits, what)
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError, ValueError) as err:
        raise InvalidInputError(
            f"{what} is not valid JSON/YAML: {describe_exception(err)}"
        ) from None
    check_depth(data, limits, what)  # block-style nesting and aliases, after parsing
    return data
