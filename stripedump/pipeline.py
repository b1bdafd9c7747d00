"""The dump pipeline: a coordinator, a pool of workers, one writer per member.

Design
------
Processes, not threads: per-page compression calls are ~3 us and the GIL
hand-off between CPUs eats the gain of threads (machine-limits §3).  Every
child is forked from the coordinator (procs.py: fork, signal policy,
liveness, joining), so the source's file descriptor and one anonymous
shared mapping (the *slot pool*) are inherited; nothing needs /dev/shm,
which a capture kernel may not mount.

    coordinator --(chunk id, slot)--> task pipe --> worker 1..W
        worker: maps the chunk's source pages itself (mmap window), zero-tests
        and compresses block by block straight into its slot, then
        --(chunk id, slot, length, checksum)--> pipe of writer (id % D)
        writer d: one large write() of the slot to member d, index entry,
        --(slot freed, chunk id, synced?)--> coordinator's event pipe

No page data passes through the coordinator or through a pipe: pipes carry a
few integers per chunk as fixed-size records (ipc.py), the bytes stay in the
slot pool (machine-limits §5: shared memory moves 18 GB/s per 1 MiB,
multiprocessing queues 0.5 GB/s, and their pickling and feeder threads cost
the coordinator a third of a CPU at a thousand chunks a second).

Memory bound: the slot pool has ``S = 2*W + 2*D`` slots of
``record_bound(chunk, block)`` bytes (a chunk stored raw plus its block
table), so the pool is ``S * (chunk_size + chunk_size/block_size*4 + 48)``:
8.0 MiB for 2 workers, 2 disks and 1 MiB chunks, whatever the size of the
dump.  W and the pool are lowered to what the machine has (``fit_pool``:
CPUs, available memory, cgroup, ulimit -v), with a warning, never refused
while one worker fits.
Backpressure is the free-slot list: the coordinator hands out a chunk
only when a slot is free, so a slow disk stalls the workers instead of
growing a backlog.  Each writer keeps at most INDEX_EVERY index entries.

Ordering: chunks are handed out in plan order; writers append records in the
order they arrive, and each member's index records where every chunk went, so
no writer waits for another.

The coordinator (``_Coordinator``) runs in three named steps:
``start_children``; ``feed`` (phase 1: hand out chunks while slots are
free, handle the children's events, watch for dead or stuck children); and
``shutdown`` (phase 2: stop the workers, tell each writer how to finish,
collect the members, join every child, kill what does not stop).  Phase 2
runs whatever happened in phase 1, so every member is finalized.

Exit 0 means every chunk is on a member that was finalized and synced; every
other outcome raises.  Failure: every error in a child travels back as
(class name, message) on the event pipe.  The first one stops the feed: new
tasks are skipped, in-flight slots drain, writers finalize their members as
INCOMPLETE with the reason, and the coordinator raises the error.  Any
exception in the coordinator itself (a bug, a KeyboardInterrupt at a bad
moment) is such an error too.  A child that dies is noticed within POLL
seconds (its exit code); nothing blocks without a timeout, so the
coordinator never hangs.  SIGINT, SIGTERM and SIGHUP (to the coordinator or
to the whole process group: children ignore them) stop the feed the same
way and end in exit 130/143/129; a signal that arrives after the last chunk
was written changes nothing.  Progress and messages are output, best effort:
an output that fails (a closed stderr) is switched off, nothing else.

With ``--on-disk-error continue`` a writer's failed write is not the dump's:
that writer drops its target and forwards its chunks to the others
(degraded.py); the dump stops only when no target is left.  Nothing is lost
silently: a write acknowledged before a failed sync may never reach the
disk, so the coordinator keeps, per writer, the chunk ids it acknowledged
since its last successful sync (at most SYNC_CHUNKS: a writer syncs every
SYNC_EVERY bytes or SYNC_CHUNKS chunks, and says so with the slot it
frees).  When a target fails (a write, an fdatasync, an O_DIRECT stage
flush), those chunks are encoded again from the source and go to the
survivors.  After the last chunk the coordinator asks every live writer to
sync (a barrier) and repeats this for any that fails, so by the time the
writers are told to finish, every chunk is synced on a live target; a chunk
that has no live target left is named in the error (exit 8).

Order: the file (residue) chunks are handed out first: they hold the ELF
header, program headers and notes, without which the pages of a dump that
was stopped early are of little use.
"""

from __future__ import annotations

import mmap
import os
import signal
import struct
import time
import uuid
from array import array
from collections import deque
from dataclasses import dataclass, field, replace

from .config import DumpConfig, fit_workers
from .errors import IncompleteDump, Interrupted, StripedumpError, TargetIOError, UsageError, from_wire
from .format import HEADER_BLOCK, STATE_COMPLETE, STATE_INCOMPLETE, first_record_offset, pack_manifest
from .ipc import END, MessagePipe, RecordPipe, SharedFlag
from .manifest import build_manifest
from .member import MemberWriter, encode_chunk, new_member_header, record_bound, write_member_head
from .degraded import Routes
from .plan import Plan, placement
from .fileio import fsync_dir
from .procs import (JOIN_TIMEOUT, POLL, Signals, child_init, coordinator_pid, describe_exit, join_all, parent_gone,
                    reap, signal_name, spawn)
