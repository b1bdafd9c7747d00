"""kvmem.py: kernel virtual -> physical by walking the dumped kernel's page tables.

A small ELF core built here holds hand-made page tables (4- and 5-level, 4 KiB,
2 MiB and 1 GiB mappings, the SME bit in every entry) so every walk path is
checked against known answers; the real-kernel fixture checks that the walk
finds init_uts_ns and mem_section where the kernel put them.
"""

from __future__ import annotations

import struct

from stripedump.source.kvmem import START_KERNEL_MAP, KernelMemory
from stripedump.source.vmcore import Source
from stripedump.source.vmcoreinfo import VmcoreInfo

PS = 4096
P, PSE = 0x1, 0x80
SME = 1 << 47


def write_core(path, pages: dict[int, bytes], npages: int, vmcoreinfo: str, machine: int = 62,
               holes: tuple[int, ...] = ()) -> None:
    """An ELF64 core: one PT_NOTE (VMCOREINFO) and PT_LOADs of pages [0, npages) at their physical
    address, one per stretch between the pfns in ``holes`` (which no PT_LOAD holds)."""
    desc = vmcoreinfo.encode()
    note = struct.pack("<III", 11, len(desc), 0) + b"VMCOREINFO\0\0" + desc + bytes(-len(desc) % 4)
    data_at = PS
    cuts = [-1, *sorted(holes), npages]
    spans = [(a + 1, b) for a, b in zip(cuts, cuts[1:]) if a + 1 < b]
    eh = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + bytes(9), 4, machine, 1, 0, 64, 0, 0,
                     64, 56, 1 + len(spans), 0, 0, 0)
    ph_note = struct.pack("<IIQQQQQQ", 4, 0, 64 + (1 + len(spans)) * 56, 0, 0, len(note), len(note), 0)
    ph_loads = b"".join(struct.pack("<IIQQQQQQ", 1, 7, data_at + a * PS, 0, a * PS, (b - a) * PS, (b - a) * PS, 0)
                        for a, b in spans)
    assert 64 + (1 + len(spans)) * 56 + len(note) <= data_at
    with open(path, "wb") as f:
        f.write(eh + ph_note + ph_loads + note)
        f.truncate(data_at + npages * PS)
        for pfn, content in pages.items():
            f.seek(data_at + pfn * PS)
            f.write(content)


def table(entries: dict[int, int]) -> bytes:
    t = bytearray(PS)
    for i, v in entries.items():
        struct.pack_into("<Q", t, 8 * i, v)
    return bytes(t)


def idx(v: int, shift: int) -> int:
    return (v >> shift) & 511


def build(tmp_path, five: bool, sme: int = 0):
    """Tables at pfns 1.. ; data pages 10 and 300 (inside the 2 MiB unit at phys 0)."""
    small = 0xFFFF888000123000          # 4 KiB page -> pfn 10
    big = 0xFFFFEA0000200000            # 2 MiB unit -> phys 0
    huge = 0xFFFF890040000000           # 1 GiB unit -> phys 0
    e = lambda pfn, flags=P: pfn * PS | flags | sme      # noqa: E731
    pages = {10: b"small page".ljust(PS, b"\0"), 300: b"in the 2 MiB unit".ljust(PS, b"\0")}
    top, nxt = 1, 2
    pgd_shift = 48 if five else 39
    tops: dict[int, dict[int, int]] = {top: {}}
    for v, leaf in ((small, "pte"), (big, "pmd"), (huge, "pud")):
        cur = top
        shifts = ([48] if five else []) + [39, 30, 21, 12]
        for s in shifts:
            i = idx(v, s)
            if leaf == "pud" and s == 30:
                tops[cur][i] = e(0, P | PSE)
                break
            if leaf == "pmd" and s == 21:
                tops[cur][i] = e(0, P | PSE)
                break
            if s == 12:
                tops[cur][i] = e(10)
                break
            if i not in tops[cur]:
                tops[cur][i] = e(nxt)
                tops[nxt] = {}
                nxt += 1
            cur = (tops[cur][i] & ~(sme | 0xFFF)) // PS
    assert pgd_shift in (39, 48)
    for pfn, ents in tops.items():
        pages[pfn] = table(ents)
    vi = (f"SYMBOL(init_top_pgt)={START_KERNEL_MAP + top * PS:x}\nNUMBER(phys_base)=0\n"
          f"NUMBER(pgtable_l5_enabled)={int(five)}\nNUMBER(sme_mask)={sme}\n")
    path = tmp_path / f"core{int(five)}"
    write_core(path, pages, 1024, vi)
    return str(path), small, big, huge


