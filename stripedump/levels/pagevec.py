"""The dump levels' rules over numpy columns of struct-page fields: pageclass's engine for large machines.

Why this module:
* pageclass.py resolves a level's rules from VMCOREINFO and walks small
  machines page by page in Python; on a large machine (gigabytes of struct
  pages) a Python step per page would cost more than importing numpy, so
  there every page of a chunk is judged at once here, as numpy columns read
  out of the chunk's struct pages, and each excluded page's block is painted.
* Same rules, same verdicts as pageclass's walk (tests/levels/test_pageclass.py
  compares the two engines page by page on real kernels at every level and
  with each VMCOREINFO entry missing).  The two agree because the blocks are
  aligned powers of two, so they nest: a page inside an excluded block is
  excluded whatever it says itself, and the outermost block's class is the
  one counted, as makedumpfile counts it.  Painting smallest blocks first
  leaves the outermost class; the walk gets the same by jumping over each
  block.
* numpy is imported by this module only, so a dump that walks (or has no
  ``-d``) never pays its import (60-120 ms here).
"""

from __future__ import annotations

import numpy as np

from .pagebits import (C_CACHE, C_CACHE_PRIVATE, C_FREE, C_HWPOISON, C_OFFLINE, C_USER, C_ZERO, CACHE,
                        CACHE_PRIVATE, FREE, USER, ZERO_BLOCK)


