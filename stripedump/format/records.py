"""Chunk records: encoding source pages into one, checking and decoding one.

Why a module of its own: the pipeline's workers and the readers (join,
verify, kdump output, the power-loss model) share this one definition of what
a record's bytes mean.  ``encode_chunk`` turns a chunk's pages into a
self-describing record in a caller's buffer (a shared-memory slot);
``read_chunk`` checks a record's header, checksum and block table without
decompressing; ``decode_chunk`` expands it, checking every length on the way.
Nothing read from a record sizes an allocation before it has been checked.
"""

from __future__ import annotations

import mmap
import sys
from array import array
from itertools import accumulate, compress, repeat
from operator import and_, rshift

from . import codecs as codecs_mod
from ..errors import MemberError, SourceError, VerifyError
from .structs import (BLOCK_COMPRESSED, BLOCK_EXCLUDED, BLOCK_KIND_SHIFT, BLOCK_LEN_MASK, BLOCK_RAW,
                     BLOCK_UNREADABLE, BLOCK_ZERO, CHUNK_ALL_ZERO, CHUNK_EXCLUDED, CHUNK_FLAGS_KNOWN,
                     CHUNK_HEADER_SIZE, CHUNK_MAGIC, CHUNK_UNREADABLE, KIND_PAGES, MAX_CHUNK_BYTES,
                     V1_BLOCK_KIND_SHIFT, V1_BLOCK_LEN_MASK, V1_CHUNK_MAGIC, ChunkHeader, checksum)
from .plan import Chunk
from ..source.vmcore import Window

BIG_ENDIAN_HOST = sys.byteorder == "big"   # the block table is little-endian on disk
assert array("I").itemsize == 4, "stripedump needs a 4-byte unsigned int"


NO_DUMP = bytes(16)


