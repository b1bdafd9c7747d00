#!/usr/bin/env python3
"""Rewrite an ELF vmcore into the layout the kernel's /proc/vmcore has.

    python3 bench/normalize_vmcore.py SRC DST

Why: QEMU 7.2's dump-guest-memory (the real-kernel fixture,
tests/fixtures/make-real-vmcore.sh) puts the section header table at offset
64 and the program headers after it, and writes e_ehsize 8.  Debian's
makedumpfile 1.7.2 assumes the program headers sit at 64 and fails with
"Can't get the number of PT_LOAD".  A capture kernel never hands out that
layout: /proc/vmcore (fs/proc/vmcore.c) is

    ELF header             e_phoff = e_ehsize = 64 (52 for ELF32), no sections
    program headers        one PT_NOTE (all notes merged, each area trimmed to
                           its real notes), then the PT_LOADs in their order
    notes
    zero padding           to a page boundary
    the loads' data        each load as the page-rounded physical range
                           [rounddown(paddr), roundup(paddr + memsz)), in
                           header order; p_offset points at paddr inside it,
                           p_filesz = p_memsz

so benchmarking both tools on that layout is benchmarking them on what they
read in a real capture kernel.  Bytes the source does not hold (p_memsz beyond
p_filesz, the rounding of an unaligned load) are written as zeros.  The output
is fully allocated (no holes), like /proc/vmcore, so no tool gets a sparse
file's free zero pages.

Standard library only, independent of stripedump.  ELF32 and ELF64, either
byte order; PN_XNUM sources are read (the count is in section 0's sh_info),
but the output must have fewer than 0xffff program headers.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys

PT_LOAD, PT_NOTE = 1, 4
PN_XNUM = 0xFFFF
COPY_BLOCK = 8 << 20


class NormalizeError(Exception):
    pass


def _layout(elfclass: int, endian: str):
    """(ehdr struct, phdr struct, field order of phdr) for the ELF class."""
    if elfclass == 2:   # ELF64
        ehdr = struct.Struct(endian + "16sHHIQQQIHHHHHH")
        phdr = struct.Struct(endian + "IIQQQQQQ")    # type flags offset vaddr paddr filesz memsz align
    else:
        ehdr = struct.Struct(endian + "16sHHIIIIIHHHHHH")
        phdr = struct.Struct(endian + "IIIIIIII")    # type offset vaddr paddr filesz memsz flags align
    return ehdr, phdr


def _unpack_phdr(elfclass, phdr, buf, off):
    v = phdr.unpack_from(buf, off)
    if elfclass == 2:
        p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align = v
    else:
        p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags, p_align = v
    return dict(type=p_type, flags=p_flags, offset=p_offset, vaddr=p_vaddr, paddr=p_paddr,
                filesz=p_filesz, memsz=p_memsz, align=p_align)


def _pack_phdr(elfclass, phdr, p):
    if elfclass == 2:
        return phdr.pack(p["type"], p["flags"], p["offset"], p["vaddr"], p["paddr"],
                         p["filesz"], p["memsz"], p["align"])
    return phdr.pack(p["type"], p["offset"], p["vaddr"], p["paddr"], p["filesz"],
                     p["memsz"], p["flags"], p["align"])


def _real_notes_size(data: bytes, endian: str) -> int:
    """Length of the well-formed notes at the start of DATA (as the kernel's
    update_note_header_size_elf64 counts: up to an all-zero header)."""
    pos, hdr = 0, struct.Struct(endian + "III")
    while pos + 12 <= len(data):
        namesz, descsz, ntype = hdr.unpack_from(data, pos)
        if namesz == 0 and descsz == 0 and ntype == 0:
            break
        end = pos + 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
        if end > len(data):
            break
        pos = end
    return pos


def read_headers(f, size: int):
    """Parse SRC's headers: (elfclass, endian, ehdr fields, phdrs list)."""
    f.seek(0)
    ident = f.read(16)
    if len(ident) < 16 or ident[:4] != b"\x7fELF":
        raise NormalizeError("not an ELF file")
    if ident[4] not in (1, 2) or ident[5] not in (1, 2):
        raise NormalizeError(f"bad ELF class/data bytes {ident[4]}/{ident[5]}")
    elfclass, endian = ident[4], "<" if ident[5] == 1 else ">"
    ehdr, phdr = _layout(elfclass, endian)
    f.seek(0)
    raw = f.read(ehdr.size)
    if len(raw) < ehdr.size:
        raise NormalizeError("truncated ELF header")
    (_, e_type, e_machine, e_version, e_entry, e_phoff, e_shoff, e_flags, _ehsize,
     e_phentsize, e_phnum, e_shentsize, e_shnum, _shstrndx) = ehdr.unpack(raw)
    if e_type != 4:
        raise NormalizeError(f"not a core file (e_type {e_type})")
    if e_phentsize < phdr.size:
        raise NormalizeError(f"e_phentsize {e_phentsize} < {phdr.size}")
    if e_phnum == PN_XNUM:
        # the real count is sh_info of section header 0
        shinfo_off = e_shoff + (44 if elfclass == 2 else 28)
        if e_shoff == 0 or shinfo_off + 4 > size:
            raise NormalizeError("PN_XNUM without a section header 0")
        f.seek(shinfo_off)
        e_phnum, = struct.unpack(endian + "I", f.read(4))
    if e_phoff + e_phnum * e_phentsize > size:
        raise NormalizeError("program header table runs past the end of the file")
    f.seek(e_phoff)
    table = f.read(e_phnum * e_phentsize)
    phdrs = [_unpack_phdr(elfclass, phdr, table, i * e_phentsize) for i in range(e_phnum)]
    for i, p in enumerate(phdrs):
        if p["type"] in (PT_LOAD, PT_NOTE) and p["offset"] + p["filesz"] > size:
            raise NormalizeError(f"segment {i} runs past the end of the file")
        if p["type"] == PT_LOAD and p["filesz"] > p["memsz"]:
            raise NormalizeError(f"segment {i}: p_filesz > p_memsz")
    fields = dict(ident=ident, machine=e_machine, version=e_version, entry=e_entry, flags=e_flags)
    return elfclass, endian, fields, phdrs


