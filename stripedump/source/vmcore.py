"""The ELF vmcore as a Source: segments, merged PFN ranges, page reads.

Why this shape:
* A dump is organised by physical page frame (PFN), not by file offset: the
  kernel-text PT_LOAD repeats part of a RAM PT_LOAD, so summing PT_LOAD sizes
  would save memory twice, and kdump-compressed output needs one entry per
  PFN.  ``pfn_ranges`` are the merged physical ranges, page-rounded like the
  kernel's ``[rounddown(paddr), roundup(paddr + memsz))``.
* Page content is what makedumpfile's ``readpage_elf`` reads: for each
  physical byte the first PT_LOAD (in header order) whose file data covers it,
  zeros where no file data does (``p_memsz > p_filesz`` tails, holes inside a
  page).  ``phys_map`` holds those owner intervals, sorted and disjoint.
* The ELF file must come back byte for byte, so every file byte that cannot be
  re-created by rendering the PT_LOADs from pages is a ``residue`` range,
  saved verbatim: the headers and notes, padding, section headers, partial
  pages before or after a load's data, and any shadowed copy of a physical
  range whose bytes differ from the owner's (for /proc/vmcore they never do;
  ``residue`` compares them once at plan time).
* Reads go through mmap windows (the talk's key fix).  Windows, not one map of
  the whole file: /proc/vmcore's mmap populates page tables for the whole
  range at once, and 8 bytes of page table per 4 KiB page is 4 GiB for a
  2 TiB machine, more than a capture kernel has.  makedumpfile maps 4 MiB
  windows for the same reason.  When mmap is refused, pread() is used.
* The ELF and program headers are parsed with struct (ELF32/64, both byte
  orders, PN_XNUM) behind our own bounds checks; any failure is a
  VmcoreFormatError with one line of text, never a traceback.  (pyelftools did
  this until issue 12: importing it was a quarter of a small dump's time; the
  tests compare both parses.)
"""

from __future__ import annotations

import bisect
import errno
import mmap
import os
import stat
import struct

from ..errors import SourceError, VmcoreFormatError
from ..runtime.fileio import pread_exact
from ..runtime.plain import Frozen, Plain

PT_LOAD, PT_NOTE = 1, 4
ET_CORE = 4
NT_PRSTATUS = 1
DEFAULT_PAGE_SIZE = 4096
WINDOW_ALIGN = mmap.ALLOCATIONGRANULARITY
COMPARE_BLOCK = 1 << 20
MAX_SHADOW_FACTOR = 4       # overlapping PT_LOAD bytes allowed, as a multiple of the file size
# fault a whole window in with one call: the worker reads every page of it anyway
MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
# Windows are read through one mapping of this many source bytes per process, mapped once for
# the ~64 chunks it holds, not one mapping per window: mmap + munmap per 1 MiB window (with or
# without MAP_POPULATE) cost a worker more than the zero test of the window itself (issue 12).
ARENA_BYTES = 64 << 20
# A fault maps more than its page: fault-around (64 KiB) and, on recent kernels, the whole large
# folio of the page cache it falls in (up to 2 MiB): closing a window drops this much on either side
# as well (over 0.9 MiB stayed mapped after a close with a 64 KiB margin on the filled fixture).
DROP_MARGIN = 2 << 20


class Segment(Frozen):
    __slots__ = ("index", "type", "offset", "vaddr", "paddr", "filesz", "memsz", "flags", "align")

    def __init__(self, index: int, type: int, offset: int, vaddr: int, paddr: int, filesz: int, memsz: int,
                 flags: int, align: int):
        for k, v in zip(self.__slots__, (index, type, offset, vaddr, paddr, filesz, memsz, flags, align)):
            object.__setattr__(self, k, v)

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__}


class PhysExtent(Frozen):
    """Physical bytes [start, end) are file bytes [offset, offset + end - start)."""
    __slots__ = ("start", "end", "offset")

    def __init__(self, start: int, end: int, offset: int):
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)
        object.__setattr__(self, "offset", offset)


