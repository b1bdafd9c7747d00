"""The source's header region, kept in the manifest so a join can rebuild it without member 0.

Why: the ELF header, the program-header table and the notes are file bytes
that no page renders; they travel as residue chunks, and one member holds
them.  When that member is lost (its disk died), a join would write zeros
at offset 0: a file no ELF reader opens, although every member's manifest
describes the source.  So the manifest keeps those bytes too
(``source.header_pieces``: the raw ELF header, the program-header table and,
when ``e_phnum`` is PN_XNUM, section header 0 that holds the real count; the
notes were already there as ``source.notes``, placed by the PT_NOTE entries
of ``source.segments``).  A join writes them where a residue chunk is
missing, byte for byte as in the source; everything else of a missing chunk
stays zeros and is reported missing.

The manifest copy is checked before use: it is the same in every member
(``DumpSet`` compares the manifests), and each piece must lie inside the
source and inside the limits below, so a hostile manifest cannot make a
join allocate or write more than a few MiB here.  Manifests written before
this key existed have no pieces: their joins behave as before.
"""

from __future__ import annotations

import base64
import struct

from ..errors import SourceError
from ..runtime.fileio import pread_exact
from .vmcore import PT_NOTE, merge_ranges

PN_XNUM = 0xFFFF
# headers + notes a join takes from a manifest; vmcore.py caps the notes at 64 MiB, and a
# program-header table larger than MAX_PHDR_BYTES (300,000 entries) is not kept
MAX_HEADER_BYTES = 96 << 20
MAX_PHDR_BYTES = 16 << 20
# ELF header field layouts after e_ident: (e_phoff, e_shoff) and (e_ehsize .. e_shnum)
_EHDR = {64: ("QQ", 32, 64), 32: ("II", 28, 52)}     # offsets format, where, sizeof(Elf_Ehdr)


def header_pieces(fd: int, size: int) -> list[list]:
    """[file offset, base64 bytes] of the raw ELF header, program headers and section header 0.

    For the manifest (``build_manifest``).  ``fd`` is the source, already
    parsed by ``vmcore.Source`` (so its headers lie inside the file); only
    the pieces are read, never the notes (the manifest has them).
    """
    ident = _pread(fd, 16, 0)
    bits = 64 if ident[4] == 2 else 32
    end = "<" if ident[5] == 1 else ">"
    fmt, at, ehsize = _EHDR[bits]
    head = _pread(fd, ehsize, 0)
    phoff, shoff = struct.unpack_from(end + fmt, head, at)
    _eh, phentsize, phnum, shentsize, _shnum = struct.unpack_from(end + "HHHHH", head, ehsize - 12)
    pieces = [(0, head)]
    if phnum == PN_XNUM and shoff and shentsize and shoff + shentsize <= size:
        sh0 = _pread(fd, shentsize, shoff)
        pieces.append((shoff, sh0))
        phnum = struct.unpack_from(end + "I", sh0, 44 if bits == 64 else 28)[0]   # sh_info
    if phoff and phnum and phoff + phnum * phentsize <= size and phnum * phentsize <= MAX_PHDR_BYTES:
        pieces.append((phoff, _pread(fd, phnum * phentsize, phoff)))
    return [[off, base64.b64encode(data).decode()] for off, data in sorted(pieces)]


def _pread(fd: int, n: int, off: int) -> bytes:
    return pread_exact(fd, off, n, SourceError, "source header")


def manifest_pieces(source: dict, notes: bytes, segments: list[dict], size: int) -> list[tuple[int, bytes]] | None:
    """(file offset, bytes) a join may write from the manifest, sorted; None for an older manifest.

    ``source`` is the manifest's ``source`` object; ``notes`` and
    ``segments`` as ``DumpSet`` decoded them.  Raises ValueError (a
    malformed manifest) for pieces that do not fit the source.
    """
    raw = source.get("header_pieces")
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) > 16:
        raise ValueError("header_pieces is not a short list")
    out, total = [], 0
    for p in raw:
        if not (isinstance(p, list) and len(p) == 2 and type(p[0]) is int and isinstance(p[1], str)):
            raise ValueError(f"malformed header piece {str(p)[:40]!r}")
        total += len(p[1]) * 3 // 4          # checked before decoding allocates it
        if total > MAX_HEADER_BYTES:
            raise ValueError("header pieces are implausibly large")
        out.append((p[0], base64.b64decode(p[1], validate=True)))
    pos = 0
    for s in segments:          # the notes, split back over the PT_NOTE segments in header order
        if s["type"] == PT_NOTE and s["filesz"]:
            out.append((s["offset"], notes[pos:pos + s["filesz"]]))
            pos += s["filesz"]
    if pos != len(notes):
        raise ValueError("notes do not match the PT_NOTE segments")
    total += len(notes)
    if total > MAX_HEADER_BYTES:
        raise ValueError("header pieces are implausibly large")
    for off, data in out:
        if off < 0 or off + len(data) > size:
            raise ValueError(f"header piece at {off} lies outside the source")
    return sorted(out, key=lambda p: p[0])


def clip(pieces: list[tuple[int, bytes]], ranges: list[tuple[int, int]]):
    """(offset, bytes) of the pieces' parts that fall inside ``ranges`` (sorted, disjoint [a, b))."""
    for off, data in pieces:
        end = off + len(data)
        for a, b in ranges:
            lo, hi = max(a, off), min(b, end)
            if lo < hi:
                yield lo, data[lo - off:hi - off]


def rebuilt_ranges(pieces, ranges) -> list[tuple[int, int]]:
    """The file ranges [a, b) of ``ranges`` that the pieces rebuild, merged."""
    return merge_ranges([(off, off + len(d)) for off, d in clip(pieces or [], ranges)])


DUMP_ELF_INCOMPLETE = 0x1    # e_flags bit: makedumpfile's mark of an incomplete ELF dump (crash honours it)


def incomplete_mark(head: bytes) -> tuple[int, bytes] | None:
    """(offset, bytes) that set DUMP_ELF_INCOMPLETE in the ELF header ``head`` (its first 64
    bytes); None when ``head`` is not a plausible ELF header (nothing to mark)."""
    if len(head) < 52 or head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] not in (1, 2):
        return None
    at = 48 if head[4] == 2 else 36             # e_flags in Elf64_Ehdr / Elf32_Ehdr
    order = "little" if head[5] == 1 else "big"
    flags = int.from_bytes(head[at:at + 4], order) | DUMP_ELF_INCOMPLETE
    return at, flags.to_bytes(4, order)
