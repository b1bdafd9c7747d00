"""pageclass.py judged by makedumpfile: the dump levels' exclusions on a real kernel's vmcore.

The real-kernel fixture is rewritten into /proc/vmcore's layout
(bench/normalize_vmcore.py), makedumpfile 1.7.2 writes ``-d N -l`` of it,
and its kdump bitmaps say which pages it left out (a page it keeps in the
bitmap but points at the shared zero page counts as excluded by bit 1: that
is how makedumpfile drops zero pages in kdump output).  classify() over every
PFN range must never exclude a page makedumpfile keeps and must exclude at
least 99.9% of what it excludes.  Then each VMCOREINFO entry the levels need
is dropped in turn: the level falls back and still excludes nothing wrongly.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

from stripedump.levels.pageclass import (CACHE_KEYS, CLASSES, FREE_KEYS, MEMMAP_KEYS, PAGE_KEYS, PageClassifier,
                                  classify)
from stripedump.source.vmcore import Source
from stripedump.source.vmcoreinfo import VmcoreInfo

from conftest import ROOT



LEVELS = (1, 2, 4, 8, 16, 31)
# PageClassifier's engines: the walk (small machines, and these fixtures by default) and numpy's columns
ENGINES = ("walk", "vector")
needs_makedumpfile = pytest.mark.skipif(shutil.which("makedumpfile") is None,
                                        reason="makedumpfile is not installed")


def kdump_excluded(path: str, level: int) -> tuple[np.ndarray, np.ndarray]:
    """(1st bitmap, pages makedumpfile left out) of a kdump-compressed file, as bool arrays."""
    with open(path, "rb") as f:
        d = f.read()
    bs, sub, bb = struct.unpack_from("<iiI", d, 428)
    mapnr = struct.unpack_from("<Q", d, bs + 96)[0]
    blen = bb * bs // 2

    def bitmap(at):
        return np.unpackbits(np.frombuffer(d, np.uint8, blen, at), bitorder="little")[:mapnr].astype(bool)
    b1, b2 = bitmap((1 + sub) * bs), bitmap((1 + sub) * bs + blen)
    table = (1 + sub + bb) * bs
    n = int(b2.sum())
    offsets = np.ndarray((n,), "<i8", buffer=d, offset=table, strides=(24,))   # page_desc.offset
    excluded = b1 & ~b2
    if level & 1:         # zero pages stay in the bitmap but share the zero page written first
        zero = np.zeros(mapnr, bool)
        zero[np.nonzero(b2)[0][offsets == table + 24 * n]] = True
        excluded |= zero
    return b1, excluded


def judge(path, tmp_path_factory):
    """(normalized vmcore, {level: (1st bitmap, makedumpfile's exclusions)}, its directory)."""
    if shutil.which("makedumpfile") is None:
        pytest.skip("makedumpfile is not installed")
    d = tmp_path_factory.mktemp("levels")
    norm = str(d / "vmcore")
    subprocess.run([sys.executable, os.path.join(ROOT, "bench", "normalize_vmcore.py"), path, norm],
                   check=True, capture_output=True, timeout=300)
    out = {}
    for level in LEVELS:
        kd = str(d / f"d{level}.kdump")
        p = subprocess.run(["makedumpfile", "-d", str(level), "-l", norm, kd], capture_output=True, text=True,
                           timeout=300)
        assert p.returncode == 0, p.stdout + p.stderr
        out[level] = kdump_excluded(kd, level)
        os.unlink(kd)
    return norm, out, d


@pytest.fixture(scope="module")
def judged(real_vmcore, tmp_path_factory):
    norm, out, d = judge(real_vmcore[0], tmp_path_factory)
    yield norm, out
    shutil.rmtree(d, ignore_errors=True)     # 200 MB


@pytest.fixture(scope="module")
def judged_workload(workload_vmcore, tmp_path_factory):
    norm, out, d = judge(workload_vmcore, tmp_path_factory)
    yield norm, out
    shutil.rmtree(d, ignore_errors=True)


def excluded_of(r) -> np.ndarray:
    return np.frombuffer(r.excluded, np.uint8).astype(bool)


def run_all(src, info, level, chunk=1024, limit=None, engine=None):
    """classify() over every PFN range (below limit) in chunks: (excluded, class per page, counts)."""
    end = limit or src.pfn_ranges[-1][1]
    excluded, classes = np.zeros(end, bool), np.zeros(end, np.uint8)
    pc = PageClassifier(src, info, level, engine=engine)
    counts = dict.fromkeys(CLASSES[1:], 0)
    for a, b in src.pfn_ranges:
        b = min(b, end)
        for s in range(a, b, chunk):
            r = pc.classify(s, min(chunk, b - s))
            excluded[s:s + len(r.classes)] = excluded_of(r)
            classes[s:s + len(r.classes)] = np.frombuffer(r.classes, np.uint8)
            for k, v in r.counts.items():
                counts[k] += v
    return pc, excluded, classes, counts


def agreement(ours, mdf, b1):
    ours = ours & b1
    wrong = int((ours & ~mdf).sum())
    dropped = int(mdf.sum())
    found = int((ours & mdf).sum())
    return wrong, dropped, found


def check_level(judged, level, distinct=(), engine=None):
    norm, ref = judged
    b1, mdf = ref[level]
    with Source(norm) as src:
        pc, ours, _, counts = run_all(src, VmcoreInfo.from_source(src), level, limit=len(b1), engine=engine)
    wrong, dropped, found = agreement(ours, mdf, b1)
    print(f"level {level}: makedumpfile drops {dropped}, classify drops {found} of them "
          f"and {wrong} others; {counts}")
    assert pc.level_applied == level and pc.missing == ()
    assert dropped > 0
    assert wrong == 0, np.nonzero(ours & b1 & ~mdf)[0][:10]
    assert found >= 0.999 * dropped
    for name in distinct:
        assert counts[name] > 0, name
    return counts


@needs_makedumpfile
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("level", LEVELS)
def test_level_agrees_with_makedumpfile(judged, level, engine):
    check_level(judged, level, engine=engine)


@needs_makedumpfile
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("level", LEVELS)
def test_level_agrees_with_makedumpfile_under_a_workload(judged_workload, level, engine):
    """ext4 page cache with and without buffer heads and anonymous memory: levels 2, 4 and 8 differ."""
    want = {2: ("cache",), 4: ("cache", "cache_private"), 8: ("user",), 16: ("free",),
            31: ("zero", "cache", "cache_private", "user", "free")}
    counts = check_level(judged_workload, level, want.get(level, ()), engine)
    if level & 8:
        assert counts["user"] >= 4096      # the 16 MiB string a guest process holds


@needs_makedumpfile
@pytest.mark.parametrize("engine", ENGINES)
def test_chunks_cutting_through_blocks_give_the_same_answer(judged, engine):
    """Chunks of 37 pages start inside free blocks and compound pages: the look-back finds their heads."""
    norm, ref = judged
    b1, mdf = ref[31]
    with Source(norm) as src:
        info = VmcoreInfo.from_source(src)
        _, whole, cls_whole, _ = run_all(src, info, 31, chunk=1 << 15, limit=len(b1), engine=engine)
        _, cut, _, _ = run_all(src, info, 31, chunk=37, limit=len(b1), engine=engine)
    assert np.array_equal(whole, cut)
    starts = np.arange(37, len(b1), 37)
    inside = starts[(cls_whole[starts] == CLASSES.index("free")) & (cls_whole[starts - 1] == CLASSES.index("free"))]
    assert len(inside) > 10      # the case is really exercised
    wrong, dropped, found = agreement(cut, mdf, b1)
    assert wrong == 0 and found == dropped


# entry dropped -> the level bits that must remain applied when 31 is asked
FALLBACK = {k: 1 for k in PAGE_KEYS + MEMMAP_KEYS + ("NUMBER(phys_base)", "SYMBOL(init_top_pgt)")}
FALLBACK.update({k: 31 & ~16 for k in FREE_KEYS})
FALLBACK.update({k: 31 & ~6 for k in CACHE_KEYS if k != "OFFSET(page.mapping)"})
FALLBACK["OFFSET(page.mapping)"] = 31 & ~(2 | 4 | 8)
# x86_64's values, confirmed by LENGTH(mem_section), stand in for these (kernels before 5.x lack them)
for k in ("NUMBER(SECTION_SIZE_BITS)", "NUMBER(MAX_PHYSMEM_BITS)"):
    FALLBACK.pop(k)
# entries whose absence keeps the bits but keeps more pages (named in .weaker)
WEAKER = ("OFFSET(page.compound_order)", "OFFSET(page.compound_dtor)", "NUMBER(HUGETLB_PAGE_DTOR)",
          "NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)", "NUMBER(PG_hwpoison)")


@needs_makedumpfile
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("key", sorted(FALLBACK) + ["NUMBER(PG_slab)"] + list(WEAKER)
                         + ["NUMBER(SECTION_SIZE_BITS)", "NUMBER(MAX_PHYSMEM_BITS)"])
def test_missing_entry_falls_back_without_wrong_exclusions(judged, key, engine):
    norm, ref = judged
    b1, mdf = ref[31]
    with Source(norm) as src:
        info = VmcoreInfo.from_source(src)
        assert info.need(key) == (), key           # the fixture really has it
        pc, ours, _, counts = run_all(src, info.without(key), 31, limit=len(b1), engine=engine)
        if key in ("NUMBER(SECTION_SIZE_BITS)", "NUMBER(MAX_PHYSMEM_BITS)"):
            # without LENGTH(mem_section) to confirm x86_64's values, nothing is assumed
            pc2 = PageClassifier(src, info.without(key, "LENGTH(mem_section)"), 31)
            assert pc2.level_applied == 1 and key in pc2.missing
            # nor when LENGTH(mem_section) says the kernel was built otherwise
            odd = VmcoreInfo.parse(src.info.vmcoreinfo_raw.replace(b"LENGTH(mem_section)=4096",
                                                                    b"LENGTH(mem_section)=2048"))
            assert odd.length("mem_section") == 2048
            pc2 = PageClassifier(src, odd.without(key), 31)
            assert pc2.level_applied == 1 and key in pc2.missing
    wrong, dropped, found = agreement(ours, mdf, b1)
    assert wrong == 0
    if key in FALLBACK:
        assert pc.level_applied == FALLBACK[key] and key in pc.missing, (pc.level_applied, pc.missing)
        assert found < dropped
    elif key == "NUMBER(PG_slab)":
        # no way to tell slab pages: free pages and offline pages are not judged
        assert pc.level_applied == 31 & ~16 and key in pc.missing
    elif key in ("NUMBER(SECTION_SIZE_BITS)", "NUMBER(MAX_PHYSMEM_BITS)"):
        assert pc.level_applied == 31 and pc.missing == () and found == dropped
    else:
        assert pc.level_applied == 31 and pc.missing == ()
        if key in ("OFFSET(page.compound_order)", "NUMBER(HUGETLB_PAGE_DTOR)", "OFFSET(page.compound_dtor)"):
            assert ("OFFSET(page.compound_order)" in pc.weaker) == (key == "OFFSET(page.compound_order)")
        else:
            assert key in pc.weaker


def test_level_zero_and_unreadable_struct_pages_exclude_nothing(real_vmcore):
    path, _ = real_vmcore
    with Source(path) as src:
        info = VmcoreInfo.from_source(src)
        r = classify(src, info, 0, 4096, 0)
        assert r.level_applied == 0 and not any(r.excluded) and r.missing == ()
        # the BIOS ROM below 4 GiB: RAM has no struct pages there (no present section)
        a, b = src.pfn_ranges[-1]
        assert a > 1 << 18
        r = classify(src, info, a, b - a, 30)
        assert r.unreadable == b - a and not any(r.excluded)
        assert r.level_applied == 30


def test_zero_test_on_given_data_matches_reading(real_vmcore):
    path, _ = real_vmcore
    with Source(path) as src:
        info = VmcoreInfo.from_source(src)
        with src.phys_window(1024, 2048) as w:
            data = bytes(w.view())
        r1 = classify(src, info, 1024, 2048, 1)
        r2 = classify(src, info, 1024, 2048, 1, data=data)
        zero = ~np.frombuffer(data, "<u8").reshape(2048, 512).any(axis=1)
    assert r1.excluded == r2.excluded and r1.counts == r2.counts
    # level 1 adds the zero pages to what the struct pages say (here: no hwpoison or offline pages)
    assert np.array_equal(excluded_of(r1), zero) and r1.counts["zero"] == int(zero.sum()) > 0


# -- the rules one by one, on a hand-made kernel ---------------------------------------------------
# The real kernels above have no hugetlb, gigantic or misaligned pages and use SPARSEMEM_EXTREME;
# this core (tests/source/test_kvmem.py's builder) has page tables, a mem_section and struct pages
# written here, one case per rule, so each rule is checked against a known answer.

RAM = 9216                       # pfns classified; the struct pages live at pfns RAM.. (144 pages)
VMEMMAP = 0xFFFFEA0000000000
MAPPED_STRUCT_PAGES = 136        # the vmemmap PTEs of the last 8 struct-page pages are empty: pfns 8704..
SYNTH_INFO = """OSRELEASE=6.1.0-synthetic
PAGESIZE=4096
SYMBOL(init_top_pgt)={top:x}
NUMBER(phys_base)=0
NUMBER(pgtable_l5_enabled)=0
SYMBOL(mem_section)={ms:x}
LENGTH(mem_section)={length}
SIZE(mem_section)=16
OFFSET(mem_section.section_mem_map)=0
NUMBER(SECTION_SIZE_BITS)=27
NUMBER(MAX_PHYSMEM_BITS)=46
SIZE(page)=64
OFFSET(page.flags)=0
OFFSET(page._refcount)=52
OFFSET(page.mapping)=24
OFFSET(page.lru)=8
OFFSET(page._mapcount)=48
OFFSET(page.private)=40
OFFSET(page.compound_head)=8
LENGTH(zone.free_area)=11
NUMBER(PG_lru)=4
NUMBER(PG_private)=13
NUMBER(PG_swapcache)=10
NUMBER(PG_swapbacked)=19
NUMBER(PG_hwpoison)=23
NUMBER(PG_head_mask)=65536
"""
# Debian 12's 6.1: flags and _mapcount values, order and dtor bytes in the first tail page
STYLE_61 = """OFFSET(page.compound_dtor)=16
OFFSET(page.compound_order)=17
NUMBER(PG_slab)=9
NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)=-129
NUMBER(HUGETLB_PAGE_DTOR)=2
NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)=-257
"""
# 6.12 and later: one page type in _mapcount's top byte, the order in the first tail's flags
TYPE = {"buddy": -0x10000000, "offline": -0x0E000000, "hugetlb": -0x0C000000, "slab": -0x0B000000,
        "unaccepted": -0x09000000}
STYLE_612 = (f"OFFSET(folio._folio_order)=81\n"
             f"NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)={TYPE['buddy']}\n"
             f"NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)={TYPE['offline']}\n"
             f"NUMBER(PAGE_HUGETLB_MAPCOUNT_VALUE)={TYPE['hugetlb']}\n"
             f"NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)={TYPE['slab']}\n"
             f"NUMBER(PAGE_UNACCEPTED_MAPCOUNT_VALUE)={TYPE['unaccepted']}\n")
LRU, PRIV, SWAPCACHE, SWAPBACKED, SLAB, HWPOISON, HEAD = (1 << 4, 1 << 13, 1 << 10, 1 << 19, 1 << 9,
                                                          1 << 23, 1 << 16)
FILE_MAPPING, ANON_MAPPING = 0xFFFF888001234000, 0xFFFF888001235001


def struct_pages(style: str = "6.1") -> tuple[bytes, dict[str, set[int]]]:
    """The struct pages of pfns [0, RAM) and, per rule, the pfns it excludes."""
    new = style == "6.12"
    t = TYPE if new else {"buddy": -129, "offline": -257, "slab": None, "hugetlb": None}
    sp = np.zeros(RAM, dtype=[("flags", "<u8"), ("head", "<u8"), ("dtor", "u1"), ("order", "u1"),
                              ("pad", "u1", 6), ("mapping", "<u8"), ("pad2", "<u8"), ("private", "<u8"),
                              ("mapcount", "<i4"), ("refcount", "<i4"), ("pad3", "<u8")])
    assert sp.itemsize == 64
    sp["mapcount"] = -1
    want: dict[str, set[int]] = {k: set() for k in ("cache", "cache_private", "user", "free", "hwpoison",
                                                    "offline")}

    def buddy(pfn, order):
        sp["mapcount"][pfn], sp["private"][pfn] = t["buddy"], order

    def slab(pfn):
        if new:
            sp["mapcount"][pfn] = t["slab"]
        else:
            sp["flags"][pfn] |= SLAB

    def compound(pfn, order, flags=0, mapping=0, hugetlb=False):
        sp["flags"][pfn] |= HEAD | flags
        sp["mapping"][pfn] = mapping
        if new:
            sp["flags"][pfn + 1] = order
            if hugetlb:
                sp["mapcount"][pfn] = t["hugetlb"]
        else:
            sp["order"][pfn + 1], sp["dtor"][pfn + 1] = order, 2 if hugetlb else 1
        sp["head"][pfn + 1:pfn + (1 << order)] = (VMEMMAP + 64 * pfn) | 1
    buddy(64, 3)
    want["free"] |= set(range(64, 72))
    buddy(1024, 10)                      # chunks starting inside it look back at aligned heads
    want["free"] |= set(range(1024, 2048))
    buddy(2049, 1)                       # unaligned: kept (makedumpfile would take 2049-2050)
    buddy(2560, 11)                      # order beyond LENGTH(zone.free_area): kept, as makedumpfile does
    if not new:
        buddy(2600, 0)
        slab(2600)                       # a slab page's _mapcount is not a buddy mark
    slab(2601)
    sp["mapping"][2601] = ANON_MAPPING | 2   # a slab's struct slab overlays mapping: not user data
    sp["flags"][200] = LRU
    sp["mapping"][200] = FILE_MAPPING
    sp["flags"][201] = LRU | PRIV
    sp["mapping"][201] = FILE_MAPPING
    sp["flags"][202] = SWAPCACHE | SWAPBACKED
    sp["flags"][203] = SWAPCACHE         # PG_swapcache without PG_swapbacked is another flag's alias
    sp["flags"][204] = LRU
    sp["mapping"][204] = ANON_MAPPING    # anonymous: user data, not cache
    want["cache"] |= {200, 202}
    want["cache_private"] |= {201}
    want["user"] |= {204}
    compound(208, 2, LRU, FILE_MAPPING)  # a page-cache folio goes whole
    want["cache"] |= {208, 209, 210, 211}
    compound(401, 2, LRU, FILE_MAPPING)  # unaligned order: only the head page
    want["cache"] |= {401}
    sp["flags"][300] = HWPOISON
    want["hwpoison"] |= {300}
    sp["mapcount"][301] = t["offline"]
    want["offline"] |= {301}
    if not new:
        sp["mapcount"][302] = t["offline"]
        slab(302)
    compound(3072, 9, LRU, ANON_MAPPING)     # an anonymous THP
    want["user"] |= set(range(3072, 3584))
    compound(4096, 11, 0, 0, hugetlb=True)   # a hugetlb page bigger than the look-back's reach
    want["user"] |= set(range(4096, 6144))
    compound(6144, 4, 0, FILE_MAPPING)       # a compound page that is none of these: kept whole
    if new:
        sp["mapcount"][7168] = t["unaccepted"]   # unaccepted memory: a block of the largest order
        want["free"] |= set(range(7168, 8192))
    buddy(8800, 2)                           # its struct page is not mapped: kept
    buddy(6160, 4)                           # its head is in no PT_LOAD (HOLE): makedumpfile never sees it
    return sp.tobytes(), want


HOLE = 6160


def synth_core(tmp_path, extreme: bool, via_pointer: bool = False, style: str = "6.1") -> str:
    from source.test_kvmem import PS, P, PSE, START_KERNEL_MAP, table, write_core
    sp, _ = struct_pages(style)
    pages = {1: table({511: 2 * PS | P, (VMEMMAP >> 39) & 511: 3 * PS | P}),
             2: table({510: 0 | P | PSE}),                 # the kernel image: 1 GiB at physical 0
             3: table({0: 4 * PS | P}), 4: table({0: 5 * PS | P}),
             5: table({i: (RAM + i) * PS | P for i in range(MAPPED_STRUCT_PAGES)})}
    for i in range(len(sp) // PS):
        pages[RAM + i] = sp[i * PS:(i + 1) * PS]
    coded = VMEMMAP | 3                                     # present, has a mem_map; section 0 starts at pfn 0
    if extreme:
        pages[7] = table({0: START_KERNEL_MAP + 12 * PS})      # roots (4 pages: 2048 x 8 bytes)
        pages[12] = table({0: coded})
        pages[11] = table({0: START_KERNEL_MAP + 7 * PS})      # a pointer to the roots
        ms, length = START_KERNEL_MAP + (11 if via_pointer else 7) * PS, 2048
    else:
        pages[6] = table({0: coded})
        ms, length = START_KERNEL_MAP + 6 * PS, 1 << 19
    path = str(tmp_path / f"synth{int(extreme)}{int(via_pointer)}{style}")
    write_core(path, pages, RAM + 144, SYNTH_INFO.format(top=START_KERNEL_MAP + PS, ms=ms, length=length)
               + (STYLE_612 if style == "6.12" else STYLE_61), holes=(HOLE,))
    return path


@pytest.mark.parametrize("style", ["6.1", "6.12"])
@pytest.mark.parametrize("extreme,via_pointer", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("chunk", [RAM, 1000, 37])
@pytest.mark.parametrize("engine", ENGINES)
def test_each_rule_on_hand_made_struct_pages(tmp_path, extreme, via_pointer, chunk, style, engine):
    _, want = struct_pages(style)
    path = synth_core(tmp_path, extreme, via_pointer, style)
    with Source(path) as src:
        info = VmcoreInfo.from_source(src)
        for level, names in ((30, want), (2, ("cache",)), (4, ("cache", "cache_private")), (8, ("user",)),
                             (16, ("free",))):
            _, ours, classes, counts = run_all(src, info, level, chunk=chunk, limit=RAM, engine=engine)
            for name in CLASSES[1:]:
                got = set(np.nonzero(classes == CLASSES.index(name))[0].tolist())
                expect = want[name] if name in names or name in ("hwpoison", "offline") else set()
                if level == 2 and name == "cache":
                    expect = want["cache"]
                assert got == expect, (level, name, sorted(got ^ expect)[:10])
            if level == 2:      # without bit 4 a page-cache page with private data is kept
                assert not ours[201]
        r = PageClassifier(src, info, 30, engine=engine).classify(8700, 200)
        assert r.unreadable == 8900 - 8704 and not r.excluded[8800 - 8700]
        # a range across the hole: the hole's page (all zeros, in no PT_LOAD) is not judged
        r = PageClassifier(src, info, 1, engine=engine).classify(HOLE - 1, 3)
        assert list(r.classes) == [CLASSES.index("zero"), 0, CLASSES.index("zero")]