class Note(Plain):
    __slots__ = ("name", "type", "desc", "desc_offset")

    def __init__(self, name: bytes, type: int, desc: bytes,
                 desc_offset: int = 0):   # where desc starts in the note area (kdump output points at it)
        self.name = name
        self.type = type
        self.desc = desc
        self.desc_offset = desc_offset


class ElfInfo(Plain):
    """Everything parsed from the headers; no page data."""
    __slots__ = ("size", "elfclass", "endian", "machine", "page_size", "loads", "note_segments", "notes",
                 "vmcoreinfo", "vmcoreinfo_raw", "nr_cpus")

    def __init__(self, size: int,
                 elfclass: int,              # 32 or 64
                 endian: str,                # '<' or '>'
                 machine: int,               # e_machine
                 page_size: int,
                 loads: list[Segment],
                 note_segments: list[Segment],
                 notes: bytes,               # PT_NOTE contents, concatenated in header order
                 vmcoreinfo: dict[str, str] | None = None,
                 vmcoreinfo_raw: bytes = b"",
                 nr_cpus: int = 0):
        self.size = size
        self.elfclass = elfclass
        self.endian = endian
        self.machine = machine
        self.page_size = page_size
        self.loads = loads
        self.note_segments = note_segments
        self.notes = notes
        self.vmcoreinfo = {} if vmcoreinfo is None else vmcoreinfo
        self.vmcoreinfo_raw = vmcoreinfo_raw
        self.nr_cpus = nr_cpus


def parse_notes(data: bytes, endian: str) -> list[Note]:
    """Walk an ELF note area; stop quietly at the first malformed entry."""
    notes, pos, hdr = [], 0, struct.Struct(endian + "III")
    while pos + 12 <= len(data):
        namesz, descsz, ntype = hdr.unpack_from(data, pos)
        if namesz == 0 and descsz == 0 and ntype == 0:
            break
        name_end = pos + 12 + namesz
        desc_start = pos + 12 + ((namesz + 3) & ~3)
        desc_end = desc_start + descsz
        if desc_end > len(data) or name_end > len(data):
            break
        notes.append(Note(data[pos + 12:name_end].rstrip(b"\0"), ntype, data[desc_start:desc_end],
                          desc_start))
        pos = desc_start + ((descsz + 3) & ~3)
    return notes


def parse_vmcoreinfo(text: bytes) -> dict[str, str]:
    out = {}
    for line in text.decode("ascii", "replace").splitlines():
        key, sep, val = line.partition("=")
        if sep:
            out[key.strip()] = val.strip()
    return out


# e_machine as pyelftools names it (the manifest and kdump.py use these names); any other
# number is looked up in pyelftools' table, imported only then (tests/test_fixedcost.py checks these)
E_MACHINE = {3: "EM_386", 8: "EM_MIPS", 20: "EM_PPC", 21: "EM_PPC64", 22: "EM_S390", 40: "EM_ARM",
             62: "EM_X86_64", 183: "EM_AARCH64", 243: "EM_RISCV", 258: "EM_LOONGARCH"}
E_TYPE = {0: "ET_NONE", 1: "ET_REL", 2: "ET_EXEC", 3: "ET_DYN", 4: "ET_CORE"}
PN_XNUM = 0xFFFF
# (ELF header after e_ident, program header, offset of sh_info in a section header) per class
_ELF_LAYOUT = {1: ("HHIIIIIHHHHHH", "IIIIIIII", 28), 2: ("HHIQQQIHHHHHH", "IIQQQQQQ", 44)}


def machine_name(em: int):
    """pyelftools' name of e_machine ``em`` (its number when it has none)."""
    if em in E_MACHINE:
        return E_MACHINE[em]
    try:
        from elftools.elf.enums import ENUM_E_MACHINE
    except ImportError:
        return em
    return next((k for k, v in ENUM_E_MACHINE.items() if v == em and k != "_default_"), em)


