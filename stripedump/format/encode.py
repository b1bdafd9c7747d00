"""Encoding a chunk: source pages into a self-describing record, in a caller's buffer.

Why a module of its own: this is what the dump's workers run, and only they
(the readers decode: decode.py).  ``encode_chunk`` reads a chunk of the plan
from the source, finds its zero blocks, compresses the others with the
chunk's codec (stored raw where that does not shrink them) and writes header,
block table and payload into a shared-memory slot.  Its loops were tuned
per page (issue 12, docs/benchmarks.md; bench/perpage.py measures them):
comments below say which measurement each shortcut stands on.  Pages the
source cannot give are read again carefully (source/careful.py) and marked
unreadable; pages a dump level leaves out are marked excluded.
"""

from __future__ import annotations

import mmap
from array import array
from itertools import compress

from ..errors import SourceError
from ..source.careful import read_carefully
from ..source.vmcore import Window
from .blocktable import BIG_ENDIAN_HOST
from .structs import (BLOCK_COMPRESSED, BLOCK_EXCLUDED, BLOCK_KIND_SHIFT, BLOCK_RAW, BLOCK_UNREADABLE,
                      BLOCK_ZERO, CHUNK_ALL_ZERO, CHUNK_EXCLUDED, CHUNK_HEADER_SIZE, CHUNK_MAGIC,
                      CHUNK_UNREADABLE, KIND_PAGES, ChunkHeader, checksum)

NO_DUMP = bytes(16)     # the dump id a worker leaves in the header: the member's writer stamps it


