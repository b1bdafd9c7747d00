import os
import struct

import pytest

from stripedump.tools import synth
from stripedump.errors import SourceError, VmcoreFormatError
from stripedump.source.vmcore import Source, build_phys_map, merge_pfn_ranges, subtract_ranges

LAYOUTS = list(synth.layouts())


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("use_mmap", [True, False])
def test_every_page_reads_as_the_machine_saw_it(vmcore, layout, use_mmap):
    b = vmcore(layout)
    with Source(b.path, use_mmap=use_mmap) as s:
        assert s.page_size == 4096
        assert len(s.info.loads) == len([ld for ld in b.loads if ld.memsz])
        assert s.info.elfclass == b.elfclass
        assert s.info.vmcoreinfo["OSRELEASE"] == "6.1.0-synthetic"
        assert s.info.nr_cpus == 2
        for a, e in s.pfn_ranges:
            for pfn in range(a, e):
                with s.phys_window(pfn, 1) as w:
                    got = bytes(w.view())
                assert got == synth.expected_page(b, pfn), (layout, hex(pfn))


def test_pfn_ranges_are_merged_physical_ranges_not_load_sums(vmcore):
    b = vmcore("kernel")
    with Source(b.path) as s:
        # the kernel-text load lies inside the second RAM range: not counted twice
        assert s.pfn_ranges == [(1, 0x9F), (0x100, 0x400), (0x1000, 0x1201)]
        assert sum(e - a for a, e in s.pfn_ranges) * 4096 < sum(ld.memsz for ld in b.loads) + 3 * 4096


def test_residue_is_exactly_what_loads_do_not_recreate(vmcore):
    b = vmcore("kernel")
    with Source(b.path) as s:
        res = s.residue()
        covered = sorted((off, off + ld.filesz) for ld, off in zip(b.loads, b.offsets))
        # residue plus load file ranges tile the whole file, without overlap
        assert subtract_ranges((0, b.size), covered + res) == []
        assert sum(e - a for a, e in res) + sum(e - a for a, e in covered) - _overlap(covered) == b.size
        assert res[0][0] == 0          # headers and notes


def _overlap(ranges):
    total, end = 0, -1
    for a, b in sorted(ranges):
        if a < end:
            total += min(b, end) - a
        end = max(end, b)
    return total


def test_differing_shadow_copy_is_kept_as_residue(vmcore):
    b = vmcore("differing-overlap")
    with Source(b.path) as s:
        res = s.residue()
        off = b.offsets[-1]
        assert any(a <= off and off + 0x10000 <= e for a, e in res)


def test_identical_shadow_copy_is_not_residue(vmcore):
    b = vmcore("kernel-after")
    with Source(b.path) as s:
        off = b.offsets[-1]       # the kernel-text load, shadowed by RAM
        assert not any(a < off + 0x100000 and off < e for a, e in s.residue())


def test_page_size_from_vmcoreinfo(tmp_path):
    ps = 16384
    path = str(tmp_path / "vm")
    synth.build(path, [synth.Load(0, 8 * ps)], page_size=ps,
                notes=synth.notes_blob(1, ps))
    with Source(path) as s:
        assert s.page_size == ps
        assert s.pfn_ranges == [(0, 8)]


def test_phys_map_first_load_wins():
    from stripedump.source.vmcore import Segment
    L = lambda i, pa, off, n: Segment(i, 1, off, 0, pa, n, n, 7, 0)
    owners, shadows = build_phys_map([L(0, 100, 1000, 50), L(1, 0, 5000, 300)])
    assert [(o.start, o.end, o.offset) for o in owners] == [(0, 100, 5000), (100, 150, 1000), (150, 300, 5150)]
    assert [(c.start, c.end, c.offset, o.offset) for c, o in shadows] == [(100, 150, 5100, 1000)]


def test_merge_pfn_ranges_rounds_like_the_kernel():
    from stripedump.source.vmcore import Segment
    S = lambda pa, n: Segment(0, 1, 0, 0, pa, n, n, 7, 0)
    assert merge_pfn_ranges([S(0x1234, 0x10), S(0x2000, 0x1000), S(0x9000, 1)], 4096) == [(1, 3), (9, 10)]


# -- hostile and broken input: one VmcoreFormatError, never a traceback ---------