from .targets import check_targets, close_targets, open_targets
from .vmcore import Source

TASK = "<QI"          # coordinator -> workers: chunk id, slot (| CAREFUL: read page by page)
CAREFUL = 1 << 31
CURRENT = struct.Struct("<QId")  # per worker, in shared memory: chunk id + 1 (0: idle), slot, start
WRITE = "<QIIQQ"      # worker -> writer: chunk id, slot, record length, checksum, source bytes
SYNC = END - 1        # coordinator -> writer: sync now, say what is durable (--on-disk-error continue)
WRITERS_GRACE = 60.0  # seconds writers get beyond JOIN_TIMEOUT to finalize (a final fsync of a slow disk)
SLOT_ALIGN = 4096


@dataclass
class DumpResult:
    dump_id: str
    source: str
    codec: str
    members: list[str]
    bytes_in: int
    bytes_out: list[int]
    chunks: int
    seconds: float
    workers: int
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        out = sum(self.bytes_out)
        return self.bytes_in / out if out else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes_in / self.seconds / 1e6 if self.seconds else 0.0

    def summary(self) -> str:
        outs = ", ".join(f"{p} {n / 1e6:.1f} MB" for p, n in zip(self.members, self.bytes_out))
        bad = self.extra.get("unreadable_blocks", 0)
        return (f"dumped {self.bytes_in / 1e6:.1f} MB from {self.source} to {len(self.members)} "
                f"member(s) [{outs}], {self.codec}, ratio {self.ratio:.2f}, "
                f"{self.seconds:.2f} s, {self.mb_per_s:.1f} MB/s"
                + (f"; {bad} block(s) of source memory could not be read and are recorded as "
                   "unreadable" if bad else "")
                + "".join(f"; degraded: target {f['path']} failed and was dropped, {f['moved']} of its "
                          "chunks are on the other members" for f in self.extra.get("degraded", [])))

    def to_json(self) -> dict:
        return {"dump_id": self.dump_id, "source": self.source, "codec": self.codec,
                "members": [{"path": p, "bytes": n} for p, n in zip(self.members, self.bytes_out)],
                "input_bytes": self.bytes_in, "output_bytes": sum(self.bytes_out),
                "chunks": self.chunks, "seconds": round(self.seconds, 6),
                "mb_per_s": round(self.mb_per_s, 3), "ratio": round(self.ratio, 4),
                "workers": self.workers, **self.extra}




def _worker(wid, src, codec_spec, plan_json, block_bytes, pool, slot_size, tasks, writer_qs,
            events, stop, current) -> None:
    child_init()
    try:
        codec = codec_spec.make()
        plan = Plan.from_json(plan_json)
        zero = bytes(block_bytes)
        pool_mv = memoryview(pool)
        for cid, slot in tasks.records(POLL):
            careful, slot = bool(slot & CAREFUL), slot & ~CAREFUL
            if stop.value:
                events.put(("skip", slot))
                continue
            # what this worker is on, for the coordinator if a page fault kills us
            CURRENT.pack_into(current, wid * CURRENT.size, cid + 1, slot, time.monotonic())
            try:
                chunk = plan.chunk(cid)
                out = pool_mv[slot * slot_size:(slot + 1) * slot_size]
                length, csum, unreadable = encode_chunk(src, codec, chunk, block_bytes, out, zero, careful)
                out.release()
            except StripedumpError as e:
                events.put(("err", f"worker {wid}", slot, *e.to_wire()))
                continue
            finally:
                CURRENT.pack_into(current, wid * CURRENT.size, 0, 0, 0.0)
            if unreadable:
                events.put(("unreadable", cid, unreadable))
            writer_qs[placement(cid, len(writer_qs))].put(
                cid, slot, length, csum, chunk.raw_bytes(plan.page_size))
    except Exception as e:   # a bug: report it rather than die silently
        events.put(("err", f"worker {wid}", None, "StripedumpError",
                    f"internal error in worker {wid}: {type(e).__name__}: {e}"))


