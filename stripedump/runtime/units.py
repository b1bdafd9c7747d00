"""Sizes as users write them (``4K``, ``1.5G``) and as messages show them.

Why a module of its own: every command parses sizes once, at the CLI edge
(style: parse user choices once), and several messages print them.
"""

from __future__ import annotations

import re

from ..errors import UsageError

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


def parse_size(text: str, what: str = "size") -> int:
    """``4096``, ``4K``, ``64M``, ``10G``, ``1.5G`` (binary units, optional ``iB``/``B``)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:I?B)?\s*", str(text).upper())
    if not m:
        raise UsageError(f"invalid {what} {text!r}: use a number with an optional unit K, M, G or T")
    value = float(m.group(1)) * _UNITS[m.group(2)]
    if value != int(value):
        raise UsageError(f"invalid {what} {text!r}: not a whole number of bytes")
    return int(value)


def human_size(n: int) -> str:
    for unit, shift in (("PiB", 50), ("TiB", 40), ("GiB", 30)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n >> 20} MiB" if n >= 64 << 20 else f"{n >> 10} KiB"
