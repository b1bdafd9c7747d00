"""Synthetic ELF vmcores: the one builder used by the demo, the tests and bench.

Why in the package: ``make demo`` and ``stripedump bench`` need sources on a
machine without a crashed kernel, and the tests need every layout that real
producers write.  The builder writes ELF with ``struct`` directly (not with
the reader's pyelftools), so reader bugs are not mirrored by the writer.

Layouts (``layout=``):
* ``kernel``: as fs/proc/vmcore.c presents /proc/vmcore: header area and note
  area page-rounded, each load laid out ``[rounddown(paddr), roundup(paddr +
  memsz))`` back to back, ``p_offset`` inside its first page;
* ``packed``: load data back to back with no rounding, so file offsets are
  not congruent to physical addresses (as some tools write);
* ``gaps``: like packed, with junk between loads and after the last one.
Options: ELF32, QEMU-style headers (a section header at 64, program headers
after it), PN_XNUM, a kernel-text load that overlaps RAM, loads that start or
end inside a page, ``p_memsz > p_filesz``, and a shadowed copy whose bytes
differ from the owner's.

Page content catches misplaced data: every non-zero page starts with its PFN
and a per-page pattern, and pages are a mix of zero, text-like, low-entropy
and random kinds (like memory).
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

PT_LOAD, PT_NOTE = 1, 4
PN_XNUM = 0xFFFF
EM_X86_64, EM_386 = 62, 3

_WORDS = (b"kernel ", b"page ", b"struct ", b"task_struct ", b"mm ", b"spin_lock ", b"0000 ",
          b"ffff8880 ", b"sched ", b"irq ", b"\n", b"vmcore ", b"dentry ")


_BODIES: dict[tuple, bytes] = {}


def page_content(pfn: int, page_size: int = 4096, zero_share: int = 4) -> bytes:
    """Deterministic contents of physical page ``pfn`` (10 kinds, ``zero_share`` of them zero)."""
    h = (pfn * 2654435761) & 0xFFFFFFFF
    kind = (h >> 7) % 10
    if kind < zero_share:
        return bytes(page_size)
    head = struct.pack("<QQ", pfn, h | 0x5A5A000000000000)
    if kind >= 8:     # random: does not compress
        return head + random.Random(pfn).randbytes(page_size - len(head))
    key = (kind < 6, pfn % 61, page_size)
    body = _BODIES.get(key)
    if body is None:
        rnd = random.Random(key[1] * 2 + key[0])
        if kind < 6:      # text-like: compresses well
            body = b"".join(rnd.choice(_WORDS) for _ in range(page_size // 5))
        else:             # low entropy: small values, sparse
            body = bytes(rnd.choice((0, 0, 0, 1, 2, 255)) for _ in range(256)) * (page_size // 256)
        body = _BODIES[key] = body[:page_size - len(head)]
    return head + body


def phys_bytes(addr: int, length: int, page_size: int = 4096, content=page_content) -> bytes:
    if content is None:
        return bytes(length)
    out = bytearray()
    pfn = addr // page_size
    skip = addr - pfn * page_size
    while len(out) < length + skip:
        out += content(pfn, page_size)
        pfn += 1
    return bytes(out[skip:skip + length])


@dataclass
class Load:
    paddr: int
    filesz: int
    memsz: int | None = None
    vaddr: int | None = None
    differ: bool = False          # file bytes differ from physical memory (a bad shadow copy)

    def __post_init__(self):
        if self.memsz is None:
            self.memsz = self.filesz
        if self.vaddr is None:
            self.vaddr = 0xFFFF888000000000 + self.paddr


@dataclass
class Built:
    path: str
    size: int
    loads: list[Load]
    page_size: int
    elfclass: int
    offsets: list[int] = field(default_factory=list)   # p_offset of each load


def vmcoreinfo_text(page_size: int = 4096, release: str = "6.1.0-synthetic", extra: str = "") -> bytes:
    return (f"OSRELEASE={release}\nPAGESIZE={page_size}\nBUILD-ID=0123456789abcdef\n"
            f"SYMBOL(init_uts_ns)=ffffffff82a13ac0\nOFFSET(uts_namespace.name)=4\n"
            f"NUMBER(phys_base)=-109051904\nCRASHTIME=1764000000\n{extra}").encode()


def _note(name: bytes, ntype: int, desc: bytes) -> bytes:
    name0 = name + b"\0"
    pad = lambda b: b + bytes(-len(b) % 4)
    return struct.pack("<III", len(name0), len(desc), ntype) + pad(name0) + pad(desc)


def notes_blob(nr_cpus: int = 2, page_size: int = 4096, vmcoreinfo: bytes | None = None) -> bytes:
    rnd = random.Random(7)
    out = b"".join(_note(b"CORE", 1, rnd.randbytes(336)) for _ in range(nr_cpus))
    return out + _note(b"VMCOREINFO", 0, vmcoreinfo if vmcoreinfo is not None else vmcoreinfo_text(page_size))


def build(path: str, loads: list[Load], *, elfclass: int = 64, layout: str = "kernel",
          qemu_style: bool = False, pn_xnum: bool = False, page_size: int = 4096, nr_cpus: int = 2,
          notes: bytes | None = None, content=page_content, sparse: bool = True) -> Built:
    """Write an ELF core at ``path`` whose PT_LOADs hold ``loads``.

    ``content(pfn, page_size)`` gives each page; ``content=None`` means all
    zero, left as holes (a large sparse source costs no disk space).
    """
    ps = page_size
    e64 = elfclass == 64
    ehsize, phentsize, shentsize = (64, 56, 64) if e64 else (52, 32, 40)
    phnum = len(loads) + 1
    use_sh = qemu_style or pn_xnum
    sh_off = ehsize if use_sh else 0
    ph_off = ehsize + (shentsize if use_sh else 0)
    hdr_end = ph_off + phnum * phentsize
    note = notes if notes is not None else notes_blob(nr_cpus, ps)
    rnd = random.Random(11)
    if layout == "kernel":
        note_off = -(-hdr_end // ps) * ps
        pos = note_off + -(-len(note) // ps) * ps
    else:
        note_off = hdr_end + (24 if layout == "gaps" else 0)
        pos = note_off + len(note)
    placed = []   # (file_start, bytes_start_phys, nbytes, load)
    offsets = []
    for ld in loads:
        if layout == "kernel":
            start = ld.paddr - ld.paddr % ps
            end = -(-(ld.paddr + ld.memsz) // ps) * ps
            offsets.append(pos + ld.paddr - start)
            placed.append((pos, start, end - start, ld))
            pos += end - start
        else:
            if layout == "gaps":
                pos += rnd.randrange(1, 3 * ps)
            offsets.append(pos)
            placed.append((pos, ld.paddr, ld.filesz, ld))
            pos += ld.filesz
    total = pos + (rnd.randrange(1, ps) if layout == "gaps" else 0)

    with open(path, "wb") as f:
        f.truncate(total)
        if layout == "gaps":   # junk everywhere first; data overwrites it below
            blk = rnd.randbytes(1 << 16)
            for o in range(0, total, len(blk)):
                f.seek(o)
                f.write(blk[:min(len(blk), total - o)])
        _write_headers(f, e64, loads, offsets, ehsize, phentsize, shentsize, phnum, ph_off, sh_off,
                       use_sh, pn_xnum, note, note_off)
        _write_loads(f, placed, offsets, layout, content, ps, sparse)
    return Built(path, total, loads, ps, elfclass, offsets)


def _write_headers(f, e64: bool, loads, offsets, ehsize: int, phentsize: int, shentsize: int, phnum: int,
                   ph_off: int, sh_off: int, use_sh: bool, pn_xnum: bool, note: bytes, note_off: int) -> None:
    """The ELF header, section header 0 (qemu style, PN_XNUM), the program headers and the notes."""
    # ELF header
    ident = b"\x7fELF" + bytes([2 if e64 else 1, 1, 1, 0]) + bytes(8)
    e_phnum = PN_XNUM if pn_xnum else phnum
    e_shnum = 1 if use_sh else 0
    machine = EM_X86_64 if e64 else EM_386
    if e64:
        eh = ident + struct.pack("<HHIQQQIHHHHHH", 4, machine, 1, 0, ph_off, sh_off, 0, ehsize,
                                 phentsize, e_phnum, shentsize, e_shnum, 0)
    else:
        eh = ident + struct.pack("<HHIIIIIHHHHHH", 4, machine, 1, 0, ph_off, sh_off, 0, ehsize,
                                 phentsize, e_phnum, shentsize, e_shnum, 0)
    f.seek(0)
    f.write(eh)
    if use_sh:   # section header 0: sh_info holds the real phnum under PN_XNUM
        info = phnum if pn_xnum else 0
        if e64:
            sh = struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, info, 0, 0)
        else:
            sh = struct.pack("<IIIIIIIIII", 0, 0, 0, 0, 0, 0, 0, info, 0, 0)
        f.seek(sh_off)
        f.write(sh)
    # program headers
    phs = [(PT_NOTE, note_off, 0, 0, len(note), len(note), 0, 0)]
    for ld, off in zip(loads, offsets):
        phs.append((PT_LOAD, off, ld.vaddr, ld.paddr, ld.filesz, ld.memsz, 7, 0))
    f.seek(ph_off)
    for t, off, va, pa, fs, ms, fl, al in phs:
        if e64:
            f.write(struct.pack("<IIQQQQQQ", t, fl, off, va, pa, fs, ms, al))
        else:
            f.write(struct.pack("<IIIIIIII", t, off, va & 0xFFFFFFFF, pa, fs, ms, fl, al))
    f.seek(note_off)
    f.write(note)


def _write_loads(f, placed, offsets, layout: str, content, ps: int, sparse: bool) -> None:
    """Each PT_LOAD's pages (and a kernel layout's junk beyond p_filesz), in pieces."""
    # load data, in pieces so that a large source never sits in memory
    for (fstart, pstart, n, ld), off in zip(placed, offsets):
        junk_from = off - fstart + ld.filesz if layout == "kernel" else n
        flip = (off - fstart, off - fstart + ld.filesz) if ld.differ else (0, 0)
        for a in range(0, n, PIECE):
            b = min(n, a + PIECE)
            if content is None and b <= junk_from and flip[1] <= a:
                continue          # all zero: leave the hole
            data = bytearray(b - a) if content is None else \
                bytearray(phys_bytes(pstart + a, b - a, ps, content))
            # bytes beyond p_filesz inside a "kernel" load's pages are not
            # memory the core describes: junk, so the residue must keep them
            if junk_from < b:
                j = max(junk_from, a)
                data[j - a:] = bytes([0xA5]) * (b - j)
            x, y = max(flip[0], a), min(flip[1], b)
            if x < y:
                data[x - a:y - a] = bytes(v ^ 0xFF for v in data[x - a:y - a])
            # junk-filled layouts need their zero pages written, not left as holes
            _write_sparse(f, fstart + a, data, ps if sparse and layout != "gaps" else 0)


def _write_sparse(f, offset: int, data, page_size: int) -> None:
    """Write data, skipping all-zero pages (holes) when page_size is set."""
    if not page_size:
        f.seek(offset)
        f.write(data)
        return
    zero = bytes(page_size)
    mv = memoryview(data)
    run_start = None
    for a in range(0, len(mv) + page_size, page_size):
        chunk = mv[a:a + page_size]
        is_data = len(chunk) > 0 and chunk.tobytes() != zero[:len(chunk)]
        if is_data and run_start is None:
            run_start = a
        elif not is_data and run_start is not None:
            f.seek(offset + run_start)
            f.write(mv[run_start:a])
            run_start = None


def expected_page(built: Built, pfn: int, content=page_content) -> bytes:
    """What a reader must return for physical page ``pfn`` (first load wins, zeros elsewhere)."""
    ps = built.page_size
    out = bytearray(ps)
    lo = pfn * ps
    free = [(lo, lo + ps)]          # bytes of the page no earlier load has supplied
    for ld in built.loads:
        a0, b0 = ld.paddr, ld.paddr + ld.filesz
        rest = []
        for a, b in free:
            x, y = max(a, a0), min(b, b0)
            if x >= y:
                rest.append((a, b))
                continue
            data = phys_bytes(x, y - x, ps, content)
            if ld.differ:
                data = bytes(v ^ 0xFF for v in data)
            out[x - lo:y - lo] = data
            rest += [r for r in ((a, x), (y, b)) if r[0] < r[1]]
        free = rest
    return bytes(out)


MIB = 1 << 20
PIECE = 16 * MIB


def layouts() -> dict[str, dict]:
    """Named test layouts: keyword arguments for ``build`` (small: a few MiB each)."""
    ram = [Load(0x1000, 0x9E000), Load(0x100000, 3 * MIB), Load(0x1000000, 2 * MIB + 0x800)]
    kernel_text = Load(0x200000, MIB + 0x345, vaddr=0xFFFFFFFF81000000)
    return {
        "simple": dict(loads=[Load(0, 4 * MIB)]),
        "kernel": dict(loads=[kernel_text] + ram),
        "kernel-after": dict(loads=ram + [kernel_text]),
        "unaligned": dict(loads=[Load(0x1234, 0x20000 - 0x1234), Load(0x40800, 0x3000, 0x9000),
                                 Load(0x80000, 0, 0x4000), Load(0x90010, 0x1fff0)]),
        "same-page": dict(loads=[Load(0x100000, 0x800), Load(0x100800, 0x800), Load(0x101000, 0x2000)]),
        "packed": dict(loads=[kernel_text] + ram, layout="packed"),
        "gaps": dict(loads=[Load(0x1234, 0x10000)] + ram[:2], layout="gaps"),
        "qemu": dict(loads=ram, qemu_style=True, layout="packed"),
        "pn_xnum": dict(loads=ram, pn_xnum=True),
        "elf32": dict(loads=[kernel_text] + ram, elfclass=32),
        "elf32-pn_xnum": dict(loads=ram, elfclass=32, pn_xnum=True, layout="gaps"),
        "differing-overlap": dict(loads=ram + [Load(0x200000, 0x10000, differ=True)]),
        "holes": dict(loads=[Load(0, 0x10000), Load(64 * MIB, 0x10000), Load(1 << 32, 0x10000)]),
    }


def build_aliased(path: str, size: int, pool: bytes, page_size: int = 4096) -> Built:
    """An ELF core of ``size`` bytes of RAM whose PT_LOADs all show one ``pool``.

    Every load maps the same file range at a different physical address, so a
    10 GiB machine is a file of ``len(pool)`` bytes: benchmarks read real
    pages through the real reader without needing the disk space or the page
    cache of the whole size.  Per-block compression cannot see the repeats.
    """
    n = -(-size // len(pool))
    loads = [Load(i * len(pool), min(len(pool), size - i * len(pool))) for i in range(n)]
    note = notes_blob(1, page_size)
    ph_off, phentsize = 64, 56
    note_off = -(-(ph_off + (n + 1) * phentsize) // page_size) * page_size
    data_off = -(-(note_off + len(note)) // page_size) * page_size
    with open(path, "wb") as f:
        ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
        f.write(ident + struct.pack("<HHIQQQIHHHHHH", 4, EM_X86_64, 1, 0, ph_off, 0, 0, 64,
                                    phentsize, n + 1, 64, 0, 0))
        f.seek(ph_off)
        f.write(struct.pack("<IIQQQQQQ", PT_NOTE, 0, note_off, 0, 0, len(note), len(note), 0))
        for ld in loads:
            f.write(struct.pack("<IIQQQQQQ", PT_LOAD, 7, data_off, ld.vaddr, ld.paddr, ld.filesz,
                                ld.memsz, 0))
        f.seek(note_off)
        f.write(note)
        f.seek(data_off)
        f.write(pool)
    return Built(path, data_off + len(pool), loads, page_size, 64, [data_off] * n)


def demo_loads(size: int) -> list[Load]:
    """A machine-like layout of ``size`` bytes of RAM: low memory, a hole, RAM, kernel text."""
    low = Load(0x1000, 0x9E000)
    high = Load(0x100000, max(size - 0x100000, 0x100000))
    text = Load(0x1000000, min(16 * MIB + 0x345, high.filesz // 2), vaddr=0xFFFFFFFF81000000)
    return [text, low, high]


def main(argv=None) -> int:
    """``python -m stripedump.tools.synth OUT --size 512M``: write a synthetic vmcore."""
    import argparse
    from ..runtime.units import parse_size
    ap = argparse.ArgumentParser(prog="python -m stripedump.tools.synth",
                                 description="Write a synthetic ELF vmcore (machine-like layout).")
    ap.add_argument("out")
    ap.add_argument("--size", default="256M", help="RAM size of the synthetic machine (default 256M)")
    ap.add_argument("--zero-share", type=int, default=4, help="zero pages per 10 pages (default 4)")
    a = ap.parse_args(argv)
    size = parse_size(a.size)
    b = build(a.out, demo_loads(size), content=lambda pfn, ps: page_content(pfn, ps, a.zero_share))
    print(f"wrote {a.out}: {b.size} bytes, {len(b.loads)} PT_LOADs (one overlapping kernel text)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