def normalize(src: str, dst: str, page_size: int = 4096, log=None) -> dict:
    """Write DST, the /proc/vmcore layout of SRC (see the module docstring).

    DST is written to DST.tmp and renamed; returns a small report."""
    size = os.stat(src).st_size
    with open(src, "rb") as f:
        elfclass, endian, h, phdrs = read_headers(f, size)
        ehdr, phdr = _layout(elfclass, endian)
        notes = b""
        for p in phdrs:
            if p["type"] == PT_NOTE:
                f.seek(p["offset"])
                area = f.read(p["filesz"])
                notes += area[:_real_notes_size(area, endian)]
        loads = [dict(p) for p in phdrs if p["type"] == PT_LOAD]
        if not loads:
            raise NormalizeError("no PT_LOAD segments")
        phnum = 1 + len(loads)
        if phnum >= PN_XNUM:
            raise NormalizeError(f"{phnum} program headers need PN_XNUM; not supported")
        hdr_end = ehdr.size + phnum * phdr.size
        notes_off = hdr_end
        data_off = -(-(notes_off + len(notes)) // page_size) * page_size
        spans = []              # (source load, span start in file, span length)
        off = data_off
        for p in loads:
            start = p["paddr"] // page_size * page_size
            end = -(-(p["paddr"] + p["memsz"]) // page_size) * page_size
            spans.append((dict(p), off, end - start, p["paddr"] - start))
            p["offset"] = off + (p["paddr"] - start)
            p["filesz"] = p["memsz"]
            off += end - start
        total = off
        note_ph = dict(type=PT_NOTE, flags=0, offset=notes_off, vaddr=0, paddr=0,
                       filesz=len(notes), memsz=len(notes), align=0)
        ident = h["ident"]
        header = ehdr.pack(ident, 4, h["machine"], h["version"], h["entry"], ehdr.size, 0,
                           h["flags"], ehdr.size, phdr.size, phnum, 0, 0, 0)
        header += _pack_phdr(elfclass, phdr, note_ph)
        header += b"".join(_pack_phdr(elfclass, phdr, p) for p in loads)
        assert len(header) == hdr_end
        tmp = dst + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            with os.fdopen(fd, "wb", buffering=0) as out:
                _write_all(out, header + notes + bytes(data_off - hdr_end - len(notes)))
                buf = bytearray(COPY_BLOCK)
                zeros = bytes(COPY_BLOCK)
                for src_ph, span_off, span_len, lead in spans:
                    assert out.tell() == span_off
                    _write_zeros(out, lead, zeros)
                    f.seek(src_ph["offset"])
                    left = src_ph["filesz"]
                    while left:
                        n = f.readinto(memoryview(buf)[:min(left, COPY_BLOCK)])
                        if not n:
                            raise NormalizeError("source shrank while being copied")
                        _write_all(out, memoryview(buf)[:n])
                        left -= n
                    _write_zeros(out, span_len - lead - src_ph["filesz"], zeros)
                assert out.tell() == total
                os.fsync(out.fileno())
            os.rename(tmp, dst)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    return dict(source=src, source_bytes=size, output=dst, output_bytes=total,
                elfclass=64 if elfclass == 2 else 32, loads=len(loads), notes_bytes=len(notes),
                data_offset=data_off)


def _write_all(out, data) -> None:
    view = memoryview(data)
    while view:
        n = out.write(view)
        view = view[n:]


def _write_zeros(out, n: int, zeros: bytes) -> None:
    while n > 0:
        k = min(n, len(zeros))
        _write_all(out, zeros[:k])
        n -= k


def compare_loads(src: str, dst: str) -> None:
    """Check that DST's PT_LOADs hold SRC's bytes (same paddr, same data) and
    that DST has the /proc/vmcore header layout; raise NormalizeError if not."""
    with open(src, "rb") as fs, open(dst, "rb") as fd:
        _, _, _, sp = read_headers(fs, os.fstat(fs.fileno()).st_size)
        cls, endian, _, dp = read_headers(fd, os.fstat(fd.fileno()).st_size)
        fd.seek(0)
        raw = fd.read(64)
        ehdr, phdr = _layout(cls, endian)
        e = ehdr.unpack(raw[:ehdr.size])
        if (e[5], e[6], e[8], e[9], e[11], e[12]) != (ehdr.size, 0, ehdr.size, phdr.size, 0, 0):
            raise NormalizeError("output header is not in the /proc/vmcore layout")
        if not dp or dp[0]["type"] != PT_NOTE or sum(p["type"] == PT_NOTE for p in dp) != 1:
            raise NormalizeError("output must have exactly one PT_NOTE, first")
        sl = [p for p in sp if p["type"] == PT_LOAD]
        dl = [p for p in dp if p["type"] == PT_LOAD]
        if [(p["paddr"], p["memsz"]) for p in sl] != [(p["paddr"], p["memsz"]) for p in dl]:
            raise NormalizeError("PT_LOAD ranges differ")
        for a, b in zip(sl, dl):
            fs.seek(a["offset"])
            fd.seek(b["offset"])
            left = a["filesz"]
            while left:
                n = min(left, COPY_BLOCK)
                if fs.read(n) != fd.read(n):
                    raise NormalizeError(f"PT_LOAD at paddr {a['paddr']:#x}: data differs")
                left -= n
            tail = b["filesz"] - a["filesz"]
            if tail and fd.read(tail) != bytes(tail):
                raise NormalizeError(f"PT_LOAD at paddr {a['paddr']:#x}: tail not zero")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--page-size", type=int, default=4096)
    ap.add_argument("--check", action="store_true", help="compare every PT_LOAD byte afterwards")
    a = ap.parse_args(argv)
    try:
        if os.path.exists(a.dst) and os.path.samefile(a.src, a.dst):
            raise NormalizeError("SRC and DST are the same file")
        rep = normalize(a.src, a.dst, a.page_size)
        if a.check:
            compare_loads(a.src, a.dst)
    except (NormalizeError, OSError) as e:
        print(f"normalize_vmcore: error: {e}", file=sys.stderr)
        return 1
    print(f"normalize_vmcore: {a.dst}: {rep['output_bytes']} bytes, ELF{rep['elfclass']}, "
          f"{rep['loads']} PT_LOAD, {rep['notes_bytes']} bytes of notes, data at {rep['data_offset']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
