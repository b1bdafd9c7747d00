"""The block table of a chunk record: its entries, checked; the byte ranges of one kind.

Why a module of its own: a record's payload starts with one 32-bit entry per
block (``kind << shift | stored length``, docs/format.md), and everything a
reader learns about a chunk without decompressing it comes from this table:
which blocks are stored, zero, unreadable or left out, and where each stored
one lies.  ``check_table`` is the one definition of a sound table: every
length checked against the block size and the record before anything is
sized from it.

One rule, three engines.  The rules are stated once, in the loop
(``_check_table``), which also words every rejection.  A join worker checks
a table per chunk, so two faster engines prove the common case (issue 12):
``_check_table_fast`` in C through bytes and itertools (no numpy, so every
worker has it), and ``_check_table_vectorized`` with numpy where it is
loaded already and the table is large enough to repay it (each is the
faster one on its side of NUMPY_MIN_BLOCKS, measured below).  Each returns
the loop's blocks list or None ("not sure"); on None the loop decides.  So
the engines accept only what the loop accepts, and every table the loop
rejects is rejected with its words (tests/format/test_records_fast.py checks this
on mutated tables).  What they share is written once: the entry layout of
each format version (``_layout``) and the one case they take
(``_all_kept``).
"""

from __future__ import annotations

import sys
from array import array
from itertools import accumulate, compress, repeat
from operator import and_, rshift

from ..errors import VerifyError
from .structs import (BLOCK_COMPRESSED, BLOCK_EXCLUDED, BLOCK_KIND_SHIFT, BLOCK_LEN_MASK, BLOCK_RAW,
                      BLOCK_UNREADABLE, BLOCK_ZERO, CHUNK_ALL_ZERO, CHUNK_EXCLUDED, CHUNK_HEADER_SIZE,
                      CHUNK_MAGIC, CHUNK_UNREADABLE, KIND_PAGES, V1_BLOCK_KIND_SHIFT, V1_BLOCK_LEN_MASK,
                      V1_CHUNK_MAGIC, ChunkHeader)

BIG_ENDIAN_HOST = sys.byteorder == "big"   # the block table is little-endian on disk
assert array("I").itemsize == 4, "stripedump needs a 4-byte unsigned int"


def _layout(h: ChunkHeader) -> tuple[int, int]:
    """(kind shift, length mask) of the table entries of a record of either format version."""
    if h.magic == V1_CHUNK_MAGIC:
        return V1_BLOCK_KIND_SHIFT, V1_BLOCK_LEN_MASK
    return BLOCK_KIND_SHIFT, BLOCK_LEN_MASK


def block_table(h: ChunkHeader, body) -> tuple[array, int, int]:
    """(table, kind shift, length mask) of a record's payload ``body``, in host byte order."""
    table = array("I", bytes(body[:4 * h.nblocks]))
    if BIG_ENDIAN_HOST:
        table.byteswap()
    return (table, *_layout(h))


