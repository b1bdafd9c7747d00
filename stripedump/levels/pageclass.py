"""Which pages a dump level leaves out: makedumpfile's ``-d`` classes, per chunk.

Why this module:
* makedumpfile's dump level (bits 1 zero, 2 page cache without private data,
  4 page cache with private data, 8 user data, 16 free pages) is decided
  from each page's ``struct page``; a capture kernel has no vmlinux, so the
  layout comes from VMCOREINFO (vmcoreinfo.py) and the struct pages are read
  through the dumped kernel's page tables (kvmem.py).
* Where the struct page of a PFN lies (``MemMap``): SPARSEMEM, with or
  without EXTREME and VMEMMAP, all through ``mem_section``: the root array
  (``SYMBOL(mem_section)``, or the array it points to: kernels since 4.15
  print the pointer's value, a vmlinux has the pointer's address; the first
  reading that yields a present section wins, as in makedumpfile), then
  ``section_mem_map``, whose low bits are flags (bits 5..0 cleared; bit 0
  is "present") and whose rest is ``mem_map -
  section_start_pfn`` in struct-page units, so ``coded + pfn * SIZE(page)``
  is the struct page of pfn.  FLATMEM is not handled (x86_64 has none).
* The rules are makedumpfile 1.7.2's ``__exclude_unnecessary_pages`` (the
  version Debian 12 ships and the tests judge against), with what later
  makedumpfile (1.7.9) reads from newer kernels where VMCOREINFO carries it
  (6.3+ folio order and dtor, 6.6+ PG_hugetlb, 6.9+/6.10+ page_type values
  for hugetlb and slab, 6.16+ unaccepted memory).  In
  order: a compound tail page is skipped; a buddy page (``_mapcount ==
  PAGE_BUDDY_MAPCOUNT_VALUE``, not slab) is free, with its block of
  ``2**private`` pages (an order beyond ``LENGTH(zone.free_area)`` keeps it);
  unaccepted memory is free in blocks of the largest order; an LRU or
  swap-cache page whose ``mapping`` is not anonymous is page cache (with or
  without ``PG_private``); an anonymous (not slab) or hugetlb page is user
  data; then hwpoison and logically offline pages, which makedumpfile drops
  at every level.  A compound head takes its whole page (order from the
  first tail, checked for alignment) with it.
* Two engines, one set of rules (resolved here, once per process).  A
  small machine is walked here in Python, as makedumpfile walks it: page by
  page, jumping over each excluded block, so a free block costs one step
  whatever its size; numpy's import (60-120 ms) would cost such a dump more
  than the walk.  A large machine is judged by pagevec.py: the struct pages
  of a chunk decoded as numpy columns, no Python step per page, every page
  judged and each excluded page's block painted.  The two agree because the
  blocks are aligned powers of two (an unaligned compound order is ignored
  by both; an unaligned buddy block is kept), so they nest: a page inside an
  excluded block is excluded whatever it says itself, and the outermost
  block's class is the one counted, as makedumpfile counts it
  (tests/levels/test_pageclass.py compares the engines page by page).  A block
  whose head lies before the chunk is found by looking back at the aligned
  candidate heads (one per order up to the largest buddy order) and at the
  head a tail page points to (gigantic pages).
* Never guess: a struct page that cannot be read excludes nothing; a level
  whose VMCOREINFO entries are missing is not applied, and the result names
  the entries and the level really applied.
"""

from __future__ import annotations

from dataclasses import dataclass

import struct
from bisect import bisect_right
from operator import itemgetter

from ..source.kvmem import KernelMemory
from .pagebits import (C_CACHE, C_CACHE_PRIVATE, C_FREE, C_HWPOISON, C_OFFLINE, C_USER, C_ZERO,
                       CACHE, CACHE_PRIVATE, CLASSES, FREE, USER, ZERO)
from ..source.vmcoreinfo import VmcoreInfo