def _writer(d, writer: MemberWriter, pool, slot_size, inbox, events, notes, routes=None) -> None:
    """Append the chunks of member ``d``; finalize it at END.

    Each chunk written is acknowledged with ("free", slot, raw bytes, d,
    chunk id, durable): ``durable`` is -1, or, when that write was followed
    by a sync, how many of the latest chunks are still not on the disk
    (``--direct-io``: staged).  From these the coordinator knows which
    chunks a failure of this target can take with it: those since its last
    sync.  SYNC (the coordinator's barrier before END) syncs now and answers
    ("synced", d, durable).

    ``routes`` (``--on-disk-error continue``, degraded.py): after a failed
    write or sync this writer drops its target and forwards every chunk it
    gets to a live writer instead of freeing it unwritten.
    """
    child_init()
    pool_mv = memoryview(pool)
    failed = None
    taken: dict[int, int] = {}     # member -> its chunks written here after it failed
    ppid = coordinator_pid()

    def attempt(fn, *args) -> bool:
        """Run a write or sync of the target; on failure drop the target (or report: stop)."""
        nonlocal failed
        try:
            fn(*args)
            return True
        except StripedumpError as e:
            err = e
        except Exception as e:
            err = StripedumpError(f"internal error in writer {d}: {type(e).__name__}: {e}")
        failed = str(err)
        if routes is None:
            events.put(("err", f"writer {d}", None, *err.to_wire()))
        else:
            routes.fail(d)
            failed += " (target dropped: --on-disk-error continue; its chunks are on the other members)"
            events.put(("diskfail", d, str(err)))
        return False

    while True:
        msg = inbox.get(POLL)
        if msg is None:
            if parent_gone(ppid):
                return      # coordinator gone: leave the member unfinalized
            continue
        if msg[0] == END:
            _finish_member(d, writer, msg[1], events, notes, failed, routes, taken)
            return
        if msg[0] == SYNC:
            if not failed and attempt(writer.sync):
                events.put(("synced", d, writer.pending_chunks()))
            continue
        cid, slot, length, csum, raw_len = msg
        if not failed:
            syncs = writer.syncs
            if attempt(writer.append, pool_mv[slot * slot_size:slot * slot_size + length], cid, csum, raw_len):
                if routes is not None and cid % routes.members != d:
                    taken[cid % routes.members] = taken.get(cid % routes.members, 0) + 1
                events.put(("free", slot, raw_len, d, cid,
                            writer.pending_chunks() if writer.syncs != syncs else -1))
                continue
        if routes is not None:
            if routes.forward(cid, slot, length, csum, raw_len):
                continue       # the slot now belongs to the writer it went to
            events.put(("lost", d, cid))
        events.put(("skip", slot))


def _finish_member(d, writer: MemberWriter, state, events, notes, failed, routes, taken) -> None:
    """Index, footer, header: complete or incomplete as the coordinator says (a dropped target: incomplete)."""
    note = _read_note(notes)
    if failed:
        state, note = STATE_INCOMPLETE, failed
    try:
        length = writer.finish(state, note, routes.footer_entries(taken) if routes else ())
    except Exception as e:
        if not failed:        # a dropped target's finish may well fail: it was reported already
            err = e if isinstance(e, StripedumpError) else StripedumpError(
                f"internal error in writer {d}: {type(e).__name__}: {e}")
            events.put(("err", f"writer {d}", None, *err.to_wire()))
        length = writer.pos
    events.put(("done", d, length, writer.chunks, writer.bytes_in, taken))


def _write_note(notes, text: str) -> None:
    data = text.encode()[:len(notes) - 4]
    notes[:4 + len(data)] = struct.pack("<I", len(data)) + data


def _read_note(notes) -> str:
    (n,) = struct.unpack_from("<I", notes)
    return bytes(notes[4:4 + n]).decode("utf-8", "replace")


def dump(cfg: DumpConfig, progress=None, say=None) -> DumpResult:
    """Dump ``cfg.source`` striped over ``cfg.targets``; raises StripedumpError.

    ``progress(done_bytes, total_bytes)`` is called as chunks land;
    ``say(message, level)`` receives verbose details (level 1, 2) and
    warnings (level 0: a setting lowered to fit the machine; show them always).

    Output is best effort: a ``progress`` or ``say`` that raises OSError
    (EPIPE, EIO, ENOSPC on a closed or full stderr) is switched off and
    changes nothing else.  SIGINT, SIGTERM and SIGHUP from here on stop the
    dump with every member finalized as incomplete (procs.py).
    """
    with Signals() as sig:
        t0 = time.monotonic()
        cfg.codec.make()      # a missing codec library is a usage error, before anything is touched
        src = Source(cfg.source, use_mmap=cfg.use_mmap)
        try:
            return _dump(cfg, src, t0, _best_effort(progress),
                         _best_effort(say or (lambda msg, level=1: None)), sig)
        finally:
            src.close()


def _best_effort(output):
    """``output`` (a progress or message callback), switched off at its first OSError."""
    if output is None:
        return None
    on = [True]

    def call(*args, **kw):
        if on[0]:
            try:
                output(*args, **kw)
            except OSError:
                on[0] = False
    return call


