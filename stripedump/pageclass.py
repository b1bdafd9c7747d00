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
* Vectorized: the struct pages of a chunk are read at once and decoded as
  numpy columns; no Python loop per page.  makedumpfile walks pages in order
  and jumps over each excluded block; here every page is judged and each
  excluded page's block is painted.  The two agree because the blocks are
  aligned powers of two (an unaligned compound order is ignored by both; an
  unaligned buddy block is kept here), so they nest: a page inside an
  excluded block is excluded whatever it says itself, and the outermost
  block's class is the one counted, as makedumpfile counts it.  A block whose
  head lies before the chunk is found by looking back at the aligned
  candidate heads (one per order up to the largest buddy order) and at the
  head a tail page points to (gigantic pages).
* Never guess: a struct page that cannot be read excludes nothing; a level
  whose VMCOREINFO entries are missing is not applied, and the result names
  the entries and the level really applied.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .kvmem import KernelMemory
from .vmcoreinfo import VmcoreInfo

ZERO, CACHE, CACHE_PRIVATE, USER, FREE = 1, 2, 4, 8, 16
# class codes in the per-page arrays (0 = kept), and their names in counts
CLASSES = ("kept", "zero", "cache", "cache_private", "user", "free", "hwpoison", "offline")
C_ZERO, C_CACHE, C_CACHE_PRIVATE, C_USER, C_FREE, C_HWPOISON, C_OFFLINE = range(1, 8)

SECTION_PRESENT = 1
# section_mem_map's flag bits: 5 up to 6.14 (makedumpfile masks these), 6 with 6.15's
# SECTION_IS_VMEMMAP_PREINIT; the coded mem_map always has at least 6 low zero bits
SECTION_FLAG_BITS = 0x3F
KERNEL_SPACE = 0xFFFF800000000000
ZERO_BLOCK = 4096                 # pages zero-tested per read (16 MiB with 4 KiB pages)

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
            roots = np.frombuffer(data, "<u8").tolist()
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

    def read(self, a: int, n: int) -> tuple[bytearray, np.ndarray]:
        """The struct pages of [a, a+n): (buffer of n * SIZE(page), readable mask)."""
        S = self.size_page
        buf = bytearray(n * S)
        ok = np.zeros(n, dtype=bool)
        for p0, p1, v in self.runs(a, a + n):
            part, good = self.kmem.read_items(v, p1 - p0, S)
            buf[(p0 - a) * S:(p1 - a) * S] = part
            for i, j in good:
                ok[p0 - a + i:p0 - a + j] = True
        return buf, ok


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


@dataclass
class Classified:
    """The verdict on pages [first_pfn, first_pfn + len(excluded))."""
    first_pfn: int
    excluded: np.ndarray                 # bool per page
    classes: np.ndarray                  # uint8 per page: index into CLASSES
    counts: dict[str, int]
    level_asked: int
    level_applied: int
    missing: tuple[str, ...] = ()        # VMCOREINFO entries whose absence dropped level bits
    weaker: tuple[str, ...] = ()         # absent entries that make an applied bit keep more
    unreadable: int = 0                  # pages whose struct page could not be read