def encode_chunk(src, codec, chunk, block_bytes: int, out, zero,
                 careful: bool = False, excluded=None) -> tuple[int, int, int]:
    """Read ``chunk`` from ``src`` and write its record into ``out``.

    ``zero`` is a bytes-like of at least ``block_bytes`` zeros; several blocks
    long, it lets a chunk all zero be found with few compares.  A read error
    (or ``careful``, after the page faults of an mmap read killed a worker)
    switches to ``read_carefully``: blocks that hold unreadable pages become
    BLOCK_UNREADABLE.  Returns (record length, payload checksum, unreadable
    blocks).

    ``excluded`` (dump levels, issue 11; a pages chunk only, blocks of one
    page): one entry per page of the chunk, true where a dump level leaves
    the page out (a numpy bool array, or a bytes-like of 0/1), or a callable
    given the chunk's bytes as read (a memoryview; None for a hole of the
    source, where nothing is read) that returns such a sequence, so that a
    classifier can zero-test the pages without reading them again.  Excluded
    pages become BLOCK_EXCLUDED blocks (nothing stored), the chunk gets
    CHUNK_EXCLUDED and ``kept_pages`` counts the others.  An unreadable page
    stays BLOCK_UNREADABLE even where the classifier excluded it (its bytes
    were zeros read for it, not its contents).  A chunk whose blocks are all
    zero or excluded, with at least one excluded, keeps its block table
    (never CHUNK_ALL_ZERO: that would claim the left-out pages are zeros).
    """
    if excluded is not None:
        if chunk.kind != KIND_PAGES or block_bytes != src.page_size:
            raise ValueError("page exclusion needs a pages chunk and blocks of one page")
        return _encode_excluded(src, codec, chunk, block_bytes, out, zero, careful, excluded)
    if chunk.kind == KIND_PAGES:
        hole = src.phys_is_hole(chunk.start, chunk.count)
        n = chunk.count * src.page_size
    else:
        hole = src.file_is_hole(chunk.start, chunk.count)
        n = chunk.count
    # the dump id is left zero here: the member's writer stamps it (MemberWriter.append)
    kept = chunk.count if chunk.kind == KIND_PAGES else 0
    if hole:       # sparse source: all zero, nothing to read
        ChunkHeader(CHUNK_MAGIC, chunk.kind, codec.ID, CHUNK_ALL_ZERO, NO_DUMP, chunk.id, chunk.start, n,
                    0, 0, checksum(b""), kept).pack_into(out, 0)
        return CHUNK_HEADER_SIZE, checksum(b""), 0
    w, bad = _read(src, chunk, careful)
    unreadable = 0
    with w:
        obj, base, n = w.obj, w.base, w.length
        nblocks = -(-n // block_bytes)
        tstart = CHUNK_HEADER_SIZE
        dstart = tstart + 4 * nblocks
        mv = w.view()
        out_mv = out if isinstance(out, memoryview) else memoryview(out)
        try:
            if bad or n % block_bytes:
                table, pos, zeros, unreadable = _encode_blocks_any(codec, obj, base, mv, n, block_bytes,
                                                                   out_mv, dstart, zero, bad)
            else:
                table, pos, zeros = _encode_blocks(codec, obj, base, mv, n, block_bytes, out_mv, dstart, zero)
        finally:
            mv.release()
            if out_mv is not out:
                out_mv.release()
    return _seal(out, codec, chunk, CHUNK_UNREADABLE if unreadable else 0, zeros == nblocks, n, nblocks, table,
                 pos, kept, unreadable)


def _read(src, chunk, careful: bool) -> tuple[Window, list[tuple[int, int]]]:
    """(window, unreadable byte ranges) of ``chunk``: one window (mmap or pread) and no ranges,
    or, after a read error or with ``careful`` (a worker died of SIGBUS in it), ``read_carefully``."""
    pages = chunk.kind == KIND_PAGES
    if not careful:
        try:
            return (src.phys_window(chunk.start, chunk.count) if pages
                    else src.window(chunk.start, chunk.count)), []
        except SourceError:
            pass
    return read_carefully(src, pages, chunk.start, chunk.count)


def _seal(out, codec, chunk, flags: int, all_zero: bool, n: int, nblocks: int, table: array, pos: int,
          kept: int, unreadable: int) -> tuple[int, int, int]:
    """Write the block table (none for a chunk all zero) and the header: ``encode_chunk``'s result."""
    tstart = CHUNK_HEADER_SIZE
    if all_zero:
        flags, nblocks, pos = CHUNK_ALL_ZERO, 0, tstart
    else:
        if BIG_ENDIAN_HOST:
            table.byteswap()
        out[tstart:tstart + 4 * nblocks] = table.tobytes()
    csum = checksum(memoryview(out)[tstart:pos])
    ChunkHeader(CHUNK_MAGIC, chunk.kind, codec.ID, flags, NO_DUMP, chunk.id, chunk.start, n, nblocks,
                pos - tstart, csum, kept).pack_into(out, 0)
    return pos, csum, unreadable


def _exclusion_mask(excluded, data, count: int) -> bytes:
    """``excluded`` (a sequence or a callable of the chunk's bytes) as ``count`` bytes of 0 or 1."""
    if callable(excluded):
        excluded = excluded(data)
    if excluded is None:
        return bytes(count)
    mask = bytes(excluded.astype("u1")) if hasattr(excluded, "astype") else bytes(excluded)
    if len(mask) != count:
        raise ValueError(f"exclusion mask has {len(mask)} entries for a chunk of {count} pages")
    return mask.translate(_ONE_IF_SET)


_ONE_IF_SET = bytes([0]) + bytes([1]) * 255


def _encode_excluded(src, codec, chunk, ps: int, out, zero, careful: bool, excluded) -> tuple[int, int, int]:
    """``encode_chunk`` of a pages chunk with a per-page exclusion (blocks of one page)."""
    count, n = chunk.count, chunk.count * ps
    if src.phys_is_hole(chunk.start, chunk.count):
        mask = _exclusion_mask(excluded, None, count)
        if not mask.count(1):       # as without exclusion: an all-zero record
            return encode_chunk(src, codec, chunk, ps, out, zero)
        w, bad = Window(bytearray(n), 0, n), []
    else:
        w, bad = _read(src, chunk, careful)
        mask = None
    dstart = CHUNK_HEADER_SIZE + 4 * count
    unreadable = 0
    with w:
        obj, base = w.obj, w.base
        mv = w.view()
        out_mv = out if isinstance(out, memoryview) else memoryview(out)
        try:
            if mask is None:
                mask = _exclusion_mask(excluded, mv, count)
            nexcl = mask.count(1)
            if not bad:       # the common case: issue 12's encode loop over the pages neither zero nor left out
                table, pos, zeros = _encode_blocks(codec, obj, base, mv, n, ps, out_mv, dstart, zero, mask)
                if not len(table):
                    table = array("I", (BLOCK_ZERO << BLOCK_KIND_SHIFT,)) * count
                if nexcl:       # runs of pages left out (free blocks, cache): a slice each
                    EXCL = array("I", (BLOCK_EXCLUDED << BLOCK_KIND_SHIFT,))
                    i = mask.find(1)
                    while i >= 0:
                        j = mask.find(0, i)
                        j = count if j < 0 else j
                        table[i:j] = EXCL * (j - i)
                        i = mask.find(1, j)
            else:
                table, pos, zeros, unreadable = _encode_blocks_any(codec, obj, base, mv, n, ps, out_mv, dstart,
                                                                   zero, bad, mask)
                nexcl = sum(1 for e in table if e >> BLOCK_KIND_SHIFT == BLOCK_EXCLUDED)
        finally:
            mv.release()
            if out_mv is not out:
                out_mv.release()
    # all zero only when nothing was excluded or unreadable
    return _seal(out, codec, chunk, (CHUNK_UNREADABLE if unreadable else 0) | (CHUNK_EXCLUDED if nexcl else 0),
                 zeros == count, n, count, table, pos, count - nexcl, unreadable)


# SAFE_FIND_END: mmap.find on CPython 3.11.0-3.11.4 (Debian 12 ships 3.11.2) reads one byte past
# the end of the range it searches (gh-105235, an off-by-one in fastsearch).  Inside a mapping
# that byte is there; at its very end the next page may be unmapped, and the worker dies of
# SIGSEGV (seen on a fresh Debian 12 while dumping a synthetic core).  So a zero test whose
# range ends at the end of the mapping compares a slice instead (one block per window).


def _zero_flags(obj, base: int, n: int, bb: int, zero, idxs=None) -> list[bool]:
    """Per block of ``obj[base:base+n]`` (whole blocks), or per block of ``idxs`` (block
    indexes from ``base``): True where it is all zero.

    mmap.find runs at memory speed without a copy, while bytes/bytearray.find
    pre-processes the needle on every call (0.5 GB/s here); for those a slice
    compare (a copy plus memcmp, 5-11 GB/s) wins.  One comprehension for the
    whole chunk: no per-block branch in the encode loop.
    """
    z = zero if len(zero) == bb else zero[:bb]
    starts = range(base, base + n, bb) if idxs is None else [base + i * bb for i in idxs]
    if isinstance(obj, mmap.mmap):
        find, size = obj.find, len(obj)
        # a search that ends at the mapping's end compares slices instead: SAFE_FIND_END
        return [find(z, s, s + bb) == s if s + bb < size else obj[s:s + bb] == z for s in starts]
    return [obj[s:s + bb] == z for s in starts]


def _nonzero_blocks(obj, base: int, n: int, bb: int, zero) -> list[int]:
    """The indexes of the blocks of ``obj[base:base+n]`` (whole blocks) that are not all zero.

    When ``zero`` holds several blocks, a chunk all zero (most of a freshly booted machine's
    memory) is found with one compare per ``len(zero)`` bytes, tried only when its first block
    is zero: ``mmap.find`` of the whole piece reads it where it is, 70-80 us per MiB here, as
    fast as numpy's OR of each block's words (75-90 us, and its import costs 70-100 ms), twice
    as fast as a search per block (130-160 us).  Otherwise ``_zero_flags``.
    """
    step = len(zero) - len(zero) % bb
    if step > bb and obj[base:base + bb] == zero[:bb]:
        s, end = base, base + n
        find, size = (obj.find, len(obj)) if isinstance(obj, mmap.mmap) else (None, 0)
        while s < end:
            k = min(step, end - s)
            z = zero if k == len(zero) else zero[:k]
            # mmap.find of the whole piece: no copy; never up to the mapping's end (SAFE_FIND_END)
            if (find(z, s, s + k) != s) if s + k < size else obj[s:s + k] != z:
                break
            s += k
        else:
            return []
    return [i for i, z in enumerate(_zero_flags(obj, base, n, bb, zero)) if not z]


_ONE_IF_CLEAR = bytes([1]) + bytes(255)
_select = compress      # itertools.compress: _encode_blocks has a local of that name


def _encode_blocks(codec, obj, base, mv, n, bb, out, pos, zero, skip=None) -> tuple[array, int, int]:
    """The blocks of a chunk of whole, readable blocks, stored from ``out[pos]`` on.

    Returns (block table, end of the payload, zero blocks); a chunk all zero
    returns at once, with an empty table and nothing stored.  The common case,
    kept free of per-block tests it does not need (issue 12): no unreadable
    ranges, no short last block; one zero test per chunk (``_nonzero_blocks``)
    and a loop over the blocks that are not zero only (the table starts as all
    BLOCK_ZERO); a codec that writes into the slot itself when its library can
    (``Codec.compress_into``); runs of stored pages copied with one slice when
    nothing is compressed.  ``skip`` (dump levels): one byte per block, 1
    where the block is left out; those are neither stored nor counted as zero
    (their table entries stay BLOCK_ZERO for the caller to mark).
    """
    nblocks = n // bb
    if skip is not None and skip.count(1):
        # only the blocks kept are zero-tested (with -d 31 most of a chunk is left out)
        keep = list(_select(range(nblocks), skip.translate(_ONE_IF_CLEAR)))
        nonzero = [i for i, z in zip(keep, _zero_flags(obj, base, 0, bb, zero, keep)) if not z]
        zeros = len(keep) - len(nonzero)
    else:
        nonzero = _nonzero_blocks(obj, base, n, bb, zero)
        zeros = nblocks - len(nonzero)
    if not nonzero:
        return array("I"), pos, zeros
    RAW = (BLOCK_RAW << BLOCK_KIND_SHIFT) | bb
    COMP = BLOCK_COMPRESSED << BLOCK_KIND_SHIFT
    table = array("I", (BLOCK_ZERO << BLOCK_KIND_SHIFT,)) * nblocks
    if codec.ID == 0:
        # runs of consecutive stored blocks: one table slice and one copy each
        k, last = 0, len(nonzero)
        while k < last:
            i = nonzero[k]
            j = k + 1
            while j < last and nonzero[j] == i + (j - k):
                j += 1
            m = j - k
            table[i:i + m] = array("I", (RAW,)) * m
            ln = m * bb
            out[pos:pos + ln] = mv[i * bb:i * bb + ln]
            pos += ln
            k = j
        return table, pos, zeros
    into = codec.compress_into
    limit = len(out) - codec.into_bound(bb) if into is not None else -1
    compress, scratch = codec.compress, None
    as_bytes = codec.wants_bytes     # python-lzo takes only bytes: slice them straight out of the window
    for i in nonzero:
        a = i * bb
        blk = obj[base + a:base + a + bb] if as_bytes else mv[a:a + bb]
        if pos <= limit:
            cl = into(blk, out[pos:])
        elif into is not None:     # near the slot's end: no room for the bound, compress aside
            if scratch is None:
                scratch = memoryview(bytearray(codec.into_bound(bb)))
            cl = into(blk, scratch)
            if cl < bb:
                out[pos:pos + cl] = scratch[:cl]
        else:
            c = compress(blk)
            cl = len(c)
            if cl < bb:
                out[pos:pos + cl] = c
        if cl < bb:
            table[i] = COMP | cl
            pos += cl
        else:        # it did not shrink: stored raw (over what compress_into wrote)
            out[pos:pos + bb] = blk
            table[i] = RAW
            pos += bb
    return table, pos, zeros


def _encode_blocks_any(codec, obj, base, mv, n, block_bytes, out, pos, zero, bad,
                       skip=None) -> tuple[array, int, int, int]:
    """The blocks of any chunk: a short last block, unreadable ranges (``bad``: BLOCK_UNREADABLE).

    ``skip``: as in ``_encode_blocks``, but those blocks are marked BLOCK_EXCLUDED here (an
    unreadable one stays BLOCK_UNREADABLE).

    Returns (block table, end of the payload, zero blocks, unreadable blocks).
    """
    nblocks = -(-n // block_bytes)
    table = array("I", bytes(4 * nblocks))
    raw_only = codec.ID == 0
    is_mmap = isinstance(obj, mmap.mmap)
    find, compress = obj.find, codec.compress
    size = len(obj) if is_mmap else 0
    as_bytes = codec.wants_bytes
    zeros = unreadable = 0
    for i in range(nblocks):
        a = i * block_bytes
        b = a + block_bytes
        if b > n:
            b = n
        ln = b - a
        if bad and any(x < b and a < y for x, y in bad):
            table[i] = BLOCK_UNREADABLE << BLOCK_KIND_SHIFT
            unreadable += 1
            continue
        if skip is not None and skip[i]:
            table[i] = BLOCK_EXCLUDED << BLOCK_KIND_SHIFT
            continue
        z = zero if ln == len(zero) else zero[:ln]
        if (find(z, base + a, base + b) == base + a) if is_mmap and base + b < size \
                else obj[base + a:base + b] == z:       # SAFE_FIND_END
            table[i] = BLOCK_ZERO << BLOCK_KIND_SHIFT
            zeros += 1
            continue
        blk = obj[base + a:base + b] if as_bytes else mv[a:b]
        if not raw_only:
            c = compress(blk)
            cl = len(c)
            if cl < ln:
                out[pos:pos + cl] = c
                table[i] = (BLOCK_COMPRESSED << BLOCK_KIND_SHIFT) | cl
                pos += cl
                continue
        out[pos:pos + ln] = blk
        table[i] = (BLOCK_RAW << BLOCK_KIND_SHIFT) | ln
        pos += ln
    return table, pos, zeros, unreadable
