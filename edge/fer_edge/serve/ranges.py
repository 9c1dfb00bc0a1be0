"""HTTP byte ranges: the one range a ``Range`` header asks for in a file of a known size."""

from __future__ import annotations

import re
from dataclasses import dataclass

BYTE_POSITION = re.compile(r"[0-9]*")  # not str.isdigit, which takes '²' and other digits int() refuses


@dataclass(frozen=True)
class ByteRange:
    """Bytes ``start`` to ``end`` inclusive, as HTTP counts them."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1


UNSATISFIABLE = ByteRange(0, -1)


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The one byte range ``header`` asks for in a file of ``size`` bytes; None: send the whole file (no header,
    one this server does not handle, several ranges); :data:`UNSATISFIABLE` when it lies past the end."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    first, dash, last = spec.strip().partition("-")
    if unit.strip().lower() != "bytes" or "," in spec or not dash:
        return None
    if not (BYTE_POSITION.fullmatch(first) and BYTE_POSITION.fullmatch(last)) or first == last == "":
        return None
    if first == "":  # the last N bytes
        n = _byte_position(last)
        return ByteRange(max(0, size - n), size - 1) if n > 0 and size > 0 else UNSATISFIABLE
    start, end = _byte_position(first), _byte_position(last) if last else size - 1
    if start >= size:
        return UNSATISFIABLE
    if end < start:
        return None
    return ByteRange(start, min(end, size - 1))


def _byte_position(digits: str) -> int:
    """``digits`` as a number; one past any file's size as 10**18 (int() refuses more than 4300 digits)."""
    significant = digits.lstrip("0")
    return int(significant or "0") if len(significant) <= 18 else 10**18
