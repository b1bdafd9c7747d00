"""Bitmaps in the bit order crash and makedumpfile read: bit i is bit (i & 7) of byte i >> 3.

Why a module of its own: the kdump layout's bitmaps (kdump/), the kept-page
maps of a filtered dump (read/filtered.py) and the kdump view all paint
ranges of bits; one helper, below all of them.
"""

from __future__ import annotations


def set_bits(buf: bytearray, a: int, b: int) -> None:
    """Set bits [a, b) of ``buf``, LSB first in each byte (crash's get_bit)."""
    while a < b and a & 7:
        buf[a >> 3] |= 1 << (a & 7)
        a += 1
    while b > a and b & 7:
        b -= 1
        buf[b >> 3] |= 1 << (b & 7)
    if a < b:
        buf[a >> 3:b >> 3] = b"\xff" * ((b - a) >> 3)