def record_bound(chunk_bytes: int, block_bytes: int) -> int:
    """Largest record a chunk can need: blocks are stored raw when they do not shrink."""
    return CHUNK_HEADER_SIZE + 4 * -(-chunk_bytes // block_bytes) + chunk_bytes


def read_carefully(src, chunk: Chunk) -> tuple[Window, list[tuple[int, int]]]:
    """The chunk's bytes read one page at a time with read(), each failure retried once.

    For memory that cannot be read (EIO, EFAULT from /proc/vmcore; the same
    pages raise SIGBUS through mmap): returns a window whose unreadable pages
    are zeros, and the list of their byte ranges within the chunk.
    """
    ps = src.page_size
    n = chunk.raw_bytes(ps)
    buf, bad = bytearray(n), []
    saved, src.use_mmap = src.use_mmap, False
    try:
        for a in range(0, n, ps):
            b = min(a + ps, n)
            for attempt in (1, 2):
                try:
                    if chunk.kind == KIND_PAGES:
                        w = src.phys_window(chunk.start + a // ps, 1)
                    else:
                        w = src.window(chunk.start + a, b - a)
                    with w:
                        buf[a:b] = w.view()[:b - a]
                    break
                except SourceError:
                    if attempt == 2:
                        if bad and bad[-1][1] == a:
                            bad[-1] = (bad[-1][0], b)
                        else:
                            bad.append((a, b))
    finally:
        src.use_mmap = saved
    return Window(buf, 0, n), bad


def encode_chunk(src, codec, chunk: Chunk, block_bytes: int, out, zero,
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
    bad: list[tuple[int, int]] = []
    if careful:
        w, bad = read_carefully(src, chunk)
    else:
        try:
            w = src.phys_window(chunk.start, chunk.count) if chunk.kind == KIND_PAGES \
                else src.window(chunk.start, chunk.count)
        except SourceError:
            w, bad = read_carefully(src, chunk)
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


def _seal(out, codec, chunk: Chunk, flags: int, all_zero: bool, n: int, nblocks: int, table: array, pos: int,
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


def _encode_excluded(src, codec, chunk: Chunk, ps: int, out, zero, careful: bool, excluded) -> tuple[int, int, int]:
    """``encode_chunk`` of a pages chunk with a per-page exclusion (blocks of one page)."""
    count, n = chunk.count, chunk.count * ps
    if src.phys_is_hole(chunk.start, chunk.count):
        mask = _exclusion_mask(excluded, None, count)
        if not mask.count(1):       # as without exclusion: an all-zero record
            return encode_chunk(src, codec, chunk, ps, out, zero)
        w, bad = Window(bytearray(n), 0, n), []
    elif careful:
        w, bad = read_carefully(src, chunk)
        mask = None
    else:
        try:
            w, bad = src.phys_window(chunk.start, chunk.count), []
        except SourceError:
            w, bad = read_carefully(src, chunk)
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


# Largest raw_length a record may claim before anything is sized from it.  A
# reader that knows the plan lowers it to the plan's chunk size
# (DumpSet.__init__, before join's pool forks, so its workers inherit it).
_limits = {"chunk_bytes": MAX_CHUNK_BYTES}


def set_chunk_limit(chunk_bytes: int) -> None:
    _limits["chunk_bytes"] = max(1, min(int(chunk_bytes), MAX_CHUNK_BYTES))


def _block_table(h: ChunkHeader, body) -> tuple[array, int, int]:
    """(table, kind shift, length mask) of a checked record of either format version."""
    table = array("I", bytes(body[:4 * h.nblocks]))
    if BIG_ENDIAN_HOST:
        table.byteswap()
    if h.magic == V1_CHUNK_MAGIC:
        return table, V1_BLOCK_KIND_SHIFT, V1_BLOCK_LEN_MASK
    return table, BLOCK_KIND_SHIFT, BLOCK_LEN_MASK


def read_chunk(rec, where: str, block_bytes: int, dump_id: bytes | None = None,
               page_size: int | None = None) -> tuple[ChunkHeader, memoryview, list]:
    """Check one record's header, checksum and block table, without decompressing.

    Returns (header, body, blocks): ``body`` is the payload and ``blocks``
    lists, for every block that is not all zero, ``(how, a, b, pos, ln)``:
    chunk bytes ``[a, b)`` stored as ``how`` (BLOCK_RAW or BLOCK_COMPRESSED)
    in ``body[pos:pos + ln]``.  Empty for an all-zero chunk.  Every length
    is checked (against the chunk limit, the block size and the record)
    before anything is sized from it.  ``dump_id``: the record must belong
    to that dump (version 2 records).
    """
    h = ChunkHeader.unpack(rec, where)
    if dump_id is not None and h.version >= 2 and h.dump_id != dump_id:
        raise VerifyError(f"{where}: the chunk record belongs to another dump")
    if h.record_length > len(rec):
        raise VerifyError(f"{where}: chunk record is cut off")
    if h.raw_length > _limits["chunk_bytes"] or h.raw_length == 0 or h.flags & ~CHUNK_FLAGS_KNOWN:
        raise VerifyError(f"{where}: implausible chunk header (length {h.raw_length}, flags {h.flags:#x})")
    body = memoryview(rec)[h.header_size:h.record_length]
    if checksum(body) != h.payload_checksum:
        raise VerifyError(f"{where}: checksum mismatch (the member is corrupt)")
    blocks: list[tuple[int, int, int, int, int]] = []
    if h.flags & CHUNK_ALL_ZERO:
        if h.nblocks or h.payload_length:
            raise VerifyError(f"{where}: an all-zero chunk with a block table")
        return h, body, blocks
    nblocks = -(-h.raw_length // block_bytes)
    if h.nblocks != nblocks or 4 * nblocks > len(body):
        raise VerifyError(f"{where}: block table does not match the chunk length")
    if nblocks >= VECTOR_MIN_BLOCKS:
        if nblocks >= NUMPY_MIN_BLOCKS and _vectorize():
            blocks = _check_table_vectorized(h, body, block_bytes, nblocks, page_size)
        else:
            blocks = _check_table_fast(h, body, block_bytes, nblocks, page_size)
        if blocks is not None:
            return h, body, blocks
        # something is wrong (or unusual): the loop below says what, with the same words as always
    return h, body, _check_table(h, body, block_bytes, nblocks, where, page_size)


# Below this many blocks the loop is as fast as the fixed costs of the others.
VECTOR_MIN_BLOCKS = 16
# From this many blocks on numpy, where loaded, checks a table faster than _check_table_fast
# (measured, 4 KiB blocks: 256 blocks 55 against 92 us; 1024: 302 against 172 us; 4096: 858 against 371).
NUMPY_MIN_BLOCKS = 512


def _vectorize() -> bool:
    """Check this table with numpy?  Only where numpy is loaded already: the reader of a large
    dump imports it before join's workers fork (``resources.numpy_if_safe``).  A worker never
    imports it itself: the import costs 60-100 ms, and under a tight address-space limit
    OpenBLAS aborts the process (a join worker died so in the test suite)."""
    return "numpy" in sys.modules


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
    if BIG_ENDIAN_HOST or h.magic != CHUNK_MAGIC or h.raw_length != nblocks * block_bytes:
        return None
    if page_size and h.kind == KIND_PAGES and h.kept_pages != h.raw_length // page_size:
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
    if h.magic == V1_CHUNK_MAGIC:
        shift, mask = V1_BLOCK_KIND_SHIFT, V1_BLOCK_LEN_MASK
    else:
        shift, mask = BLOCK_KIND_SHIFT, BLOCK_LEN_MASK
    if page_size and h.version >= 2 and h.kind == KIND_PAGES and h.kept_pages != h.raw_length // page_size:
        return None
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
    """Every block table entry checked in turn: the blocks list of ``read_chunk``, or VerifyError."""
    blocks: list[tuple[int, int, int, int, int]] = []
    table, shift, mask = _block_table(h, body)
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


def chunk_body(rec, h: ChunkHeader) -> memoryview:
    """The payload (block table + stored blocks) of a record checked by ``read_chunk``."""
    return memoryview(rec)[h.header_size:h.record_length]


def _ranges_of(h: ChunkHeader, body, block_bytes: int, kind: int) -> list[tuple[int, int]]:
    if isinstance(body, memoryview) and h.header_size != CHUNK_HEADER_SIZE and body.obj is not None \
            and len(body) != h.payload_length:
        # a version 1 record sliced at the version 2 header size by a caller:
        # re-slice the record it views at its own header size
        body = chunk_body(body.obj, h)
    table, shift, mask = _block_table(h, body)
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
    """Byte ranges of a checked record (``read_chunk``) that the source could not give."""
    if not h.flags & CHUNK_UNREADABLE or h.flags & CHUNK_ALL_ZERO:
        return []
    return _ranges_of(h, body, block_bytes, BLOCK_UNREADABLE)


def excluded_ranges(h: ChunkHeader, body, block_bytes: int) -> list[tuple[int, int]]:
    """Byte ranges of a checked record that a dump level left out (not memory: not zeros)."""
    if not h.flags & CHUNK_EXCLUDED or h.flags & CHUNK_ALL_ZERO:
        return []
    return _ranges_of(h, body, block_bytes, BLOCK_EXCLUDED)


def chunk_codec(h: ChunkHeader, where: str, codec_cache: dict):
    """The codec instance for a record's ``codec_id`` (one per id and process)."""
    codec = codec_cache.get(h.codec_id)
    if codec is None:
        if h.codec_id not in codecs_mod.BY_ID:
            raise MemberError(f"{where}: unknown codec id {h.codec_id}")
        codec = codec_cache[h.codec_id] = codecs_mod.BY_ID[h.codec_id]()
    return codec


def decompress_block(codec, block, size: int, where: str, i) -> bytes:
    try:
        out = codec.decompress(block, size)
    except Exception as e:   # every codec library has its own error type
        raise VerifyError(f"{where}: block {i} does not decompress ({codec.name}: {e})") from None
    if len(out) != size:
        raise VerifyError(f"{where}: block {i} decompresses to {len(out)} bytes, expected {size}")
    return out


def decompress_block_into(into, codec, block, out, where: str, i) -> None:
    """``decompress_block`` into ``out`` (exactly the block's size) with ``codec.decompress_into``."""
    try:
        got = into(block, out)
    except Exception as e:   # every codec library has its own error type
        raise VerifyError(f"{where}: block {i} does not decompress ({codec.name}: {e})") from None
    if got != len(out):
        raise VerifyError(f"{where}: block {i} decompresses to {got} bytes, expected {len(out)}")


def decode_chunk(rec, where: str, block_bytes: int, codec_cache: dict) -> tuple[ChunkHeader, bytearray, list]:
    """Check and expand one record.

    Returns (header, data, runs): ``data`` holds ``raw_length`` bytes and
    ``runs`` the (start, end) byte ranges that are not all zero.
    """
    h, body, blocks = read_chunk(rec, where, block_bytes)
    data = bytearray(h.raw_length)
    return h, data, decode_into(h, body, blocks, where, block_bytes, codec_cache, data)


def decode_into(h: ChunkHeader, body, blocks: list, where: str, block_bytes: int, codec_cache: dict,
                out) -> list:
    """Expand a record checked by ``read_chunk`` (its ``(h, body, blocks)``) into ``out``.

    ``out`` (a writable buffer of at least ``raw_length`` bytes) may be
    reused from chunk to chunk (issue 12: no allocation, no page faults per
    chunk): only the bytes of the returned runs, the [start, end) ranges
    that are not all zero, are written; the rest of ``out`` keeps what it
    held.  Adjacent raw blocks are copied with one slice; blocks the codec
    can decompress in place (``Codec.decompress_into``) go straight into
    ``out``.  A block that does not decompress to its size is a VerifyError
    naming it (the careful loop below, rerun on any failure of the fast one).
    """
    runs: list[list[int]] = []
    if not blocks:
        return runs
    codec = chunk_codec(h, where, codec_cache)
    into = codec.decompress_into
    with memoryview(out) as dmv:
        if into is not None:
            try:
                _decode_fast(into, body, blocks, dmv, runs)
                return runs
            except Exception:
                runs.clear()       # the careful loop names the block and the reason
        ra = rb = rp = 0       # pending raw copy: out[ra:rb] = body[rp:rp + rb - ra] (neighbours: one copy)
        for how, a, b, pos, ln in blocks:
            if how == BLOCK_RAW:
                if not (a == rb and pos == rp + (rb - ra)):
                    if rb:
                        dmv[ra:rb] = body[rp:rp + (rb - ra)]
                    ra, rp = a, pos
                rb = b
            elif into is not None:       # straight into place: no bytes object, no copy
                decompress_block_into(into, codec, body[pos:pos + ln], dmv[a:b], where, a // block_bytes)
            else:
                dmv[a:b] = decompress_block(codec, body[pos:pos + ln], b - a, where, a // block_bytes)
            if runs and runs[-1][1] == a:
                runs[-1][1] = b
            else:
                runs.append([a, b])
        if rb:
            dmv[ra:rb] = body[rp:rp + (rb - ra)]
    return runs


class _Short(Exception):
    pass


def _decode_fast(into, body, blocks: list, dmv, runs: list) -> None:
    """``decode_into``'s loop for a codec with ``decompress_into``: no per-block call but the codec's.

    Raises on any failure (the caller reruns the careful loop for its message).
    """
    append = runs.append
    ra = rb = -1
    for how, a, b, pos, ln in blocks:
        if how == BLOCK_RAW:
            dmv[a:b] = body[pos:pos + ln]
        elif into(body[pos:pos + ln], dmv[a:b]) != b - a:
            raise _Short
        if a != rb:
            if rb >= 0:
                append([ra, rb])
            ra = a
        rb = b
    append([ra, rb])
