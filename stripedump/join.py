"""Members -> the original ELF vmcore, byte for byte; and verify.

Why: the ELF file is rebuilt from two things the manifest keeps: the
PT_LOAD table (each load's file bytes are physical pages, so page chunks are
*rendered* into every load that covers them, the overlapping kernel-text
load included) and the residue chunks (headers, notes, padding: written at
their file offsets).  Rendering skips residue ranges, so the two never write
the same byte and the order of writes does not matter.  That lets a pool of
worker processes decompress chunks and ``pwrite`` them straight into the
output in any order; the coordinator only streams chunk locations from the
member indexes and counts.

The output is created as ``OUT.partial`` with its final size (so all-zero
pages stay holes on filesystems that allow them), synced, and renamed to OUT
(then its directory synced, so the rename survives a power loss) only when
every chunk has been verified and written: a failed join never leaves a
plausible-looking but incomplete OUT behind.

``verify`` runs the same pool without an output file, and ``--format
kdump`` / ``flat`` (``kdump.py``) run it with their own per-chunk handler:
the pool itself only reads records and reports, whatever is done with them.
"""

from __future__ import annotations

import bisect
import os
import queue
import time
from dataclasses import dataclass, field
from typing import NamedTuple

from .config import JoinConfig
from .dumpset import INCOMPLETE_HINT, DumpSet
from .elfhead import clip, rebuilt_ranges
from .errors import (IncompleteDump, Interrupted, MemberError, OutputError, StripedumpError, VerifyError,
                     from_wire)
from .fileio import fsync_dir, write_exact
from .format import CHUNK_HEADER_SIZE, KIND_FILE, KIND_PAGES
from .records import decode_chunk, unreadable_ranges
from .procs import POLL, Signals as _Signals, child_init as _child_init, describe_exit as _describe_exit, \
    join_all as _join_all, messages, queue_pair, spawn
from .plan import placement
from .vmcore import PT_LOAD, merge_ranges, subtract_ranges

INFLIGHT_PER_WORKER = 4


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


def pwrite_all(fd: int, data, offset: int, where: str) -> None:
    write_exact(fd, data, OutputError, where, offset)


class ChunkSink:
    """Where a decoded chunk goes: an ELF output file, or nowhere (verify)."""

    def __init__(self, fd: int | None, render: RenderMap | None, page_size: int, where: str):
        self.fd, self.render, self.page_size, self.where = fd, render, page_size, where

    def put(self, kind: int, start: int, data: bytearray, runs) -> None:
        if self.fd is None:
            return
        mv = memoryview(data)
        if kind == KIND_FILE:
            for a, b in runs:
                pwrite_all(self.fd, mv[a:b], start + a, self.where)
            return
        base = start * self.page_size
        for a, b in runs:
            for pa, pb, offs in self.render.spans(base + a, base + b):
                for off in offs:
                    pwrite_all(self.fd, mv[pa - base:pb - base], off, self.where)


class Task(NamedTuple):
    """One chunk for a pool worker: where its record is and what the plan says it holds."""
    member: int
    chunk_id: int
    offset: int
    length: int
    checksum: int
    kind: int
    start: int
    raw: int
    desc: str


def check_record(h, where: str, t: Task) -> None:
    """A decoded record must be the chunk the index and the plan promise."""
    if h.chunk_id != t.chunk_id or h.payload_checksum != t.checksum:
        raise VerifyError(f"{where}: record does not match the index (found chunk {h.chunk_id})")
    if (h.kind, h.start, h.raw_length) != (t.kind, t.start, t.raw):
        raise VerifyError(f"{where}: record describes other data than the plan says")


def _pool_worker(wid, paths, make_handler, tasks, events) -> None:
    """Read each task's record and hand it to ``handle(rec, where, task)``.

    ``make_handler`` runs in the child (after fork) so that file
    descriptors and codec state belong to this process.  Every outcome is
    an event: ("ok", raw bytes, unreadable ranges) or ("err", class name,
    message).  ``handle`` may return the byte ranges of the chunk that the
    source could not give at dump time (BLOCK_UNREADABLE).
    """
    _child_init()
    fds = {}
    try:
        handle = make_handler()
        for t in messages(tasks):
            t = Task(*t)
            where = f"member {paths[t.member]}, {t.desc}"
            try:
                fd = fds.get(t.member)
                if fd is None:
                    fd = fds[t.member] = os.open(paths[t.member], os.O_RDONLY)
                rec = os.pread(fd, t.length, t.offset)
                if len(rec) != t.length:
                    raise MemberError(f"{where}: record truncated")
                bad = handle(rec, where, t) or ()
                events.put(("ok", t.raw, [(t.kind, t.start, a, b) for a, b in bad]))
            except StripedumpError as e:
                events.put(("err", *e.to_wire(), t.chunk_id))
            except OSError as e:
                events.put(("err", "MemberError", f"{where}: read error: {e.strerror}", t.chunk_id))
    except StripedumpError as e:
        events.put(("err", *e.to_wire()))
    except Exception as e:
        events.put(("err", "StripedumpError", f"internal error in join worker {wid}: {type(e).__name__}: {e}"))