def _dump(cfg: DumpConfig, src: Source, t0: float, progress, say, sig=None) -> DumpResult:
    chunk_pages, block_bytes = cfg.geometry(src.page_size)
    targets = check_targets(list(cfg.targets), src.st, cfg.force)
    plan = Plan(src.pfn_ranges, src.residue(), src.page_size, chunk_pages)
    nmem = len(targets)
    # workers and pool lowered to what the machine has, a warning each, never refused
    workers, too_many = fit_workers(cfg.workers)
    fit = fit_pool(workers, nmem, plan.chunk_bytes, block_bytes, cfg.memory_limit, cfg.direct_io)
    for note in ((too_many,) if too_many else ()) + fit.warnings:
        say(note, 0)
    cfg = replace(cfg, workers=fit.workers)
    pool = (fit.slots, fit.slot_size)
    info = src.info
    say(f"source {src.path}: ELF{info.elfclass}, {len(info.loads)} PT_LOADs, page size {src.page_size}, "
        f"{plan.total_pages} pages in {len(plan.pfn_ranges)} range(s), {plan.residue_bytes} bytes of "
        f"headers and padding, kernel {info.vmcoreinfo.get('OSRELEASE', 'unknown')}")
    say(f"plan: {plan.n_chunks} chunks of {plan.chunk_bytes >> 10} KiB, blocks of {block_bytes >> 10} KiB, "
        f"codec {cfg.codec}, {cfg.nworkers} worker(s), {nmem} member(s) round robin, "
        f"{pool[0]} buffer slots = {pool[0] * pool[1] / 2**20:.1f} MiB"
        + (", O_DIRECT" if cfg.direct_io else ""))
    dump_id = uuid.uuid4()
    manifest = build_manifest(src, plan, cfg, str(dump_id), block_bytes, nmem)
    manifest_rec = pack_manifest(manifest, dump_id.bytes)
    # chunk records start page-aligned, so --direct-io can write them as they come
    start = first_record_offset(HEADER_BLOCK, len(manifest_rec))
    headers = []
    # every target locked (canonical order) before any is truncated or written;
    # held until the members are finalized (targets.py: exclusive targets)
    open_targets(targets, start + 4096, cfg.direct_io, cfg.force)
    try:
        for i, t in enumerate(targets):
            h = new_member_header(dump_id.bytes, i, nmem, cfg.codec.codec_id, cfg.codec.stored_level,
                                  src.page_size, chunk_pages, block_bytes // src.page_size, len(manifest_rec))
            write_member_head(t.fd, t.path, h, manifest_rec, start)
            headers.append(h)
        if cfg.manifest_path:
            _write_json_manifest(cfg.manifest_path, manifest, [t.path for t in targets])
        result = _run(cfg, src, plan, targets, headers, start, block_bytes, pool, progress, say, sig)
    finally:
        close_targets(targets)
    result.dump_id = str(dump_id)
    result.seconds = time.monotonic() - t0
    result.extra["lowered"] = [n for n in (too_many,) + fit.warnings if n]   # --json: what was lowered
    return result


def _write_json_manifest(path: str, manifest: dict, members: list[str]) -> None:
    """Write the JSON manifest so that a reader sees the old file or the new one, never a part.

    A temporary file in the same directory, synced, renamed over ``path``, and
    the directory synced: after a power loss the name points at a whole file.
    """
    import json
    import tempfile
    if any(os.path.exists(p) and os.path.samefile(p, path) for p in members if os.path.exists(path)):
        raise UsageError(f"--manifest {path} is one of the targets")
    folder, name = os.path.split(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "w") as f:
            json.dump({**manifest, "member_paths": members}, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)    # mkstemp makes 0600; keep what open() would have made
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise TargetIOError(f"cannot write manifest {path}: {e.strerror}") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    fsync_dir(folder, TargetIOError)


# Private memory of one worker or writer process outside the pool: measured
# 1.7-2.9 MiB private dirty and 5-6 MiB PSS per child (zlib:9, 1 MiB chunks,
# Python 3.11, forked from the coordinator), rounded up.
PROC_BYTES = 8 << 20
# Address space a child needs beyond the pool it inherits (ulimit -v counts the
# pool in every process): Python's heap and the codec's state; its mmap window
# of the source (one chunk) is counted on top.
AS_RESERVE = 64 << 20


def available_memory() -> int:
    """Memory this dump may use: MemAvailable, lowered to the cgroup's headroom if it has a limit."""
    avail = None
    try:
        import psutil
        avail = psutil.virtual_memory().available
    except Exception:     # psutil missing: /proc/meminfo says the same
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        avail = int(line.split()[1]) * 1024
        except (OSError, ValueError):
            pass
    if avail is None:
        avail = 256 << 20
    room = _cgroup_room()
    return avail if room is None else max(0, min(avail, room))


def _cgroup_room() -> int | None:
    """limit - usage + reclaimable page cache of the tightest memory cgroup above us (v2 or v1)."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = [ln.rstrip("\n").split(":", 2) for ln in f]
    except OSError:
        return None
    best = None
    for _, controllers, path in (ln for ln in lines if len(ln) == 3):
        if controllers == "":
            base, files = "/sys/fs/cgroup", ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):
            base, files = "/sys/fs/cgroup/memory", ("memory.limit_in_bytes", "memory.usage_in_bytes",
                                                    "total_inactive_file")
        else:
            continue
        parts = [p for p in path.split("/") if p]
        while True:
            d = os.path.join(base, *parts)
            try:
                with open(os.path.join(d, files[0])) as f:
                    text = f.read().strip()
                if text != "max" and int(text) < 1 << 60:
                    with open(os.path.join(d, files[1])) as f:
                        used = int(f.read())
                    with open(os.path.join(d, "memory.stat")) as f:
                        stat = dict(ln.split() for ln in f if len(ln.split()) == 2)
                    room = int(text) - used + int(stat.get(files[2], 0))
                    best = room if best is None else min(best, room)
            except (OSError, ValueError):
                pass
            if not parts:
                break
            parts.pop()
    return best


def address_space_room() -> int | None:
    """Bytes this process may still map under RLIMIT_AS (ulimit -v), or None without a limit."""
    import resource
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return max(0, soft - int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    return soft


def _size(n: int) -> str:
    for unit, shift in (("PiB", 50), ("TiB", 40), ("GiB", 30)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n >> 20} MiB" if n >= 64 << 20 else f"{n >> 10} KiB"


@dataclass(frozen=True)
class PoolFit:
    workers: int
    slots: int
    slot_size: int
    warnings: tuple[str, ...] = ()


def fit_pool(workers: int, disks: int, chunk_bytes: int, block_bytes: int, memory_limit: int = 0,
             direct_io: bool = False, avail: int | None = None, as_room: int | None = None) -> PoolFit:
    """Workers and buffer pool that fit the machine; lowered with a warning, refused only if nothing fits.

    slot = roundup(chunk + 4 * chunk/block + 52, 4 KiB): a chunk stored raw
    plus its block table.  Slots S = 2W + 2D: each worker fills one while the
    next waits, each writer writes one while the next waits; W + D at least.
    The pool (S x slot) plus D staging buffers of 4 MiB with --direct-io must
    fit in the limit; the default limit is a quarter of the available memory,
    as makedumpfile sizes its cyclic buffer from free memory (raised up to
    half of it when one worker's pool would not fit in a quarter).  What
    cannot fit is lowered, never refused while one worker fits (a capture
    kernel has 128-512 MiB and a refusal there means no dump):

    * ``--memory-limit`` above half of the available memory (MemAvailable,
      or the cgroup's headroom), or above what ``ulimit -v`` leaves (the pool
      is mapped in every process): lowered to that;
    * more workers than the available memory holds as processes
      (PROC_BYTES each, within the other half): fewer workers;
    * a pool too small for one slot per worker and disk: fewer workers,
      then fewer slots.
    """
    from .member import STAGE_BYTES
    slot = -(-record_bound(chunk_bytes, block_bytes) // SLOT_ALIGN) * SLOT_ALIGN
    stage = disks * STAGE_BYTES if direct_io else 0
    avail = available_memory() if avail is None else avail
    as_room = address_space_room() if as_room is None else as_room
    notes = []
    ceiling, what = avail // 2, f"half of the available memory ({_size(avail)})"
    if as_room is not None and as_room - AS_RESERVE - chunk_bytes < ceiling:
        ceiling = max(0, as_room - AS_RESERVE - chunk_bytes)
        what = f"the address-space limit (ulimit -v: {_size(as_room)} left)"
    if memory_limit:
        limit = memory_limit
        if limit > ceiling:
            limit = ceiling
            notes.append(f"--memory-limit {_size(memory_limit)} does not fit in {what}; "
                         f"using {_size(limit)}")
    else:
        limit = min(ceiling, max(avail // 4, (1 + disks) * slot + stage))
    procs = max(1, avail // 2 // PROC_BYTES - disks - 1)
    if workers > procs:
        notes.append(f"{workers} worker processes do not fit in half of the available memory "
                     f"({_size(avail)}, about {PROC_BYTES >> 20} MiB per process); using {procs}")
        workers = procs
    budget = limit - stage
    fits = budget // slot if budget > 0 else 0
    if fits < workers + disks:
        if fits < 1 + disks:
            raise UsageError(f"memory limit {_size(limit)} is too small for one worker and {disks} "
                             f"disk(s) with {chunk_bytes >> 10} KiB chunks: the buffer pool needs at least "
                             f"{_size((1 + disks) * slot + stage)}"
                             + ("" if limit == memory_limit else f" ({what} caps it)")
                             + "; lower --chunk-size or raise --memory-limit")
        notes.append(f"the buffer pool of {workers} worker(s) does not fit in the memory limit "
                     f"({_size(limit)}: {fits} slot(s) of {slot >> 10} KiB, one per worker and disk "
                     f"at least); using {fits - disks} worker(s)")
        workers = fits - disks
    return PoolFit(workers, min(2 * workers + 2 * disks, fits), slot, tuple(notes))


def pool_geometry(workers: int, disks: int, chunk_bytes: int, block_bytes: int,
                  memory_limit: int = 0, direct_io: bool = False) -> tuple[int, int]:
    """(slots, slot size) of the buffer pool for ``workers`` (see fit_pool, which may lower them)."""
    fit = fit_pool(workers, disks, chunk_bytes, block_bytes, memory_limit, direct_io)
    return fit.slots, fit.slot_size


def _run(cfg, src, plan, targets, headers, start, block_bytes, geometry, progress, say,
         sig=None) -> DumpResult:
    return _Coordinator(cfg, src, plan, targets, headers, start, block_bytes, geometry, progress, say,
                        sig).run()


def _as_error(e: BaseException) -> StripedumpError:
    """Any exception that reaches the coordinator as the error that ends the dump."""
    if isinstance(e, StripedumpError):
        return e
    if isinstance(e, KeyboardInterrupt):
        return Interrupted("interrupted by SIGINT; members finalized as incomplete", signal.SIGINT)
    return StripedumpError(f"internal error in the coordinator: {type(e).__name__}: {e}")


class _Coordinator:
    """One dump's parent process: starts the children, feeds chunks, handles events, shuts down.

    ``run`` = ``start_children``, then ``feed`` (phase 1) inside a handler
    that turns any exception into the dump's error, then ``shutdown``
    (phase 2), which always runs: every member is finalized and every
    child joined or killed, whatever happened before.
    """

    def __init__(self, cfg, src, plan, targets, headers, start, block_bytes, geometry, progress, say, sig):
        self.cfg, self.src, self.plan, self.targets = cfg, src, plan, targets
        self.headers, self.start, self.block_bytes = headers, start, block_bytes
        self.progress, self.say = progress, say
        self.sig = sig if sig is not None else Signals()
        self.W, self.D = cfg.nworkers, len(targets)
        self.nslots, self.slot_size = geometry
        # shared memory and pipes: made by open(), inside run()'s handler
        self.pool = self.notes = self.current = self.stop = self.routes = None
        self.tasks = self.events = None
        self.writer_qs: list[RecordPipe] = []
        self.plan_json = plan.to_json()
        self.workers: list = []
        self.writers: list = []
        self.free = list(range(self.nslots))
        self.inflight = 0                  # slots handed out and not back yet
        self.error: StripedumpError | None = None
        self.chunk_ids = plan.feed_order()
        self.exhausted = False
        self.resend: deque[int] = deque()  # chunks to encode again: their target failed before a sync
        # per writer, the chunks it acknowledged since its last successful sync
        # (--on-disk-error continue); at most SYNC_CHUNKS each
        self.acked = [array("q") for _ in range(self.D)]
        self.resent: dict[int, int] = {}   # member -> chunks encoded again after its target failed
        self.lost: list[int] = []          # chunks that may be on no disk
        self.dropped: dict[int, str] = {}  # member -> why its target failed (--on-disk-error continue)
        self.barrier: set[int] | None = None   # writers whose SYNC answer is awaited
        self.barrier_drops = 0
        self.done_in = 0
        self.unreadable: dict[int, int] = {}   # chunk id -> blocks the source could not give
        self.retried: set[int] = set()
        self.stalled: set[int] = set()
        self.members_done: dict[int, tuple] = {}

    # -- the whole run ---------------------------------------------------------------

    def run(self) -> DumpResult:
        try:
            self.open()
            self.start_children()
            self.feed()
        except BaseException as e:    # a bug, or KeyboardInterrupt at a bad moment
            self.fail(_as_error(e))
        finally:
            self.shutdown()
        return self.result()

    def fail(self, e: StripedumpError) -> None:
        """The first error ends the dump: the feed stops, workers skip what is left."""
        if self.error is None:
            self.error = e
            if self.stop is not None:
                self.stop.value = 1

    def open(self) -> None:
        self.pool = mmap.mmap(-1, self.nslots * self.slot_size, mmap.MAP_SHARED)
        self.notes = mmap.mmap(-1, 4096, mmap.MAP_SHARED)   # why the dump ended early, for the writers
        self.current = mmap.mmap(-1, self.W * CURRENT.size, mmap.MAP_SHARED)
        self.stop = SharedFlag()           # set by the coordinator: workers skip what is left
        self.tasks, self.events = RecordPipe(TASK), MessagePipe()
        self.writer_qs = [RecordPipe(WRITE) for _ in range(self.D)]
        if self.cfg.on_disk_error == "continue":
            self.routes = Routes(self.writer_qs)

    def start_children(self) -> None:
        for d, t in enumerate(self.targets):
            w = MemberWriter(t.fd, t.path, self.headers[d], self.start, self.cfg.direct_io, self.cfg.discard)
            self.writers.append(spawn(_writer, f"stripedump-writer-{d}",
                                      (d, w, self.pool, self.slot_size, self.writer_qs[d], self.events,
                                       self.notes, self.routes)))
        for i in range(self.W):
            self.workers.append(self.new_worker(i))
        for p in self.writers + self.workers:
            self.say(f"started {p.name} (pid {p.pid})", 2)

    def new_worker(self, i: int):
        return spawn(_worker, f"stripedump-worker-{i}",
                     (i, self.src, self.cfg.codec, self.plan_json, self.block_bytes, self.pool,
                      self.slot_size, self.tasks, self.writer_qs, self.events, self.stop, self.current))

    # -- phase 1: the feed loop ------------------------------------------------------

    def feed(self) -> None:
        """Hand out chunks while slots are free and handle events, until all are written or the dump stops."""
        while True:
            if self.sig.signum and self.error is None:
                self.fail(Interrupted(f"interrupted by {signal_name(self.sig.signum)}; members finalized "
                                      "as incomplete", self.sig.signum))
            self.hand_out()
            if self.idle() and (self.error is not None or self.routes is None or self.barrier_passed()):
                return
            evs = self.events.get_all(POLL)
            self.watch_workers()
            if not evs or any(p.exitcode is not None for p in self.workers):
                if self.dead_children(self.workers, "worker") or self.dead_children(self.writers, "writer"):
                    return      # a dead child's slots never come back: stop waiting for them
            for ev in evs:
                self.on_event(ev)
            if self.progress:
                self.progress(self.done_in, self.plan.input_bytes)

    def hand_out(self) -> None:
        while self.error is None and self.free:
            if self.resend:
                cid = self.resend.popleft()
            elif self.exhausted:
                return
            else:
                cid = next(self.chunk_ids, None)
                if cid is None:
                    self.exhausted = True
                    return
            self.tasks.put(cid, self.free.pop() | (CAREFUL if cid in self.retried else 0))
            self.inflight += 1

    def idle(self) -> bool:
        """Nothing in flight, and nothing more to hand out."""
        return self.inflight == 0 and (self.error is not None or (self.exhausted and not self.resend))

    def barrier_passed(self) -> bool:
        """``--on-disk-error continue``, all written: have the live writers synced it all?

        A target whose sync fails here is dropped like any failed target and
        its chunks since its last sync are encoded again for the others; then
        the survivors are asked again, until a barrier passes with no new
        failure.  The writers are told to finish only after that.
        """
        if self.barrier is None:
            self.barrier = {d for d in range(self.D) if d not in self.dropped}
            self.barrier_drops = len(self.dropped)
            for d in self.barrier:
                self.writer_qs[d].put(SYNC, 0, 0, 0, 0)
            return False
        if self.barrier:
            return False       # answers pending
        self.barrier = None
        return len(self.dropped) == self.barrier_drops

    # -- events from the children ----------------------------------------------------

    def on_event(self, ev) -> None:
        kind = ev[0]
        if kind == "free":             # a chunk written: slot back
            _, slot, raw, d, cid, durable = ev
            self.free.append(slot)
            self.inflight -= 1
            self.done_in += raw
            if self.routes is not None:
                self.acknowledged(d, cid, durable)
        elif kind == "skip":           # a chunk not written (the dump stops): slot back
            self.free.append(ev[1])
            self.inflight -= 1
        elif kind == "unreadable":
            self.unreadable[ev[1]] = ev[2]
        elif kind == "err":
            _, who, slot, name, msg = ev
            self.fail(from_wire(name, msg))
            if slot is not None:
                self.free.append(slot)
                self.inflight -= 1
        elif kind == "synced":
            self.acknowledged(ev[1], None, ev[2])
            if self.barrier is not None:
                self.barrier.discard(ev[1])
        elif kind == "diskfail":       # --on-disk-error continue (degraded.py)
            self.target_failed(ev[1], ev[2])
        elif kind == "lost":           # a chunk found no target left to go to
            self.lost.append(ev[2])
            self.fail(TargetIOError(f"every target failed; the last: {self.targets[ev[1]].path}: "
                                    f"{self.dropped.get(ev[1])}"))

    def acknowledged(self, d: int, cid: int | None, durable: int) -> None:
        """Writer ``d`` wrote ``cid``; ``durable`` >= 0: it synced all but its last ``durable`` chunks."""
        acked = self.acked[d]
        if cid is not None:
            acked.append(cid)
        if durable >= 0:
            del acked[:max(0, len(acked) - durable)]

    def target_failed(self, d: int, msg: str) -> None:
        """Member ``d``'s target failed: its chunks since its last sync go to the others again."""
        self.dropped[d] = msg
        if self.barrier is not None:
            self.barrier.discard(d)
        again, self.acked[d] = self.acked[d], array("q")
        survivors = self.routes.survivors()
        self.say(f"target {self.targets[d].path} failed ({msg}); dropped it, striping over {survivors} "
                 f"other target(s); {len(again)} chunk(s) written there since its last sync are "
                 "encoded again for them")
        if survivors == 0:
            self.lost.extend(again)
            self.fail(TargetIOError(f"every target failed; the last: {self.targets[d].path}: {msg}"))
            return
        self.resent[d] = self.resent.get(d, 0) + len(again)
        for cid in again:
            self.done_in -= self.plan.chunk(cid).raw_bytes(self.plan.page_size)
        self.resend.extend(again)

    # -- children that die or hang ---------------------------------------------------

    def watch_workers(self) -> None:
        """Kill a worker stuck on one chunk (a read that never returns) so it can be retried."""
        now = time.monotonic()
        for i, p in enumerate(self.workers):
            cid, slot, t0 = CURRENT.unpack_from(self.current, i * CURRENT.size)
            # t0 == 0: the worker is between writing cid and t0 (pack_into is not atomic)
            if cid and t0 and p.exitcode is None and now - t0 > self.cfg.stall_seconds \
                    and i not in self.stalled:
                self.stalled.add(i)
                self.say(f"worker {i} has been on chunk {cid - 1} for {now - t0:.0f} s; killing it")
                p.kill()

    def dead_children(self, children, label) -> bool:
        """True when a child died unexpectedly (the dump fails); a worker killed by a bad page is replaced."""
        for i, p in enumerate(children):
            if children is self.workers and self.retry_chunk_of(i, p):
                continue
            if p.exitcode is not None:
                self.fail(StripedumpError(f"{label} {i} (pid {p.pid}) {describe_exit(p)} unexpectedly")
                          if p.exitcode != 0 else StripedumpError(f"{label} {i} stopped unexpectedly"))
                return True
        return False

    def retry_chunk_of(self, i: int, p) -> bool:
        """Worker ``i`` died of SIGBUS (unreadable memory) or was stuck: read its chunk page by page."""
        killed = i in self.stalled and p.exitcode is not None
        if p.exitcode != -signal.SIGBUS and not killed:
            return False
        self.stalled.discard(i)
        cid, slot, _ = CURRENT.unpack_from(self.current, i * CURRENT.size)
        if not cid or cid - 1 in self.retried:
            return False
        self.retried.add(cid - 1)
        CURRENT.pack_into(self.current, i * CURRENT.size, 0, 0, 0.0)
        why = "hit unreadable memory" if p.exitcode == -signal.SIGBUS else "was stuck"
        self.say(f"worker {i} {why} in chunk {cid - 1}; reading it page by page")
        p.join()
        self.workers[i] = self.new_worker(i)
        self.tasks.put(cid - 1, slot | CAREFUL)
        return True

    # -- phase 2: shutdown, whatever happened ----------------------------------------

    def shutdown(self) -> None:
        """Stop the workers, finalize every member, join every child; kill what does not stop."""
        try:
            for _ in self.workers:
                self.tasks.put(END, 0)
            join_all(self.workers, self.fail, "worker")
            self.finish_members()
            join_all(self.writers, self.fail, "writer")
        except BaseException as e:
            self.fail(_as_error(e))
        finally:
            reap(self.workers + self.writers)
            for pipe in [self.tasks, self.events] + self.writer_qs:
                if pipe is not None:
                    pipe.close()
        for d in range(self.D):
            if d not in self.members_done:
                self.fail(TargetIOError(f"target {self.targets[d].path}: writer did not finish; "
                                        "the member is incomplete"))

    def finish_members(self) -> None:
        """Tell every writer how to finish (complete, or incomplete and why); collect what they say."""
        state = STATE_COMPLETE if self.error is None else STATE_INCOMPLETE
        note = "" if self.error is None else str(self.error)
        if self.dropped and self.error is None:
            note = "degraded: " + "; ".join(f"target {self.targets[d].path} failed ({m}) and was dropped"
                                            for d, m in sorted(self.dropped.items()))
        for d in range(len(self.writers), self.D):
            self.finish_here(d, note)
        if self.notes is not None:
            _write_note(self.notes, note)
        for q in self.writer_qs[:len(self.writers)]:
            q.put(END, state, 0, 0, 0)
        deadline = time.monotonic() + JOIN_TIMEOUT + WRITERS_GRACE
        while len(self.members_done) < self.D and time.monotonic() < deadline:
            evs = self.events.get_all(POLL)
            if not evs and all(p.exitcode is not None for p in self.writers):
                break
            for ev in evs:
                if ev[0] == "done":
                    self.members_done[ev[1]] = ev[2:]
                    self.say(f"member {self.targets[ev[1]].path}: {ev[3]} chunks, {ev[2]} bytes, synced")
                elif ev[0] == "err":
                    self.fail(from_wire(ev[3], ev[4]))
        if self.sig.signum and self.error is None:
            self.say(f"{signal_name(self.sig.signum)} came after the last chunk was written; the dump "
                     "is complete")

    def finish_here(self, d: int, note: str) -> None:
        """Member ``d``'s writer never started (a failed fork): finalize it here, as incomplete."""
        t = self.targets[d]
        try:
            w = MemberWriter(t.fd, t.path, self.headers[d], self.start, self.cfg.direct_io, self.cfg.discard)
            self.members_done[d] = (w.finish(STATE_INCOMPLETE, note), 0, 0, {})
        except StripedumpError as e:
            self.fail(e)

    def result(self) -> DumpResult:
        if self.pool is not None:
            self.pool.close()
        if self.error is not None:
            err = self.error
            if not isinstance(err, Interrupted):
                lost = f"; {self.describe_lost()}; the members hold every other chunk" if self.lost else \
                    "; the members hold every chunk"
                err = IncompleteDump(f"dump incomplete: {err}{lost} written before the failure")
            raise err
        degraded = [{"member": d, "path": self.targets[d].path, "error": m,
                     "moved": sum(v[3].get(d, 0) for v in self.members_done.values()),
                     "resent": self.resent.get(d, 0)}
                    for d, m in sorted(self.dropped.items())]
        return DumpResult("", self.src.path, str(self.cfg.codec), [t.path for t in self.targets],
                          self.plan.input_bytes, [self.members_done[d][0] for d in range(self.D)],
                          self.plan.n_chunks, 0.0, self.W,
                          {"block_bytes": self.block_bytes, "chunk_bytes": self.plan.chunk_bytes,
                           "slots": self.nslots, "pool_bytes": self.nslots * self.slot_size,
                           "unreadable_blocks": sum(self.unreadable.values()), "degraded": degraded})

    def describe_lost(self) -> str:
        lost = sorted(set(self.lost))
        ps = self.plan.page_size
        named = ", ".join(f"chunk {c} ({self.plan.chunk(c).describe(ps)})" for c in lost[:5])
        more = f" and {len(lost) - 5} more" if len(lost) > 5 else ""
        return (f"{len(lost)} chunk(s) were on failed targets only, not synced, and may be lost: "
                f"{named}{more}")