class PageClassifier:
    """One per worker: classify(first_pfn, count) for a level, on one Source."""

    def __init__(self, src, info: VmcoreInfo, level: int):
        if not 0 <= level <= 31:
            raise ValueError(f"dump level {level} is not between 0 and 31")
        self.src, self.info, self.level = src, info, level
        self.page_size = src.page_size
        self._range_starts = np.array([r[0] for r in src.pfn_ranges], dtype=np.int64)
        self._range_ends = np.array([r[1] for r in src.pfn_ranges], dtype=np.int64)
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

    # -- decoding ------------------------------------------------------------------
    def _decode(self, buf, n: int, stride: int, pfns: np.ndarray, ok: np.ndarray, ok_next: np.ndarray):
        """(class code, block order) for n struct pages at buf[i*stride], their next page at +SIZE(page)."""
        u64 = np.uint64

        def col(off, dt, base=0):
            return np.ndarray((n,), dt, buffer=buf, offset=base + off, strides=(stride,))

        def bit(flags, name):
            b = self.pg[name]
            return np.zeros(n, bool) if b is None else ((flags >> u64(b)) & u64(1)).astype(bool)

        flags = col(self.o_flags, "<u8")
        tail = (col(self.o_head, "<u8") & u64(1)).astype(bool)
        mapcount = col(self.o_mapcount, "<i4") if self.o_mapcount is not None else None
        slab = bit(flags, "PG_slab")
        if self.slab_val is not None and mapcount is not None:
            slab |= mapcount == self.slab_val
        # compound heads: order (and hugetlb) from the first tail page
        head = ((flags & u64(self.head_mask)) != 0) & ok_next
        order = np.zeros(n, np.int64)
        hugetlb = np.zeros(n, bool)
        if self.order_in_flags:
            nflags = col(self.o_flags, "<u8", self.S)
            order = np.where(head, (nflags & u64(0xFF)).astype(np.int64), 0)
            if self.hugetlb_val is not None and mapcount is not None:
                hugetlb = head & (mapcount == self.hugetlb_val)
            elif self.pg["PG_hugetlb"] is not None:
                hugetlb = head & bit(nflags, "PG_hugetlb")
        else:
            if self.o_order is not None:
                order = np.where(head, col(self.o_order, "u1", self.S).astype(np.int64), 0)
            if self.o_dtor is not None and self.hugetlb_dtor is not None:
                hugetlb = head & (col(self.o_dtor, "u1", self.S) == self.hugetlb_dtor)
        order = np.where((order >= 64) | ((pfns & ((1 << np.minimum(order, 62)) - 1)) != 0), 0, order)

        cls = np.zeros(n, np.uint8)
        open_ = ok & ~tail
        if self.bits & FREE:
            private = col(self.o_private, "<u8")
            buddy = open_ & ~slab & (mapcount == self.buddy_val)
            border = np.minimum(private, u64(62)).astype(np.int64)
            good = buddy & (private <= u64(self.max_order)) & ((pfns & ((1 << border) - 1)) == 0)
            cls[good] = C_FREE
            order = np.where(good, border, order)
            open_ &= ~buddy                   # a buddy page with a bad order is kept (makedumpfile warns)
            if self.unaccepted_val is not None:
                # unaccepted memory (confidential VMs, 6.16+): blocks of the largest buddy order
                unacc = open_ & (mapcount == self.unaccepted_val)
                good = unacc & ((pfns & ((1 << self.max_order) - 1)) == 0)
                cls[good] = C_FREE
                order = np.where(good, self.max_order, order)
                open_ &= ~unacc
        anon = np.zeros(n, bool)
        if self.o_mapping is not None:
            anon = (col(self.o_mapping, "<u8") & u64(1)).astype(bool) & ~slab
        if self.bits & (CACHE | CACHE_PRIVATE):
            cache = bit(flags, "PG_lru") | (bit(flags, "PG_swapbacked") & bit(flags, "PG_swapcache"))
            priv = bit(flags, "PG_private")
            if self.bits & CACHE:
                m = open_ & cache & ~priv & ~anon
                cls[m] = C_CACHE
                open_ &= ~m
            if self.bits & CACHE_PRIVATE:
                m = open_ & cache & ~anon
                cls[m] = np.where(priv[m], C_CACHE_PRIVATE, C_CACHE)
                open_ &= ~m
        if self.bits & USER:
            m = open_ & (anon | hugetlb)
            cls[m] = C_USER
            open_ &= ~m
        if self.pg["PG_hwpoison"] is not None:
            m = open_ & bit(flags, "PG_hwpoison")
            cls[m] = C_HWPOISON
            open_ &= ~m
        if self.offline_val is not None and mapcount is not None and \
                (self.pg["PG_slab"] is not None or self.slab_val is not None):
            m = open_ & ~slab & (mapcount == self.offline_val)
            cls[m] = C_OFFLINE
        return cls, np.where(cls != 0, order, 0)

    def _struct_classes(self, a: int, count: int) -> tuple[np.ndarray, int]:
        """Class per page of [a, a+count) from the struct pages, and how many could not be read."""
        mm, S = self.memmap, self.S
        buf, ok = mm.read(a, count + 1)
        pfns = np.arange(a, a + count, dtype=np.int64)
        cls, order = self._decode(buf, count, S, pfns, ok[:count], ok[1:count + 1])
        # look back for a block whose head lies before a
        cands = set()
        if self.bits & FREE:
            cands.update(a & ~((1 << k) - 1) for k in range(1, self.max_order + 1))
        if ok[0] and int.from_bytes(buf[self.o_head:self.o_head + 8], "little") & 1:
            v = mm.vaddr(a)
            h = int.from_bytes(buf[self.o_head:self.o_head + 8], "little") - 1
            p = mm.pfn_of(h, a) if v is not None else None
            if p is not None:
                cands.add(p)
        cands = sorted(c for c in cands if 0 <= c < a)
        all_pfn, all_cls, all_order = [pfns], [cls], [order]
        if cands:
            cbuf = bytearray(2 * S * len(cands))
            cok = np.zeros((len(cands), 2), bool)
            for i, c in enumerate(cands):
                b2, o2 = mm.read(c, 2)
                cbuf[2 * S * i:2 * S * (i + 1)] = b2
                cok[i] = o2
            cp = np.array(cands, dtype=np.int64)
            ccls, cord = self._decode(cbuf, len(cands), 2 * S, cp, cok[:, 0], cok[:, 1])
            all_pfn.append(cp)
            all_cls.append(ccls)
            all_order.append(cord)
        pfn_all = np.concatenate(all_pfn)
        cls_all = np.concatenate(all_cls)
        ord_all = np.concatenate(all_order)
        out = np.zeros(count, np.uint8)
        # makedumpfile never looks at a page outside the PT_LOADs (is_in_segs): such a head excludes nothing
        i = np.searchsorted(self._range_starts, pfn_all, side="right") - 1
        in_segs = (i >= 0) & (pfn_all < self._range_ends[np.maximum(i, 0)])
        sel = (cls_all != 0) & in_segs
        pfn_all, cls_all, ord_all = pfn_all[sel], cls_all[sel], ord_all[sel]
        # paint blocks smallest first, so the outermost block's class is the one left.  The orders
        # present by bincount, not np.unique: that imports numpy.ma (20 ms in every worker)
        orders = np.flatnonzero(np.bincount(ord_all)) if len(ord_all) and ord_all.min() >= 0 \
            else sorted(set(ord_all.tolist()))
        for o in orders:
            m = ord_all == o
            starts = pfn_all[m] - a
            cl = cls_all[m]
            if o == 0:
                keep = (starts >= 0) & (starts < count)
                out[starts[keep]] = cl[keep]
                continue
            span = np.arange(1 << int(o), dtype=np.int64)
            idx = (starts[:, None] + span[None, :]).ravel()
            vals = np.repeat(cl, 1 << int(o))
            keep = (idx >= 0) & (idx < count)
            out[idx[keep]] = vals[keep]
        return out, int(count - ok[:count].sum())

    def _zero_classes(self, a: int, count: int, out: np.ndarray, data=None) -> None:
        ps = self.page_size
        for s in range(0, count, ZERO_BLOCK):
            n = min(ZERO_BLOCK, count - s)
            if data is not None:
                part = out[s:s + n]
                todo = np.flatnonzero(part == 0)     # only pages no rule above took (-d 31: few)
                if len(todo) < n:
                    words = np.frombuffer(data, "<u8", count=n * ps // 8, offset=s * ps).reshape(n, ps // 8)
                    part[todo[~words[todo].any(axis=1)]] = C_ZERO
                    del words
                    continue
                words = np.frombuffer(data, "<u8", count=n * ps // 8, offset=s * ps).reshape(n, ps // 8)
                zero = ~words.any(axis=1)
            else:
                with self.src.phys_window(a + s, n) as w:
                    words = np.frombuffer(w.view(), "<u8").reshape(n, ps // 8)
                    zero = ~words.any(axis=1)
                    del words
            part = out[s:s + n]
            part[(part == 0) & zero] = C_ZERO

    def _inside_loads(self, a: int, count: int) -> bool:
        i = int(np.searchsorted(self._range_starts, a, side="right")) - 1
        return i >= 0 and a + count <= int(self._range_ends[i])

    def classify(self, first_pfn: int, count: int, data=None) -> Classified:
        """The verdict on pages [first_pfn, first_pfn + count).

        ``data``, when given, is the pages' content (count * page size bytes) already read
        by the caller; the zero test then reads nothing more.
        """
        classes = np.zeros(count, np.uint8)
        unreadable = 0
        if self.structs and count:
            classes, unreadable = self._struct_classes(first_pfn, count)
        if self.level & ZERO and count:
            self._zero_classes(first_pfn, count, classes, data)
        if count and not self._inside_loads(first_pfn, count):
            # a page no PT_LOAD covers is not in the dump at all: nothing to exclude
            pfns = np.arange(first_pfn, first_pfn + count, dtype=np.int64)
            i = np.searchsorted(self._range_starts, pfns, side="right") - 1
            classes[~((i >= 0) & (pfns < self._range_ends[np.maximum(i, 0)]))] = 0
        counts = np.bincount(classes, minlength=len(CLASSES))
        return Classified(first_pfn, classes != 0, classes,
                          {name: int(counts[i]) for i, name in enumerate(CLASSES) if i},
                          self.level, self.level_applied, self.missing, self.weaker, unreadable)


def classify(src, info: VmcoreInfo, first_pfn: int, count: int, level: int, data=None) -> Classified:
    """One-off classification; a worker keeps a PageClassifier instead (it caches mem_section)."""
    return PageClassifier(src, info, level).classify(first_pfn, count, data)
