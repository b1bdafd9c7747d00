"""Kernel virtual memory of an x86_64 vmcore, from VMCOREINFO alone.

Why this module:
* The struct pages the dump levels read live in ``vmemmap`` and
  ``mem_section`` lives in the direct map: kernel virtual addresses whose
  physical place only the dumped kernel's page tables know.  QEMU's cores
  carry ``p_vaddr`` 0 in every PT_LOAD, and /proc/vmcore's PT_LOADs cover
  only the kernel image and the direct map, so the PT_LOADs' virtual
  addresses are never used: every address goes through a page-table walk
  that reads physical memory through the Source.
* The walk starts at ``init_top_pgt`` (``init_level4_pgt`` before 4.13), the
  kernel's own page table.  It is a kernel-image symbol, whose physical
  address the kernel itself computes as ``__pa_symbol(x) = x -
  __START_KERNEL_map + phys_base`` (arch/x86/include/asm/page_64.h), with
  ``__START_KERNEL_map`` = 0xffffffff80000000 and ``NUMBER(phys_base)``
  (signed).  ``SYMBOL()`` values already carry the KASLR slide, so
  ``KERNELOFFSET`` is not added (vmcoreinfo.py says why).
* 4-level paging, or 5-level when ``NUMBER(pgtable_l5_enabled)`` is 1 (the PGD
  index then comes from bits 56..48 and a P4D level follows); a PUD entry with
  PSE maps 1 GiB, a PMD entry with PSE 2 MiB.  Entry addresses are bits 51..12
  (makedumpfile's ENTRY_MASK) minus ``NUMBER(sme_mask)``, the AMD memory
  encryption bit the kernel ORs into every entry.
* Translations are cached per mapping unit (1 GiB, 2 MiB or 4 KiB), bounded;
  a struct-page scan of a chunk costs one walk per 2 MiB of vmemmap.
* Nothing here raises on bad memory: an address that does not translate, or
  whose physical bytes the vmcore does not hold, reads as "unreadable" and
  the caller (pageclass) then excludes nothing for it.
"""

from __future__ import annotations

import bisect
import struct

from ..errors import SourceError
from .vmcoreinfo import VmcoreInfo

START_KERNEL_MAP = 0xFFFFFFFF80000000
ENTRY_MASK = 0x000FFFFFFFFFF000            # bits 51..12 of a page-table entry
PRESENT, PSE = 0x1, 0x80
CACHE_LIMIT = 4096                         # translations kept; 4096 x 2 MiB of vmemmap = 16 TiB of RAM
PT_CACHE_PAGES = 256                       # page-table pages kept (1 MiB): the walks of a chunk share most
_Q = struct.Struct("<Q")

# VMCOREINFO entries the walk needs; either spelling of the top page table will do
TOP_PGT_KEYS = ("SYMBOL(init_top_pgt)", "SYMBOL(init_level4_pgt)")
NEEDED = ("NUMBER(phys_base)",)


class PhysReader:
    """Physical bytes of a Source, refusing any byte no PT_LOAD's file data holds.

    ``Source.phys_window`` reads holes as zeros (right for page content);
    a page-table entry or a struct page read from a hole would be a guess.
    """

    def __init__(self, src):
        self.src = src
        self._starts = [o.start for o in src.owners]

    def backed(self, paddr: int, length: int) -> bool:
        i = bisect.bisect_right(self._starts, paddr) - 1
        end = paddr + length
        owners = self.src.owners
        while paddr < end:
            if i < 0 or i >= len(owners) or owners[i].end <= paddr or owners[i].start > paddr:
                return False
            paddr = owners[i].end
            i += 1
        return True

    def read(self, paddr: int, length: int) -> bytes | None:
        """Bytes [paddr, paddr+length) or None when the vmcore does not hold all of them."""
        if length <= 0 or paddr < 0 or not self.backed(paddr, length):
            return None
        i = bisect.bisect_right(self._starts, paddr) - 1
        out = bytearray()
        try:
            while len(out) < length:
                o = self.src.owners[i]
                a = paddr + len(out)
                n = min(o.end - a, length - len(out))
                with self.src.window(o.offset + a - o.start, n) as w:
                    out += w.view()
                i += 1
        except SourceError:
            return None
        return bytes(out)


