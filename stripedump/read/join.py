"""Members -> the original ELF vmcore, byte for byte; and verify.

Why: the ELF file is rebuilt from two things the manifest keeps: the
PT_LOAD table (each load's file bytes are physical pages, so page chunks are
*rendered* into every load that covers them, the overlapping kernel-text
load included) and the residue chunks (headers, notes, padding: written at
their file offsets).  Rendering skips residue ranges, so the two never write
the same byte and the order of writes does not matter.  That lets the read
pool (pool.py) decompress chunks in worker processes that ``pwrite`` them
straight into the output in any order.

The output is created as ``OUT.partial`` with its final size (so all-zero
pages stay holes on filesystems that allow them) and renamed to OUT only
when every chunk has been verified and written (output.py): a failed join
never leaves a plausible-looking but incomplete OUT behind.

A filtered dump (``dump -d N``) is not rebuilt as the source: its excluded
pages are not in the members, so it is written in makedumpfile ``-E``'s
layout instead (``_join_filtered``, filtered.py), with the same pool.

``verify`` runs the same pool without an output file.  The kdump and flat
formats are written by kdump.py, with its own handler on the same pool; the
CLI picks the module from ``--format``, so this one knows nothing of them.
"""

from __future__ import annotations

import bisect
import os
import time

from . import reader
from .config import JoinConfig
from ..source.elfhead import clip
from ..errors import OutputError, UsageError
from .filtered import FilteredElf, KeptMap, excluded_report
from ..format.structs import KIND_FILE
from .output import (JoinResult, PartialOutput, check_output, check_whole, missing_report, pwrite_all,  # noqa: F401
                     unreadable_report)
from .pool import run_pool
from ..format.blocktable import unreadable_ranges
from ..format.decode import decode_into
from ..source.vmcore import PT_LOAD, subtract_ranges

class RenderMap:
    """Physical address -> the ELF file offsets its bytes go to.

    Built from the PT_LOADs minus the residue file ranges, cut into disjoint
    physical pieces so a lookup is a bisect, whatever the overlaps.
    """

    def __init__(self, segments: list[dict], residue: list[tuple[int, int]]):
        pieces = []   # (phys_start, phys_end, file_offset)
        for s in segments:
            if s["type"] != PT_LOAD or not s["filesz"]:
                continue
            for a, b in subtract_ranges((s["offset"], s["offset"] + s["filesz"]), residue):
                pieces.append((s["paddr"] + a - s["offset"], s["paddr"] + b - s["offset"], a))
        # sweep over piece boundaries: elementary spans with the loads active there
        events = sorted([(a, 1, i) for i, (a, b, off) in enumerate(pieces)] +
                        [(b, 0, i) for i, (a, b, off) in enumerate(pieces)])
        self.starts, self.ends, self.targets = [], [], []
        active: dict[int, tuple[int, int]] = {}
        prev = None
        for pos, is_start, i in events:
            if prev is not None and pos > prev and active:
                self.starts.append(prev)
                self.ends.append(pos)
                self.targets.append([off + prev - a for a, off in active.values()])
            if is_start:
                active[i] = (pieces[i][0], pieces[i][2])
            else:
                active.pop(i, None)
            prev = pos

    def spans(self, lo: int, hi: int):
        """(phys_start, phys_end, [file offsets of phys_start]) covering parts of [lo, hi)."""
        i = max(bisect.bisect_right(self.starts, lo) - 1, 0)
        while i < len(self.starts) and self.starts[i] < hi:
            a, b = max(self.starts[i], lo), min(self.ends[i], hi)
            if a < b:
                yield a, b, [t + a - self.starts[i] for t in self.targets[i]]
            i += 1

    def single(self, lo: int, hi: int) -> int | None:
        """The file offset of ``lo`` where [lo, hi) lies in one piece rendered to one place, else None.

        The common case (a chunk inside one PT_LOAD that no other covers):
        the chunk's runs then go to the file at one offset each, with no
        ``spans`` walk per run.
        """
        i = bisect.bisect_right(self.starts, lo) - 1
        if i < 0 or self.ends[i] < hi or len(self.targets[i]) != 1:
            return None
        return self.targets[i][0] + lo - self.starts[i]


