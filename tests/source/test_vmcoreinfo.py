"""vmcoreinfo.py: the VMCOREINFO note parsed by each entry's printf rule; need() names what is missing."""

from __future__ import annotations

from stripedump.source.vmcore import Source
from stripedump.source.vmcoreinfo import VmcoreInfo

TEXT = b"""OSRELEASE=6.1.0-57-amd64
PAGESIZE=4096
SYMBOL(init_uts_ns)=ffffffffaf3fb000
OFFSET(page.flags)=0
SIZE(page)=64
LENGTH(zone.free_area)=11
NUMBER(phys_base)=-668991488
NUMBER(PHYS_OFFSET)=0x40000000
NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)=-129
KERNELOFFSET=2c800000
CRASHTIME=1764000000
OFFSET(page.lru)=eight
not a line
"""


def test_each_kind_parsed_by_its_printf_rule():
    vi = VmcoreInfo.parse(TEXT)
    assert vi.osrelease == "6.1.0-57-amd64" and vi.page_size == 4096
    assert vi.symbol("init_uts_ns") == 0xFFFFFFFFAF3FB000          # %lx
    assert vi.offset("page.flags") == 0 and vi.size("page") == 64 and vi.length("zone.free_area") == 11
    assert vi.number("phys_base") == -668991488                    # %ld: signed under KASLR
    assert vi.number("PHYS_OFFSET") == 0x40000000                  # arm64 prints some as 0x%llx
    assert vi.number("PAGE_BUDDY_MAPCOUNT_VALUE") == -129
    assert vi.kerneloffset == 0x2C800000 and vi.crashtime == 1764000000
    assert vi.symbol("nothing") is None and vi.offset("page.lru") is None


def test_need_names_exactly_the_missing_and_unparsable_entries():
    vi = VmcoreInfo.parse(TEXT)
    assert vi.need("SIZE(page)", "OFFSET(page.flags)", "OSRELEASE") == ()
    assert vi.need("SIZE(page)", "OFFSET(page.lru)", "NUMBER(PG_lru)", "OFFSET(page.flags)") == \
        ("OFFSET(page.lru)", "NUMBER(PG_lru)")                     # a bad value counts as missing
    less = vi.without("SIZE(page)", "OFFSET(page.lru)")
    assert less.need("SIZE(page)", "OFFSET(page.lru)") == ("SIZE(page)", "OFFSET(page.lru)")
    assert less.size("page") is None and vi.size("page") == 64     # the original is untouched
    assert VmcoreInfo.parse(b"").need("OSRELEASE") == ("OSRELEASE",)


def test_real_kernel_symbols_carry_the_kaslr_slide(real_vmcore):
    """SYMBOL() is a run-time address: minus KERNELOFFSET it is the link address (_stext at 0xffffffff81000000)."""
    path, release = real_vmcore
    with Source(path) as src:
        vi = VmcoreInfo.from_source(src)
    assert vi.osrelease == release
    assert vi.kerneloffset and vi.symbol("_stext") - vi.kerneloffset == 0xFFFFFFFF81000000
