"""Where everything of a kdump-compressed file lies, and what its headers say.

makedumpfile's kdump-compressed file ("diskdump", header version 6), as
join writes it and the on-the-fly view serves it (kdump-format.md §1-§6,
B = page size, S = sub-header blocks, BB = bitmap blocks):

    0               disk_dump_header (utsname, CRASHTIME, codec flag, geometry)
    B               kdump_sub_header, then the source's PT_NOTE bytes verbatim
    (1+S)*B         1st bitmap, then the 2nd (identical: a full dump)
    T=(1+S+BB)*B    page_desc[total pages], 24 bytes each, in PFN order
    T+24*pages      one zero page, shared by every all-zero page
    T+24*pages+B    page data, chunk by chunk in chunk-id (PFN) order

Why a module of its own: join (kdump.py) writes this file with a pool of
workers, kdumpview.py serves it from a reader.Dump without writing it; both
must put every byte in the same place, so the places are computed here and
nowhere else.  Every position but the page data is a function of the plan:
the bitmaps come from the merged PFN ranges; the descriptor of PFN p sits at
``T + 24 * rank(p)``, rank being p's position among all dumped pages (a
bisect over the ranges), and the page chunks cover the ranges in PFN order,
so each chunk's descriptors are one contiguous slot known before the chunk
is read.  The page data of the chunks follows in chunk-id order; in COPY
and NONE modes each chunk's data size is a function of its record length
and page count, so ``DataMap`` places every chunk from the chunk index alone
(prefix sums, sampled every SAMPLE chunks), before any payload is read:

* COPY (the dump's codec has a kdump flag, one-page blocks): a chunk's
  stored blocks are already kdump page data, back to back: record length -
  header - 4 bytes per page; a raw block is a page with flags 0, a zero
  block the shared zero page (``chunk_descs``);
* NONE: a page-sized slot per page, pages stored uncompressed (flags 0);
  zero pages still get the zero page;
* both: 0 for an all-zero chunk (its record is its header alone) and for a
  missing one, whose descriptors are all zero (missing pages, as
  makedumpfile leaves them; the header then says INCOMPLETE).

(TRANSCODE, where sizes are known only after compressing, is join's alone:
kdump.py.)

Bitmaps and zero pages: both bitmaps hold every PFN of the merged ranges;
pages no PT_LOAD has file data for (``p_memsz > p_filesz``, holes inside a
page) read as zero, as in the ELF output, and share the zero page.
``dump_level`` is 0: nothing is excluded (crash would print "[PARTIAL DUMP]"
for any other value); readers do not consult it for zero-page sharing.

A filtered dump (``dump -d N``; ``kept``, a filtered.KeptMap): its excluded
pages are 0 bits in the 2nd bitmap and have no descriptor, so the table
holds ``kept.total`` descriptors and a chunk's start at ``kept.before(cid)``
(its kept pages in PFN order, ``chunk_descs`` compacts them); the 1st bitmap
is as before, ``dump_level`` is the level applied, as makedumpfile writes
them.  Page data is placed as before (NONE mode keeps a slot per page, the
excluded ones are holes nobody points at).
"""

from __future__ import annotations

import bisect
import struct
from array import array
from dataclasses import dataclass, field

from ..runtime.bitmap import set_bits
from ..format.codecs import BY_ID, CodecSpec
from ..read.dumpset import DumpSet
from ..errors import ChunkError, NotDumped, UsageError, VerifyError
from ..format.structs import BLOCK_COMPRESSED, CHUNK_HEADER_SIZE, ChunkHeaderV1
from ..read.dumpset import MISSING
from ..format.blocktable import unreadable_ranges
from ..source.vmcore import PT_LOAD, parse_notes, parse_vmcoreinfo

SIGNATURE = b"KDUMP   "
HEADER_VERSION = 6
DESC_SIZE = 24
DUMP_DH_COMPRESSED_INCOMPLETE = 0x8     # header status: some pages are missing (offset 0)
UTS_LEN = 65                         # __NEW_UTS_LEN + 1
START_KERNEL_MAP = 0xFFFFFFFF80000000   # x86_64 kernel-image mapping (__START_KERNEL_map)
BITMAP_PIECE = 1 << 20               # bitmap bytes built and written at a time (8 Mi PFNs)

