"""A striped dump opened for random access: the read side every command shares.

Why: join, verify, info and mount all start from "these members are one
dump; give me chunk N, checked".  This module is that one reader:

* ``ChunkIndex``: where each chunk's record is, in three compact arrays
  (member position, record offset, record length: 14 bytes per chunk, 28 MiB
  for the two million 1 MiB chunks of a 2 TiB dump; no Python object per
  chunk).  Built from the members' indexes (or walks of unfinished members)
  through ``DumpSet.locations``, which checks every entry against the plan;
  no payload is read to build it.
* ``Dump``: the members as the ELF file ``join`` would write (``size``,
  ``pread``, ``file()``) and as physical memory (``read_phys``).  A chunk is
  read and verified (header CRC, dump id, payload checksum, block table, and
  that it is the chunk the plan and index promise) when it is first used,
  then decoded into a bounded LRU cache.  A chunk that fails its checks is an
  error (``ChunkError``, logged once and remembered), never zeros; a chunk
  no member holds (an incomplete dump opened with ``allow_incomplete``)
  reads as zeros and is listed in ``missing``.  The ELF header, program
  headers and notes of missing residue chunks come from the manifest's copy
  and the header is marked incomplete, exactly as ``join --allow-incomplete``
  writes them.  ``repairs`` lists the damage the dump set worked around
  (a header read from its copy, a footer rebuilt by a walk: read/repair.py),
  which join and mount report as warnings.

Thread safety: records are read with ``os.pread`` (no shared file position),
each thread has its own decompressor objects, and the cache is guarded by
one lock held only for lookups and inserts, never while decoding, so
threads decode different chunks in parallel (the codecs release the GIL).
"""

from __future__ import annotations

import bisect
import io
import logging
import sys
import threading
from array import array
from collections import OrderedDict

from .dumpset import MISSING, INCOMPLETE_HINT, DumpSet
from ..source.elfhead import clip, incomplete_mark
from ..errors import ChunkError, IncompleteDump, MemberError, MissingChunk, NotDumped, VerifyError
from ..format.structs import CHUNK_EXCLUDED, KIND_PAGES, ChunkHeader, IndexEntry
from ..format.decode import decode_chunk, read_chunk
from .fileview import FileView
from ..source.vmcore import PT_LOAD, subtract_ranges

DEFAULT_CACHE = 256 << 20          # decoded chunks kept (256 x 1 MiB chunks)
log = logging.getLogger("stripedump.read.reader")


# Below this many chunks the general index fill (about 3.5 us a chunk) costs less than importing
# numpy for ``_fast`` (80-100 ms here, paid by a join's coordinator before its workers start,
# issue 12); a process that has numpy already uses it at any size.
NUMPY_INDEX_MIN = 16384


