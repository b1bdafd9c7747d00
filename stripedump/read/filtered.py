"""Reading a filtered dump (``dump -d N``): which pages the members hold, and the ELF file of them.

Why a module of its own: a dump level leaves pages out of the members
(``BLOCK_EXCLUDED``, format v2).  Excluded is not missing: a missing chunk
is memory the dump should have and lost (zero descriptors, INCOMPLETE); an
excluded page was never meant to be there.  Every output of a filtered dump
must say so in its own terms, and the join and the mount must agree byte
for byte, so both take the pages from one ``KeptMap`` and, for ELF, one
``FilteredElf`` layout:

* kdump (kdumplayout.py): an excluded page is a 0 bit in the 2nd bitmap
  and has no descriptor (the table holds one per set bit, so a chunk's
  descriptors start at the kept pages before it: ``KeptMap.before``), and
  the sub-header's ``dump_level`` is the level applied, as makedumpfile
  writes them (crash then says "[PARTIAL DUMP]").
* ELF (``FilteredElf``): makedumpfile ``-E``'s layout
  (``write_elf_pages_cyclic``): each source PT_LOAD becomes one or more
  PT_LOADs; a run of excluded pages ends the PT_LOAD before it as
  ``p_memsz > p_filesz`` and the next kept page starts a new one (one that
  starts with excluded pages has ``p_filesz`` 0 and ``p_offset`` 0).
  makedumpfile splits only at runs of 256 pages or more and writes shorter
  runs as data, read from /proc/vmcore; the members do not hold those
  pages, so here every run splits: no excluded page is ever written as
  zeros that read like memory.

The map is built from the chunk headers alone (``kept_pages``) and the
block tables of the chunks that carry ``CHUNK_EXCLUDED``: one small read
per page chunk, no payload, no decompression.  It holds the excluded
runs per chunk (the 2nd bitmap is made from them a piece at a time) and 8
bytes of prefix sum per page chunk.  A record whose header or table
cannot be read or does not add up excludes nothing here (its pages are
kept); the pool's full check of that record then fails it, so the join
reports the damage instead of laying the file out from a bad table.  A
missing chunk excludes nothing either: its pages stay in the bitmaps with
zero descriptors (missing, as before).  A dump without ``FEATURE_EXCLUDED``
in its members has no map (``KeptMap.build`` returns None) and every
output is byte for byte as before.
"""

from __future__ import annotations

import bisect
import struct
from array import array

from ..runtime.bitmap import set_bits
from ..errors import MemberError, UsageError, VerifyError
from ..format.structs import (BLOCK_EXCLUDED, BLOCK_KIND_SHIFT, CHUNK_ALL_ZERO, CHUNK_EXCLUDED, FEATURE_EXCLUDED,
                     KIND_PAGES, ChunkHeader)
from .fileview import FileView
from .dumpset import MISSING
from ..format.blocktable import BIG_ENDIAN_HOST, excluded_ranges
from ..source.vmcore import PT_LOAD, PT_NOTE

PN_XNUM = 0xFFFF


def dump_level(ds) -> int | None:
    """The dump level the members were filtered with (the level applied), None when not recorded."""
    m = ds.manifest
    for key in ("dump_level", "level"):
        v = m.get(key)
        if isinstance(v, dict):
            v = v.get("applied", v.get("level_applied"))
        if type(v) is int and 0 <= v <= 31:
            return v
    v = m.get("level_applied")
    return v if type(v) is int and 0 <= v <= 31 else None


def is_filtered(ds) -> bool:
    """Whether any member may hold excluded pages (``FEATURE_EXCLUDED``)."""
    return any(r.header.version >= 2 and getattr(r.header, "features_required", 0) & FEATURE_EXCLUDED
               for r in ds.readers)