class ChunkSink:
    """Where a decoded chunk goes: an ELF output file, or nowhere (verify)."""

    def __init__(self, fd: int | None, render: RenderMap | None, page_size: int, where: str):
        self.fd, self.render, self.page_size, self.where = fd, render, page_size, where

    def put(self, kind: int, start: int, data, runs, n: int) -> None:
        """Write the ``runs`` of a decoded chunk of ``n`` bytes; nothing else (the output is
        pre-sized: what no run covers stays a hole, zeros).  Then start the writeback of what
        was written (``kick``)."""
        if self.fd is None or not runs:
            return
        mv = memoryview(data)
        fd, pwrite = self.fd, os.pwrite
        if kind == KIND_FILE:
            at = start
        else:
            base = start * self.page_size
            at = self.render.single(base, base + n)
            if at is None:      # across pieces, or rendered twice (the kernel-text overlap)
                for a, b in runs:
                    for pa, pb, offs in self.render.spans(base + a, base + b):
                        for off in offs:
                            pwrite_all(fd, mv[pa - base:pb - base], off, self.where)
                return
        try:
            for a, b in runs:
                if pwrite(fd, mv[a:b], at + a) != b - a:
                    raise InterruptedError       # short: the careful loop writes the rest
        except OSError:
            for a, b in runs:
                pwrite_all(fd, mv[a:b], at + a, self.where)
        self.kick(at + runs[0][0], runs[-1][1] - runs[0][0])

    def kick(self, offset: int, length: int) -> None:
        """Start writeback of what was just written (as the dump's writers do, writer.py):
        on Linux POSIX_FADV_DONTNEED on dirty pages starts it at once, so the disk writes
        overlap decoding instead of piling up for the final fsync."""
        try:
            os.posix_fadvise(self.fd, offset, length, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass     # advice only


def _elf_handler(output: str | None, render: RenderMap | None, page_size: int, block_bytes: int):
    """Handler factory for ELF join (an output file) and verify (``output`` None)."""
    def make():
        fd_out = os.open(output, os.O_WRONLY) if output else None
        sink = ChunkSink(fd_out, render, page_size, output)
        codecs: dict = {}
        buf = bytearray(0)      # one buffer for every chunk of this worker (decode.decode_into)

        def handle(rec, checked, where, t):
            nonlocal buf
            h, body, blocks = checked      # read_chunk's checks, done once (Dump.check_record)
            if len(buf) < h.raw_length:
                buf = bytearray(h.raw_length)
            runs = decode_into(h, body, blocks, where, block_bytes, codecs, buf)
            sink.put(h.kind, h.start, buf, runs, h.raw_length)
            return unreadable_ranges(h, body, block_bytes), None
        return handle
    return make


DUMP_ELF_INCOMPLETE = 0x1    # e_flags bit: makedumpfile's mark of an incomplete ELF dump (crash honours it)


def mark_elf_incomplete(path: str) -> bool:
    """Set DUMP_ELF_INCOMPLETE in the output's ELF header, if the header was recovered."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as e:
        raise OutputError(f"cannot reopen {path}: {e.strerror}") from None
    try:
        head = os.pread(fd, 64, 0)
        if len(head) < 52 or head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] not in (1, 2):
            return False
        at = 48 if head[4] == 2 else 36             # e_flags in Elf64_Ehdr / Elf32_Ehdr
        order = "little" if head[5] == 1 else "big"
        flags = int.from_bytes(head[at:at + 4], order) | DUMP_ELF_INCOMPLETE
        pwrite_all(fd, flags.to_bytes(4, order), at, path)
        return True
    finally:
        os.close(fd)


def join(cfg: JoinConfig, progress=None, notice=None) -> JoinResult:
    """Rebuild the dump from its members into ``cfg.output``.

    ``cfg.format`` must be "elf": the source ELF vmcore byte for byte
    ("kdump" and "flat" are ``kdump.join_kdump``'s).  ``notice`` is unused
    here; it is there so both joins are called alike.
    """
    if cfg.format != "elf":
        raise UsageError(f"join.join writes ELF; --format {cfg.format} is kdump.join_kdump's")
    check_output(cfg.output, cfg.force)
    t0 = time.monotonic()
    allow = cfg.allow_incomplete
    with reader.Dump(list(cfg.members), allow_incomplete=allow, cache_bytes=0, verify_walks=True) as dump:
        ds = dump.ds
        pieces = ds.header_pieces
        kept = KeptMap.build(dump)
        if kept is not None:
            return _join_filtered(cfg, dump, kept, progress, t0)
        with PartialOutput(cfg.output, [r.path for r in ds.readers], cfg.force, ds.source_size) as out:
            handler = _elf_handler(out.tmp, RenderMap(ds.segments, ds.plan.residue), ds.page_size,
                                   ds.block_bytes)
            bad: list = []
            missing: list = []
            ok, nbytes, errors = run_pool(dump, cfg.nworkers, handler, False, progress, unreadable=bad,
                                          allow_incomplete=allow, missing=missing)
            check_whole(ds, errors, missing, allow)
            if missing:            # holes where chunks are missing; say so as makedumpfile -E does
                # the headers and notes of missing residue chunks, from the manifest: an ELF file
                for off, data in clip(pieces or [], ds.missing_ranges(missing)[1]):
                    pwrite_all(out.fd, data, off, out.tmp)
                mark_elf_incomplete(out.tmp)
            out.commit()
        return JoinResult(ds.dump_id, cfg.output, ds.source_size, ok, time.monotonic() - t0, errors,
                          {"format": "elf", "unreadable": unreadable_report(bad, ds.page_size),
                           **missing_report(ds, missing, pieces), "repaired": dump.repairs})


def _join_filtered(cfg: JoinConfig, dump, kept: KeptMap, progress, t0: float) -> JoinResult:
    """ELF join of a filtered dump: makedumpfile -E's layout (filtered.FilteredElf), never the source's.

    The headers and notes come from the manifest (the new program headers
    replace the source's), the page chunks are rendered into the new
    PT_LOADs, which cover no excluded page; residue chunks (the source's
    headers and padding) are not part of this file and are not read.
    """
    ds, allow = dump.ds, cfg.allow_incomplete
    felf = FilteredElf(dump, kept)
    with PartialOutput(cfg.output, [r.path for r in ds.readers], cfg.force, felf.size) as out:
        pwrite_all(out.fd, felf.head, 0, out.tmp)
        handler = _elf_handler(out.tmp, RenderMap(felf.segments(), []), ds.page_size, ds.block_bytes)
        bad: list = []
        missing: list = []
        ok, nbytes, errors = run_pool(dump, cfg.nworkers, handler, False, progress,
                                      wanted=lambda cid: cid < ds.plan.n_page_chunks, unreadable=bad,
                                      allow_incomplete=allow, missing=missing)
        check_whole(ds, errors, missing, allow)
        if any(c < ds.plan.n_page_chunks for c in missing):
            mark_elf_incomplete(out.tmp)
        out.commit()
    return JoinResult(ds.dump_id, cfg.output, felf.size, ok, time.monotonic() - t0, errors,
                      {"format": "elf", "unreadable": unreadable_report(bad, ds.page_size),
                       **missing_report(ds, missing, ds.header_pieces), **excluded_report(kept, ds.page_size),
                       "segments": len(felf.loads), "page_chunks_only": True, "repaired": dump.repairs})


def verify(members: list[str], workers: int = 0, progress=None) -> JoinResult:
    """Check every chunk of every member; errors are collected, not fatal.

    Members may be missing: the report says what a join would recover.
    """
    from ..runtime.machine import usable_cpus
    t0 = time.monotonic()
    # members never finalized are walked: verify says what a join would lack
    with reader.Dump(members, allow_incomplete=True, cache_bytes=0, newest_dump=False,
                     verify_walks=True) as dump:
        ds = dump.ds
        pieces = ds.header_pieces
        handler = _elf_handler(None, None, ds.page_size, ds.block_bytes)
        bad: list = []
        missing: list = []
        ok, nbytes, errors = run_pool(dump, workers or usable_cpus(), handler, True, progress, unreadable=bad,
                                      allow_incomplete=True, missing=missing)
        # what a plain join would refuse although every chunk is there (a member that never
        # finished), and the damage join and mount work around: verify exits non-zero for either
        refused = [{"exit_code": int(e.exit_code), "error": str(e)} for e in ds.refusals()]
        res = JoinResult(ds.dump_id, None, nbytes, ok, time.monotonic() - t0, errors,
                         {"unreadable": unreadable_report(bad, ds.page_size),
                          **missing_report(ds, missing, pieces), "refused": refused, "repaired": dump.repairs})
    return res