def _parse_elf(f, size: int) -> ElfInfo:
    elfclass, endian, machine, segs = _read_headers(f, size)
    loads, note_segs = _check_segments(segs, size, elfclass)
    if sum(s.filesz for s in note_segs) > 64 << 20:
        raise VmcoreFormatError("PT_NOTE segments are implausibly large (> 64 MiB)")
    note_bytes = b""
    for s in note_segs:
        f.seek(s.offset)
        note_bytes += f.read(s.filesz)
    info = ElfInfo(size, elfclass, endian, machine, DEFAULT_PAGE_SIZE, loads, note_segs, note_bytes)
    _read_notes(info)
    return info


def _read_headers(f, size: int) -> tuple[int, str, str, list[Segment]]:
    """(ELF class, byte order, machine, every program header): the ELF and program headers, checked."""
    if size < 16:
        raise VmcoreFormatError(f"file is too small to be an ELF core ({size} bytes)")
    f.seek(0)
    ident = f.read(16)
    if ident[:4] != b"\x7fELF":
        raise VmcoreFormatError("not an ELF file (bad magic); expected an ELF core such as /proc/vmcore")
    if ident[4] not in (1, 2) or ident[5] not in (1, 2):
        raise VmcoreFormatError(f"unsupported ELF class {ident[4]} or data encoding {ident[5]}")
    # the ELF and program headers read with struct (importing pyelftools was a quarter of
    # a small dump's time: issue 12); synth.py writes them with struct independently, and
    # tests/test_fixedcost.py compares this parse with pyelftools' on every layout
    elfclass, endian = 32 * ident[4], "<" if ident[5] == 1 else ">"
    ehdr, phdr, sh_info_at = _ELF_LAYOUT[ident[4]]
    ehdr, phdr = struct.Struct(endian + ehdr), struct.Struct(endian + phdr)

    def read(offset: int, n: int, what: str) -> bytes:
        f.seek(offset)
        data = f.read(n)
        if len(data) != n:
            raise VmcoreFormatError(f"corrupt ELF header: {what} at offset {offset} is cut off")
        return data
    (e_type, e_machine, _, _, phoff, shoff, _, _, phentsize, phnum, _, _, _) = \
        ehdr.unpack(read(16, ehdr.size, "the ELF header"))
    if e_type != ET_CORE:
        raise VmcoreFormatError(f"ELF file is not a core dump (e_type {E_TYPE.get(e_type, e_type)})")
    if phnum == PN_XNUM:      # more program headers than e_phnum holds: section 0's sh_info has the count
        (phnum,) = struct.unpack(endian + "I", read(shoff + sh_info_at, 4, "section header 0"))
    want = 56 if elfclass == 64 else 32
    if phnum == 0:
        raise VmcoreFormatError("ELF core has no program headers")
    if phentsize != want:
        raise VmcoreFormatError(f"e_phentsize is {phentsize}, expected {want}")
    if phoff + phnum * phentsize > size:
        raise VmcoreFormatError(f"program headers ({phnum} at offset {phoff}) extend past end of file")
    table = read(phoff, phnum * phentsize, "the program headers")
    segs = []
    for i, h in enumerate(phdr.iter_unpack(table)):
        if elfclass == 64:
            ptype, flags, offset, vaddr, paddr, filesz, memsz, align = h
        else:
            ptype, offset, vaddr, paddr, filesz, memsz, flags, align = h
        segs.append(Segment(i, ptype if ptype in (PT_LOAD, PT_NOTE) else -1, offset, vaddr, paddr, filesz,
                            memsz, flags, align))
    return elfclass, endian, machine_name(e_machine), segs


def _check_segments(segs: list[Segment], size: int, elfclass: int) -> tuple[list[Segment], list[Segment]]:
    """(PT_LOADs with memory, PT_NOTEs), each within the file and the address space."""
    limit = 1 << elfclass
    loads, note_segs = [], []
    for s in segs:
        if s.type not in (PT_LOAD, PT_NOTE):
            continue
        if s.offset + s.filesz > size:
            raise VmcoreFormatError(f"segment {s.index} (file offset {s.offset:#x}, {s.filesz} bytes) "
                                    f"extends past end of file ({size} bytes)")
        if s.type == PT_NOTE:
            note_segs.append(s)
            continue
        if s.filesz > s.memsz:
            raise VmcoreFormatError(f"PT_LOAD {s.index} has p_filesz {s.filesz:#x} > p_memsz {s.memsz:#x}")
        if s.paddr + s.memsz > limit:
            raise VmcoreFormatError(f"PT_LOAD {s.index} physical range overflows the address space")
        if s.memsz:
            loads.append(s)
    if not loads:
        raise VmcoreFormatError("ELF core has no PT_LOAD segment with memory")
    return loads, note_segs


