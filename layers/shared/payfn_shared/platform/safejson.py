"""The one JSON decoder for what payfn reads from outside: depth-bounded, strict, typed errors.

Python's decoder recurses once per nesting level, so a 10 KB body nested 5,000 deep
raises ``RecursionError`` (not ``ValueError``) and used to surface as a 500. Here any
document nested deeper than ``max_depth`` is a :class:`JsonRejected` (a ``ValueError``),
as are NaN/Infinity and, when asked, repeated keys: what every listener answers 400.
"""

from __future__ import annotations

import json
from typing import Any

#: Deeper than any document payfn accepts (payment bodies are flat; Eureka's are 3 deep).
MAX_DEPTH = 32


class JsonRejected(ValueError):
    """Not a JSON document payfn accepts; the message says why (safe to show to the client)."""


def _reject_constant(name: str) -> Any:
    raise JsonRejected(f"{name} is not valid JSON")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise JsonRejected(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def depth(value: Any) -> int:
    """Nesting depth of a decoded document (a scalar is 0), without recursion."""
    deepest, pending = 0, [(value, 0)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            deepest = max(deepest, level)
            continue
        deepest = max(deepest, level + 1)
        pending.extend((child, level + 1) for child in item)
    return deepest


def loads(text: str | bytes, *, max_depth: int = MAX_DEPTH, unique_keys: bool = True) -> Any:
    """Decode ``text``; :class:`JsonRejected` when malformed, too deep or (``unique_keys``) keys repeat."""
    try:
        value = json.loads(text, parse_constant=_reject_constant,
                           object_pairs_hook=_unique_object if unique_keys else None)
    except RecursionError:
        raise JsonRejected(f"nested deeper than {max_depth} levels") from None
    except JsonRejected:
        raise
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise JsonRejected(str(exc)) from None
    if depth(value) > max_depth:
        raise JsonRejected(f"nested deeper than {max_depth} levels")
    return value
