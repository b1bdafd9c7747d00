"""Writing one member: its head (header block and manifest), chunk records, index, footer, trailer.

Why a module of its own: exactly one writer process owns a member while the
dump runs; this module is everything it does to the target (buffered with
early writeback and periodic syncs, O_DIRECT through a staging buffer, or
discarded for bench), and the rule that a record enters the index only once
it was written, so a member finalized after a failure stays consistent.
"""

from __future__ import annotations

import mmap
import os
import time
from array import array
from collections import deque

from ..errors import TargetIOError
from ..format.structs import (CHECKSUM_XXH3_64, HEADER_BLOCK, INDEX_EVERY, INDEX_MAGIC, KIND_PAGES, MEMBER_MAGIC,
                     STATE_WRITING, TRAILER_MAGIC, TRAILER_SIZE, VERSION, ChunkHeader, CodecTotal, Footer,
                     IndexEntry, MemberHeader, Trailer, pack_record, seal_chunk_header)
from ..runtime.fileio import write_exact
from .directio import DIRECT_ALIGN, buffered, write_head

# for tests only: STRIPEDUMP_SYNC_EVERY=BYTES (read once, here) lowers the fdatasync interval so a
# small dump has several sync barriers (tests/test_powerloss.py); anything but a positive integer is ignored
_SYNC_ENV = os.environ.get("STRIPEDUMP_SYNC_EVERY", "")
SYNC_EVERY = int(_SYNC_ENV) if _SYNC_ENV.isdigit() and int(_SYNC_ENV) > 0 else 256 << 20
# --codec auto (autocodec.py): writers sync this often and time their writes and syncs, so the
# controller learns the rate at which bytes reach the devices, not how fast the page cache fills
AUTO_SYNC_EVERY = SYNC_EVERY if _SYNC_ENV.isdigit() and int(_SYNC_ENV) > 0 else 32 << 20
AUTO_FIRST_SYNC = min(AUTO_SYNC_EVERY, 4 << 20)   # the first sync: doubled after each, up to AUTO_SYNC_EVERY,
# so a first disk rate is known after a few MiB, not after 32 MiB per member
AUTO_KICK_EVERY = 1 << 20  # and start writeback after every MiB: a sync every 32 MiB leaves the device idle
# until the next kick (KICK_EVERY after it), which cost auto 16% on 30 MB/s loop devices (docs/benchmarks.md)
SYNC_CHUNKS = 1 << 14      # also sync after this many chunks: bounds what the coordinator keeps per writer
KICK_EVERY = 16 << 20      # start writeback early so the final fsync has little left to do
STAGE_BYTES = 4 << 20      # per-writer staging buffer for O_DIRECT     # machine-limits §4: buffered writes collapse past the dirty limit


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
    * direct (the default where the target accepts O_DIRECT: directio.py):
      the fd is O_DIRECT; records are gathered in a page-aligned staging
      buffer and written in multiples of DIRECT_ALIGN; at the end the last
      partial page is written buffered, so the member ends at its trailer;
    * either way ``fdatasync`` also every SYNC_CHUNKS chunks, and ``syncs``
      counts the syncs: the coordinator keeps the ids of the chunks since
      the last one, to send them elsewhere if the target fails (pipeline.py);
    * discard (bench's no-write run): nothing is written, offsets still move;
    * streamed (``sink``: an ssh:// target or ``-``, sshtarget.py): append-only
      ``write()`` to a pipe, nothing ever rewritten, no fsync, no page-cache
      advice; the remote end's ``synced N`` acknowledgements are the syncs (the
      chunks whose records end past N are the ones a failure can take), and
      ``finish`` ends with the footer and trailer, closes the stream and waits
      until the remote end says every byte is on its disk.

    Every write is positional (``pwrite`` at the member offset the index
    records), and a record enters the index only once it was written: after
    a failed or short write the next record, index or footer goes where the
    failed one began, so a member finalized after a failure stays consistent.
    A direct writer whose staging flush failed is ``broken`` and is not
    finalized (its staged bytes are lost; readers walk what reached disk).
    """

    def __init__(self, fd: int, path: str, header: MemberHeader, start: int, direct: bool = False,
                 discard: bool = False, sink=None):
        self.fd, self.path, self.header = fd, path, header
        self.sink = sink
        # streamed: member offsets where the chunks not yet acknowledged end, and their count
        self._ends = array("Q")
        self._acked = 0
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
        self.sync_every, self.kick_every = SYNC_EVERY, KICK_EVERY
        # --codec auto: shared doubles [bytes synced, seconds in write + sync, CPU-seconds of them],
        # published at each sync
        self.io_stats = None
        self._io_secs = self._io_cpu = 0.0
        self._start = start
        if direct and start % DIRECT_ALIGN:
            raise ValueError("direct I/O needs an aligned start")

    def _emit(self, data) -> None:
        if self.io_stats is not None:
            t0, c0 = time.monotonic(), time.process_time()
            try:
                self._emit_now(data)
            finally:
                self._io_secs += time.monotonic() - t0
                self._io_cpu += time.process_time() - c0
            return
        self._emit_now(data)

    def _emit_now(self, data) -> None:
        if self.discard:
            pass
        elif self.direct:
            self._stage_bytes(data)
        elif self.sink is not None:
            try:
                write_all(self.fd, data, f"target {self.path}")
            except TargetIOError as e:
                self.broken = True
                why = self.sink.why()
                raise TargetIOError(f"{e}{': ' + why if why else ''}") from None
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
        """Write the staged bytes up to the last whole page (O_DIRECT); ``final``: the rest too,
        buffered (the member's last partial page: no padding, the file ends where the trailer does)."""
        if not self._staged:
            return
        n = self._staged - self._staged % DIRECT_ALIGN
        try:
            with memoryview(self._stage) as mv:
                if n:
                    write_all(self.fd, mv[:n], f"target {self.path}", offset=self._stage_at)
                if final and n < self._staged:
                    buffered(self.fd)
                    write_all(self.fd, mv[n:self._staged], f"target {self.path}", offset=self._stage_at + n)
                    n = self._staged
        except (TargetIOError, OSError) as e:
            self.broken = True
            if isinstance(e, TargetIOError):
                raise
            raise TargetIOError(f"target {self.path}: {e.strerror}") from None
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
        if self.sink is not None:
            self._ends.append(self.pos)
            if self.sink.poll():
                self._stream_acked()
            if self.io_stats is not None and self.pos - self.kicked_to >= AUTO_KICK_EVERY:
                self.kicked_to = self.pos
                self._publish_io()   # --codec auto: time blocked in write() is the link's rate
        elif not self.discard:
            if self.since_sync >= self.sync_every or self.unsynced >= SYNC_CHUNKS:
                self._sync_and_drop()
            elif not self.direct and self.pos - self.kicked_to >= self.kick_every:
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
        t0, c0 = time.monotonic(), time.process_time()
        if self.direct and not self.discard:    # what is staged too, but for its last partial page (timed
            self._flush_stage(final=False)      # with the sync: --codec auto learns the disk's rate from both)
        self._sync(data_only=True)
        if self.io_stats is not None:
            self._io_secs += time.monotonic() - t0
            self._io_cpu += time.process_time() - c0
            self._publish_io()
            self.sync_every = min(2 * self.sync_every, AUTO_SYNC_EVERY)
        self._advise_dontneed(self.synced_to)
        self.synced_to = self.kicked_to = self.pos
        self.since_sync = self.unsynced = 0
        self.syncs += 1

    def _publish_io(self) -> None:
        self.io_stats[2] = self._io_cpu
        self.io_stats[1] = self._io_secs      # seconds first: a reader never sees bytes without them
        self.io_stats[0] = float(self.pos - self._start)

    def _stream_acked(self) -> None:
        """The remote end synced the member up to ``sink.synced``: drop those chunks from the pending."""
        ends, n = self._ends, self._acked
        while n < len(ends) and ends[n] <= self.sink.synced:
            n += 1
        if n > 4096 and n * 2 > len(ends):
            del ends[:n]
            n = 0
        self._acked = n
        self.syncs += 1

    def sync(self) -> None:
        """Make the chunks appended so far durable (direct: all but those of a staged tail;
        streamed: only what the remote end acknowledged by now)."""
        if self.sink is not None:
            if self.broken:
                raise TargetIOError(f"target {self.path}: an earlier write failed")
            if self.sink.poll():
                self._stream_acked()
            return
        self._sync_and_drop()

    def pending_chunks(self) -> int:
        """How many of the last chunks appended are not on the disk even after a sync (direct: staged;
        streamed: not acknowledged by the remote end)."""
        if self.sink is not None:
            return len(self._ends) - self._acked
        return len(self._unwritten)

    def unwritten_chunks(self) -> list[int]:
        """Chunk ids appended but still only in the direct-I/O staging buffer."""
        return [cid for end, cid in self._unwritten]

    def finish(self, state: int, note: str = "", degraded: tuple = (), classes: tuple = ()) -> int:
        """Index, footer, trailer, header; synced.  Returns the member's length.

        ``degraded``: ((member index, chunks of it stored here), ...) for the
        members an ``--on-disk-error continue`` dump dropped (Footer.degraded).
        ``classes``: ((class name, pages), ...) a dump level left out over the
        whole dump (Footer.excluded_classes).
        """
        if self.broken:
            raise TargetIOError(f"target {self.path}: not finalized after a failed write")
        self._flush_index()
        totals = tuple(CodecTotal(c, *v) for c, v in sorted(self.totals.items()))
        footer = Footer(state, self.chunks, self.bytes_in, tuple(self.index_offsets), note,
                        tuple(degraded), self.header.member_index, self.excluded_pages,
                        totals, tuple(classes)).pack(self.dump_id)
        foff = self.pos
        self._emit(footer)
        h = self.header
        self._emit(Trailer(TRAILER_MAGIC, VERSION, state, self.dump_id, h.member_index, h.member_count,
                           foff, len(footer), self.pos + TRAILER_SIZE).pack())
        if self.sink is not None:      # streamed: nothing is rewritten; the trailer ends it
            self.sink.close(self.fd, self.pos)
            self.fd = -1
            return self.pos
        if self.direct and not self.discard:
            self._flush_stage(final=True)
        self._sync()
        hdr = self.header._replace(state=state, footer_offset=foff, footer_length=len(footer))
        if not self.discard:
            block = aligned_block(hdr.pack_block())      # the header and its copy, one write
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


def write_member_head(fd: int, path: str, header: MemberHeader, manifest_rec: bytes, start: int,
                      stream: bool = False, direct_required: bool = False) -> None:
    """Write a new member's header block and manifest record at offset 0, in one write.

    ``start`` is where its first chunk record goes (``first_record_offset``);
    the bytes up to it are written too (zeros after the manifest), so no
    byte of an earlier dump on a reused device remains before the records.
    The file offset is left at ``start``.  ``stream``: written where the
    stream is (it has just begun), not rewritten later.  ``direct_required``
    (``--direct-io``): a target that refuses the head's O_DIRECT write is an
    error, not written buffered.
    """
    if header.manifest_offset != HEADER_BLOCK or header.manifest_length != len(manifest_rec) \
            or start < HEADER_BLOCK + len(manifest_rec):
        raise ValueError("member head does not fit its manifest")
    hb = header.pack_block()          # the header and its copy (HEADER_COPY_OFFSET)
    block = aligned_block(hb + bytes(HEADER_BLOCK - len(hb)) + manifest_rec, start)
    if stream:
        write_all(fd, block, f"target {path}")
        return
    write_head(fd, block, f"target {path}", direct_required)    # O_DIRECT refused: buffered (directio.py)
    os.lseek(fd, start, os.SEEK_SET)


def aligned_block(data: bytes, size: int = HEADER_BLOCK):
    """``data`` zero-padded to ``size`` in a page-aligned buffer (usable with O_DIRECT)."""
    buf = mmap.mmap(-1, size)
    buf[:len(data)] = data
    return buf