class ChunkIndex:
    """chunk id -> (member position in ``DumpSet.readers``, record offset, record length)."""

    def __init__(self, n: int):
        self.n = n
        self.member = array("H", [MISSING]) * n
        self.offset = array("Q", bytes(8 * n))
        self.length = array("I", bytes(4 * n))

    @classmethod
    def build(cls, ds: DumpSet, allow_incomplete: bool = False, payloads: bool = False) -> "ChunkIndex":
        """From the members' indexes (walks where a member has none); reads no payload.

        ``payloads``: a walk checks each record's payload too (``DumpSet.locations``),
        so a torn record on a member that stopped is passed over for a sound copy
        elsewhere (a degraded dump); join and verify, which read every payload anyway, ask for it.
        """
        if len(ds.readers) >= MISSING:
            raise MemberError(f"too many members ({len(ds.readers)})")
        ix = cls(ds.plan.n_chunks)
        if (ix.n >= NUMPY_INDEX_MIN or "numpy" in sys.modules) and ix._fast(ds, allow_incomplete):
            return ix
        for pos in range(len(ds.readers)):
            ds.source(pos).used = 0
        ix = cls(ds.plan.n_chunks)
        seen = bytearray(-(-ix.n // 8))
        member, offset, length = ix.member, ix.offset, ix.length
        for pos, e in ds.locations(seen, allow_incomplete, payloads=payloads):
            c = e.chunk_id
            member[c], offset[c], length[c] = pos, e.offset, e.length
        return ix

    def _fast(self, ds: DumpSet, allow_incomplete: bool) -> bool:
        """Fill the arrays from finalized members' index records, a whole record at a time (numpy).

        The common case (every member finalized, placement by the plan): the
        same checks as ``DumpSet.locations`` (chunk id in range and on its
        member, listed once, record inside the member), vectorized: about 30 ns
        a chunk instead of 3.5 us.  Anything unusual (a member to walk, a
        degraded dump, an entry failing a check) returns False and the
        general path does it again, with its exact errors.
        """
        from ..runtime.machine import numpy_if_safe
        np = numpy_if_safe()
        if np is None:
            return False
        if ds.relaxed:
            return False
        entry = np.dtype([("cid", "<u8"), ("off", "<u8"), ("len", "<u4"), ("ck", "<u8")])
        assert entry.itemsize == IndexEntry.STRUCT.size
        member = np.frombuffer(self.member, dtype=np.uint16)
        offset = np.frombuffer(self.offset, dtype=np.uint64)
        length = np.frombuffer(self.length, dtype=np.uint32)
        try:
            ds.check_members(allow_incomplete)
            for pos, r in enumerate(ds.readers):
                src = ds.source(pos)
                if src.footer is None:
                    return False
                count = 0
                for _, body in r.index_bodies(src.footer):
                    if len(body) % entry.itemsize:
                        return False
                    e = np.frombuffer(body, dtype=entry)
                    cid = e["cid"]
                    if len(cid) and (int(cid.max()) >= self.n or
                                     bool(np.any(cid % ds.count != r.header.member_index)) or
                                     # off + len in uint64 wraps for a hostile offset: two tests
                                     bool(np.any((e["off"] > r.size) | (e["len"] > r.size - e["off"]))) or
                                     bool(np.any(member[cid] != MISSING)) or
                                     _repeats(np, cid)):
                        return False
                    member[cid], offset[cid], length[cid] = pos, e["off"], e["len"]
                    count += len(cid)
                if count != src.footer.chunks:
                    return False
                src.used = count
        except (MemberError, OverflowError):
            return False
        return True

    def has(self, cid: int) -> bool:
        return self.member[cid] != MISSING

    def missing(self) -> list[int]:
        """Chunk ids no member holds, in order (found in C: ``array.index`` skips the rest)."""
        out, i = [], 0
        try:
            while True:
                i = self.member.index(MISSING, i)
                out.append(i)
                i += 1
        except ValueError:
            return out

    @property
    def nbytes(self) -> int:
        return sum(a.itemsize * len(a) for a in (self.member, self.offset, self.length))


class ChunkCache:
    """Decoded chunks, least recently used dropped first, at most ``limit`` bytes."""

    def __init__(self, limit: int):
        self.limit = max(0, int(limit))
        self.used = 0
        self._d: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, cid: int) -> bytes | None:
        with self._lock:
            data = self._d.get(cid)
            if data is not None:
                self._d.move_to_end(cid)
            return data

    def put(self, cid: int, data: bytes) -> None:
        if len(data) > self.limit:
            return
        with self._lock:
            if cid in self._d:
                return
            self._d[cid] = data
            self.used += len(data)
            while self.used > self.limit:
                _, old = self._d.popitem(last=False)
                self.used -= len(old)


class FileMap:
    """ELF file offset -> where its bytes come from: a residue (file) chunk or a physical address.

    Sorted disjoint spans; the PT_LOADs' file bytes minus the residue ranges
    map to physical addresses (the load's ``p_paddr`` plus the offset into
    it).  Bytes in neither read as zeros.
    """

    def __init__(self, segments: list[dict], residue: list[tuple[int, int]]):
        spans = [(a, b, -1) for a, b in residue]        # -1: residue, read from file chunks
        covered = list(residue)
        for s in segments:
            if s["type"] != PT_LOAD or not s["filesz"]:
                continue
            for a, b in subtract_ranges((s["offset"], s["offset"] + s["filesz"]), covered):
                spans.append((a, b, s["paddr"] + a - s["offset"]))
                covered.append((a, b))
        spans.sort()
        self.starts = [a for a, _, _ in spans]
        self.ends = [b for _, b, _ in spans]
        self.phys = [p for _, _, p in spans]

    def spans(self, lo: int, hi: int):
        """(file start, file end, physical address of file start or -1 for residue) within [lo, hi)."""
        i = max(bisect.bisect_right(self.starts, lo) - 1, 0)
        while i < len(self.starts) and self.starts[i] < hi:
            a, b = max(self.starts[i], lo), min(self.ends[i], hi)
            if a < b:
                p = self.phys[i]
                yield a, b, (p + a - self.starts[i] if p >= 0 else -1)
            i += 1


class Dump(FileView):
    """A dump opened for reading (see the module comment); use ``open()``.  As a FileView
    (``size``, ``pread``): the ELF vmcore, byte for byte what join writes."""

    def __init__(self, members: list[str], allow_incomplete: bool = False, cache_bytes: int = DEFAULT_CACHE,
                 newest_dump: bool | None = None, verify_walks: bool = False):
        # newest_dump: with allow_incomplete, members of an older dump are dropped (``DumpSet``);
        # verify passes False: members of two dumps are an error there.  verify_walks: see ChunkIndex.build
        self.allow_incomplete = allow_incomplete
        newest = allow_incomplete if newest_dump is None else newest_dump
        self.ds = ds = DumpSet(list(members), allow_missing=allow_incomplete, newest_dump=newest)
        try:
            ds.check_members(allow_incomplete)
            self.index = ChunkIndex.build(ds, allow_incomplete, payloads=verify_walks)
        except BaseException:
            ds.close()
            raise
        self.plan, self.page_size, self.block_bytes = ds.plan, ds.page_size, ds.block_bytes
        self.dump_id = ds.dump_id
        self.size = ds.source_size
        self.paths = [r.path for r in ds.readers]
        self.repairs = ds.repairs()      # damage worked around (repair.py): join and mount warn
        self.missing = self.index.missing()
        if self.missing and not allow_incomplete:
            why = ds.describe_absent(self.missing)
            ds.close()
            raise IncompleteDump(f"{why}; {INCOMPLETE_HINT}")
        self.cache = ChunkCache(cache_bytes)
        self.bad: dict[int, str] = {}          # chunk id -> why it failed its checks
        self._bad_lock = threading.Lock()
        self._local = threading.local()
        self._zeros: dict[int, bytes] = {}
        self.map = FileMap(ds.segments, self.plan.residue)
        self.overlay = self._overlay()

    # -- the records ---------------------------------------------------------

    def where(self, cid: int) -> str:
        pos = self.index.member[cid]
        path = self.paths[pos] if pos != MISSING else "(no member)"
        return f"member {path}, {self.plan.chunk(cid).describe(self.page_size)}"

    def record(self, cid: int) -> bytes | None:
        """The raw record of chunk ``cid`` as stored, None when no member holds it."""
        ix = self.index
        pos = ix.member[cid]
        if pos == MISSING:
            return None
        try:
            return self.ds.readers[pos].pread(ix.offset[cid], ix.length[cid])
        except MemberError as e:
            raise ChunkError(f"{self.where(cid)}: {e}") from None

    def checked(self, cid: int) -> tuple[ChunkHeader, memoryview, list]:
        """(header, payload, blocks) of chunk ``cid`` (``decode.read_chunk``), proven to be that chunk.

        ChunkError when the record fails a check, MissingChunk when no member holds it.
        """
        rec = self.record(cid)
        if rec is None:
            raise MissingChunk(f"{self.where(cid)}: no member holds this chunk")
        return self.check_record(cid, rec)

    def check_record(self, cid: int, rec) -> tuple[ChunkHeader, memoryview, list]:
        """``read_chunk`` of a record said to be chunk ``cid``, plus: it is the chunk the plan describes."""
        where = self.where(cid)
        try:
            h, body, blocks = read_chunk(rec, where, self.block_bytes, self.ds.header.dump_id, self.page_size,
                                         self.ds.chunk_limit)
            self._promised(cid, h, where)
        except (MemberError, VerifyError) as e:
            self._failed(cid, str(e))
            raise ChunkError(str(e)) from None
        return h, body, blocks

    def _promised(self, cid: int, h: ChunkHeader, where: str) -> None:
        """A checked record's header is chunk ``cid`` of this dump, as the plan describes it."""
        if h.version >= 2 and h.dump_id != self.ds.header.dump_id:
            raise VerifyError(f"{where}: the chunk record belongs to another dump")
        c = self.plan.chunk(cid)
        if h.chunk_id != cid:
            raise VerifyError(f"{where}: record does not match the index (found chunk {h.chunk_id})")
        if (h.kind, h.start, h.raw_length) != (c.kind, c.start, c.raw_bytes(self.page_size)):
            raise VerifyError(f"{where}: record describes other data than the plan says")
        if h.version >= 2 and h.kind == KIND_PAGES and not h.flags & CHUNK_EXCLUDED and h.kept_pages != c.count:
            raise VerifyError(f"{where}: kept-page count {h.kept_pages} does not match the chunk")

    def _failed(self, cid: int, why: str) -> None:
        with self._bad_lock:
            if cid not in self.bad:
                self.bad[cid] = why
                log.error("%s", why)

    def chunk(self, cid: int) -> bytes:
        """Chunk ``cid``'s source bytes, verified; zeros when missing; ChunkError when damaged."""
        data = self.cache.get(cid)
        if data is not None:
            return data
        why = self.bad.get(cid)
        if why is not None:
            raise ChunkError(why)
        if self.index.member[cid] == MISSING:
            return self._zero(self.plan.chunk(cid).raw_bytes(self.page_size))
        rec = self.record(cid)
        codecs = getattr(self._local, "codecs", None)
        if codecs is None:
            codecs = self._local.codecs = {}
        where = self.where(cid)
        try:
            h, out, _ = decode_chunk(rec, where, self.block_bytes, codecs, self.ds.chunk_limit)  # read_chunk's checks, once
            self._promised(cid, h, where)
        except (MemberError, VerifyError) as e:
            self._failed(cid, str(e))
            raise ChunkError(str(e)) from None
        data = bytes(out)
        self.cache.put(cid, data)
        return data

    def _zero(self, n: int) -> bytes:
        z = self._zeros.get(n)
        if z is None:
            z = self._zeros[n] = bytes(n)
        return z

    # -- the ELF file and physical memory --------------------------------------

    def _overlay(self) -> list[tuple[int, bytes]]:
        """Bytes join writes over missing residue chunks: the manifest's headers, the incomplete mark."""
        files = [(c.start, c.start + c.count) for c in map(self.plan.chunk, self.missing)
                 if c.kind != KIND_PAGES]
        if not self.missing:
            return []
        out = list(clip(self.ds.header_pieces or [], files))
        head = bytearray(min(64, self.size))
        if head:
            self._fill_raw(head, 0, len(head))
        for off, data in out:                     # the header as join leaves it before marking it
            lo, hi = max(off, 0), min(off + len(data), len(head))
            if lo < hi:
                head[lo:hi] = data[lo - off:hi - off]
        mark = incomplete_mark(bytes(head))
        if mark is not None:
            out.append(mark)
        return out

    def _fill(self, out: bytearray, offset: int, end: int) -> None:
        """The ELF vmcore's bytes [offset, end) (``FileView.pread``): the chunks', then the overlay."""
        self._fill_raw(out, offset, end)
        for off, piece in clip(self.overlay, [(offset, end)]):
            out[off - offset:off - offset + len(piece)] = piece

    def _fill_raw(self, out: bytearray, offset: int, end: int) -> None:
        plan = self.plan
        for a, b, phys in self.map.spans(offset, end):
            if phys < 0:
                pos = a
                while pos < b:
                    cid = plan.file_chunk_at(pos)
                    if cid is None:
                        break
                    c = plan.chunk(cid)
                    k = min(b, c.start + c.count) - pos
                    out[pos - offset:pos - offset + k] = self.chunk(cid)[pos - c.start:pos - c.start + k]
                    pos += k
            else:
                self._copy_phys(phys, out, a - offset, b - a, strict=False)

    def _copy_phys(self, paddr: int, out: bytearray, at: int, n: int, strict: bool) -> None:
        plan, ps = self.plan, self.page_size
        done = 0
        while done < n:
            p = paddr + done
            cid = plan.page_chunk_at(p // ps)
            if cid is None:
                if strict:
                    raise NotDumped(f"physical address {p:#x} is not in the dump")
                k = min(n - done, ps - p % ps)         # not dumped: zeros (never for a PT_LOAD's bytes)
                done += k
                continue
            c = plan.chunk(cid)
            lo = p - c.start * ps
            k = min(n - done, c.count * ps - lo)
            out[at + done:at + done + k] = self.chunk(cid)[lo:lo + k]
            done += k

    def read_phys(self, paddr: int, n: int) -> bytes:
        """``n`` bytes of the crashed machine's memory at physical address ``paddr``."""
        if paddr < 0 or n < 0:
            raise NotDumped(f"bad physical range {paddr:#x}+{n}")
        out = bytearray(n)
        self._copy_phys(paddr, out, 0, n, strict=True)
        return bytes(out)

    def file(self) -> "DumpFile":
        return DumpFile(self)

    # -- lifetime ------------------------------------------------------------

    def close(self) -> None:
        self.ds.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class DumpFile(io.RawIOBase):
    """The ELF vmcore as a read-only, seekable file object (``io.BufferedReader`` may wrap it)."""

    def __init__(self, dump: Dump):
        self.dump, self.pos = dump, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.dump.pread(self.pos, len(b))
        b[:len(data)] = data
        self.pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.dump.size}[whence]
        if base + offset < 0:
            raise OSError(22, "negative seek position")
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    @property
    def size(self) -> int:
        return self.dump.size


def open(members: list[str], allow_incomplete: bool = False, cache_bytes: int = DEFAULT_CACHE,
         verify_walks: bool = False) -> Dump:
    """Open a striped dump read-only; see ``Dump``.  Errors are ``MemberError``/``IncompleteDump``
    for members that do not make one dump (or an incomplete one, unless ``allow_incomplete``).

    ``verify_walks``: a member that was never finalized (no index) is walked record by record;
    True checks each record's payload on the way, so that a torn record is skipped there (as
    ``join --allow-incomplete`` does, and another copy of a degraded dump's chunk is taken)
    instead of failing when read.  It reads the whole of such members at open."""
    return Dump(members, allow_incomplete, cache_bytes, verify_walks=verify_walks)


def _repeats(np, ids) -> bool:
    """True when a value occurs twice in ``ids`` (sorted copy; np.unique would import numpy.ma)."""
    c = np.sort(ids)
    return bool(np.any(c[1:] == c[:-1]))