def _patch(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.mark.parametrize("mutate,msg", [
    (lambda p: _patch(p, 0, b"\x7fELG"), "not an ELF file"),
    (lambda p: _patch(p, 4, b"\x03"), "unsupported ELF class"),
    (lambda p: _patch(p, 16, struct.pack("<H", 2)), "not a core dump"),
    (lambda p: _patch(p, 54, struct.pack("<H", 40)), "e_phentsize"),
    (lambda p: _patch(p, 56, struct.pack("<H", 0)), "no program headers"),
    (lambda p: _patch(p, 32, struct.pack("<Q", 1 << 40)), "past end of file"),
    (lambda p: os.truncate(p, 100_000), "past end of file"),
    (lambda p: os.truncate(p, 10), "too small"),
])
def test_broken_headers_are_one_clean_error(vmcore, mutate, msg):
    b = vmcore("simple")
    mutate(b.path)
    with pytest.raises(VmcoreFormatError, match=msg):
        Source(b.path)


def test_load_with_filesz_above_memsz_is_refused(vmcore):
    b = vmcore("simple")
    phoff = 64 + 56      # second program header (the first is PT_NOTE)
    _patch(b.path, phoff + 40, struct.pack("<Q", 100))    # p_memsz < p_filesz
    with pytest.raises(VmcoreFormatError, match="p_filesz"):
        Source(b.path)


def test_bad_pagesize_in_vmcoreinfo_is_refused(tmp_path):
    path = str(tmp_path / "vm")
    synth.build(path, [synth.Load(0, 8192)],
                notes=synth.notes_blob(1, vmcoreinfo=synth.vmcoreinfo_text(4096).replace(
                    b"PAGESIZE=4096", b"PAGESIZE=3000")))
    with pytest.raises(VmcoreFormatError, match="PAGESIZE"):
        Source(path)


def test_missing_and_directory_sources(tmp_path):
    with pytest.raises(SourceError, match="cannot open"):
        Source(str(tmp_path / "nope"))
    with pytest.raises(SourceError, match="directory"):
        Source(str(tmp_path))


def test_window_outside_the_file_is_refused(vmcore):
    b = vmcore("simple")
    with Source(b.path) as s:
        with pytest.raises(SourceError):
            s.window(b.size - 10, 20)


def _rss_of_file(path: str) -> int:
    """Resident bytes of this process's mappings of ``path`` (from /proc/self/smaps)."""
    total, cur = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            if fields and "-" in fields[0] and ":" not in fields[0]:
                cur = fields[-1] == path
            elif cur and line.startswith("Rss:"):
                total += int(fields[1]) * 1024
    return total


def test_windows_share_one_arena_and_leave_no_pages_behind(tmp_path, monkeypatch):
    """Issue 12: windows are read through one mapping per ARENA_BYTES of source (not one mmap per
    window); each window's bytes are right, across arena ends too; closing a window drops its
    pages from the process (a worker's memory holds its open window only); two windows open at
    once (residue's comparison) each get their own bytes."""
    from stripedump.source import vmcore as vm
    monkeypatch.setattr(vm, "ARENA_BYTES", 4 << 20)
    path = str(tmp_path / "core")
    size = 11 << 20
    data = os.urandom(size)
    with open(path, "wb") as f:
        f.write(data)
    with Source.__new__(Source) as src:
        src.fd, src.size, src.use_mmap = os.open(path, os.O_RDONLY), size, True
        src._arena, src._arena_open = None, 0
        arenas = {}                                # id -> mapping (kept: no id is reused)
        for off in range(0, size - (1 << 20) + 1, 1 << 20):
            w = src.window(off, 1 << 20)
            assert w.obj[w.base:w.base + (1 << 20)] == data[off:off + (1 << 20)]
            arenas[id(w.obj)] = w.obj
            assert _rss_of_file(path) >= 1 << 20
            w.close()
            assert _rss_of_file(path) == 0, off
        assert len(arenas) <= 4                    # 11 windows in 3-4 mappings, not 11
        w = src.window((4 << 20) - 4096, 8192)     # across an arena's end
        assert bytes(w.view()) == data[(4 << 20) - 4096:(4 << 20) + 4096]
        with src.window(100, 5000) as a, src.window(9 << 20, 5000) as b:
            assert bytes(a.view()) == data[100:5100] and bytes(b.view()) == data[9 << 20:(9 << 20) + 5000]
        w.close()
        with src.window(size - 4096, 4096) as w:       # the source's last page
            assert bytes(w.view()) == data[-4096:]