def check_table(h: ChunkHeader, body, block_bytes: int, where: str, page_size: int | None = None) -> list:
    """The stored blocks of a record whose header and checksum were checked (``decode.read_chunk``).

    Returns, for every block that is stored, ``(how, a, b, pos, ln)``: chunk
    bytes ``[a, b)`` stored as ``how`` (BLOCK_RAW or BLOCK_COMPRESSED) in
    ``body[pos:pos + ln]``; VerifyError, naming the first fault, for a
    table that is not sound.  ``page_size``: the kept-page count of a pages
    chunk is checked against the table too.
    """
    nblocks = -(-h.raw_length // block_bytes)
    if h.nblocks != nblocks or 4 * nblocks > len(body):
        raise VerifyError(f"{where}: block table does not match the chunk length")
    if nblocks >= VECTOR_MIN_BLOCKS:
        if nblocks >= NUMPY_MIN_BLOCKS and _vectorize():
            blocks = _check_table_vectorized(h, body, block_bytes, nblocks, page_size)
        else:
            blocks = _check_table_fast(h, body, block_bytes, nblocks, page_size)
        if blocks is not None:
            return blocks
        # something is wrong (or unusual): the loop below says what, with the same words as always
    return _check_table(h, body, block_bytes, nblocks, where, page_size)


# Below this many blocks the loop is as fast as the fixed costs of the others.
VECTOR_MIN_BLOCKS = 16
# From this many blocks on numpy, where loaded, checks a table faster than _check_table_fast
# (measured, 4 KiB blocks: 256 blocks 55 against 92 us; 1024: 302 against 172 us; 4096: 858 against 371).
NUMPY_MIN_BLOCKS = 512


def _vectorize() -> bool:
    """Check this table with numpy?  Only where numpy is loaded already: the reader of a large
    dump imports it before join's workers fork (``machine.numpy_if_safe``).  A worker never
    imports it itself: the import costs 60-100 ms, and under a tight address-space limit
    OpenBLAS aborts the process (a join worker died so in the test suite)."""
    return "numpy" in sys.modules


def _all_kept(h: ChunkHeader, page_size: int | None) -> bool:
    """The header's kept-page count says no page was left out (or is not checked here): the one
    case the fast engines take; a table with excluded blocks is the loop's (it counts them)."""
    return not (page_size and h.version >= 2 and h.kind == KIND_PAGES) or h.kept_pages == h.raw_length // page_size


# _check_table_fast: the top byte of a version 2 entry whose length fits in 24 bits is its kind << 5;
# STORED_TOP marks the kinds that have data (compressed 0x00, raw 0x20).
_STORED_TOP = bytes(1 if t in (BLOCK_COMPRESSED << 5, BLOCK_RAW << 5) else 0 for t in range(256))


def _check_table_fast(h: ChunkHeader, body, block_bytes: int, nblocks: int, page_size: int | None) -> list | None:
    """``_check_table`` of a well-formed version 2 table of whole blocks, with no Python loop.

    Issue 12: the loop costs about 0.6 us a block (150-300 us per 1 MiB
    chunk, the largest share of a join worker's own work after the codec);
    this one makes about a dozen passes in C (bytes.count, sum, itertools)
    and needs no numpy, so every join and verify worker has it.  Returns
    the same blocks list, or None where ``_check_table`` might object, or
    where its rules take more than the common case (version 1, a short last
    block, excluded or unknown kinds, a big-endian host): the loop then
    decides, with its own messages, so every table it rejects is still
    rejected.

    Why the checks below are the loop's (an entry is ``kind << 29 | length``):
    every top byte is one of compressed, raw, zero, unreadable (so each
    length is below 2**24 and each kind is known); the stored entries (``st``)
    hold no 0 (a compressed block with no data; a raw one is checked next)
    and exactly ``nr`` raw entries of the full block length; the zero and
    unreadable entries sum to exactly their kinds (each length >= 0: all are
    0); the stored lengths sum to the payload after the table (each >= 0:
    none runs past the record, and they account for all of it).
    """
    if BIG_ENDIAN_HOST or h.magic != CHUNK_MAGIC or h.raw_length != nblocks * block_bytes \
            or not _all_kept(h, page_size):
        return None
    with memoryview(body)[:4 * nblocks] as tb, tb.cast("I") as table:      # released: no export of body outlives this
        top = bytes(tb[3::4])
        nz, nu = top.count(BLOCK_ZERO << 5), top.count(BLOCK_UNREADABLE << 5)
        nr = top.count(BLOCK_RAW << 5)
        if top.count(BLOCK_COMPRESSED << 5) + nr + nz + nu != nblocks:
            return None
        sel = top.translate(_STORED_TOP)
        st = list(compress(table, sel))
        zero_sum = sum(table) - nz * (BLOCK_ZERO << BLOCK_KIND_SHIFT) - nu * (BLOCK_UNREADABLE << BLOCK_KIND_SHIFT)
    raw_entry = (BLOCK_RAW << BLOCK_KIND_SHIFT) | block_bytes
    if 0 in st or st.count(raw_entry) != nr:
        return None
    stored_sum = sum(st)
    if zero_sum != stored_sum or stored_sum - nr * (BLOCK_RAW << BLOCK_KIND_SHIFT) + 4 * nblocks != len(body):
        return None
    a = list(compress(range(0, h.raw_length, block_bytes), sel))
    b = compress(range(block_bytes, h.raw_length + block_bytes, block_bytes), sel)
    if nr:
        lns = list(map(and_, st, repeat(BLOCK_LEN_MASK)))
        how = map(rshift, st, repeat(BLOCK_KIND_SHIFT))
    else:       # all compressed (the common case): each entry is its length
        lns, how = st, repeat(BLOCK_COMPRESSED)
    return list(zip(how, a, b, accumulate(lns, initial=4 * nblocks), lns))


def _check_table_vectorized(h: ChunkHeader, body, block_bytes: int, nblocks: int,
                            page_size: int | None) -> list | None:
    """``_check_table`` of a well-formed table with numpy (issue 12: 5-10x faster per MiB).

    Returns the same blocks list, or None where ``_check_table`` might object
    (or where its rules take more than the common case: excluded blocks),
    so that every table it rejects is still rejected by it, with its message.
    A function of its own so that no array (an export of ``body``) outlives it.
    """
    import numpy as np
    if not _all_kept(h, page_size):
        return None
    shift, mask = _layout(h)
    t = np.frombuffer(body, dtype="<u4", count=nblocks)
    last = h.raw_length - (nblocks - 1) * block_bytes
    how = t >> shift
    ln = t & mask
    comp = how == BLOCK_COMPRESSED
    # stored: compressed, or raw of exactly the block's length (the last one may be short)
    stored = comp | (t == ((BLOCK_RAW << shift) | block_bytes))
    if last != block_bytes:
        stored[-1] = comp[-1] or t[-1] == (BLOCK_RAW << shift) | last
    ok = stored | (t == BLOCK_ZERO << shift) | (t == BLOCK_UNREADABLE << shift)    # no data, no length
    if not ok.all() or (comp & (ln == 0)).any():
        return None
    lns = np.where(stored, ln, 0).astype(np.int64)
    ends = np.cumsum(lns)
    if int(ends[-1]) + 4 * nblocks != len(body):
        return None         # the lengths are >= 0: summing to the payload, none runs past it
    idx = np.flatnonzero(stored)
    a = idx * block_bytes
    b = a + block_bytes
    if last != block_bytes and stored[-1]:
        b[-1] = h.raw_length
    l2 = lns[idx]
    return list(zip(how[idx].tolist(), a.tolist(), b.tolist(), (ends[idx] - l2 + 4 * nblocks).tolist(),
                    l2.tolist()))


def _check_table(h: ChunkHeader, body, block_bytes: int, nblocks: int, where: str,
                 page_size: int | None) -> list:
    """Every block table entry checked in turn: ``check_table``'s blocks list, or VerifyError naming the fault."""
    blocks: list[tuple[int, int, int, int, int]] = []
    table, shift, mask = block_table(h, body)
    pos = 4 * nblocks
    excluded = 0
    for i, e in enumerate(table):
        how, ln = e >> shift, e & mask
        a = i * block_bytes
        b = min(a + block_bytes, h.raw_length)
        if how in (BLOCK_ZERO, BLOCK_UNREADABLE, BLOCK_EXCLUDED):
            if ln:
                raise VerifyError(f"{where}: block {i} has no data but a length of {ln}")
            if how == BLOCK_EXCLUDED:
                if h.version < 2 or not h.flags & CHUNK_EXCLUDED or h.kind != KIND_PAGES:
                    raise VerifyError(f"{where}: block {i} is marked excluded where no block may be")
                excluded += b - a
            continue
        if pos + ln > len(body):
            raise VerifyError(f"{where}: block {i} runs past the record")
        if how == BLOCK_RAW:
            if ln != b - a:
                raise VerifyError(f"{where}: raw block {i} has length {ln}, expected {b - a}")
        elif how != BLOCK_COMPRESSED:
            raise VerifyError(f"{where}: block {i} has an unknown storage kind {how}")
        elif ln == 0:
            raise VerifyError(f"{where}: compressed block {i} is empty")
        blocks.append((how, a, b, pos, ln))
        pos += ln
    if pos != len(body):
        raise VerifyError(f"{where}: block table does not account for the whole payload")
    if page_size and h.version >= 2 and h.kind == KIND_PAGES and \
            h.kept_pages != (h.raw_length - excluded) // page_size:
        raise VerifyError(f"{where}: kept-page count {h.kept_pages} does not match the block table")
    return blocks


def _ranges_of(h: ChunkHeader, body, block_bytes: int, kind: int) -> list[tuple[int, int]]:
    """Byte ranges of the chunk whose blocks are of ``kind`` (neighbours merged)."""
    if isinstance(body, memoryview) and h.header_size != CHUNK_HEADER_SIZE and body.obj is not None \
            and len(body) != h.payload_length:
        # a version 1 record sliced at the version 2 header size by a caller:
        # re-slice the record it views at its own header size
        body = memoryview(body.obj)[h.header_size:h.record_length]
    table, shift, mask = block_table(h, body)
    out: list[tuple[int, int]] = []
    for i, e in enumerate(table):
        if e >> shift == kind:
            a, b = i * block_bytes, min((i + 1) * block_bytes, h.raw_length)
            if out and out[-1][1] == a:
                out[-1] = (out[-1][0], b)
            else:
                out.append((a, b))
    return out


def unreadable_ranges(h: ChunkHeader, body, block_bytes: int) -> list[tuple[int, int]]:
    """Byte ranges of a checked record (``decode.read_chunk``) that the source could not give."""
    if not h.flags & CHUNK_UNREADABLE or h.flags & CHUNK_ALL_ZERO:
        return []
    return _ranges_of(h, body, block_bytes, BLOCK_UNREADABLE)


def excluded_ranges(h: ChunkHeader, body, block_bytes: int) -> list[tuple[int, int]]:
    """Byte ranges of a checked record that a dump level left out (not memory: not zeros)."""
    if not h.flags & CHUNK_EXCLUDED or h.flags & CHUNK_ALL_ZERO:
        return []
    return _ranges_of(h, body, block_bytes, BLOCK_EXCLUDED)