SECTION_PRESENT = 1
# section_mem_map's flag bits: 5 up to 6.14 (makedumpfile masks these), 6 with 6.15's
# SECTION_IS_VMEMMAP_PREINIT; the coded mem_map always has at least 6 low zero bits
SECTION_FLAG_BITS = 0x3F
KERNEL_SPACE = 0xFFFF800000000000
# PageClassifier's engine: a machine of at most this many pages is walked in Python (numpy's import
# costs a process 60-120 ms, more than the walk of such a machine: docs/benchmarks.md, issue 11)
WALK_MAX_PAGES = 1 << 17
_U64 = struct.Struct("<Q")

MEMMAP_KEYS = ("SYMBOL(mem_section)", "SIZE(mem_section)", "OFFSET(mem_section.section_mem_map)",
               "NUMBER(SECTION_SIZE_BITS)", "NUMBER(MAX_PHYSMEM_BITS)")
PAGE_KEYS = ("SIZE(page)", "OFFSET(page.flags)", "OFFSET(page.compound_head)", "NUMBER(PG_head_mask)")
FREE_KEYS = ("OFFSET(page._mapcount)", "OFFSET(page.private)", "NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)",
             "LENGTH(zone.free_area)")
CACHE_KEYS = ("OFFSET(page.mapping)", "NUMBER(PG_lru)", "NUMBER(PG_private)", "NUMBER(PG_swapcache)",
              "NUMBER(PG_swapbacked)")
USER_KEYS = ("OFFSET(page.mapping)",)
SLAB_KEYS = ("NUMBER(PG_slab)", "NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)")   # either one


