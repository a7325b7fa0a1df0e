"""Whole numbers in text that comes from outside: ASCII digits only.

``str.isdigit()`` is true for ``²`` and ``١`` (whose ``int()`` fails or reads another
script's digits), so a filter like ``over ²`` once reached ``int()`` and a 500. Every
place that turns a client's text into a number goes through :func:`parse_decimal`.
"""

from __future__ import annotations


def parse_decimal(text: str, max_digits: int = 18) -> int | None:
    """``text`` as a non-negative int when it is 1..``max_digits`` ASCII digits, else None."""
    if not text or len(text) > max_digits or not text.isascii() or not text.isdigit():
        return None
    return int(text)