class VectorEngine:
    """``struct_classes`` and ``zero_classes`` of a PageClassifier (its resolved rules), over numpy columns."""

    def __init__(self, pc):
        self.pc = pc
        self._range_starts = np.array([r[0] for r in pc.src.pfn_ranges], dtype=np.int64)
        self._range_ends = np.array([r[1] for r in pc.src.pfn_ranges], dtype=np.int64)

    def _decode(self, buf, n: int, stride: int, pfns: np.ndarray, ok: np.ndarray, ok_next: np.ndarray):
        """(class code, block order) for n struct pages at buf[i*stride], their next page at +SIZE(page)."""
        pc, u64 = self.pc, np.uint64

        def col(off, dt, base=0):
            return np.ndarray((n,), dt, buffer=buf, offset=base + off, strides=(stride,))

        def bit(flags, name):
            b = pc.pg[name]
            return np.zeros(n, bool) if b is None else ((flags >> u64(b)) & u64(1)).astype(bool)

        flags = col(pc.o_flags, "<u8")
        tail = (col(pc.o_head, "<u8") & u64(1)).astype(bool)
        mapcount = col(pc.o_mapcount, "<i4") if pc.o_mapcount is not None else None
        slab = bit(flags, "PG_slab")
        if pc.slab_val is not None and mapcount is not None:
            slab |= mapcount == pc.slab_val
        # compound heads: order (and hugetlb) from the first tail page
        head = ((flags & u64(pc.head_mask)) != 0) & ok_next
        order = np.zeros(n, np.int64)
        hugetlb = np.zeros(n, bool)
        if pc.order_in_flags:
            nflags = col(pc.o_flags, "<u8", pc.S)
            order = np.where(head, (nflags & u64(0xFF)).astype(np.int64), 0)
            if pc.hugetlb_val is not None and mapcount is not None:
                hugetlb = head & (mapcount == pc.hugetlb_val)
            elif pc.pg["PG_hugetlb"] is not None:
                hugetlb = head & bit(nflags, "PG_hugetlb")
        else:
            if pc.o_order is not None:
                order = np.where(head, col(pc.o_order, "u1", pc.S).astype(np.int64), 0)
            if pc.o_dtor is not None and pc.hugetlb_dtor is not None:
                hugetlb = head & (col(pc.o_dtor, "u1", pc.S) == pc.hugetlb_dtor)
        order = np.where((order >= 64) | ((pfns & ((1 << np.minimum(order, 62)) - 1)) != 0), 0, order)

        cls = np.zeros(n, np.uint8)
        open_ = ok & ~tail
        if pc.bits & FREE:
            private = col(pc.o_private, "<u8")
            buddy = open_ & ~slab & (mapcount == pc.buddy_val)
            border = np.minimum(private, u64(62)).astype(np.int64)
            good = buddy & (private <= u64(pc.max_order)) & ((pfns & ((1 << border) - 1)) == 0)
            cls[good] = C_FREE
            order = np.where(good, border, order)
            open_ &= ~buddy                   # a buddy page with a bad order is kept (makedumpfile warns)
            if pc.unaccepted_val is not None:
                # unaccepted memory (confidential VMs, 6.16+): blocks of the largest buddy order
                unacc = open_ & (mapcount == pc.unaccepted_val)
                good = unacc & ((pfns & ((1 << pc.max_order) - 1)) == 0)
                cls[good] = C_FREE
                order = np.where(good, pc.max_order, order)
                open_ &= ~unacc
        anon = np.zeros(n, bool)
        if pc.o_mapping is not None:
            anon = (col(pc.o_mapping, "<u8") & u64(1)).astype(bool) & ~slab
        if pc.bits & (CACHE | CACHE_PRIVATE):
            cache = bit(flags, "PG_lru") | (bit(flags, "PG_swapbacked") & bit(flags, "PG_swapcache"))
            priv = bit(flags, "PG_private")
            if pc.bits & CACHE:
                m = open_ & cache & ~priv & ~anon
                cls[m] = C_CACHE
                open_ &= ~m
            if pc.bits & CACHE_PRIVATE:
                m = open_ & cache & ~anon
                cls[m] = np.where(priv[m], C_CACHE_PRIVATE, C_CACHE)
                open_ &= ~m
        if pc.bits & USER:
            m = open_ & (anon | hugetlb)
            cls[m] = C_USER
            open_ &= ~m
        if pc.pg["PG_hwpoison"] is not None:
            m = open_ & bit(flags, "PG_hwpoison")
            cls[m] = C_HWPOISON
            open_ &= ~m
        if pc.offline_ok:
            m = open_ & ~slab & (mapcount == pc.offline_val)
            cls[m] = C_OFFLINE
        return cls, np.where(cls != 0, order, 0)

    def _mask(self, good, n: int) -> np.ndarray:
        ok = np.zeros(n, dtype=bool)
        for i, j in good:
            ok[i:j] = True
        return ok

    def struct_classes(self, a: int, count: int) -> tuple[bytearray, int]:
        """Class per page of [a, a+count) from the struct pages, and how many could not be read."""
        pc = self.pc
        mm, S = pc.memmap, pc.S
        buf, good = mm.read(a, count + 1)
        ok = self._mask(good, count + 1)
        pfns = np.arange(a, a + count, dtype=np.int64)
        cls, order = self._decode(buf, count, S, pfns, ok[:count], ok[1:count + 1])
        all_pfn, all_cls, all_order = [pfns], [cls], [order]
        cands = pc.lookback_candidates(a, buf, bool(ok[0]))
        if cands:
            cbuf = bytearray(2 * S * len(cands))
            cok = np.zeros((len(cands), 2), bool)
            for i, c in enumerate(cands):
                b2, g2 = mm.read(c, 2)
                cbuf[2 * S * i:2 * S * (i + 1)] = b2
                cok[i] = self._mask(g2, 2)
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
        orders = np.flatnonzero(np.bincount(ord_all)) if len(ord_all) else ()
        for o in orders:
            m = ord_all == o
            starts = pfn_all[m] - a
            cl = cls_all[m]
            if o == 0:
                keep = (starts >= 0) & (starts < count)
                out[starts[keep]] = cl[keep]
            elif (1 << int(o)) >= count:       # blocks as large as the chunk: a slice each, clipped
                for s, c in zip(starts.tolist(), cl.tolist()):
                    out[max(s, 0):max(min(s + (1 << int(o)), count), 0)] = c
            else:
                span = np.arange(1 << int(o), dtype=np.int64)
                idx = (starts[:, None] + span[None, :]).ravel()
                vals = np.repeat(cl, 1 << int(o))
                keep = (idx >= 0) & (idx < count)
                out[idx[keep]] = vals[keep]
        return bytearray(out.tobytes()), int(count - ok[:count].sum())

    def zero_classes(self, a: int, count: int, out: bytearray, data=None) -> None:
        """Mark C_ZERO the pages of out (class per page) that no rule took and that hold only zeros."""
        ps = self.pc.page_size
        cls = np.frombuffer(out, np.uint8)
        for s in range(0, count, ZERO_BLOCK):
            n = min(ZERO_BLOCK, count - s)
            part = cls[s:s + n]
            if data is not None:
                todo = np.flatnonzero(part == 0)     # only pages no rule above took (-d 31: few)
                words = np.frombuffer(data, "<u8", count=n * ps // 8, offset=s * ps).reshape(n, ps // 8)
                if len(todo) < n:
                    part[todo[~words[todo].any(axis=1)]] = C_ZERO
                else:
                    part[~words.any(axis=1)] = C_ZERO
                del words
            else:
                with self.pc.src.phys_window(a + s, n) as w:
                    words = np.frombuffer(w.view(), "<u8").reshape(n, ps // 8)
                    zero = ~words.any(axis=1)
                    del words
                part[(part == 0) & zero] = C_ZERO