class MemMap:
    """Where the struct page of a PFN lies, from mem_section (SPARSEMEM, EXTREME or not)."""

    def __init__(self, kmem: KernelMemory, info: VmcoreInfo, page_size: int, section_bits: int,
                 physmem_bits: int):
        self.kmem = kmem
        self.page_shift = page_size.bit_length() - 1
        self.size_page = info.size("page")
        self.size_ms = info.size("mem_section")
        self.off_map = info.offset("mem_section.section_mem_map")
        self.pfn_section_shift = section_bits - self.page_shift
        self.nr_sections = 1 << (physmem_bits - section_bits)
        per_root = max(page_size // self.size_ms, 1)
        length = info.length("mem_section")
        self.extreme = length is None or length == -(-self.nr_sections // per_root)
        self.per_root = per_root if self.extreme else 1
        self.symbol = info.symbol("mem_section")
        self._roots: list[int] | None = None
        self._root_cache: dict[int, bytes | None] = {}
        self._coded: dict[int, int | None] = {}
        self.usable = self._locate()

    @classmethod
    def open(cls, kmem: KernelMemory, info: VmcoreInfo, page_size: int):
        missing = info.need(*MEMMAP_KEYS, "SIZE(page)")
        bits = None
        if not info.need(*MEMMAP_KEYS[:3], "SIZE(page)", "LENGTH(mem_section)") and \
                set(missing) <= {"NUMBER(SECTION_SIZE_BITS)", "NUMBER(MAX_PHYSMEM_BITS)"}:
            bits = _x86_64_section_bits(info, page_size)
        if missing and bits is None:
            return None, missing
        bits = bits or (info.number("SECTION_SIZE_BITS"), info.number("MAX_PHYSMEM_BITS"))
        mm = cls(kmem, info, page_size, *bits)
        if not mm.usable:
            return None, ("a readable mem_section with a present section",)
        return mm, ()

    # -- mem_section -------------------------------------------------------------
    def _locate(self) -> bool:
        if not self.extreme:
            self._roots = None
            return any(self.coded(nr) is not None for nr in range(min(self.nr_sections, 64)))
        nroots = -(-self.nr_sections // self.per_root)
        for base in (self.symbol, self.kmem.read_u64(self.symbol)):
            if base is None:
                continue
            data = self.kmem.read(base, nroots * 8)
            if data is None:
                continue
            roots = list(struct.unpack(f"<{nroots}Q", data))
            self._roots, self._root_cache, self._coded = roots, {}, {}
            first = next((i for i, r in enumerate(roots) if r), None)
            if first is None:
                continue
            if any(self.coded(nr) is not None
                   for nr in range(first * self.per_root, (first + 1) * self.per_root)):
                return True
        self._roots = None
        return False

    def coded(self, nr: int) -> int | None:
        """``section_mem_map`` without its flag bits, or None for an absent section."""
        if nr in self._coded:
            return self._coded[nr]
        val = None
        if 0 <= nr < self.nr_sections:
            if self.extreme:
                root = self._roots[nr // self.per_root] if self._roots else 0
                raw = None
                if root and root >= KERNEL_SPACE:
                    if root not in self._root_cache:
                        self._root_cache[root] = self.kmem.read(root, self.per_root * self.size_ms)
                    arr = self._root_cache[root]
                    if arr is not None:
                        at = (nr % self.per_root) * self.size_ms + self.off_map
                        raw = int.from_bytes(arr[at:at + 8], "little")
            else:
                raw = self.kmem.read_u64(self.symbol + nr * self.size_ms + self.off_map)
            if raw is not None and raw & SECTION_PRESENT:
                coded = raw & ~SECTION_FLAG_BITS
                first = (coded + (nr << self.pfn_section_shift) * self.size_page) & ((1 << 64) - 1)
                if first >= KERNEL_SPACE:
                    val = coded
        if len(self._coded) > 1 << 16:
            self._coded.clear()
        self._coded[nr] = val
        return val

    def vaddr(self, pfn: int) -> int | None:
        c = self.coded(pfn >> self.pfn_section_shift)
        return None if c is None else (c + pfn * self.size_page) & ((1 << 64) - 1)

    def runs(self, a: int, b: int) -> list[tuple[int, int, int]]:
        """(p0, p1, vaddr of p0) for the present-section stretches of [a, b)."""
        out, p = [], a
        while p < b:
            nr = p >> self.pfn_section_shift
            end = min(b, (nr + 1) << self.pfn_section_shift)
            v = self.vaddr(p)
            if v is not None:
                out.append((p, end, v))
            p = end
        return out

    def pfn_of(self, vaddr: int, near_pfn: int) -> int | None:
        """The PFN whose struct page is at vaddr, assuming the coding of near_pfn's section."""
        c = self.coded(near_pfn >> self.pfn_section_shift)
        if c is None:
            return None
        d = (vaddr - c) & ((1 << 64) - 1)
        if d % self.size_page:
            return None
        pfn = d // self.size_page
        return pfn if self.vaddr(pfn) == vaddr else None

    def read(self, a: int, n: int) -> tuple[bytearray, list[tuple[int, int]]]:
        """The struct pages of [a, a+n): (buffer of n * SIZE(page), the page ranges [i, j) read)."""
        S = self.size_page
        buf = bytearray(n * S)
        good = []
        for p0, p1, v in self.runs(a, a + n):
            part, got = self.kmem.read_items(v, p1 - p0, S)
            buf[(p0 - a) * S:(p1 - a) * S] = part
            good += [(p0 - a + i, p0 - a + j) for i, j in got]
        return buf, good


def _x86_64_section_bits(info: VmcoreInfo, page_size: int) -> tuple[int, int] | None:
    """SECTION_SIZE_BITS and MAX_PHYSMEM_BITS for a kernel that does not export them (before 5.x).

    x86_64's are 27 and 46 (52 with 5-level paging) since 2.6.31; they are taken only when
    LENGTH(mem_section), which every SPARSEMEM kernel exports, is the number of roots (EXTREME)
    or sections they imply, so a kernel built otherwise falls back instead of being misread.
    """
    sb = info.number("SECTION_SIZE_BITS") or 27
    pb = info.number("MAX_PHYSMEM_BITS") or (52 if info.number("pgtable_l5_enabled") else 46)
    if pb <= sb:
        return None
    n = 1 << (pb - sb)
    per_root = max(page_size // info.size("mem_section"), 1)
    return (sb, pb) if info.length("mem_section") in (-(-n // per_root), n) else None


# class per page -> 1 where the page is left out (any class), or left out but not as a zero page
_ANY_CLASS = bytes([0]) + bytes([1]) * 255
_NOT_ZERO_CLASS = bytes([0]) + bytes([0 if c == C_ZERO else 1 for c in range(1, 256)])


@dataclass
class Classified:
    """The verdict on pages [first_pfn, first_pfn + len(classes))."""
    first_pfn: int
    classes: bytearray                   # class code per page: index into CLASSES (0: kept)
    counts: dict[str, int]
    level_asked: int
    level_applied: int
    missing: tuple[str, ...] = ()        # VMCOREINFO entries whose absence dropped level bits
    weaker: tuple[str, ...] = ()         # absent entries that make an applied bit keep more
    unreadable: int = 0                  # pages whose struct page could not be read

    @property
    def excluded(self) -> bytes:
        """1 per page left out (any class), 0 per page kept."""
        return bytes(self.classes).translate(_ANY_CLASS)

    def left_out(self) -> bytes:
        """As ``excluded``, but 0 for zero pages: a dump stores those as zero blocks, which cost as
        little, and makedumpfile's kdump output keeps them in its bitmap too."""
        return bytes(self.classes).translate(_NOT_ZERO_CLASS)


class PageClassifier:
    """One per worker: classify(first_pfn, count) for a level, on one Source.

    ``engine``: "walk" (this module, in Python, page by page, jumping over
    each excluded block as makedumpfile does), "vector" (pagevec.py: numpy
    columns), or None: walk a machine of at most WALK_MAX_PAGES pages,
    where importing numpy would cost more than it saves, vector above.
    """

    def __init__(self, src, info: VmcoreInfo, level: int, engine: str | None = None):
        if not 0 <= level <= 31:
            raise ValueError(f"dump level {level} is not between 0 and 31")
        if engine not in (None, "walk", "vector"):
            raise ValueError(f"unknown classifier engine {engine!r}")
        self.src, self.info, self.level = src, info, level
        self.page_size = src.page_size
        self._range_starts = [r[0] for r in src.pfn_ranges]
        self._range_ends = [r[1] for r in src.pfn_ranges]
        if engine is None:
            engine = "walk" if sum(e - s for s, e in src.pfn_ranges) <= WALK_MAX_PAGES else "vector"
        self.engine_name = engine
        self._engine = None
        self.memmap: MemMap | None = None
        missing: list[str] = []
        weaker: list[str] = []
        bits = level & (CACHE | CACHE_PRIVATE | USER | FREE)
        structs = level != 0
        if structs:
            base = info.need(*PAGE_KEYS)
            kmem, kmiss = (None, ()) if base else KernelMemory.open(src, info)
            mm, mmiss = (None, ()) if (base or kmem is None) else MemMap.open(kmem, info, self.page_size)
            if mm is None:
                missing += list(base) + list(kmiss) + list(mmiss)
                structs, bits = False, 0
            self.memmap = mm
        slab_known = any(info.get(k) is not None for k in SLAB_KEYS)
        if bits & FREE:
            m = info.need(*FREE_KEYS) + (() if slab_known else (SLAB_KEYS[0],))
            if m:
                missing += m
                bits &= ~FREE
        if bits & (CACHE | CACHE_PRIVATE):
            m = info.need(*CACHE_KEYS)
            if m:
                missing += m
                bits &= ~(CACHE | CACHE_PRIVATE)
        if bits & USER:
            m = info.need(*USER_KEYS)
            if m:
                missing += m
                bits &= ~USER
        self.bits = bits
        self.structs = structs
        self.level_applied = (level & ZERO) | bits
        self.missing = tuple(dict.fromkeys(missing))
        if structs:
            self._resolve(info, weaker)
        self.weaker = tuple(dict.fromkeys(weaker))

    def _resolve(self, info: VmcoreInfo, weaker: list[str]) -> None:
        S = info.size("page")
        self.S = S
        self.o_flags = info.offset("page.flags")
        self.o_head = info.offset("page.compound_head")
        self.head_mask = info.number("PG_head_mask")
        self.o_mapcount = info.offset("page._mapcount")
        self.o_private = info.offset("page.private")
        self.o_mapping = info.offset("page.mapping")
        n = info.number
        self.pg = {k: n(k) for k in ("PG_lru", "PG_private", "PG_swapcache", "PG_swapbacked", "PG_slab",
                                     "PG_hwpoison", "PG_hugetlb")}
        self.buddy_val = n("PAGE_BUDDY_MAPCOUNT_VALUE")
        self.offline_val = n("PAGE_OFFLINE_MAPCOUNT_VALUE")
        self.slab_val = n("PAGE_SLAB_MAPCOUNT_VALUE")
        self.hugetlb_val = n("PAGE_HUGETLB_MAPCOUNT_VALUE")
        self.unaccepted_val = n("PAGE_UNACCEPTED_MAPCOUNT_VALUE")
        self.hugetlb_dtor = n("HUGETLB_PAGE_DTOR")
        self.max_order = (info.length("zone.free_area") or 1) - 1
        # compound order and destructor live in the first tail page
        fo, fd = info.offset("folio._folio_order"), info.offset("folio._folio_dtor")
        self.o_order = fo - S if fo is not None else info.offset("page.compound_order")
        self.o_dtor = fd - S if fd is not None else info.offset("page.compound_dtor")
        self.order_in_flags = self.hugetlb_val is not None or self.pg["PG_hugetlb"] is not None
        if self.o_order is None and not self.order_in_flags:
            weaker.append("OFFSET(page.compound_order)")
        if self.bits & USER and not (self.order_in_flags or (self.o_dtor is not None and
                                                             self.hugetlb_dtor is not None)):
            weaker.append("NUMBER(HUGETLB_PAGE_DTOR)")
        if self.o_mapcount is None or self.offline_val is None or \
                (self.pg["PG_slab"] is None and self.slab_val is None):
            weaker.append("NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)")
        if self.pg["PG_hwpoison"] is None:
            weaker.append("NUMBER(PG_hwpoison)")
        self.offline_ok = self.offline_val is not None and self.o_mapcount is not None and \
            (self.pg["PG_slab"] is not None or self.slab_val is not None)
        self._fields = _field_reader(((self.o_flags, "Q"), (self.o_head, "Q"), (self.o_mapcount, "i"),
                                      (self.o_private, "Q"), (self.o_mapping, "Q")))
        self._judge = self._make_judge()

    # -- the walk ------------------------------------------------------------------
    def _make_judge(self):
        """judge(buf, off, ok_next, pfn) -> (class code, block order) of the readable struct page at
        buf[off:] (its next page after it): the rules, with every constant bound once (a closure is
        about twice as fast per page as attribute lookups)."""
        fields, u64 = self._fields, _U64.unpack_from
        S, head_mask, bits, max_order = self.S, self.head_mask, self.bits, self.max_order
        pg = self.pg
        slab_bit, slab_val = pg["PG_slab"], self.slab_val
        order_in_flags, o_flags, o_order, o_dtor = self.order_in_flags, self.o_flags, self.o_order, self.o_dtor
        hugetlb_val, hugetlb_bit, hugetlb_dtor = self.hugetlb_val, pg["PG_hugetlb"], self.hugetlb_dtor
        free = bool(bits & FREE)
        buddy_val, unaccepted_val = self.buddy_val, self.unaccepted_val
        max_mask = (1 << max_order) - 1
        cache_bits, want_cache, want_private = bits & (CACHE | CACHE_PRIVATE), bits & CACHE, bits & CACHE_PRIVATE
        user = bits & USER
        lru, swapbacked, swapcache, private_bit = pg["PG_lru"], pg["PG_swapbacked"], pg["PG_swapcache"], \
            pg["PG_private"]
        cache_mask = (1 << lru if lru is not None else 0)
        swap_mask = (1 << swapbacked | 1 << swapcache) if swapbacked is not None and swapcache is not None else 0
        priv_mask = 1 << private_bit if private_bit is not None else 0
        slab_mask = 1 << slab_bit if slab_bit is not None else 0
        hwpoison_mask = 1 << pg["PG_hwpoison"] if pg["PG_hwpoison"] is not None else 0
        offline_ok, offline_val = self.offline_ok, self.offline_val

        def judge(buf, off, ok_next, pfn):
            flags, chead, mapcount, private, mapping = fields(buf, off)
            if chead & 1:                  # a compound tail: judged with its head, never alone
                return 0, 0
            slab = flags & slab_mask or (slab_val is not None and mapcount == slab_val)
            order, hugetlb = 0, False
            if ok_next and flags & head_mask:       # a compound head: order (and hugetlb) from its first tail
                nxt = off + S
                if order_in_flags:
                    nflags = u64(buf, nxt + o_flags)[0]
                    order = nflags & 0xFF
                    if hugetlb_val is not None and mapcount is not None:
                        hugetlb = mapcount == hugetlb_val
                    elif hugetlb_bit is not None:
                        hugetlb = bool(nflags >> hugetlb_bit & 1)
                else:
                    if o_order is not None:
                        order = buf[nxt + o_order]
                    if o_dtor is not None and hugetlb_dtor is not None:
                        hugetlb = buf[nxt + o_dtor] == hugetlb_dtor
                if order >= 64 or pfn & ((1 << order) - 1):
                    order = 0
            if free:
                if mapcount == buddy_val and not slab:
                    # a buddy page with a bad order is kept (makedumpfile warns)
                    return (C_FREE, private) if private <= max_order and not pfn & ((1 << private) - 1) \
                        else (0, 0)
                if unaccepted_val is not None and mapcount == unaccepted_val:
                    # unaccepted memory (confidential VMs, 6.16+): blocks of the largest buddy order
                    return (C_FREE, max_order) if not pfn & max_mask else (0, 0)
            anon = mapping is not None and mapping & 1 and not slab
            if cache_bits and not anon and (flags & cache_mask or (swap_mask and flags & swap_mask == swap_mask)):
                priv = flags & priv_mask
                if want_cache and not priv:
                    return C_CACHE, order
                if want_private:
                    return (C_CACHE_PRIVATE if priv else C_CACHE), order
            if user and (anon or hugetlb):
                return C_USER, order
            if flags & hwpoison_mask:
                return C_HWPOISON, order
            if offline_ok and mapcount == offline_val and not slab:
                return C_OFFLINE, order
            return 0, 0
        return judge

    def _in_segs(self, pfn: int) -> bool:
        i = bisect_right(self._range_starts, pfn) - 1
        return i >= 0 and pfn < self._range_ends[i]

    def lookback_candidates(self, a: int, buf, first_ok: bool) -> list[int]:
        """The PFNs before a that may head a block reaching into [a, ...): the aligned candidate heads
        of every buddy order, and the head that a's struct page (in buf, when readable) points to."""
        cands = set()
        if self.bits & FREE:
            cands.update(a & ~((1 << k) - 1) for k in range(1, self.max_order + 1))
        head = _U64.unpack_from(buf, self.o_head)[0] if first_ok else 0
        if head & 1 and self.memmap.vaddr(a) is not None:
            p = self.memmap.pfn_of(head - 1, a)
            if p is not None:
                cands.add(p)
        return sorted(c for c in cands if 0 <= c < a)

    def _walk_classes(self, a: int, count: int) -> tuple[bytearray, int]:
        """Class per page of [a, a+count) from the struct pages, walking from page to page and over
        each excluded block (makedumpfile's order), and how many struct pages could not be read."""
        mm, S = self.memmap, self.S
        buf, good = mm.read(a, count + 1)
        ok = bytearray(count + 1)
        for i, j in good:
            ok[i:j] = b"\1" * (j - i)
        out = bytearray(count)
        # a block whose head lies before a: the outermost (largest) one that reaches into the chunk
        p, outer = 0, None
        for c in self.lookback_candidates(a, buf, bool(ok[0])):
            b2, g2 = mm.read(c, 2)
            if not g2 or g2[0][0] != 0:
                continue
            cls, order = self._judge(b2, 0, g2[0][1] == 2, c)
            if cls and c + (1 << order) > a and self._in_segs(c) and (outer is None or order > outer[1]):
                outer = (cls, order, c)
        if outer is not None:
            p = min(outer[2] + (1 << outer[1]) - a, count)
            out[:p] = bytes((outer[0],)) * p
        judge, whole = self._judge, self._inside_loads(a, count)
        while p < count:
            if not ok[p]:
                p = ok.find(1, p)
                if p < 0 or p >= count:
                    break
                continue
            cls, order = judge(buf, p * S, ok[p + 1], a + p)
            if cls and (whole or self._in_segs(a + p)):
                n = min(1 << order, count - p)
                out[p:p + n] = bytes((cls,)) * n
                p += n
            else:
                p += 1
        return out, count - ok.count(1, 0, count)

    def _walk_zero_classes(self, a: int, count: int, out: bytearray, data=None) -> None:
        """Mark C_ZERO the pages no rule took that hold only zeros, one compare per such page."""
        ps = self.page_size
        zp = bytes(ps)
        todo = [i for i in range(count) if not out[i]] if any(out) else range(count)
        if not todo:
            return
        if data is None:
            with self.src.phys_window(a, count) as w:
                mv = w.view()
                try:
                    self._mark_zero(mv, todo, ps, zp, out)
                finally:
                    mv.release()
        else:
            self._mark_zero(data, todo, ps, zp, out)

    @staticmethod
    def _mark_zero(mv, todo, ps: int, zp: bytes, out: bytearray) -> None:
        for i in todo:
            if bytes(mv[i * ps:(i + 1) * ps]) == zp:
                out[i] = C_ZERO

    # -- either engine ---------------------------------------------------------------
    def _engine_for(self):
        """(struct_classes, zero_classes) of this classifier's engine; numpy is imported here, on first use."""
        if self._engine is None:
            if self.engine_name == "vector":
                from .pagevec import VectorEngine
                vec = VectorEngine(self)
                self._engine = vec.struct_classes, vec.zero_classes
            else:
                self._engine = self._walk_classes, self._walk_zero_classes
        return self._engine

    def _inside_loads(self, a: int, count: int) -> bool:
        i = bisect_right(self._range_starts, a) - 1
        return i >= 0 and a + count <= self._range_ends[i]

    def classify(self, first_pfn: int, count: int, data=None) -> Classified:
        """The verdict on pages [first_pfn, first_pfn + count).

        ``data``, when given, is the pages' content (count * page size bytes) already read
        by the caller; the zero test then reads nothing more.
        """
        classes = bytearray(count)
        unreadable = 0
        if (self.structs or self.level & ZERO) and count:
            struct_classes, zero_classes = self._engine_for()
            if self.structs:
                classes, unreadable = struct_classes(first_pfn, count)
            if self.level & ZERO:
                zero_classes(first_pfn, count, classes, data)
        if count and not self._inside_loads(first_pfn, count):
            # a page no PT_LOAD covers is not in the dump at all: nothing to exclude
            for i in range(count):
                if classes[i] and not self._in_segs(first_pfn + i):
                    classes[i] = 0
        counts = {name: classes.count(i) for i, name in enumerate(CLASSES) if i} if any(classes) else \
            dict.fromkeys(CLASSES[1:], 0)
        return Classified(first_pfn, classes, counts, self.level, self.level_applied, self.missing,
                          self.weaker, unreadable)


def classify(src, info: VmcoreInfo, first_pfn: int, count: int, level: int, data=None) -> Classified:
    """One-off classification; a worker keeps a PageClassifier instead (it caches mem_section)."""
    return PageClassifier(src, info, level).classify(first_pfn, count, data)


def _field_reader(fields):
    """A function (buf, off) -> the values of ``fields`` ((offset or None, struct code), ...) at
    buf[off + offset], None for a field without an offset: one unpack when the fields do not overlap."""
    present = sorted((o, i, c) for i, (o, c) in enumerate(fields) if o is not None)
    fmt, at, ok = "<", 0, True
    for o, _, c in present:
        if o < at:
            ok = False
            break
        fmt += f"{o - at}x{c}" if o > at else c
        at = o + struct.calcsize("<" + c)
    if ok:
        whole = struct.Struct(fmt).unpack_from
        if [i for _, i, _ in present] == list(range(len(fields))):
            return whole
        where = {i: k for k, (_, i, _) in enumerate(present)}
        get = itemgetter(*(where.get(i, len(present)) for i in range(len(fields))))
        if len(present) == len(fields):
            return lambda buf, off: get(whole(buf, off))
        return lambda buf, off: get(whole(buf, off) + (None,))
    one = [(o, struct.Struct("<" + c).unpack_from) if o is not None else None for o, c in fields]
    return lambda buf, off: tuple(u[1](buf, off + u[0])[0] if u else None for u in one)