class KeptMap:
    """The pages of a filtered dump that its members hold (see the module comment)."""

    def __init__(self, dump):
        plan, ps = dump.plan, dump.page_size
        self.page_size = ps
        self.n = n = plan.n_page_chunks
        self.runs: dict[int, list[tuple[int, int]]] = {}   # chunk id -> excluded PFN runs [a, b)
        self.prefix = array("Q", [0])                   # kept pages before chunk cid
        self.level = dump_level(dump.ds)
        self._flat: list | None = None           # every run, in PFN order (excluded_runs), made on demand
        self._flat_ends: list = []
        kept = total = 0
        from ..runtime.machine import numpy_if_safe
        np = numpy_if_safe() if dump.block_bytes == ps else None
        for cid in range(n):
            c = plan.chunk(cid)
            total += c.count
            runs = self._chunk_runs(dump, cid, c, np) if dump.index.member[cid] != MISSING else []
            for a, b in runs:
                kept -= b - a
            if runs:
                self.runs[cid] = runs
            kept += c.count
            self.prefix.append(kept)
        self.total = kept
        self.excluded_pages = total - kept

    @classmethod
    def build(cls, dump) -> "KeptMap | None":
        return cls(dump) if is_filtered(dump.ds) and dump.plan.n_page_chunks else None

    @staticmethod
    def _chunk_runs(dump, cid: int, c, np=None) -> list[tuple[int, int]]:
        """Excluded PFN runs of chunk ``cid`` from its header and block table; [] when unsure."""
        ix, ds, ps = dump.index, dump.ds, dump.page_size
        r = ds.readers[ix.member[cid]]
        size = ChunkHeader.STRUCT.size
        try:
            raw = r.pread(ix.offset[cid], min(size, ix.length[cid]))
            h = ChunkHeader.unpack(raw, "")
            if h.version < 2 or not h.flags & CHUNK_EXCLUDED or h.flags & CHUNK_ALL_ZERO:
                return []
            if (h.kind, h.chunk_id, h.start, h.raw_length) != (KIND_PAGES, cid, c.start, c.count * ps) or \
                    h.nblocks != -(-h.raw_length // dump.block_bytes) or \
                    size + 4 * h.nblocks > min(ix.length[cid], size + h.payload_length):
                return []
            table = r.pread(ix.offset[cid] + size, 4 * h.nblocks)
            if np is not None and not BIG_ENDIAN_HOST:      # one-page blocks: a block is a page
                ex = np.zeros(h.nblocks + 2, np.int8)
                ex[1:-1] = np.frombuffer(table, "<u4") >> BLOCK_KIND_SHIFT == BLOCK_EXCLUDED
                edges = np.flatnonzero(ex[1:] != ex[:-1])
                ranges = [(a * ps, b * ps) for a, b in zip(edges[0::2].tolist(), edges[1::2].tolist())]
            else:
                ranges = excluded_ranges(h, memoryview(table), dump.block_bytes)
        except (MemberError, VerifyError, OSError):
            return []
        runs = [(c.start + a // ps, c.start + b // ps) for a, b in ranges if not a % ps and not b % ps]
        if len(runs) != len(ranges) or sum(b - a for a, b in runs) != c.count - h.kept_pages:
            return []
        return runs

    def before(self, cid: int) -> int:
        """Kept pages of the page chunks before ``cid`` (its first descriptor's index)."""
        return self.prefix[cid]

    def kept_runs(self, cid: int, start: int, count: int) -> list[tuple[int, int]]:
        """Page index runs [a, b) within chunk ``cid`` (``count`` pages from PFN ``start``) that are kept."""
        out, pos = [], 0
        for a, b in self.runs.get(cid, ()):
            if a - start > pos:
                out.append((pos, a - start))
            pos = b - start
        if pos < count:
            out.append((pos, count))
        return out

    def compact(self, cid: int, start: int, count: int, descs, size: int) -> bytes:
        """The ``size``-byte entries of ``descs`` (one per page of the chunk) of its kept pages only."""
        if cid not in self.runs:
            return bytes(descs)
        mv = memoryview(descs)
        return b"".join(mv[size * a:size * b] for a, b in self.kept_runs(cid, start, count))

    def chunk_of_rank(self, rank: int) -> int:
        """The page chunk whose kept pages hold descriptor index ``rank``."""
        return bisect.bisect_right(self.prefix, rank) - 1

    def second_bitmap(self, first: bytes, off: int) -> bytes:
        """Bytes [off, off + len(first)) of the 2nd bitmap, given those of the 1st: the excluded
        runs there cleared (no bitmap of the machine is kept: a PFN range at 2**60 costs nothing)."""
        lo = off * 8
        e = bytearray(len(first))
        for a, b in self.excluded_runs(lo, lo + 8 * len(first)):
            set_bits(e, a - lo, b - lo)
        if not any(e):
            return bytes(first)
        v = int.from_bytes(first, "little") & ~int.from_bytes(e, "little")
        return v.to_bytes(len(first), "little")

    def excluded_runs(self, lo: int, hi: int):
        """Excluded PFN runs [a, b) clipped to [lo, hi), ascending (a bisect, then the runs inside)."""
        if self._flat is None:
            self._flat = [r for cid in sorted(self.runs) for r in self.runs[cid]]
            self._flat_ends = [b for a, b in self._flat]
        flat = self._flat
        i = bisect.bisect_right(self._flat_ends, lo)
        while i < len(flat) and flat[i][0] < hi:
            a, b = flat[i]
            yield max(a, lo), min(b, hi)
            i += 1



def excluded_report(kept: "KeptMap | None", page_size: int) -> dict:
    """For join's --json: the pages the dump level left out (absent, not missing); {} when unfiltered."""
    if kept is None:
        return {}
    return {"dump_level": kept.level, "excluded_pages": kept.excluded_pages,
            "excluded_bytes": kept.excluded_pages * page_size}


# -- the ELF file of a filtered dump ---------------------------------------

# Elf_Ehdr after e_ident: e_type .. e_shstrndx (no byte order yet), and sizeof(Elf_Ehdr)
_EHDR = {64: (struct.Struct("HHIQQQIHHHHHH"), 64), 32: (struct.Struct("HHIIIIIHHHHHH"), 52)}
_PHDR = {64: "IIQQQQQQ", 32: "IIIIIIII"}
_SHDR = {64: 64, 32: 40}


class FilteredElf(FileView):
    """makedumpfile ``-E``'s ELF file of a filtered dump: ``head`` (headers and notes),
    ``loads`` (new PT_LOADs as dicts: paddr, vaddr, offset, filesz, memsz, flags, align),
    ``size``; as a FileView, ``pread`` serves it (the mount) from ``dump``."""

    def __init__(self, dump, kept: KeptMap):
        ds = self.ds = dump.ds
        self.dump = dump
        src = ds.manifest["source"]
        bits = 64 if src.get("elfclass") == 64 else 32
        end = src.get("endian", "<")
        ps = ds.page_size
        ehs, ehsize = _EHDR[bits]
        ehdr = None
        for off, data in ds.header_pieces or []:
            if off == 0 and len(data) >= ehsize:
                ehdr = bytes(data[:ehsize])
        if ehdr is None:
            try:
                ehdr = dump.pread(0, ehsize)
            except VerifyError:
                ehdr = b""
        if len(ehdr) < ehsize or ehdr[:4] != b"\x7fELF":
            raise UsageError("the source's ELF header is neither in the manifest nor in the members; "
                             "use --format kdump")
        self.loads = loads = []
        for s in ds.segments:
            if s["type"] == PT_LOAD:
                loads.extend(_split_load(s, kept, ps))
        notes = [s for s in ds.segments if s["type"] == PT_NOTE]
        phnum = len(loads) + (1 if notes else 0)
        phent = struct.calcsize(end + _PHDR[bits])
        xnum = phnum >= PN_XNUM
        shent = _SHDR[bits]
        phoff = ehsize + (shent if xnum else 0)
        note_off = phoff + phnum * phent
        data_start = -(-(note_off + len(ds.notes)) // ps) * ps
        cursor = data_start
        for ld in loads:
            if ld["filesz"]:
                ld["offset"] = cursor
                cursor += ld["filesz"]
        self.size = cursor
        fields = list(struct.unpack_from(end + ehs.format, ehdr, 16))
        # e_phoff, e_shoff, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx
        fields[4], fields[5] = phoff, (ehsize if xnum else 0)
        fields[8], fields[9] = phent, (PN_XNUM if xnum else phnum)
        fields[10], fields[11], fields[12] = (shent, 1, 0) if xnum else (0, 0, 0)
        head = bytearray(data_start)
        head[:16] = ehdr[:16]
        struct.pack_into(end + ehs.format, head, 16, *fields)
        if xnum:                       # section header 0: sh_info holds the real count
            struct.pack_into(end + "I", head, ehsize + (44 if bits == 64 else 28), phnum)
        pack = struct.Struct(end + _PHDR[bits])
        at = phoff
        if notes:
            n = notes[0]
            vals = (PT_NOTE, n["flags"], note_off, n["vaddr"], n["paddr"], len(ds.notes), len(ds.notes), n["align"])
            pack.pack_into(head, at, *_order(vals, bits))
            at += phent
        for ld in loads:
            vals = (PT_LOAD, ld["flags"], ld["offset"], ld["vaddr"], ld["paddr"], ld["filesz"], ld["memsz"],
                    ld["align"])
            pack.pack_into(head, at, *_order(vals, bits))
            at += phent
        head[note_off:note_off + len(ds.notes)] = ds.notes
        self.head = bytes(head)
        self.data_start = data_start
        self._data = [ld for ld in loads if ld["filesz"]]
        self._offs = [ld["offset"] for ld in self._data]

    def segments(self) -> list[dict]:
        """The new PT_LOADs as join's RenderMap takes them (type, offset, filesz, paddr)."""
        return [{"type": PT_LOAD, "offset": ld["offset"], "filesz": ld["filesz"], "paddr": ld["paddr"]}
                for ld in self._data]

    def _fill(self, out: bytearray, offset: int, end: int) -> None:
        """The ELF file's bytes [offset, end) (``FileView.pread``); the same bytes join writes."""
        if offset < self.data_start:
            k = min(end, self.data_start) - offset
            out[:k] = self.head[offset:offset + k]
        i = max(bisect.bisect_right(self._offs, offset) - 1, 0)
        while i < len(self._data):
            ld = self._data[i]
            a, b = max(offset, ld["offset"]), min(end, ld["offset"] + ld["filesz"])
            if ld["offset"] >= end:
                break
            if a < b:
                self.dump._copy_phys(ld["paddr"] + a - ld["offset"], out, a - offset, b - a, strict=False)
            i += 1


def _order(vals, bits):
    """(type, flags, offset, vaddr, paddr, filesz, memsz, align) in the class's Elf_Phdr order."""
    t, fl, off, va, pa, fs, ms, al = vals
    if bits == 64:
        return t, fl, off, va, pa, fs, ms, al
    m = 0xFFFFFFFF
    return t, off & m, va & m, pa & m, fs & m, ms & m, fl, al & m


def _split_load(s: dict, kept: KeptMap, ps: int) -> list[dict]:
    """One source PT_LOAD as makedumpfile -E writes it, with every excluded run split off."""
    P, F, M = s["paddr"], s["filesz"], s["memsz"]
    out: list[dict] = []

    def new(paddr):
        return {"paddr": paddr, "vaddr": (s["vaddr"] + paddr - P) if s["vaddr"] else 0, "offset": 0,
                "filesz": 0, "memsz": 0, "flags": s["flags"], "align": s["align"]}

    cur = new(P)
    pos = P
    for a, b in kept.excluded_runs(P // ps, -(-(P + F) // ps)):
        ea, eb = max(a * ps, P), min(b * ps, P + F)
        if ea > pos:                         # kept bytes before the run
            if cur["memsz"] > cur["filesz"]:
                out.append(cur)
                cur = new(pos)
            cur["memsz"] += ea - pos
            cur["filesz"] += ea - pos
        cur["memsz"] += eb - ea
        pos = eb
    if P + F > pos:
        if cur["memsz"] > cur["filesz"]:
            out.append(cur)
            cur = new(pos)
        cur["memsz"] += P + F - pos
        cur["filesz"] += P + F - pos
    cur["memsz"] += M - F
    out.append(cur)
    return out
