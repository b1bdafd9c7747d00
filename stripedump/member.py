"""Writing and reading one member: chunk records, index, footer, header.

Why: the pipeline moves bytes between processes; this module knows what the
bytes mean.  ``encode_chunk`` turns source pages into a self-describing chunk
record in a caller's buffer (a shared-memory slot), ``decode_chunk`` turns a
record back into bytes and checks every length and checksum on the way.
``MemberWriter`` is owned by exactly one writer process; ``MemberReader``
opens a member for join, verify and info and never trusts a field before it
has been bounds-checked.
"""

from __future__ import annotations

import mmap
import os
import sys
import time
from array import array
from collections import deque

from . import codecs as codecs_mod
from .errors import MemberError, SourceError, TargetIOError, VerifyError
from .format import (BLOCK_COMPRESSED, BLOCK_EXCLUDED, BLOCK_KIND_SHIFT, BLOCK_LEN_MASK, BLOCK_RAW,
                     BLOCK_UNREADABLE, BLOCK_ZERO, CHECKSUM_XXH3_64, CHUNK_ALL_ZERO, CHUNK_EXCLUDED,
                     CHUNK_FLAGS_KNOWN, CHUNK_HEADER_SIZE, CHUNK_MAGIC, CHUNK_UNREADABLE, HEADER_BLOCK,
                     INDEX_EVERY, INDEX_MAGIC, KIND_PAGES, MAX_CHUNK_BYTES, MAX_FOOTER, MAX_MANIFEST,
                     MEMBER_MAGIC, STATE_COMPLETE, STATE_WRITING, TRAILER_MAGIC, TRAILER_SIZE,
                     V1_BLOCK_KIND_SHIFT, V1_BLOCK_LEN_MASK, V1_CHUNK_MAGIC, V1_RECORD_MAGICS, VERSION,
                     ChunkHeader, CodecTotal, Footer, IndexEntry, MemberHeader, Trailer, checksum,
                     first_record_offset, head_size, magic_of, pack_record, parse_head, seal_chunk_header,
                     unpack_index, unpack_manifest)
from .fileio import pread_exact, write_exact
from .plan import Chunk
from .vmcore import Window

MAX_MANIFEST_RECORD = MAX_MANIFEST   # a compressed manifest is never longer than the JSON it holds
BIG_ENDIAN_HOST = sys.byteorder == "big"   # the block table is little-endian on disk
assert array("I").itemsize == 4, "stripedump needs a 4-byte unsigned int"
# for tests only: STRIPEDUMP_SYNC_EVERY=BYTES (read once, here) lowers the fdatasync interval so a
# small dump has several sync barriers (tests/test_powerloss.py); anything but a positive integer is ignored
_SYNC_ENV = os.environ.get("STRIPEDUMP_SYNC_EVERY", "")
SYNC_EVERY = int(_SYNC_ENV) if _SYNC_ENV.isdigit() and int(_SYNC_ENV) > 0 else 256 << 20
SYNC_CHUNKS = 1 << 14      # also sync after this many chunks: bounds what the coordinator keeps per writer
KICK_EVERY = 16 << 20      # start writeback early so the final fsync has little left to do
DIRECT_ALIGN = 4096        # O_DIRECT offset and length alignment (logical block size or less)
STAGE_BYTES = 4 << 20      # per-writer staging buffer for --direct-io     # machine-limits §4: buffered writes collapse past the dirty limit


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
                 careful: bool = False) -> tuple[int, int, int]:
    """Read ``chunk`` from ``src`` and write its record into ``out``.

    ``zero`` is a bytes-like of at least ``block_bytes`` zeros.  A read error
    (or ``careful``, after the page faults of an mmap read killed a worker)
    switches to ``read_carefully``: blocks that hold unreadable pages become
    BLOCK_UNREADABLE.  Returns (record length, payload checksum, unreadable
    blocks).
    """
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
        table = array("I", bytes(4 * nblocks))
        tstart = CHUNK_HEADER_SIZE
        pos = dstart = tstart + 4 * nblocks
        mv = w.view()
        raw_only = codec.ID == 0
        # zero test: mmap.find runs at memory speed without a copy, while
        # bytes/bytearray.find pre-processes the needle on every call (0.5 GB/s
        # here); for those a slice compare (a copy plus memcmp, 5-11 GB/s) wins
        is_mmap = isinstance(obj, mmap.mmap)
        find, compress = obj.find, codec.compress
        # python-lzo takes only bytes: slice them straight out of the window
        as_bytes = codec.wants_bytes
        zeros = 0
        try:
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
                z = zero if ln == block_bytes else zero[:ln]
                if (find(z, base + a, base + b) == base + a) if is_mmap else obj[base + a:base + b] == z:
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
        finally:
            mv.release()
    flags = CHUNK_UNREADABLE if unreadable else 0
    if zeros == nblocks:
        flags, nblocks, pos = CHUNK_ALL_ZERO, 0, tstart
    else:
        if BIG_ENDIAN_HOST:
            table.byteswap()
        out[tstart:dstart] = table.tobytes()
    csum = checksum(memoryview(out)[tstart:pos])
    ChunkHeader(CHUNK_MAGIC, chunk.kind, codec.ID, flags, NO_DUMP, chunk.id, chunk.start, n, nblocks,
                pos - tstart, csum, kept).pack_into(out, 0)
    return pos, csum, unreadable


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
    return h, body, blocks


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