def _read_notes(info: ElfInfo) -> None:
    """VMCOREINFO, the CPU count and the page size, from the notes."""
    for n in parse_notes(info.notes, info.endian):
        if n.name == b"VMCOREINFO" and not info.vmcoreinfo_raw:
            info.vmcoreinfo_raw = n.desc
            info.vmcoreinfo = parse_vmcoreinfo(n.desc)
        elif n.name == b"CORE" and n.type == NT_PRSTATUS:
            info.nr_cpus += 1
    ps = info.vmcoreinfo.get("PAGESIZE")
    if ps is not None:
        try:
            ps = int(ps)
        except ValueError:
            ps = 0
        if ps < 4096 or ps > (1 << 20) or ps & (ps - 1):
            raise VmcoreFormatError(f"VMCOREINFO PAGESIZE={info.vmcoreinfo['PAGESIZE']!r} is not a "
                                    "power of two between 4 KiB and 1 MiB")
        info.page_size = ps


def build_phys_map(loads: list[Segment]) -> tuple[list[PhysExtent], list[tuple[PhysExtent, PhysExtent]]]:
    """Owner extents (first PT_LOAD wins, like makedumpfile) and shadowed pairs.

    Returns (owners sorted by start, shadows) where each shadow pair is
    (the shadowed copy, the owner extent covering the same physical bytes).
    """
    starts: list[int] = []
    owners: list[PhysExtent] = []
    shadows = []
    for s in loads:
        lo, hi = s.paddr, s.paddr + s.filesz
        if lo == hi:
            continue
        new = []
        cur = lo
        i = bisect.bisect_right(starts, lo) - 1
        if i < 0:
            i = 0
        while cur < hi:
            while i < len(owners) and owners[i].end <= cur:
                i += 1
            if i >= len(owners) or owners[i].start >= hi:
                new.append(PhysExtent(cur, hi, s.offset + cur - lo))
                break
            o = owners[i]
            if o.start > cur:
                new.append(PhysExtent(cur, o.start, s.offset + cur - lo))
                cur = o.start
            end = min(o.end, hi)
            shadows.append((PhysExtent(cur, end, s.offset + cur - s.paddr),
                            PhysExtent(cur, end, o.offset + cur - o.start)))
            cur = end
        for e in new:
            j = bisect.bisect_left(starts, e.start)
            starts.insert(j, e.start)
            owners.insert(j, e)
    return owners, shadows