def _elf_handler(output: str | None, render: RenderMap | None, page_size: int, block_bytes: int):
    """Handler factory for ELF join (an output file) and verify (``output`` None)."""
    def make():
        fd_out = os.open(output, os.O_WRONLY) if output else None
        sink = ChunkSink(fd_out, render, page_size, output)
        codecs: dict = {}

        def handle(rec, where, t):
            h, data, runs = decode_chunk(rec, where, block_bytes, codecs)
            check_record(h, where, t)
            sink.put(h.kind, h.start, data, runs)
            return unreadable_ranges(h, memoryview(rec)[CHUNK_HEADER_SIZE:h.record_length], block_bytes)
        return handle
    return make


@dataclass
class JoinResult:
    dump_id: str
    output: str | None
    bytes_out: int
    chunks: int
    seconds: float
    errors: list[str]
    extra: dict = field(default_factory=dict)

    @property
    def mb_per_s(self) -> float:
        return self.bytes_out / self.seconds / 1e6 if self.seconds else 0.0

    def to_json(self) -> dict:
        return {"dump_id": self.dump_id, "output": self.output, "output_bytes": self.bytes_out,
                "chunks": self.chunks, "seconds": round(self.seconds, 6),
                "mb_per_s": round(self.mb_per_s, 3), "errors": self.errors, **self.extra}


