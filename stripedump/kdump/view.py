"""The kdump-compressed file of a dump, served on the fly: ``KdumpView(dump).pread(offset, n)``.

Why it can be generated without a pass over the payloads: every offset of
the file ``join --format kdump`` writes in copy and none modes is a
function of the plan and the chunk index (kdumplayout.py: ``KdumpLayout`` places
the header area, the bitmaps, the descriptor table and the zero page;
``DataMap`` the page data of each chunk, by prefix sums over record
lengths).  So a read is answered from what it covers:

* the header area: built once at open (utsname read from the dumped memory
  through ``Dump.read_phys``, as join does);
* the bitmaps: the bits of the merged PFN ranges for the bytes asked for,
  never the whole bitmap (64 MiB for a 2 TiB machine); for a filtered dump
  the 2nd less the excluded pages, whose descriptors the table leaves out
  (``filtered.KeptMap``, read at open from the chunk headers and tables);
* the descriptor table: for each chunk covered, its descriptors from its
  checked block table (``Dump.checked``; no decompression), the most
  recently used kept (DESC_CACHE bytes);
* the zero page, zeros;
* the page data: copy mode, the stored blocks of the record (the last
  STORED_CACHE chunks' kept); none mode, the decoded chunk (``Dump.chunk``,
  whose LRU cache bounds the memory).

A chunk that fails its checks raises ``ChunkError`` (the mount answers
EIO), never zeros; a missing chunk (an incomplete dump) has zero
descriptors and no data, and the header says INCOMPLETE.  One difference
from join, which reads every chunk: pages the source could not give at
dump time have zero descriptors in both, but only join (having read them)
also sets INCOMPLETE for them.

Thread-safe: ``Dump`` is, the descriptor cache has a lock, the rest is
read-only after open.
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict

from ..runtime.bitmap import set_bits
from ..errors import ChunkError, UsageError
from ..read.fileview import FileView
from ..read.filtered import KeptMap
from ..format.structs import BLOCK_COMPRESSED
from .layout import (COPY, DESC_SIZE, DUMP_DH_COMPRESSED_INCOMPLETE, NONE, DataMap, KdumpLayout,
                          chunk_descs, dump_codec, missing_pages, phys_reader, utsname, view_mode)
from ..read.dumpset import MISSING
from ..read.reader import Dump

DESC_CACHE = 4 << 20    # bytes of descriptors kept (24 per page: 680 chunks of 1 MiB, 2.7 GiB of memory)
STORED_CACHE = 8        # chunks whose stored blocks are kept, copy mode (a sequential reader's
                        # 128 KiB reads would otherwise read and check each record 8 times)


class KdumpView(FileView):
    """The kdump-compressed file of ``dump`` (a FileView: ``size``, ``pread``); ``mode`` COPY or NONE
    (default: COPY where the stored pages are kdump page data, see ``kdump.view_mode``)."""

    def __init__(self, dump: Dump, mode: str | None = None, kept: KeptMap | None = None):
        self.dump = dump
        ds = dump.ds
        self.kept = kept if kept is not None else KeptMap.build(dump)      # filtered dumps only
        self.lay = lay = KdumpLayout.from_dumpset(ds, self.kept)
        self.mode = mode or view_mode(ds)
        if self.mode == COPY and view_mode(ds) != COPY:
            raise UsageError("the dump's pages cannot be served as stored (no kdump codec flag, or "
                             "blocks larger than a page)")
        if self.mode not in (COPY, NONE):
            raise UsageError(f"unknown kdump view mode {self.mode!r}")
        codec = dump_codec(ds)[0]
        self.codec_id = codec.ID if codec is not None else -1
        self.flag = codec.kdump_flag if self.mode == COPY else 0
        self.dmap = DataMap(lay, dump, self.mode)
        self.size = self.dmap.end
        self.utsname, self.utsname_from = utsname(phys_reader(dump), lay)
        status = self.flag | (DUMP_DH_COMPRESSED_INCOMPLETE if missing_pages(dump) else 0)
        self.header = lay.header_area(status, self.utsname)
        self._zero_page = bytes(lay.page_size)
        self._descs: OrderedDict[int, bytes] = OrderedDict()
        self._desc_bytes = 0
        self._data_cache: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._starts = [a for a, _ in lay.ranges]

    # -- the parts ---------------------------------------------------------------

    def _bitmap(self, off: int, n: int) -> bytes:
        """Bytes [off, off + n) of one bitmap."""
        buf = bytearray(n)
        lo, hi = off * 8, (off + n) * 8
        ranges = self.lay.ranges
        i = max(bisect.bisect_right(self._starts, lo) - 1, 0)
        while i < len(ranges) and ranges[i][0] < hi:
            a, b = ranges[i]
            if b > lo:
                set_bits(buf, max(a, lo) - lo, min(b, hi) - lo)
            i += 1
        return bytes(buf)

    def chunk_descs(self, cid: int) -> bytes:
        """The descriptors of page chunk ``cid`` (24 bytes per page), as join writes them."""
        with self._lock:
            d = self._descs.get(cid)
            if d is not None:
                self._descs.move_to_end(cid)
                return d
        dump, c = self.dump, self.dump.plan.chunk(cid)
        if dump.index.member[cid] == MISSING:
            d = bytes(DESC_SIZE * c.count)
        else:
            h, body, blocks = dump.checked(cid)
            self._check_size(cid, h, body, blocks)
            d, _ = chunk_descs(self.lay, self.mode, self.flag, h, body, blocks, dump.block_bytes,
                               self.dmap.offset(cid), c.count)
            d = bytes(d)
        with self._lock:
            if cid not in self._descs:
                self._descs[cid] = d
                self._desc_bytes += len(d)
                while self._desc_bytes > DESC_CACHE:
                    self._desc_bytes -= len(self._descs.popitem(last=False)[1])
        return d

    def _stored(self, cid: int) -> bytes:
        """Copy mode: the stored blocks of chunk ``cid`` (checked), the last STORED_CACHE kept."""
        with self._lock:
            data = self._data_cache.get(cid)
            if data is not None:
                self._data_cache.move_to_end(cid)
                return data
        h, body, blocks = self.dump.checked(cid)
        self._check_size(cid, h, body, blocks)
        data = bytes(body[4 * h.nblocks:])
        with self._lock:
            self._data_cache[cid] = data
            while len(self._data_cache) > STORED_CACHE:
                self._data_cache.popitem(last=False)
        return data

    def _check_size(self, cid: int, h, body, blocks) -> None:
        """Copy mode: the stored blocks are what the layout placed, in the dump's codec (as join checks)."""
        if self.mode != COPY:
            return
        if len(body) - 4 * h.nblocks != self.dmap.size(cid):
            raise ChunkError(f"{self.dump.where(cid)}: record length does not match the index")
        if h.codec_id != self.codec_id and any(how == BLOCK_COMPRESSED for how, *_ in blocks):
            raise ChunkError(f"{self.dump.where(cid)}: the record's codec is not the dump's")

    def _table(self, off: int, n: int, out: bytearray, at: int) -> None:
        """Descriptor table bytes [off, off + n) (offsets within the table) into ``out[at:]``."""
        lay, plan = self.lay, self.dump.plan
        end = off + n
        while off < end:
            rank = off // DESC_SIZE
            if self.kept is not None:       # a filtered dump: descriptors of the kept pages only
                cid = self.kept.chunk_of_rank(rank)
                first = DESC_SIZE * self.kept.before(cid)
            else:
                ri = bisect.bisect_right(lay._ranks, rank) - 1
                pfn = lay.ranges[ri][0] + rank - lay._ranks[ri]
                cid = plan.page_chunk_at(pfn)
                c = plan.chunk(cid)
                first = DESC_SIZE * (rank - (pfn - c.start))        # table offset of the chunk's first descriptor
            d = self.chunk_descs(cid)
            k = min(end, first + len(d)) - off
            out[at:at + k] = d[off - first:off - first + k]
            off += k
            at += k

    def _data(self, off: int, n: int, out: bytearray, at: int) -> None:
        """Page data bytes [off, off + n) (file offsets) into ``out[at:]``."""
        dump = self.dump
        end = off + n
        while off < end:
            found = self.dmap.find(off)
            if found is None:
                return
            cid, base = found
            size = self.dmap.size(cid)
            if self.mode == COPY:
                src = self._stored(cid)
            else:
                src = dump.chunk(cid)
            k = min(end, base + size) - off
            out[at:at + k] = src[off - base:off - base + k]
            off += k
            at += k

    # -- the file ----------------------------------------------------------------

    def _fill(self, out: bytearray, offset: int, end: int) -> None:
        """The kdump file's bytes [offset, end) (``FileView.pread``), from each part they cover."""
        lay = self.lay
        L = lay.bitmap_len
        parts = ((0, lay.bitmap_offset, "header"),
                 (lay.bitmap_offset, lay.bitmap_offset + 2 * L, "bitmaps"),
                 (lay.table_offset, lay.zero_page_offset, "table"),
                 (lay.zero_page_offset, lay.data_start, "zero"),
                 (lay.data_start, self.size, "data"))
        for a, b, what in parts:
            lo, hi = max(a, offset), min(b, end)
            if lo >= hi:
                continue
            at = lo - offset
            if what == "header":
                out[at:at + hi - lo] = self.header[lo:hi]
            elif what == "bitmaps":
                pos = lo
                while pos < hi:         # the 2nd is the 1st less the excluded pages of a filtered dump
                    rel = (pos - a) % L
                    k = min(hi - pos, L - rel)
                    bits = self._bitmap(rel, k)
                    if pos - a >= L:
                        bits = lay.second_bitmap(rel, bits)
                    out[pos - offset:pos - offset + k] = bits
                    pos += k
            elif what == "table":
                self._table(lo - a, hi - lo, out, at)
            elif what == "data":
                self._data(lo, hi - lo, out, at)
            # the zero page: zeros already