def decode_chunk(rec, where: str, block_bytes: int, codec_cache: dict) -> tuple[ChunkHeader, bytearray, list]:
    """Check and expand one record.

    Returns (header, data, runs): ``data`` holds ``raw_length`` bytes and
    ``runs`` the (start, end) byte ranges that are not all zero.
    """
    h, body, blocks = read_chunk(rec, where, block_bytes)
    data = bytearray(h.raw_length)
    runs: list[list[int]] = []
    if not blocks:
        return h, data, runs
    codec = chunk_codec(h, where, codec_cache)
    for how, a, b, pos, ln in blocks:
        if how == BLOCK_RAW:
            data[a:b] = body[pos:pos + ln]
        else:
            data[a:b] = decompress_block(codec, body[pos:pos + ln], b - a, where, a // block_bytes)
        if runs and runs[-1][1] == a:
            runs[-1][1] = b
        else:
            runs.append([a, b])
    return h, data, runs


def write_all(fd: int, data, where: str, offset: int | None = None) -> None:
    write_exact(fd, data, TargetIOError, where, offset)


class MemberWriter:
    """Appends chunk records to one member; owned by one writer process.

    Three ways to put bytes on the target:
    * buffered (default): ``write()`` each record; every KICK_EVERY bytes
      ``POSIX_FADV_DONTNEED`` on what was written since, which on Linux starts
      asynchronous writeback of those pages (so disk writes overlap
      compression instead of piling up for the final fsync; on the real-kernel
      benchmark this took lzo from 1.86 s to 1.62 s), and every SYNC_EVERY
      bytes ``fdatasync`` so the page
      cache never holds more than that (machine-limits §4: past the dirty
      limit plain buffered writes collapse to a fifth of the disk's speed, and
      a capture kernel has no memory to spare);
    * direct (``--direct-io``): the fd is O_DIRECT; records are gathered in
      a page-aligned staging buffer and written in multiples of DIRECT_ALIGN,
      the tail padded with zeros at the end;
    * either way ``fdatasync`` also every SYNC_CHUNKS chunks, and ``syncs``
      counts the syncs: the coordinator keeps the ids of the chunks since
      the last one, to send them elsewhere if the target fails (pipeline.py);
    * discard (bench's no-write run): nothing is written, offsets still move.

    Every write is positional (``pwrite`` at the member offset the index
    records), and a record enters the index only once it was written: after
    a failed or short write the next record, index or footer goes where the
    failed one began, so a member finalized after a failure stays consistent.
    A direct writer whose staging flush failed is ``broken`` and is not
    finalized (its staged bytes are lost; readers walk what reached disk).
    """

    def __init__(self, fd: int, path: str, header: MemberHeader, start: int, direct: bool = False,
                 discard: bool = False):
        self.fd, self.path, self.header = fd, path, header
        self.pos = start
        # index entries since the last IndexRecord, packed in place: no object per
        # chunk, so a writer's heap does not churn over a multi-hour dump
        self._index = bytearray(INDEX_EVERY * IndexEntry.STRUCT.size)
        self._pending = 0
        self.index_offsets: list[int] = []
        self.chunks = 0
        self.bytes_in = 0
        self.since_sync = 0
        self.unsynced = 0          # chunks appended since the last sync
        self.syncs = 0             # successful syncs so far (the coordinator hears of each)
        self.synced_to = self.kicked_to = start
        self.direct, self.discard = direct, discard
        self._stage = None
        self._staged = 0
        self._stage_at = start       # member offset of the staging buffer's first byte
        self._unwritten: deque[tuple[int, int]] = deque()   # direct: (record end, chunk id) still staged
        self.broken = False
        self.dump_id = header.dump_id
        self.totals: dict[int, list[int]] = {}    # codec id -> [chunks, raw bytes, stored bytes]
        self.excluded_pages = 0
        if direct and start % DIRECT_ALIGN:
            raise ValueError("direct I/O needs an aligned start")

    def _emit(self, data) -> None:
        if self.discard:
            pass
        elif self.direct:
            self._stage_bytes(data)
        else:
            write_all(self.fd, data, f"target {self.path}", offset=self.pos)
        self.pos += len(data)

    def _stage_bytes(self, data) -> None:
        if self._stage is None:
            self._stage = mmap.mmap(-1, STAGE_BYTES)
        mv = memoryview(data)
        while len(mv):
            n = min(len(mv), STAGE_BYTES - self._staged)
            self._stage[self._staged:self._staged + n] = mv[:n]
            self._staged += n
            mv = mv[n:]
            if self._staged == STAGE_BYTES:
                self._flush_stage(final=False)

    def _flush_stage(self, final: bool) -> None:
        if not self._staged:
            return
        n = self._staged if final else self._staged - self._staged % DIRECT_ALIGN
        if final and n % DIRECT_ALIGN:
            pad = DIRECT_ALIGN - n % DIRECT_ALIGN
            self._stage[n:n + pad] = bytes(pad)
            n += pad
        try:
            with memoryview(self._stage) as mv:
                write_all(self.fd, mv[:n], f"target {self.path}", offset=self._stage_at)
        except TargetIOError:
            self.broken = True
            raise
        self._stage_at += n
        while self._unwritten and self._unwritten[0][0] <= self._stage_at:
            self._unwritten.popleft()
        rest = self._staged - n
        if rest > 0:
            self._stage.move(0, n, rest)
        self._staged = max(rest, 0)

    def append(self, rec, chunk_id: int, csum: int, raw_len: int) -> None:
        if self.broken:
            raise TargetIOError(f"target {self.path}: an earlier write failed")
        at = self.pos
        if isinstance(rec, (bytes, memoryview)) and (not isinstance(rec, memoryview) or rec.readonly):
            rec = bytearray(rec)
        seal_chunk_header(rec, 0, self.dump_id)    # the record now belongs to this dump
        h = ChunkHeader.STRUCT.unpack_from(rec)
        self._emit(rec)          # first: a record that failed to write is never indexed
        IndexEntry.STRUCT.pack_into(self._index, self._pending * IndexEntry.STRUCT.size,
                                    chunk_id, at, len(rec), csum)
        self._pending += 1
        if self.direct and not self.discard and self.pos > self._stage_at:
            self._unwritten.append((self.pos, chunk_id))
        self.chunks += 1
        self.bytes_in += raw_len
        t = self.totals.setdefault(h[2], [0, 0, 0])
        t[0] += 1
        t[1] += raw_len
        t[2] += len(rec)
        if h[1] == KIND_PAGES:
            self.excluded_pages += raw_len // self.header.page_size - h[11]
        self.since_sync += len(rec)
        self.unsynced += 1
        if self._pending >= INDEX_EVERY:
            self._flush_index()
        if not self.discard:
            if self.since_sync >= SYNC_EVERY or self.unsynced >= SYNC_CHUNKS:
                self._sync_and_drop()
            elif not self.direct and self.pos - self.kicked_to >= KICK_EVERY:
                self._advise_dontneed(self.kicked_to)
                self.kicked_to = self.pos

    def _flush_index(self) -> None:
        if not self._pending:
            return
        at = self.pos
        self._emit(pack_record(INDEX_MAGIC, self._index[:self._pending * IndexEntry.STRUCT.size],
                               self.dump_id))
        self.index_offsets.append(at)
        self._pending = 0

    def _sync(self, data_only: bool = False) -> None:
        if self.discard:
            return
        try:
            (os.fdatasync if data_only else os.fsync)(self.fd)
        except OSError as e:
            raise TargetIOError(f"target {self.path}: sync failed: {e.strerror}") from None

    def _advise_dontneed(self, since: int) -> None:
        try:
            os.posix_fadvise(self.fd, since, self.pos - since, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass     # advice only

    def _sync_and_drop(self) -> None:
        self._sync(data_only=True)
        self._advise_dontneed(self.synced_to)
        self.synced_to = self.kicked_to = self.pos
        self.since_sync = self.unsynced = 0
        self.syncs += 1

    def sync(self) -> None:
        """Make the chunks appended so far durable (direct: all but those of a staged tail)."""
        if self.direct and not self.discard:
            self._flush_stage(final=False)
        self._sync_and_drop()

    def pending_chunks(self) -> int:
        """How many of the last chunks appended are not on the disk even after a sync (direct: staged)."""
        return len(self._unwritten)

    def unwritten_chunks(self) -> list[int]:
        """Chunk ids appended but still only in the direct-I/O staging buffer."""
        return [cid for end, cid in self._unwritten]

    def finish(self, state: int, note: str = "", degraded: tuple = ()) -> int:
        """Index, footer, trailer, header; synced.  Returns the member's length.

        ``degraded``: ((member index, chunks of it stored here), ...) for the
        members an ``--on-disk-error continue`` dump dropped (Footer.degraded).
        """
        if self.broken:
            raise TargetIOError(f"target {self.path}: not finalized after a failed write")
        self._flush_index()
        totals = tuple(CodecTotal(c, *v) for c, v in sorted(self.totals.items()))
        footer = Footer(state, self.chunks, self.bytes_in, tuple(self.index_offsets), note,
                        tuple(degraded), self.header.member_index, self.excluded_pages,
                        totals).pack(self.dump_id)
        foff = self.pos
        self._emit(footer)
        h = self.header
        self._emit(Trailer(TRAILER_MAGIC, VERSION, state, self.dump_id, h.member_index, h.member_count,
                           foff, len(footer), self.pos + TRAILER_SIZE).pack())
        if self.direct and not self.discard:
            self._flush_stage(final=True)
        self._sync()
        hdr = self.header._replace(state=state, footer_offset=foff, footer_length=len(footer))
        if not self.discard:
            block = aligned_block(hdr.pack())
            write_all(self.fd, block, f"target {self.path}", offset=0)
            self._sync()
        return self.pos


def new_member_header(dump_id: bytes, index: int, count: int, codec_id: int, codec_level: int,
                      page_size: int, chunk_pages: int, block_pages: int, manifest_length: int,
                      features_required: int = 0, features_optional: int = 0) -> MemberHeader:
    """The header a member starts with: state "writing", no footer yet."""
    return MemberHeader(MEMBER_MAGIC, VERSION, STATE_WRITING, dump_id, index, count, codec_id, codec_level,
                        CHECKSUM_XXH3_64, page_size, chunk_pages, block_pages, int(time.time()),
                        HEADER_BLOCK, manifest_length, 0, 0, features_required, features_optional)


def write_member_head(fd: int, path: str, header: MemberHeader, manifest_rec: bytes, start: int) -> None:
    """Write a new member's header block and manifest record at offset 0, in one write.

    ``start`` is where its first chunk record goes (``first_record_offset``);
    the bytes up to it are written too (zeros after the manifest), so no
    byte of an earlier dump on a reused device remains before the records.
    The file offset is left at ``start``.
    """
    if header.manifest_offset != HEADER_BLOCK or header.manifest_length != len(manifest_rec) \
            or start < HEADER_BLOCK + len(manifest_rec):
        raise ValueError("member head does not fit its manifest")
    block = aligned_block(header.pack() + bytes(HEADER_BLOCK - MemberHeader.STRUCT.size) + manifest_rec,
                          start)
    write_all(fd, block, f"target {path}", 0)
    os.lseek(fd, start, os.SEEK_SET)


def aligned_block(data: bytes, size: int = HEADER_BLOCK):
    """``data`` zero-padded to ``size`` in a page-aligned buffer (usable with O_DIRECT)."""
    buf = mmap.mmap(-1, size)
    buf[:len(data)] = data
    return buf


class MemberReader:
    """One member opened for reading; every field bounds-checked before use.

    Reads format versions 1 and 2 (``self.version``); records of version 2
    must carry this member's dump id, so nothing of another dump is taken.
    """

    def __init__(self, path: str):
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            raise MemberError(f"member {path}: cannot open: {e.strerror}") from None
        try:
            self.size = os.lseek(self.fd, 0, os.SEEK_END)
            if self.size < MemberHeader.STRUCT.size and self.size >= 8:
                head = self.pread(0, self.size)
                if head[:8] == MEMBER_MAGIC:
                    raise MemberError(f"member {path}: the member header is cut off ({self.size} bytes): "
                                      "the file was truncated")
            self.header = MemberHeader.unpack(self.pread(0, min(HEADER_BLOCK, self.size)), f"member {path}")
        except BaseException:
            os.close(self.fd)
            raise
        self.version = self.header.version
        self.dump_id = self.header.dump_id
        self._manifest = None
        self._trailer: Trailer | None | bool = False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def pread(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise MemberError(f"member {self.path}: reference to bytes {offset}+{length} past its end "
                              f"({self.size} bytes): the member is truncated or damaged")
        return pread_exact(self.fd, offset, length, MemberError, f"member {self.path}")

    @property
    def where(self) -> str:
        return f"member {self.path}"

    def manifest(self) -> dict:
        """The manifest JSON object (its contents are checked by manifest.Manifest)."""
        if self._manifest is None:
            h = self.header
            if h.manifest_offset != HEADER_BLOCK or h.manifest_length > MAX_MANIFEST_RECORD \
                    or h.manifest_length < head_size(self.version):
                raise MemberError(f"{self.where}: the member header gives an impossible place for the "
                                  f"manifest ({h.manifest_length} bytes at {h.manifest_offset}); the "
                                  "member is damaged")
            if h.manifest_offset + h.manifest_length > self.size:
                raise MemberError(f"{self.where}: the member's manifest is cut off (the member is "
                                  f"{self.size} bytes): the dump stopped before writing it, or the file "
                                  "was truncated; join the other members with --allow-incomplete")
            self._manifest = unpack_manifest(self.pread(h.manifest_offset, h.manifest_length), self.where,
                                             self.dump_id, self.version)
        return self._manifest

    def trailer(self) -> Trailer | None:
        """This dump's trailer at the end of the member, if there is a sound one."""
        if self._trailer is False:
            t = None
            if self.version >= 2 and self.size >= TRAILER_SIZE + HEADER_BLOCK:
                t = Trailer.unpack(self.pread(self.size - TRAILER_SIZE, TRAILER_SIZE), self.dump_id)
                h = self.header
                if t is not None and (t.member_length != self.size or t.member_index != h.member_index
                                      or t.member_count != h.member_count
                                      or t.footer_offset + t.footer_length + TRAILER_SIZE != self.size):
                    t = None
            self._trailer = t
        return self._trailer

    def footer_place(self) -> tuple[int, int] | None:
        """(offset, length) of the footer: from the header when it was finalized, else the trailer."""
        h = self.header
        if h.footer_offset:
            return h.footer_offset, h.footer_length
        t = self.trailer()
        if t is not None:
            return t.footer_offset, t.footer_length
        return None

    def footer(self) -> Footer | None:
        place = self.footer_place()
        if place is None:
            return None
        off, length = place
        start = first_record_offset(self.header.manifest_offset, self.header.manifest_length) \
            if self.version >= 2 else self.header.manifest_offset + self.header.manifest_length
        if length > MAX_FOOTER or length < head_size(self.version) or off < start:
            raise MemberError(f"{self.where}: the member header gives an impossible place for the footer "
                              f"({length} bytes at {off}); the member is damaged")
        f = Footer.unpack(self.pread(off, length), self.where, self.dump_id, self.version)
        hs = head_size(self.version)
        if len(f.index_offsets) != -(-f.chunks // INDEX_EVERY) \
                or any(not start <= o <= off - hs for o in f.index_offsets) \
                or f.chunks * (CHUNK_HEADER_SIZE if self.version >= 2 else 52) > off \
                or (self.version >= 2 and f.member_index != self.header.member_index):
            raise MemberError(f"{self.where}: the member's footer contradicts the member (chunk count, "
                              "index places or member number); the member is damaged; join "
                              "--allow-incomplete finds its chunks by reading it record by record")
        return f

    def index(self, footer: Footer):
        """Index entries in the order written (a generator: memory stays bounded)."""
        hs = head_size(self.version)
        magic = magic_of("index", self.version)
        for off in footer.index_offsets:
            m, length, rid, _ = parse_head(self.pread(off, hs), self.version)
            if m != magic or length > INDEX_EVERY * IndexEntry.STRUCT.size or \
                    (rid is not None and rid != self.dump_id):
                raise MemberError(f"{self.where}: the index record at offset {off} is damaged or of "
                                  "another dump; join --allow-incomplete finds the chunks by reading "
                                  "the member record by record")
            yield from unpack_index(self.pread(off, hs + length), f"{self.where} index at {off}",
                                    self.dump_id, self.version)

    def read_record(self, entry: IndexEntry) -> bytes:
        if entry.length < 52 or entry.length > self.record_limit():
            raise MemberError(f"{self.where}: index entry for chunk {entry.chunk_id} has bad length")
        return self.pread(entry.offset, entry.length)

    def record_limit(self) -> int:
        h = self.header
        return record_bound(h.chunk_pages * h.page_size, h.block_pages * h.page_size)

    def first_record(self) -> int:
        """Member offset of the first record after the manifest.

        Chunk records start at the manifest's end rounded up to RECORD_ALIGN
        (zeros in between); a writer that did not align them (version 1
        before 0.1.0) put the first record right after the manifest, and a
        record magic there says so.
        """
        h = self.header
        end = h.manifest_offset + h.manifest_length
        aligned = first_record_offset(h.manifest_offset, h.manifest_length)
        if self.version == 1 and aligned != end and end + 4 <= self.size \
                and self.pread(end, 4) in V1_RECORD_MAGICS:
            return end
        return aligned

    def walk(self, verify: bool = True, report: "WalkReport | None" = None):
        """The chunk records found by reading the member record by record (IndexEntry each).

        For a member whose footer never reached the disk (a killed dump, power
        loss, a full disk) or cannot be read (truncated).  From the first
        record, a chunk record is its header + payload_length bytes and an
        index or footer record its head + length, each with its own CRC or
        checksum.  The walk stops at the first record that fails its
        structural checks: bytes that are no record (the end of what was
        written), a record of another dump (an earlier dump on a reused
        device: version 2 records carry their dump's id), a chunk header whose
        CRC fails, a record longer than the geometry allows or running past
        the end of the member (a torn write); and at the footer, which ends a
        member.  A chunk record whose header is sound but whose payload
        checksum fails is stepped over (its length can be trusted) and listed
        in ``report.damaged``.  With ``verify`` False payloads are not read:
        the caller checks the records it uses.  Memory stays bounded: one
        record.
        """
        rep = report if report is not None else WalkReport()
        v2 = self.version >= 2
        limit = self.record_limit()
        hs = head_size(self.version)
        chs = CHUNK_HEADER_SIZE if v2 else 52
        cmagic, imagic, fmagic = (magic_of(k, self.version) for k in ("chunk", "index", "footer"))
        pos = self.first_record()
        while True:
            if pos + min(hs, chs) > self.size:
                return rep.stop(pos, "end of the member")
            head = self.pread(pos, min(max(hs, chs), self.size - pos))
            magic = head[:4]
            if magic == cmagic:
                try:
                    h = ChunkHeader.unpack(head, self.where)
                except VerifyError:
                    return rep.stop(pos, "a damaged or torn chunk header")
                if v2 and h.dump_id != self.dump_id:
                    return rep.stop(pos, "a record of another dump (what the device held before)")
                end = pos + h.record_length
                if h.record_length > limit:
                    return rep.stop(pos, f"an implausible record length for chunk {h.chunk_id}")
                if end > self.size:
                    return rep.stop(pos, f"chunk {h.chunk_id}'s record, cut off (torn write)")
                if verify and checksum(self.pread(pos + chs, h.payload_length)) != h.payload_checksum:
                    rep.damaged.append((pos, h.chunk_id))
                else:
                    rep.chunks += 1
                    yield IndexEntry(h.chunk_id, pos, h.record_length, h.payload_checksum)
                pos = end
            elif magic in (imagic, fmagic) and len(head) >= hs:
                _, length, rid, _ = parse_head(head, self.version)
                if rid is not None and rid != self.dump_id:
                    return rep.stop(pos, "a record of another dump (what the device held before)")
                big = INDEX_EVERY * IndexEntry.STRUCT.size if magic == imagic else MAX_FOOTER
                if length > big or pos + hs + length > self.size:
                    return rep.stop(pos, f"a cut-off {'index' if magic == imagic else 'footer'} record "
                                         "(torn write)")
                try:
                    if magic == imagic:
                        unpack_index(self.pread(pos, hs + length), self.where, self.dump_id, self.version)
                    else:
                        Footer.unpack(self.pread(pos, hs + length), self.where, self.dump_id, self.version)
                except MemberError:
                    return rep.stop(pos, f"a damaged {'index' if magic == imagic else 'footer'} record")
                if magic == fmagic:
                    return rep.stop(pos, "the footer")
                pos += hs + length
            else:
                return rep.stop(pos, "the end of the records written")


class WalkReport:
    """What ``MemberReader.walk`` found besides the chunks: where and why it stopped."""

    def __init__(self):
        self.chunks = 0
        self.damaged: list[tuple[int, int]] = []   # (member offset, chunk id): payload checksum failed
        self.stopped_at: int | None = None
        self.reason = ""

    def stop(self, pos: int, reason: str) -> None:
        self.stopped_at, self.reason = pos, reason

    def describe(self) -> str:
        s = f"{self.chunks} chunk record(s), then at offset {self.stopped_at} {self.reason}"
        if self.damaged:
            s += f"; {len(self.damaged)} record(s) with a bad checksum skipped (chunk " \
                 f"{', '.join(str(c) for _, c in self.damaged[:5])}{' ...' if len(self.damaged) > 5 else ''})"
        return s


def is_complete(footer: Footer | None) -> bool:
    return footer is not None and footer.state == STATE_COMPLETE