class KernelMemory:
    """Reads of x86_64 kernel virtual memory through the dumped kernel's page tables.

    Build it with ``KernelMemory.open(src, info)``, which says what is missing
    instead of raising.
    """

    def __init__(self, src, top_pgt_paddr: int, five_level: bool, sme_mask: int = 0):
        self.phys = PhysReader(src)
        self.top = top_pgt_paddr
        self.five_level = five_level
        self.entry_mask = ENTRY_MASK & ~sme_mask
        self._cache: dict[tuple[int, int], int] = {}
        self._pt_pages: dict[int, bytes] = {}

    @classmethod
    def open(cls, src, info: VmcoreInfo) -> tuple["KernelMemory | None", tuple[str, ...]]:
        """(KernelMemory, ()) or (None, the VMCOREINFO entries or facts that are missing)."""
        if src.info.machine != "EM_X86_64" or src.info.elfclass != 64:
            return None, (f"x86_64 page tables (the vmcore is {src.info.machine})",)
        top_key = next((k for k in TOP_PGT_KEYS if info.get(k) is not None), None)
        missing = info.need(*NEEDED) + (() if top_key else (TOP_PGT_KEYS[0],))
        if missing:
            return None, missing
        phys_base = info.number("phys_base")
        top = (info.get(top_key) - START_KERNEL_MAP + phys_base) & ((1 << 64) - 1)
        five = bool(info.number("pgtable_l5_enabled") or 0)
        return cls(src, top, five, info.number("sme_mask") or 0), ()

    # -- translation -----------------------------------------------------------
    def _entry(self, table: int, index: int) -> int | None:
        page = self._pt_pages.get(table)
        if page is None:
            page = self.phys.read(table, 4096)
            if page is None:
                return None
            if len(self._pt_pages) >= PT_CACHE_PAGES:
                self._pt_pages.clear()
            self._pt_pages[table] = page
        return _Q.unpack_from(page, index * 8)[0]

    def translate(self, vaddr: int) -> tuple[int, int] | None:
        """(physical address, bytes left in its mapping unit) or None when not mapped."""
        for shift in (30, 21, 12):
            base = self._cache.get((shift, vaddr >> shift))
            if base is not None:
                off = vaddr & ((1 << shift) - 1)
                return base + off, (1 << shift) - off
        got = self._walk(vaddr)
        if got is None:
            return None
        base, shift = got
        if len(self._cache) >= CACHE_LIMIT:
            self._cache.clear()
        self._cache[(shift, vaddr >> shift)] = base
        off = vaddr & ((1 << shift) - 1)
        return base + off, (1 << shift) - off

    def _walk(self, vaddr: int) -> tuple[int, int] | None:
        """(physical base of the unit, unit shift) for vaddr, by walking the tables."""
        table = self.top
        if self.five_level:
            e = self._entry(table, (vaddr >> 48) & 511)
            if e is None or not e & PRESENT:
                return None
            table = e & self.entry_mask
        e = self._entry(table, (vaddr >> 39) & 511)          # PGD (4-level) or P4D (5-level)
        if e is None or not e & PRESENT:
            return None
        e = self._entry(e & self.entry_mask, (vaddr >> 30) & 511)   # PUD
        if e is None or not e & PRESENT:
            return None
        if e & PSE:
            return e & self.entry_mask & ~((1 << 30) - 1), 30
        e = self._entry(e & self.entry_mask, (vaddr >> 21) & 511)   # PMD
        if e is None or not e & PRESENT:
            return None
        if e & PSE:
            return e & self.entry_mask & ~((1 << 21) - 1), 21
        e = self._entry(e & self.entry_mask, (vaddr >> 12) & 511)   # PTE
        if e is None or not e & PRESENT:
            return None
        return e & self.entry_mask, 12

    # -- reads -------------------------------------------------------------------
    def read(self, vaddr: int, length: int) -> bytes | None:
        """Bytes at kernel virtual [vaddr, vaddr+length), or None if any of them is unreadable."""
        out = bytearray()
        while len(out) < length:
            t = self.translate(vaddr + len(out))
            if t is None:
                return None
            paddr, left = t
            data = self.phys.read(paddr, min(left, length - len(out)))
            if data is None:
                return None
            out += data
        return bytes(out)

    def read_items(self, vaddr: int, count: int, size: int) -> tuple[bytearray, list[tuple[int, int]]]:
        """``count`` items of ``size`` bytes from vaddr: (buffer, the item ranges [i, j) that were read).

        Items in an unmapped or unheld stretch stay zero in the buffer and out of the ranges.
        """
        buf = bytearray(count * size)
        good: list[tuple[int, int]] = []
        pos, total = 0, count * size
        while pos < total:
            t = self.translate(vaddr + pos)
            if t is None:
                step = 4096 - ((vaddr + pos) & 4095)     # skip to the next possible mapping
                ok = False
            else:
                paddr, left = t
                step = min(left, total - pos)
                data = self.phys.read(paddr, step)
                ok = data is not None
                if ok:
                    buf[pos:pos + step] = data
                elif step > 4096 - (paddr & 4095):
                    # part of a large unit is not held: take what is, page by page
                    step = 4096 - (paddr & 4095)
                    data = self.phys.read(paddr, step)
                    ok = data is not None
                    if ok:
                        buf[pos:pos + step] = data
            step = min(step, total - pos)
            if ok:
                good.append((pos, pos + step))
            pos += step
        return buf, _merge_items(good, size)

    def read_u64(self, vaddr: int) -> int | None:
        data = self.read(vaddr, 8)
        return None if data is None else _Q.unpack(data)[0]


def _merge_items(good: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """Byte ranges that were read -> the item ranges wholly inside their union."""
    merged: list[list[int]] = []
    for a, b in good:
        if merged and merged[-1][1] == a:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    out = []
    for a, b in merged:
        i, j = -(-a // size), b // size
        if i < j:
            out.append((i, j))
    return out