# e_machine (pyelftools' name) -> utsname.machine and the kernel's word size,
# which picks the header layouts.  crash refuses a machine name that does not
# match its target; libkdumpfile derives the architecture from it.
MACHINES = {
    "EM_X86_64": ("x86_64", 64),
    "EM_386": ("i686", 32),
    "EM_AARCH64": ("aarch64", 64),
    "EM_PPC64": ("ppc64", 64),       # "ppc64le" when little-endian
    "EM_S390": ("s390x", 64),
    "EM_RISCV": ("riscv64", 64),
    "EM_LOONGARCH": ("loongarch64", 64),
}
MACHINE_NUMBERS = {62: "EM_X86_64", 3: "EM_386", 183: "EM_AARCH64", 21: "EM_PPC64", 22: "EM_S390",
                   243: "EM_RISCV", 258: "EM_LOONGARCH"}

# disk_dump_header, 64- and 32-bit (i386: 4-byte-aligned 64-bit members)
_HEADER = {64: "8si390s6xqqIiiIIIIIIi", 32: "8si390s2xIiIiiIIIIIIi"}
# kdump_sub_header: 64-bit, and i386's packed layout
_SUB = {64: "QiiQQqQqQqQQQQ", 32: "IiiIIqIqIqIQQQ"}


def _vmcoreinfo_int(text: str | None, base: int = 10) -> int | None:
    """A VMCOREINFO number; ``NUMBER()`` is signed decimal, arm64 prints some as 0x hex."""
    if text is None:
        return None
    try:
        return int(text, base)
    except ValueError:
        try:
            return int(text, 16)
        except ValueError:
            return None