def merge_pfn_ranges(loads: list[Segment], page_size: int) -> list[tuple[int, int]]:
    """The merged physical page ranges, ``[rounddown(paddr), roundup(paddr+memsz))``."""
    spans = sorted((s.paddr // page_size, -(-(s.paddr + s.memsz) // page_size)) for s in loads)
    merged: list[list[int]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def subtract_ranges(whole: tuple[int, int], cuts: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """[whole) minus the union of cuts, as sorted disjoint ranges."""
    out, cur = [], whole[0]
    for a, b in sorted(cuts):
        if b <= cur:
            continue
        if a > cur:
            out.append((cur, min(a, whole[1])))
        cur = max(cur, b)
        if cur >= whole[1]:
            break
    if cur < whole[1]:
        out.append((cur, whole[1]))
    return [(a, b) for a, b in out if a < b]


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


class Window:
    """A read-only view of source bytes: ``obj[base:base+length]``.

    ``obj`` supports ``find`` (the fast zero test) and the buffer protocol.
    Close it (or use ``with``) before the next window of the same Source.
    """
    __slots__ = ("obj", "base", "length", "_mm")

    def __init__(self, obj, base: int, length: int, mm=None):
        self.obj, self.base, self.length, self._mm = obj, base, length, mm

    def view(self) -> memoryview:
        return memoryview(self.obj)[self.base:self.base + self.length]

    def close(self) -> None:
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:   # a view is still alive; the GC will unmap it
                pass
            self._mm = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Drop:
    """Closing a window of an arena drops its pages from this process's page tables
    (MADV_DONTNEED; the page cache keeps them), with DROP_MARGIN on either side:
    only open windows count in a worker's memory."""
    __slots__ = ("src", "mm", "start", "end")

    def __init__(self, src, mm, base: int, length: int):
        a = max(base - DROP_MARGIN, 0)
        self.src, self.mm = src, mm
        self.start, self.end = a - a % mmap.PAGESIZE, min(base + length + DROP_MARGIN, len(mm))
        src._arena_open += 1

    def close(self) -> None:
        self.src._arena_open -= 1
        try:
            self.mm.madvise(mmap.MADV_DONTNEED, self.start, self.end - self.start)
        except (OSError, ValueError):
            pass        # a mapping that cannot drop pages (a PFN map of /proc/vmcore) keeps them


class Source:
    """An opened vmcore: header facts plus page reads.

    One Source per process (workers open their own after fork).
    ``use_mmap=False`` forces pread(), as when mmap is refused.
    """

    def __init__(self, path: str, use_mmap: bool = True):
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            raise SourceError(f"cannot open source {path}: {e.strerror}") from None
        try:
            st = os.fstat(self.fd)
            if stat.S_ISDIR(st.st_mode):
                raise SourceError(f"source {path} is a directory")
            self.st = st
            size = st.st_size
            if stat.S_ISBLK(st.st_mode):
                size = os.lseek(self.fd, 0, os.SEEK_END)
            with os.fdopen(os.dup(self.fd), "rb") as f:
                self.info = _parse_elf(f, size)
        except BaseException:
            os.close(self.fd)
            raise
        self.size = size
        self.page_size = self.info.page_size
        self.owners, self._shadows = build_phys_map(self.info.loads)
        shadowed = sum(c.end - c.start for c, _ in self._shadows)
        if shadowed > MAX_SHADOW_FACTOR * max(size, 1 << 26):
            # /proc/vmcore repeats only the kernel text; a file whose loads show
            # the same physical memory over and over would cost loads x size of
            # comparisons to save byte for byte
            raise VmcoreFormatError(f"PT_LOADs overlap implausibly ({shadowed} bytes of physical memory "
                                    f"described more than once in a {size}-byte file)")
        self._owner_starts = [o.start for o in self.owners]
        self.pfn_ranges = merge_pfn_ranges(self.info.loads, self.page_size)
        self.use_mmap = use_mmap
        self._arena = None        # (file offset, mmap): where windows are read (_mapped_window)
        self._arena_open = 0      # windows of an arena not closed yet
        self._seek_data = hasattr(os, "SEEK_DATA") and stat.S_ISREG(self.st.st_mode)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- raw file reads ---------------------------------------------------
    def window(self, offset: int, length: int) -> Window:
        """File bytes [offset, offset+length) through mmap, else pread."""
        if offset < 0 or offset + length > self.size:
            raise SourceError(f"read of {length} bytes at {offset:#x} is outside the source")
        if self.use_mmap and length:
            try:
                return self._mapped_window(offset, length)
            except (OSError, ValueError, OverflowError):
                self.use_mmap = False     # refused (old kernel, odd file): pread from now on
        data = self._pread(offset, length)
        return Window(data, 0, length)

    def _mapped_window(self, offset: int, length: int) -> Window:
        """A window inside this process's arena (ARENA_BYTES of the source, mapped once for the
        windows it holds); one outside it maps the next arena from its own start.  A window opened
        while another arena window is open (a comparison of two places) or larger than an arena
        is mapped on its own, populated at once."""
        a = self._arena
        if a is not None and a[0] <= offset and offset + length <= a[0] + len(a[1]):
            return Window(a[1], offset - a[0], length, _Drop(self, a[1], offset - a[0], length))
        start = offset - offset % WINDOW_ALIGN
        if self._arena_open or length > ARENA_BYTES:
            mm = mmap.mmap(self.fd, offset + length - start, mmap.MAP_SHARED | MAP_POPULATE,
                           mmap.PROT_READ, offset=start)
            return Window(mm, offset - start, length, mm)
        if a is not None:          # unmapped before the next is mapped: one arena's address space at a time
            self._arena = None
            try:
                a[1].close()
            except BufferError:    # a view of it is still alive: unmapped with the view
                pass
        mm = mmap.mmap(self.fd, min(ARENA_BYTES + WINDOW_ALIGN, self.size - start), mmap.MAP_SHARED,
                       mmap.PROT_READ, offset=start)
        self._arena = (start, mm)
        return Window(mm, offset - start, length, _Drop(self, mm, offset - start, length))

    def _pread(self, offset: int, length: int) -> bytes:
        return pread_exact(self.fd, offset, length, SourceError, f"source {self.path}")

    def file_is_hole(self, offset: int, length: int) -> bool:
        """True when file bytes [offset, offset+length) are a hole (read as zeros).

        Uses SEEK_DATA, so a sparse source's holes cost one system call
        instead of a read.  /proc/vmcore reports everything as data.
        """
        if not self._seek_data or length <= 0:
            return False
        try:
            nxt = os.lseek(self.fd, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:      # no data at or after offset
                return True
            self._seek_data = False         # not supported here: read everything
            return False
        return nxt >= offset + length

    def phys_is_hole(self, pfn: int, npages: int) -> bool:
        """True when every file byte behind pages [pfn, pfn+npages) is a hole."""
        if not self._seek_data:
            return False
        ps = self.page_size
        lo, hi = pfn * ps, (pfn + npages) * ps
        i = max(bisect.bisect_right(self._owner_starts, lo) - 1, 0)
        while i < len(self.owners) and self.owners[i].start < hi:
            o = self.owners[i]
            a, b = max(o.start, lo), min(o.end, hi)
            if a < b and not self.file_is_hole(o.offset + a - o.start, b - a):
                return False
            i += 1
        return True

    # -- physical reads ---------------------------------------------------
    def phys_window(self, pfn: int, npages: int) -> Window:
        """Pages [pfn, pfn+npages) as the dumped machine saw them."""
        ps = self.page_size
        lo, hi = pfn * ps, (pfn + npages) * ps
        i = bisect.bisect_right(self._owner_starts, lo) - 1
        if i >= 0 and self.owners[i].start <= lo and self.owners[i].end >= hi:
            o = self.owners[i]
            return self.window(o.offset + lo - o.start, hi - lo)
        buf = bytearray(hi - lo)
        i = max(i, 0)
        while i < len(self.owners) and self.owners[i].start < hi:
            o = self.owners[i]
            a, b = max(o.start, lo), min(o.end, hi)
            if a < b:
                with self.window(o.offset + a - o.start, b - a) as w:
                    buf[a - lo:b - lo] = w.view()
            i += 1
        return Window(buf, 0, hi - lo)

    # -- planning ---------------------------------------------------------
    def residue(self) -> list[tuple[int, int]]:
        """File ranges that rendering the PT_LOADs from pages does not re-create."""
        covered = [(s.offset, s.offset + s.filesz) for s in self.info.loads if s.filesz]
        extra = []
        for copy, owner in self._shadows:
            pos = 0
            n = copy.end - copy.start
            while pos < n:
                m = min(COMPARE_BLOCK, n - pos)
                with self.window(copy.offset + pos, m) as a, self.window(owner.offset + pos, m) as b:
                    if a.obj[a.base:a.base + m] != b.obj[b.base:b.base + m]:
                        extra.append((copy.offset + pos, copy.offset + pos + m))
                pos += m
        rest = subtract_ranges((0, self.size), covered)
        return merge_ranges(rest + extra)
