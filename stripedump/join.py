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
only when every chunk has been verified and written: a failed join never
leaves a plausible-looking but incomplete OUT behind.

``verify`` runs the same pool without an output file.
"""

from __future__ import annotations

import bisect
import multiprocessing
import os
import queue
import time
from dataclasses import dataclass

from .config import JoinConfig
from .dumpset import DumpSet
from .errors import MemberError, OutputError, StripedumpError, VerifyError, from_wire
from .format import KIND_FILE, KIND_PAGES
from .member import decode_chunk
from .pipeline import POLL, _child_init, _describe_exit, _join_all, _Signals, messages
from .errors import Interrupted
from .vmcore import PT_LOAD, subtract_ranges

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


def _pwrite_all(fd: int, data, offset: int, where: str) -> None:
    mv = memoryview(data)
    while len(mv):
        try:
            n = os.pwrite(fd, mv, offset)
        except OSError as e:
            raise OutputError(f"{where}: write failed at offset {offset}: {e.strerror}") from None
        mv, offset = mv[n:], offset + n


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
                _pwrite_all(self.fd, mv[a:b], start + a, self.where)
            return
        base = start * self.page_size
        for a, b in runs:
            for pa, pb, offs in self.render.spans(base + a, base + b):
                for off in offs:
                    _pwrite_all(self.fd, mv[pa - base:pb - base], off, self.where)


def _join_worker(wid, paths, block_bytes, sink_args, tasks, events) -> None:
    _child_init()
    fds = {}
    try:
        fd_out = None
        if sink_args["output"]:
            fd_out = os.open(sink_args["output"], os.O_WRONLY)
        sink = ChunkSink(fd_out, sink_args["render"], sink_args["page_size"], sink_args["output"])
        codecs = {}
        for d, cid, offset, length, csum, kind, start, raw, desc in messages(tasks):
            where = f"member {paths[d]}, {desc}"
            try:
                fd = fds.get(d)
                if fd is None:
                    fd = fds[d] = os.open(paths[d], os.O_RDONLY)
                rec = os.pread(fd, length, offset)
                if len(rec) != length:
                    raise MemberError(f"{where}: record truncated")
                h, data, runs = decode_chunk(rec, where, block_bytes, codecs)
                if h.chunk_id != cid or h.payload_checksum != csum:
                    raise VerifyError(f"{where}: record does not match the index (found chunk {h.chunk_id})")
                if (h.kind, h.start, h.raw_length) != (kind, start, raw):
                    raise VerifyError(f"{where}: record describes other data than the plan says")
                sink.put(h.kind, h.start, data, runs)
                events.put(("ok", h.raw_length))
            except StripedumpError as e:
                events.put(("err", *e.to_wire()))
            except OSError as e:
                events.put(("err", "MemberError", f"{where}: read error: {e.strerror}"))
    except Exception as e:
        events.put(("err", "StripedumpError", f"internal error in join worker {wid}: {type(e).__name__}: {e}"))


@dataclass
class JoinResult:
    dump_id: str
    output: str | None
    bytes_out: int
    chunks: int
    seconds: float
    errors: list[str]

    @property
    def mb_per_s(self) -> float:
        return self.bytes_out / self.seconds / 1e6 if self.seconds else 0.0

    def to_json(self) -> dict:
        return {"dump_id": self.dump_id, "output": self.output, "output_bytes": self.bytes_out,
                "chunks": self.chunks, "seconds": round(self.seconds, 6),
                "mb_per_s": round(self.mb_per_s, 3), "errors": self.errors}


def _run_pool(ds: DumpSet, workers: int, output: str | None, keep_going: bool, progress) -> tuple:
    """Stream every chunk through a pool; returns (chunks ok, raw bytes, errors)."""
    render = RenderMap(ds.segments, ds.plan.residue) if output else None
    sink_args = {"output": output, "render": render, "page_size": ds.page_size}
    paths = [r.path for r in ds.readers]
    ctx = multiprocessing.get_context("fork")
    tasks, events = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_join_worker, args=(i, paths, ds.block_bytes, sink_args, tasks, events),
                         daemon=True, name=f"stripedump-join-{i}") for i in range(workers)]
    for p in procs:
        p.start()
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
            if progress:
                progress(nbytes, ds.plan.input_bytes)
        else:
            err = from_wire(ev[1], ev[2])
            errors.append(str(err))
            if not keep_going and fatal is None:
                fatal = err

    def wait_one():
        nonlocal fatal
        while True:
            try:
                handle(events.get(timeout=POLL))
                return True
            except queue.Empty:
                for i, p in enumerate(procs):
                    if p.exitcode is not None:
                        fatal = fatal or StripedumpError(f"join worker {i} (pid {p.pid}) "
                                                         f"{_describe_exit(p)} unexpectedly")
                        return False

    alive = True
    with _Signals() as sig:
        try:
            for d, e in ds.locations(seen):
                if sig.signum:
                    fatal = Interrupted("interrupted; output removed", sig.signum)
                if fatal is not None:
                    break
                c = ds.plan.chunk(e.chunk_id)
                tasks.put((d, e.chunk_id, e.offset, e.length, e.checksum, c.kind, c.start,
                           c.raw_bytes(ds.page_size), c.describe(ds.page_size)))
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
    missing = ds.missing_chunks(seen)
    if missing:
        descs = ", ".join(f"member {ds.readers[c % len(ds.readers)].path}: "
                          f"{ds.plan.chunk(c).describe(ds.page_size)}" for c in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        errors.append(f"{len(missing)} chunk(s) missing from the members: {descs}{more}")
    return ok, nbytes, errors


def join(cfg: JoinConfig, progress=None) -> JoinResult:
    """Rebuild the source ELF vmcore from its members into ``cfg.output``."""
    t0 = time.monotonic()
    out = cfg.output
    if out == "-":
        raise OutputError("ELF output cannot go to standard output (it is written out of order); "
                          "give a file name")
    with DumpSet(list(cfg.members)) as ds:
        ds.footers()
        if os.path.lexists(out) and not cfg.force:
            raise OutputError(f"output {out} exists; refusing to overwrite it (use --force)")
        for r in ds.readers:
            if os.path.exists(out) and os.path.samefile(out, r.path):
                raise OutputError(f"output {out} is one of the members")
        tmp = out + ".partial"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.ftruncate(fd, ds.source_size)
        except OSError as e:
            raise OutputError(f"cannot create output {tmp}: {e.strerror}") from None
        try:
            ok, nbytes, errors = _run_pool(ds, cfg.nworkers, tmp, False, progress)
            if errors:
                raise VerifyError(errors[0])
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.replace(tmp, out)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return JoinResult(ds.dump_id, out, ds.source_size, ok, time.monotonic() - t0, [])


def verify(members: list[str], workers: int = 0, progress=None) -> JoinResult:
    """Check every chunk of every member; errors are collected, not fatal."""
    from .config import usable_cpus
    t0 = time.monotonic()
    with DumpSet(members) as ds:
        ok, nbytes, errors = _run_pool(ds, workers or usable_cpus(), None, True, progress)
        res = JoinResult(ds.dump_id, None, nbytes, ok, time.monotonic() - t0, errors)
    return res