@dataclass
class KdumpLayout:
    """Every position and header value of the output, from the manifest alone."""
    page_size: int
    endian: str
    bits: int
    machine: str
    ranges: list[tuple[int, int]]
    notes: bytes
    vmcoreinfo: dict
    vmcoreinfo_at: int          # offset of the VMCOREINFO text in ``notes``, -1 if none
    vmcoreinfo_size: int
    nr_cpus: int
    phys_base: int
    crashtime: int
    kept: object = None         # filtered.KeptMap of a filtered dump, else None
    _starts: list[int] = field(default_factory=list)
    _ranks: list[int] = field(default_factory=list)

    def __post_init__(self):
        B = self.page_size
        self.max_mapnr = self.ranges[-1][1]
        self.sub = struct.Struct(self.endian + _SUB[self.bits])
        self.head = struct.Struct(self.endian + _HEADER[self.bits])
        self.desc = struct.Struct(self.endian + "qIIQ")
        self.sub_hdr_size = -(-(self.sub.size + len(self.notes)) // B)
        self.bitmap_len = -(-(-(-self.max_mapnr // 8)) // B) * B
        self.bitmap_blocks = 2 * self.bitmap_len // B
        self.bitmap_offset = (1 + self.sub_hdr_size) * B
        self.table_offset = (1 + self.sub_hdr_size + self.bitmap_blocks) * B
        self._starts = [a for a, b in self.ranges]
        n = 0
        for a, b in self.ranges:
            self._ranks.append(n)
            n += b - a
        if self.kept is not None:
            n = self.kept.total
        self.num_dumpable = n
        self.zero_page_offset = self.table_offset + DESC_SIZE * n
        self.zero_desc = self.desc.pack(self.zero_page_offset, B, 0, 0)
        self.data_start = self.zero_page_offset + B

    @classmethod
    def from_dumpset(cls, ds: DumpSet, kept=None) -> "KdumpLayout":
        src = ds.manifest["source"]
        em = src.get("machine")
        em = MACHINE_NUMBERS.get(em, em)
        if em not in MACHINES:
            raise UsageError(f"kdump output is not supported for e_machine {em} (supported: "
                             f"{', '.join(MACHINES)}); use --format elf")
        machine, bits = MACHINES[em]
        endian = src.get("endian", "<")
        if em in ("EM_S390", "EM_RISCV") and src.get("elfclass") != 64:
            raise UsageError(f"kdump output is not supported for 32-bit {em} dumps; use --format elf")
        if machine == "ppc64" and endian == "<":
            machine = "ppc64le"
        vi, at, size = {}, -1, 0
        for n in parse_notes(ds.notes, endian):
            if n.name == b"VMCOREINFO" and at < 0:
                vi, at, size = parse_vmcoreinfo(n.desc), n.desc_offset, len(n.desc)
        if not ds.plan.pfn_ranges:
            raise UsageError("the dump holds no pages; nothing to write as kdump")
        return cls(ds.page_size, endian, bits, machine, ds.plan.pfn_ranges, ds.notes, vi, at, size,
                   int(src.get("nr_cpus", 0)), _phys_base(machine, vi, ds.segments, bits),
                   _vmcoreinfo_int(vi.get("CRASHTIME")) or 0, kept)

    def rank(self, pfn: int) -> int:
        """Number of dumped pages below ``pfn``: its descriptor's index."""
        i = bisect.bisect_right(self._starts, pfn) - 1
        if i < 0 or not self.ranges[i][0] <= pfn < self.ranges[i][1]:
            raise VerifyError(f"PFN {pfn:#x} lies outside the dump's ranges")
        return self._ranks[i] + pfn - self.ranges[i][0]

    def desc_offset(self, pfn: int) -> int:
        return self.table_offset + DESC_SIZE * self.rank(pfn)

    def chunk_desc_offset(self, cid: int, start: int) -> int:
        """Where the descriptors of page chunk ``cid`` (first PFN ``start``) begin."""
        if self.kept is not None:
            return self.table_offset + DESC_SIZE * self.kept.before(cid)
        return self.desc_offset(start)

    @property
    def dump_level(self) -> int:
        """The sub-header's dump_level: the level applied for a filtered dump (crash then says
        "[PARTIAL DUMP]"), else 0."""
        k = self.kept
        if k is None:
            return 0
        return k.level if k.level is not None else (31 if k.excluded_pages else 0)

    def second_bitmap(self, off: int, first: bytes) -> bytes:
        """Bytes of the 2nd bitmap at ``off`` given the 1st's: the same, less excluded pages."""
        return first if self.kept is None else self.kept.second_bitmap(first, off)

    def header_area(self, status: int, uts: list[bytes]) -> bytes:
        """Blocks 0 .. S: the main header, the sub header and the notes."""
        B = self.page_size
        mask = (1 << self.bits) - 1
        name = b"".join(f[:UTS_LEN - 1].ljust(UTS_LEN, b"\0") for f in uts)
        head = self.head.pack(SIGNATURE, HEADER_VERSION, name, self.crashtime & mask, 0, status, B,
                              self.sub_hdr_size, self.bitmap_blocks, min(self.max_mapnr, 0xFFFFFFFF),
                              0, 0, 0, 0, self.nr_cpus)
        note_at = B + self.sub.size
        vi_at = note_at + self.vmcoreinfo_at if self.vmcoreinfo_at >= 0 else 0
        sub = self.sub.pack(self.phys_base & mask, self.dump_level, 0, 0, 0, vi_at, self.vmcoreinfo_size,
                            note_at, len(self.notes), 0, 0, 0, 0, self.max_mapnr)
        out = bytearray((1 + self.sub_hdr_size) * B)
        out[:len(head)] = head
        out[B:B + len(sub)] = sub
        out[note_at:note_at + len(self.notes)] = self.notes
        return bytes(out)

    def bitmap_pieces(self, piece: int = BITMAP_PIECE):
        """(offset in the bitmap, bytes) covering the bitmap, one piece at a time."""
        ri = 0
        for off in range(0, self.bitmap_len, piece):
            buf = bytearray(min(piece, self.bitmap_len - off))
            lo, hi = off * 8, (off + len(buf)) * 8
            while ri < len(self.ranges) and self.ranges[ri][1] <= lo:
                ri += 1
            j = ri
            while j < len(self.ranges) and self.ranges[j][0] < hi:
                a, b = self.ranges[j]
                set_bits(buf, max(a, lo) - lo, min(b, hi) - lo)
                j += 1
            yield off, buf


def _phys_base(machine: str, vi: dict, segments: list[dict], bits: int) -> int:
    """makedumpfile's phys_base: VMCOREINFO first, else the kernel-text PT_LOAD (x86_64)."""
    if machine == "x86_64":
        v = _vmcoreinfo_int(vi.get("NUMBER(phys_base)"))
        if v is not None:
            return v
        for s in segments:
            if s["type"] == PT_LOAD and s["vaddr"] >= START_KERNEL_MAP:
                return s["paddr"] - (s["vaddr"] - START_KERNEL_MAP)
        return 0
    if machine == "aarch64":
        return _vmcoreinfo_int(vi.get("NUMBER(PHYS_OFFSET)")) or 0
    return 0


# -- utsname ---------------------------------------------------------------

def phys_reader(dump):
    """``read(paddr, n)`` over a reader.Dump: bytes, or None where nothing (whole) was dumped."""
    def read(addr: int, length: int) -> bytes | None:
        try:
            return dump.read_phys(addr, length)
        except (NotDumped, ChunkError):
            return None
    return read


def utsname(read_phys, lay: KdumpLayout) -> tuple[list[bytes], str]:
    """The six utsname fields and where they came from ("memory" or "vmcoreinfo").

    Like makedumpfile, read ``init_uts_ns.name`` from the dumped memory (x86_64:
    its physical address follows from the kernel-image mapping and
    phys_base); else a sane stand-in, because libkdumpfile ignores a utsname
    with an empty field and then knows no architecture.
    """
    vi = lay.vmcoreinfo
    release = vi.get("OSRELEASE", "").encode()
    sym = _vmcoreinfo_int(vi.get("SYMBOL(init_uts_ns)"), 16)
    off = _vmcoreinfo_int(vi.get("OFFSET(uts_namespace.name)"))
    if lay.machine == "x86_64" and sym is not None and off is not None:
        pa = (sym + off - START_KERNEL_MAP + lay.phys_base) & ((1 << 64) - 1)
        raw = read_phys(pa, 6 * UTS_LEN)
        if raw is not None:
            f = [raw[i * UTS_LEN:(i + 1) * UTS_LEN] for i in range(6)]
            if all(b"\0" in x for x in f):
                f = [x[:x.index(b"\0")] for x in f]
                if f[0] == b"Linux" and all(f[2:5]) and (not release or f[2] == release):
                    return f, "memory"
    return [b"Linux", b"unknown", release or b"unknown", b"#1 (not read from memory by stripedump)",
            lay.machine.encode(), b"(none)"], "vmcoreinfo"


# -- how page data is made -------------------------------------------------

COPY, NONE, TRANSCODE = "copy", "none", "transcode"     # how page data is made (see the top)


def is_auto(ds) -> bool:
    """A ``--codec auto`` dump: its chunks may each have another codec (the manifest says ``auto``)."""
    return str(ds.manifest.get("codec", "")).partition(":")[0] == "auto"


def dump_codec(ds) -> tuple[type | None, CodecSpec | None]:
    """The dump's codec class (None if unknown, or mixed: ``--codec auto``) and its spec with the
    level the manifest records."""
    if is_auto(ds):
        return None, None
    dump_cls = BY_ID.get(ds.header.codec_id)
    try:
        dump_spec = CodecSpec.parse(str(ds.manifest.get("codec", dump_cls.name)))
    except (UsageError, AttributeError):
        dump_spec = CodecSpec(dump_cls.name) if dump_cls else None
    return dump_cls, dump_spec


def view_mode(ds) -> str:
    """COPY when the dump's pages are kdump page data as stored (a codec with a kdump flag,
    one-page blocks), else NONE: what the on-the-fly view (and ``--codec none``) serves.
    A ``--codec auto`` dump is NONE: the index does not say which codec each chunk has."""
    dump_cls, _ = dump_codec(ds)
    if dump_cls is not None and dump_cls.kdump_flag is not None and ds.block_bytes == ds.page_size:
        return COPY
    return NONE


# -- where page data lies --------------------------------------------------

SAMPLE = 64     # chunks between two stored prefix sums: an offset costs at most 63 additions


class DataMap:
    """Page chunk -> the offset and size of its page data, in copy and none modes.

    The data of page chunks lies in chunk-id order from ``data_start`` on,
    each chunk's size a function of its record length and page count alone
    (COPY: the stored blocks, record length - header - 4 bytes per page;
    NONE: a page-sized slot per page; both 0 for an all-zero chunk, whose
    record is its header alone, and for a missing chunk).  So no payload is
    read to place anything.  Only every SAMPLE-th prefix sum is kept (8
    bytes per 64 chunks); the rest is summed from ``length`` on demand.
    """

    def __init__(self, lay: KdumpLayout, dump, mode: str):
        self.lay, self.plan, self.mode = lay, dump.plan, mode
        self.member, self.length = dump.index.member, dump.index.length
        self.hsize = chunk_header_size(dump.ds)
        plan = self.plan
        self.n = plan.n_page_chunks
        self.sums = self._sums_numpy()
        if self.sums is None:
            self.sums = array("Q")
            total = lay.data_start
            for cid, pages in enumerate(_page_counts(plan)):
                if cid % SAMPLE == 0:
                    self.sums.append(total)
                total += self._size(cid, pages)
            self.sums.append(total)
        self.end = self.sums[-1]           # the file's size

    def _sums_numpy(self) -> array | None:
        """The sampled prefix sums, vectorized (0.1 s instead of 3 s for a 2 TiB dump's 2 Mi chunks)."""
        from ..runtime.machine import numpy_if_safe
        np = numpy_if_safe()
        if np is None:
            return None
        n, cp = self.n, self.plan.chunk_pages
        pages = np.empty(n, dtype=np.int64)
        first = 0
        for a, b in self.plan.pfn_ranges:       # chunk k of a range: [max(a, (a//cp+k)*cp), min(b, ...+cp))
            k = np.arange((b - 1) // cp - a // cp + 1, dtype=np.int64)
            pages[first:first + len(k)] = np.minimum(b, (a // cp + k + 1) * cp) - np.maximum(a, (a // cp + k) * cp)
            first += len(k)
        member = np.frombuffer(self.member, dtype=np.uint16)[:n]
        length = np.frombuffer(self.length, dtype=np.uint32)[:n].astype(np.int64)
        present = (member != MISSING) & (length > self.hsize)
        size = length - self.hsize - 4 * pages if self.mode == COPY else pages * self.lay.page_size
        size = np.where(present, np.maximum(size, 0), 0)
        cums = np.empty(n + 1, dtype=np.int64)
        cums[0] = 0
        np.cumsum(size, out=cums[1:])
        cums += self.lay.data_start
        return array("Q", np.concatenate((cums[0:n:SAMPLE], cums[n:])).astype(np.uint64).tobytes())

    def _size(self, cid: int, pages: int) -> int:
        if self.member[cid] == MISSING or self.length[cid] <= self.hsize:
            return 0
        if self.mode == COPY:
            return max(0, self.length[cid] - self.hsize - 4 * pages)
        return pages * self.lay.page_size

    def size(self, cid: int) -> int:
        return self._size(cid, self.plan.chunk(cid).count)

    def offset(self, cid: int) -> int:
        k = cid // SAMPLE
        return self.sums[k] + sum(self.size(c) for c in range(k * SAMPLE, cid))

    def find(self, off: int) -> tuple[int, int] | None:
        """(chunk id, its data offset) of the chunk whose data holds file offset ``off``, or None."""
        if not self.lay.data_start <= off < self.end:
            return None
        k = bisect.bisect_right(self.sums, off) - 1
        base = self.sums[k]
        for cid in range(k * SAMPLE, min((k + 1) * SAMPLE, self.n)):
            s = self.size(cid)
            if off < base + s:
                return cid, base
            base += s
        return None


def _page_counts(plan):
    """The page count of every page chunk, in chunk-id order (``Plan.chunk`` without the objects)."""
    cp = plan.chunk_pages
    for a, b in plan.pfn_ranges:
        lo = a
        while lo < b:
            hi = min(b, (lo // cp + 1) * cp)
            yield hi - lo
            lo = hi


def chunk_header_size(ds) -> int:
    return ChunkHeaderV1.STRUCT.size if ds.readers[0].header.version == 1 else CHUNK_HEADER_SIZE


def missing_pages(dump) -> bool:
    """Whether a page chunk is missing from every member (``Dump.missing`` is sorted, page chunks first)."""
    return bool(dump.missing) and dump.missing[0] < dump.plan.n_page_chunks


# -- one chunk's descriptors and data --------------------------------------

def chunk_descs(lay: KdumpLayout, mode: str, flag: int, h, body, blocks, block_bytes: int,
                base: int, npages: int) -> tuple[bytearray, list[tuple[int, int]]]:
    """A checked record's page descriptors, its data at ``base``, in COPY or NONE mode.

    Returns (descriptors, runs): ``runs`` are the byte ranges of the chunk's
    data area that hold page data (COPY: the stored blocks after the block
    table, ``body[4 * nblocks:]``; NONE: the slots of pages that are not
    zero, in the decoded chunk).  Zero pages get the zero page; pages the
    source could not give, zero descriptors (missing); excluded pages (a
    filtered dump, ``lay.kept``) no descriptor at all.
    """
    ps = lay.page_size
    descs = bytearray(lay.zero_desc * npages)
    pack = lay.desc.pack_into
    runs: list[tuple[int, int]] = []
    first = 4 * h.nblocks
    for how, a, b, pos, ln in blocks:
        if mode == COPY:
            if how == BLOCK_COMPRESSED:
                pack(descs, DESC_SIZE * (a // ps), base + pos - first, ln, flag, 0)
            else:
                pack(descs, DESC_SIZE * (a // ps), base + pos - first, ps, 0, 0)
        else:
            for p in range(a // ps, -(-b // ps)):
                pack(descs, DESC_SIZE * p, base + p * ps, ps, 0, 0)
            if runs and runs[-1][1] == a:
                runs[-1] = (runs[-1][0], b)
            else:
                runs.append((a, b))
    if mode == COPY and len(body) > first:
        runs = [(0, len(body) - first)]
    for a, b in unreadable_ranges(h, body, block_bytes):
        descs[DESC_SIZE * (a // ps):DESC_SIZE * -(-b // ps)] = bytes(DESC_SIZE * (-(-b // ps) - a // ps))
    if lay.kept is not None:          # excluded pages have no descriptor
        descs = lay.kept.compact(h.chunk_id, h.start, npages, descs, DESC_SIZE)
    return descs, runs