def check_walks(tmp_path, five: bool, sme: int = 0):
    path, small, big, huge = build(tmp_path, five, sme)
    with Source(path) as src:
        km, missing = KernelMemory.open(src, VmcoreInfo.from_source(src))
        assert missing == ()
        assert km.translate(small + 5) == (10 * PS + 5, PS - 5)
        assert km.read(small, 10) == b"small page"
        assert km.translate(big + 300 * PS) == (300 * PS, 0x200000 - 300 * PS)
        assert km.read(big + 300 * PS, 17) == b"in the 2 MiB unit"
        assert km.translate(huge + 10 * PS) == (10 * PS, (1 << 30) - 10 * PS)
        assert km.read(huge + 10 * PS, 10) == b"small page"
        assert km.translate(small + PS) is None            # the next PTE is empty
        assert km.translate(0xFFFFC90000000000) is None    # no PGD entry
        assert km.read(huge + 20 * PS, 16) == bytes(16)     # inside the core: zeros are real zeros
        assert km.read(huge + 2000 * PS, 8) is None        # mapped, but past the core's memory: unreadable
        buf, good = km.read_items(huge + 1022 * PS, 4, PS)
        assert good == [(0, 2)] and len(buf) == 4 * PS     # two pages held, two beyond the core


def test_four_level_walk_4k_2m_1g(tmp_path):
    check_walks(tmp_path, five=False)


def test_five_level_walk_4k_2m_1g(tmp_path):
    check_walks(tmp_path, five=True)


def test_sme_bit_is_not_part_of_the_address(tmp_path):
    check_walks(tmp_path, five=False, sme=SME)


def test_missing_entries_and_other_machines_are_named(tmp_path):
    path, *_ = build(tmp_path, five=False)
    with Source(path) as src:
        vi = VmcoreInfo.from_source(src)
        assert KernelMemory.open(src, vi.without("NUMBER(phys_base)")) == (None, ("NUMBER(phys_base)",))
        assert KernelMemory.open(src, vi.without("SYMBOL(init_top_pgt)")) == (None, ("SYMBOL(init_top_pgt)",))
    write_core(tmp_path / "arm", {}, 4, "NUMBER(phys_base)=0\n", machine=183)
    with Source(str(tmp_path / "arm")) as src:
        km, missing = KernelMemory.open(src, VmcoreInfo.from_source(src))
        assert km is None and "x86_64" in missing[0] and "EM_AARCH64" in missing[0]


def test_real_kernel_init_uts_ns_and_mem_section(real_vmcore):
    path, release = real_vmcore
    with Source(path) as src:
        vi = VmcoreInfo.from_source(src)
        km, missing = KernelMemory.open(src, vi)
        assert missing == ()
        uts = vi.symbol("init_uts_ns") + vi.offset("uts_namespace.name")
        # the walk agrees with the kernel's __pa_symbol for a kernel-image symbol
        assert km.translate(uts)[0] == uts - START_KERNEL_MAP + vi.number("phys_base")
        name = km.read(uts, 6 * 65)
        assert name[:6] == b"Linux\0"
        assert name[2 * 65:3 * 65].split(b"\0")[0].decode() == vi.osrelease == release
        # mem_section is in the direct map (randomized base): its first root points into it too
        root = km.read_u64(vi.symbol("mem_section"))
        assert root is not None and root >> 47 == 0x1FFFF
        assert km.translate(root) is not None