def _run_pool(ds: DumpSet, workers: int, make_handler, keep_going: bool, progress,
              wanted=None, unreadable: list | None = None, allow_incomplete: bool = False,
              missing: list | None = None) -> tuple:
    """Stream every chunk (or those ``wanted(chunk_id)`` accepts) through a pool.

    Returns (chunks ok, raw bytes, errors).  Chunks missing from every
    member are errors even when not wanted: the dump is not whole; given a
    ``missing`` list, their ids go there instead, with (``allow_incomplete``)
    those that failed their checks, whose errors are still returned.
    ``allow_incomplete`` also walks members that were never finalized (see
    ``DumpSet.locations``).  Ranges the source could not give at dump time
    are added to ``unreadable`` as (kind, chunk start, byte offset, byte end).
    """
    if unreadable is None:
        unreadable = []
    failed: list[int] = []
    paths = [r.path for r in ds.readers]
    tasks, events = queue_pair()
    procs = [spawn(_pool_worker, f"stripedump-join-{i}", (i, paths, make_handler, tasks, events))
             for i in range(workers)]
    seen = bytearray(-(-ds.plan.n_chunks // 8))
    errors: list[str] = []
    fatal: StripedumpError | None = None
    ok = nbytes = inflight = 0
    limit = INFLIGHT_PER_WORKER * workers

    def handle(ev):
        nonlocal ok, nbytes, inflight, fatal
        inflight -= 1
        if ev[0] == "ok":
            ok += 1
            nbytes += ev[1]
            unreadable.extend(ev[2])
            if progress:
                progress(nbytes, ds.plan.input_bytes)
        else:
            err = from_wire(ev[1], ev[2])
            errors.append(str(err))
            if allow_incomplete and len(ev) > 3:
                failed.append(ev[3])      # a damaged chunk: missing, the rest goes on
            elif not keep_going and fatal is None:
                fatal = err

    def wait_one():
        nonlocal fatal
        while True:
            try:
                handle(events.get(timeout=POLL))
                return True
            except queue.Empty:
                if sig.signum:    # a worker may be stuck on a stalled pipe: do not wait for it
                    fatal = fatal or Interrupted("interrupted; output removed", sig.signum)
                    return False
                for i, p in enumerate(procs):
                    if p.exitcode is not None:
                        fatal = fatal or StripedumpError(f"join worker {i} (pid {p.pid}) "
                                                         f"{_describe_exit(p)} unexpectedly")
                        return False

    alive = True
    with _Signals() as sig:
        try:
            for d, e in ds.locations(seen, allow_incomplete):
                if sig.signum:
                    fatal = Interrupted("interrupted; output removed", sig.signum)
                if fatal is not None:
                    break
                if wanted is not None and not wanted(e.chunk_id):
                    continue
                c = ds.plan.chunk(e.chunk_id)
                tasks.put(tuple(Task(d, e.chunk_id, e.offset, e.length, e.checksum, c.kind, c.start,
                                     c.raw_bytes(ds.page_size), c.describe(ds.page_size))))
                inflight += 1
                while inflight >= limit and alive and fatal is None:
                    alive = wait_one()
            while inflight > 0 and alive:
                alive = wait_one()
        except StripedumpError as e:
            fatal = fatal or e
        finally:
            for _ in procs:
                tasks.put(None)
            _join_all(procs, lambda e: None, "join worker")
    if fatal is not None:
        raise fatal
    absent = ds.missing_chunks(seen)
    if missing is not None:
        missing.extend(sorted(set(absent + failed)))
    elif absent:
        errors.append(describe_absent(ds, absent))
    return ok, nbytes, errors


def describe_absent(ds: DumpSet, absent: list[int]) -> str:
    """The chunks no member holds, with the member each belongs to (the first five)."""
    descs = ", ".join(f"member {ds.member_name(placement(c, ds.count))}: "
                      f"{ds.plan.chunk(c).describe(ds.page_size)}" for c in absent[:5])
    more = f" and {len(absent) - 5} more" if len(absent) > 5 else ""
    return f"{len(absent)} chunk(s) missing from the members: {descs}{more}"


def _ranges_left(ranges, cuts) -> list[tuple[int, int]]:
    return [r for a, b in ranges for r in subtract_ranges((a, b), cuts)]


def missing_report(ds: DumpSet, missing: list[int], pieces: list | None = None) -> dict:
    """What a join of a possibly incomplete dump recovers and lacks, for --json and for people.

    ``missing`` holds PFN ranges [start, end) and ``missing_file_ranges``
    source file byte ranges, each merged: what reads as zeros.  File bytes
    of missing chunks that the manifest's header copy (``pieces``) rebuilds
    are ``rebuilt_file_ranges`` instead.  ``members`` says, for each member,
    how its chunks were found (its index, or a walk of its records) and,
    of its share of the plan (chunk i is member i % members's), what a join
    recovers and what is missing.
    """
    ps = ds.page_size
    pfns, files = ds.missing_ranges(missing)
    rebuilt = rebuilt_ranges(pieces, files)
    files = _ranges_left(files, rebuilt)
    miss_by: dict[int, list[int]] = {}
    for c in missing:
        miss_by.setdefault(placement(c, ds.count), []).append(c)
    members = ds.member_report()
    total_bytes = 0
    for m in members:
        if m["index"] is None:
            continue
        share_chunks, share_bytes = ds.share(m["index"])
        gone = miss_by.get(m["index"], [])
        mp, mf = ds.missing_ranges(gone)
        mf = _ranges_left(mf, rebuilt)
        gone_bytes = sum(ds.plan.chunk(c).raw_bytes(ps) for c in gone)
        total_bytes += gone_bytes
        m.update({"share_chunks": share_chunks, "share_bytes": share_bytes,
                  "recoverable_chunks": share_chunks - len(gone), "recoverable_bytes": share_bytes - gone_bytes,
                  "missing_chunks": len(gone), "missing_pages": sum(b - a for a, b in mp),
                  "missing": [list(r) for r in mp], "missing_file_ranges": [list(r) for r in mf]})
    return {"complete": not missing, "missing_chunks": len(missing),
            "recoverable_chunks": ds.plan.n_chunks - len(missing),
            "recoverable_bytes": ds.plan.input_bytes - total_bytes,
            "missing_pages": sum(b - a for a, b in pfns), "missing_bytes": total_bytes,
            "missing": [list(r) for r in pfns], "missing_file_ranges": [list(r) for r in files],
            "rebuilt_file_ranges": [list(r) for r in rebuilt], "members": members}


def describe_missing(report: dict, most: int = 16, verify: bool = False) -> list[str]:
    """Lines for stderr: how much is missing, the merged ranges, and each member's part.

    ``verify``: nothing was written, so say what a join would do with them.
    """
    if report.get("complete", True):
        return []
    pfns, files = report["missing"], report["missing_file_ranges"]
    pages = sum(b - a for a, b in pfns)
    then = ("a join refuses the dump; join --allow-incomplete writes zeros in their place" if verify
            else "they are zeros in the output")
    lines = [f"the dump is incomplete: {report['missing_chunks']} chunk(s) missing or damaged, {pages} "
             f"page(s) and {sum(b - a for a, b in files)} byte(s) of ELF headers and padding; {then}"]
    rebuilt = report.get("rebuilt_file_ranges", [])
    if rebuilt:
        lines.append(f"ELF header, program headers and notes of the missing chunk(s) rebuilt from the "
                     f"manifest: {sum(b - a for a, b in rebuilt)} byte(s) at "
                     + ", ".join(f"{a:#x}-{b - 1:#x}" for a, b in rebuilt[:most]))
    for what, ranges in (("missing PFN ranges", pfns), ("missing file bytes", files)):
        if ranges:
            shown = ", ".join(f"{a:#x}-{b - 1:#x}" for a, b in ranges[:most])
            more = f" ... ({len(ranges) - most} more; --json lists all)" if len(ranges) > most else ""
            lines.append(f"{what}: {shown}{more}")
    for m in report["members"]:
        if m["index"] is None:
            lines.append(f"{m['path']}: no member header (the dump stopped before writing one)")
        elif m["found_by"] is None:
            lines.append(f"member {m['index']}{' ' + m['path'] if m.get('path') else ''}: {m['state']}; its {m.get('missing_chunks', 'share of')} "
                         f"chunk(s) are missing" + _member_missing(m))
        elif m["state"] != "complete" or m["found_by"] == "walk":
            lines.append(f"member {m['index']} {m['path']}: {m['state']}, {m['chunks']} chunk(s) found by "
                         + ("walking its records (" + m["walk"] + ")" if m["found_by"] == "walk"
                            else "its index") + _member_missing(m))
    return lines


def _member_missing(m: dict) -> str:
    """', N page(s) of its share missing (PFN a-b, ...)' for a member's line, or ''."""
    if not m.get("missing_chunks"):
        return ""
    shown = ", ".join(f"{a:#x}-{b - 1:#x}" for a, b in m["missing"][:4])
    more = " ..." if len(m["missing"]) > 4 else ""
    return (f"; of its share, {m['missing_pages']} page(s) missing" + (f" (PFN {shown}{more})" if shown else "")
            + f", {m['recoverable_chunks']} of {m['share_chunks']} chunk(s) recoverable")


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


class PartialOutput:
    """The join output as ``OUT.partial``, renamed to OUT only on success.

    Refuses an existing OUT without ``force`` and an OUT that is one of the
    members.  ``size`` pre-sizes the file (holes for pages never written).
    Used as a context manager: any exception removes the partial file.
    """

    def __init__(self, out: str, members: list[str], force: bool, size: int = 0):
        if os.path.lexists(out) and not force:
            raise OutputError(f"output {out} exists; refusing to overwrite it (use --force)")
        for m in members:
            if os.path.exists(out) and os.path.samefile(out, m):
                raise OutputError(f"output {out} is one of the members")
        self.out, self.tmp = out, out + ".partial"
        try:
            self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            if size:
                os.ftruncate(self.fd, size)
        except OSError as e:
            raise OutputError(f"cannot create output {self.tmp}: {e.strerror}") from None

    def commit(self, size: int | None = None) -> None:
        """Set the final size (if given), sync, close and rename to OUT."""
        try:
            if size is not None:
                os.ftruncate(self.fd, size)
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
            os.replace(self.tmp, self.out)
        except OSError as e:
            raise OutputError(f"cannot finish output {self.out}: {e.strerror}") from None
        fsync_dir(os.path.dirname(os.path.abspath(self.out)), OutputError)   # the rename survives power loss

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            return
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            os.unlink(self.tmp)
        except OSError:
            pass


def check_output(out: str, force: bool) -> None:
    """Refuse an OUT that cannot be written before any member is read (exit 9 at once).

    A directory, an existing file without ``force``, something that is not a
    regular file (the rename would replace it), a missing parent directory or
    one this process may not write.  ``PartialOutput`` checks again when it
    creates the file.
    """
    if out == "-":
        return
    if os.path.isdir(out):
        raise OutputError(f"output {out} is a directory; give a file name, e.g. "
                          f"{os.path.join(out, 'vmcore')}")
    if os.path.lexists(out):
        if not force:
            raise OutputError(f"output {out} exists; refusing to overwrite it (use --force)")
        if os.path.exists(out) and not os.path.isfile(out):
            raise OutputError(f"output {out} is not a regular file; join writes {out}.partial and "
                              "renames it over OUT")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise OutputError(f"cannot create output {out}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot create output {out}: no permission to write in {parent}")


def join(cfg: JoinConfig, progress=None, notice=None) -> JoinResult:
    """Rebuild the dump from its members into ``cfg.output``.

    ``cfg.format`` "elf" gives the source ELF vmcore byte for byte; "kdump"
    and "flat" are written by ``kdump.join_kdump``.  ``notice(text)`` is
    called with remarks a user should see (e.g. that pages are transcoded).
    """
    check_output(cfg.output, cfg.force)
    if cfg.format != "elf":
        from .kdump import join_kdump
        return join_kdump(cfg, progress, notice)
    t0 = time.monotonic()
    allow = cfg.allow_incomplete
    with DumpSet(list(cfg.members), allow_missing=allow, newest_dump=allow) as ds:
        ds.check_members(allow)
        pieces = ds.header_pieces
        with PartialOutput(cfg.output, [r.path for r in ds.readers], cfg.force, ds.source_size) as out:
            handler = _elf_handler(out.tmp, RenderMap(ds.segments, ds.plan.residue), ds.page_size,
                                   ds.block_bytes)
            bad: list = []
            missing: list = []
            ok, nbytes, errors = _run_pool(ds, cfg.nworkers, handler, False, progress, unreadable=bad,
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
                           **missing_report(ds, missing, pieces)})


def check_whole(ds: DumpSet, errors: list[str], missing: list[int], allow: bool) -> None:
    """Without --allow-incomplete, a damaged chunk or a missing one ends the join."""
    if allow:
        return
    if errors:
        raise VerifyError(errors[0])
    if missing:
        raise IncompleteDump(f"{describe_absent(ds, missing)}; {INCOMPLETE_HINT}")


def verify(members: list[str], workers: int = 0, progress=None) -> JoinResult:
    """Check every chunk of every member; errors are collected, not fatal.

    Members may be missing: the report says what a join would recover.
    """
    from .config import usable_cpus
    t0 = time.monotonic()
    with DumpSet(members, allow_missing=True) as ds:
        pieces = ds.header_pieces
        handler = _elf_handler(None, None, ds.page_size, ds.block_bytes)
        bad: list = []
        missing: list = []
        # members never finalized are walked: verify says what a join would lack
        ok, nbytes, errors = _run_pool(ds, workers or usable_cpus(), handler, True, progress, unreadable=bad,
                                       allow_incomplete=True, missing=missing)
        res = JoinResult(ds.dump_id, None, nbytes, ok, time.monotonic() - t0, errors,
                         {"unreadable": unreadable_report(bad, ds.page_size),
                          **missing_report(ds, missing, pieces)})
    return res


def unreadable_report(bad: list, page_size: int) -> dict:
    """Merged PFN ranges and file ranges [start, end) that were unreadable at dump time."""
    pfns = [(start + a // page_size, start + -(-b // page_size)) for kind, start, a, b in bad
            if kind == KIND_PAGES]
    files = [(start + a, start + b) for kind, start, a, b in bad if kind != KIND_PAGES]
    return {"pfn_ranges": [list(r) for r in merge_ranges(pfns)],
            "file_ranges": [list(r) for r in merge_ranges(files)]}


def describe_unreadable(report: dict) -> str | None:
    """One line for a user, or None when nothing was unreadable."""
    pfns, files = report.get("pfn_ranges", []), report.get("file_ranges", [])
    if not pfns and not files:
        return None
    pages = sum(b - a for a, b in pfns)
    shown = ", ".join(f"{a:#x}-{b - 1:#x}" for a, b in pfns[:8]) + (" ..." if len(pfns) > 8 else "")
    return (f"{pages} page(s) of the crashed machine's memory could not be read when the dump was "
            f"taken and read back as zeros: PFN {shown or '-'}"
            + (f"; and {sum(b - a for a, b in files)} bytes of ELF headers" if files else ""))
