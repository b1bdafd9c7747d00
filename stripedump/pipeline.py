"""The dump pipeline: a coordinator, a pool of workers, one writer per member.

Design
------
Processes, not threads: per-page compression calls are ~3 us and the GIL
hand-off between CPUs eats the gain of threads (machine-limits §3).  Every
child is forked from the coordinator, so the source's file descriptor and
one anonymous shared mapping (the *slot pool*) are inherited; nothing needs
/dev/shm, which a capture kernel may not mount.

    coordinator --(chunk id, slot)--> task pipe --> worker 1..W
        worker: maps the chunk's source pages itself (mmap window), zero-tests
        and compresses block by block straight into its slot, then
        --(chunk id, slot, length, checksum)--> pipe of writer (id % D)
        writer d: one large write() of the slot to member d, index entry,
        --(slot freed)--> coordinator's event pipe

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

Failure: every error in a child travels back as (class name, message) on the
event pipe.  The first one stops the feed: new tasks are skipped, in-flight
slots drain, writers finalize their members as INCOMPLETE with the reason,
and the coordinator raises the error.  A child that dies is noticed within
POLL seconds (its exit code); nothing blocks without a timeout, so the
coordinator never hangs.  SIGINT/SIGTERM stop the feed the same way.
A writer blocked on a target that stopped answering (D state) is noticed by
the progress of its device, abandoned and never waited for (iowatch.py);
once the writers run, only its writer holds a target open.
With ``--on-disk-error continue`` a writer's failed write is not the dump's:
that writer drops its target and forwards its chunks to the others
(degraded.py); the dump stops only when no target is left.

Order: the file (residue) chunks are handed out first: they hold the ELF
header, program headers and notes, without which the pages of a dump that
was stopped early are of little use.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import queue
import signal
import struct
import time
import uuid
from dataclasses import dataclass, field, replace

from . import __version__
from .config import DumpConfig, fit_workers
from .errors import IncompleteDump, Interrupted, StripedumpError, TargetIOError, UsageError, from_wire
from .format import (HEADER_BLOCK, MEMBER_MAGIC, STATE_COMPLETE, STATE_INCOMPLETE, STATE_WRITING,
                     VERSION, CHECKSUM_XXH3_64, MemberHeader, first_record_offset, pack_manifest)
from .ipc import END, MessagePipe, RecordPipe, SharedFlag
from .member import MemberWriter, aligned_block, encode_chunk, record_bound, write_all
from .degraded import Routes
from .iowatch import SYNC, Feed, IOWatch
from .plan import Plan, placement
from .fileio import fsync_dir
from .targets import check_targets, close_targets, open_targets
from .vmcore import Source

POLL = 0.5            # seconds between liveness checks while waiting
TASK = "<QI"          # coordinator -> workers: chunk id, slot (| CAREFUL: read page by page)
CAREFUL = 1 << 31
CURRENT = struct.Struct("<QId")  # per worker, in shared memory: chunk id + 1 (0: idle), slot, start
WRITE = "<QIIQQ"      # worker -> writer: chunk id, slot, record length, checksum, source bytes
JOIN_TIMEOUT = 30.0   # seconds a child gets to exit after its sentinel
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


def build_manifest(src: Source, plan: Plan, cfg: DumpConfig, dump_id: str, block_bytes: int,
                   members: int) -> dict:
    import base64
    from .elfhead import header_pieces
    info = src.info
    return {
        "format_version": VERSION, "tool": f"stripedump {__version__}", "dump_id": dump_id,
        "created": int(time.time()), "codec": str(cfg.codec), "members": members,
        "placement": "round-robin", "block_bytes": block_bytes,
        # "continue": a failed target's chunks may have moved to the other members (degraded.py)
        "on_disk_error": cfg.on_disk_error,
        "source": {"path": os.path.abspath(src.path), "size": src.size, "elfclass": info.elfclass,
                   "endian": info.endian, "machine": info.machine, "page_size": src.page_size,
                   "nr_cpus": info.nr_cpus,
                   "segments": [s.to_json() for s in sorted(info.loads + info.note_segments,
                                                            key=lambda s: s.index)],
                   "notes": base64.b64encode(info.notes).decode(),
                   # the raw ELF header and program headers, so join rebuilds them without member 0
                   "header_pieces": header_pieces(src.fd, src.size)},
        "plan": plan.to_json(),
    }


def _child_init() -> None:
    # Ctrl-C goes to the whole foreground process group; only the coordinator
    # decides what to do about it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def messages(q):
    """Messages from a child's inbox until the ``None`` sentinel.

    Stops as well when the coordinator has gone (the child was re-parented):
    nobody would read the child's results, so it must not wait forever.
    """
    ppid = os.getppid()
    while True:
        try:
            msg = q.get(timeout=POLL)
        except queue.Empty:
            if os.getppid() != ppid:
                return
            continue
        if msg is None:
            return
        yield msg


def _worker(wid, src, codec_spec, plan_json, block_bytes, pool, slot_size, tasks, writer_qs,
            events, stop, current) -> None:
    _child_init()
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


def _writer(d, writer: MemberWriter, pool, slot_size, inbox, events, notes, routes=None,
            watch: IOWatch | None = None, others=()) -> None:
    """Append the chunks of member ``d``; finalize it at END.

    ``routes`` (``--on-disk-error continue``, degraded.py): after a failed
    write this writer drops its target and forwards every chunk it gets to
    a live writer instead of freeing it unwritten.  ``watch`` (iowatch.py):
    where this writer publishes its calls on the target and the chunks not
    yet durable; SYNC asks for a durable point.  ``others``: the other
    targets' fds, closed at once (a writer holds its own target only).
    """
    _child_init()
    _release_output()
    for fd in others:
        os.close(fd)
    pool_mv = memoryview(pool)
    failed = None
    taken: dict[int, int] = {}     # member -> its chunks written here after it failed
    ppid = os.getppid()
    while True:
        msg = inbox.get(POLL)
        if msg is None:
            if os.getppid() != ppid:
                return      # coordinator gone: leave the member unfinalized
            continue
        if msg[0] == END:
            state, note = msg[1], _read_note(notes)
            if failed:
                state, note = STATE_INCOMPLETE, failed
            try:
                with _call(watch, d):
                    length = writer.finish(state, note, routes.footer_entries(taken) if routes else ())
            except StripedumpError as e:
                if not failed:
                    events.put(("err", f"writer {d}", None, *e.to_wire()))
                length = writer.pos
            events.put(("done", d, length, writer.chunks, writer.bytes_in, taken))
            return
        if msg[0] == SYNC:        # iowatch.py: make what was acknowledged durable
            if not failed:
                try:
                    with _call(watch, d):
                        _make_durable(writer, watch, d)
                except StripedumpError as e:
                    failed = str(e)
                    if routes is None:
                        events.put(("err", f"writer {d}", None, *e.to_wire()))
                    else:
                        failed += " (target dropped: --on-disk-error continue)"
                        routes.fail(d)
                        events.put(("diskfail", d, str(e), len(writer.unwritten_chunks())))
            events.put(("synced", d))
            continue
        cid, slot, length, csum, raw_len = msg
        if not failed:
            try:
                with _call(watch, d, cid, slot):
                    at = writer.pos
                    writer.append(pool_mv[slot * slot_size:slot * slot_size + length], cid, csum, raw_len)
                    if watch and not writer.discard and watch.acked(d, cid, at + length, writer.pos,
                                                                    _durable(writer)):
                        _make_durable(writer, watch, d)
                if routes is not None and cid % routes.members != d:
                    taken[cid % routes.members] = taken.get(cid % routes.members, 0) + 1
                events.put(("free", slot, raw_len))
                continue
            except StripedumpError as e:
                err = e
            except Exception as e:
                err = StripedumpError(f"internal error in writer {d}: {type(e).__name__}: {e}")
            failed = str(err)
            if routes is None:
                events.put(("err", f"writer {d}", None, *err.to_wire()))
            else:
                routes.fail(d)
                lost = writer.unwritten_chunks()    # --direct-io: staged, never written
                failed += " (target dropped: --on-disk-error continue; later chunks are on the other members)"
                events.put(("diskfail", d, str(err), len(lost)))
        if routes is not None:
            if routes.forward(cid, slot, length, csum, raw_len):
                continue       # the slot now belongs to the writer it went to
            events.put(("lost", d, 1, [cid]))
        events.put(("free", slot, raw_len))


def _release_output() -> None:
    """A writer holds no pipe of the caller's: one hung on its disk (iowatch.py) must not keep
    ``stripedump ... | logger`` waiting after the dump has exited.  Writers report through the
    event pipe; an unexpected death is reported by the coordinator from its exit status."""
    null = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        os.dup2(null, fd)
    os.close(null)


def _call(watch, d, cid=None, slot=0):
    from contextlib import nullcontext
    return nullcontext() if watch is None else watch.call(d, cid, slot)


def _durable(writer: MemberWriter) -> int:
    """Member offset up to which what was written is on the device (iowatch.py)."""
    return writer._stage_at if writer.direct else writer.synced_to


def _make_durable(writer: MemberWriter, watch, d) -> None:
    if writer.direct:
        writer._flush_stage(final=False)
    else:
        writer._sync_and_drop()
    if watch:
        watch.durable(d, writer.pos, _durable(writer))


def _write_note(notes, text: str) -> None:
    data = text.encode()[:len(notes) - 4]
    notes[:4 + len(data)] = struct.pack("<I", len(data)) + data


def _read_note(notes) -> str:
    (n,) = struct.unpack_from("<I", notes)
    return bytes(notes[4:4 + n]).decode("utf-8", "replace")


def _describe_exit(p) -> str:
    code = p.exitcode
    if code is not None and code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


class _Signals:
    """Turns SIGINT/SIGTERM into a flag the coordinator loop checks."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:   # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def dump(cfg: DumpConfig, progress=None, say=None) -> DumpResult:
    """Dump ``cfg.source`` striped over ``cfg.targets``; raises StripedumpError.

    ``progress(done_bytes, total_bytes)`` is called as chunks land;
    ``say(message, level)`` receives verbose details (level 1, 2) and
    warnings (level 0: a setting lowered to fit the machine; show them always).
    """
    t0 = time.monotonic()
    cfg.codec.make()      # a missing codec library is a usage error, before anything is touched
    src = Source(cfg.source, use_mmap=cfg.use_mmap)
    try:
        return _dump(cfg, src, t0, progress, say or (lambda msg, level=1: None))
    finally:
        src.close()


def _dump(cfg: DumpConfig, src: Source, t0: float, progress, say) -> DumpResult:
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
    manifest_rec = pack_manifest(manifest)
    # chunk records start page-aligned, so --direct-io can write them as they come
    start = first_record_offset(HEADER_BLOCK, len(manifest_rec))
    headers = []
    # every target locked (canonical order) before any is truncated or written;
    # held until the members are finalized (targets.py: exclusive targets)
    open_targets(targets, start + 4096, cfg.direct_io, cfg.force)
    try:
        for i, t in enumerate(targets):
            h = MemberHeader(MEMBER_MAGIC, VERSION, STATE_WRITING, dump_id.bytes, i, nmem,
                             cfg.codec.codec_id, cfg.codec.stored_level, CHECKSUM_XXH3_64,
                             src.page_size, chunk_pages, block_bytes // src.page_size, int(time.time()),
                             HEADER_BLOCK, len(manifest_rec), 0, 0)
            block = aligned_block(h.pack() + bytes(HEADER_BLOCK - MemberHeader.STRUCT.size) + manifest_rec,
                                  start)
            write_all(t.fd, block, f"target {t.path}", 0)
            os.lseek(t.fd, start, os.SEEK_SET)
            headers.append(h)
        if cfg.manifest_path:
            _write_json_manifest(cfg.manifest_path, manifest, [t.path for t in targets])
        result = _run(cfg, src, plan, targets, headers, start, block_bytes, pool, progress, say)
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


def _run(cfg, src, plan, targets, headers, start, block_bytes, geometry, progress, say) -> DumpResult:
    W, D = cfg.nworkers, len(targets)
    nslots, slot_size = geometry
    pool = mmap.mmap(-1, nslots * slot_size, mmap.MAP_SHARED)
    ctx = multiprocessing.get_context("fork")
    tasks, events = RecordPipe(TASK), MessagePipe()
    writer_qs = [RecordPipe(WRITE) for _ in range(D)]
    notes = mmap.mmap(-1, 4096, mmap.MAP_SHARED)     # the reason a dump ended early, for the writers
    current = mmap.mmap(-1, W * CURRENT.size, mmap.MAP_SHARED)
    stop = SharedFlag()        # set by the coordinator: workers skip what is left
    plan_json = plan.to_json()
    routes = Routes(writer_qs) if cfg.on_disk_error == "continue" else None   # degraded.py
    dropped: dict[int, str] = {}      # member -> why its target failed (--on-disk-error continue)
    staged: dict[int, int] = {}       # member -> chunks in its O_DIRECT stage when its target failed
    def new_worker(i):
        return ctx.Process(target=_worker, name=f"stripedump-worker-{i}",
                           args=(i, src, cfg.codec, plan_json, block_bytes, pool, slot_size, tasks,
                                 writer_qs, events, stop, current), daemon=True)
    workers = [new_worker(i) for i in range(W)]
    retried: set[int] = set()
    unreadable = 0
    iow = IOWatch(targets, cfg.io_timeout)        # hung targets (iowatch.py)
    writers = [ctx.Process(target=_writer, name=f"stripedump-writer-{d}",
                           args=(d, MemberWriter(t.fd, t.path, headers[d], start, cfg.direct_io,
                                                 cfg.discard), pool, slot_size,
                                 writer_qs[d], events, notes, routes, iow),
                           kwargs={"others": tuple(u.fd for u in targets if u is not t)}, daemon=True)
               for d, t in enumerate(targets)]
    for p in writers + workers:
        p.start()
        say(f"started {p.name} (pid {p.pid})", 2)
        if p is writers[-1]:
            # from here on only its writer holds a target open (iowatch.py): no other process's
            # close (a flush, on NFS or FUSE) waits on a hung target, the coordinator's exit included
            close_targets(targets)
    free = list(range(nslots))
    inflight = 0
    error: StripedumpError | None = None
    chunk_ids = Feed(plan.feed_order())
    exhausted = False
    done_in = 0
    members_done: dict[int, tuple] = {}

    def fail(e: StripedumpError):
        nonlocal error
        if error is None:
            error = e
            stop.value = 1

    def on_degraded(ev):
        """A writer dropped its target, or a chunk found no target left to go to."""
        if ev[0] == "diskfail":
            _, d, msg, nlost = ev
            dropped[d] = msg
            say(f"target {targets[d].path} failed ({msg}); dropped it, striping over "
                f"{routes.survivors()} other target(s)")
            if nlost:         # the dump goes on without them, and ends incomplete (below)
                staged[d] = nlost
        if routes.survivors() == 0:     # ("lost": a chunk found no target left to go to)
            fail(TargetIOError(f"every target failed; the last: {targets[ev[1]].path}: {dropped.get(ev[1])}"))

    retired: set[int] = set()        # slots a hung writer still holds: never used again
    barrier: set[int] = set()        # members asked for a durable point (SYNC), not answered yet
    synced_all = False

    def watch_targets(final=False):
        """A hung target (iowatch.py): drop it (continue) or stop (stop); never wait for it."""
        nonlocal inflight, exhausted, synced_all
        for d in iow.check():
            writers[d] = iow.abandon(writers[d])
            why, pending, cur = iow.hung[d], iow.pending(d), iow.current(d)
            if cur:
                retired.add(cur[1])
                inflight -= 1
            if d in barrier:
                barrier.discard(d)
                inflight -= 1
            members_done[d] = (iow.position(d), 0, 0, {})
            say(f"{why}; abandoned its writer (pid {writers[d].pid})")
            if routes is None or final:
                fail(TargetIOError(why + (f"; {len(pending)} chunk(s) acknowledged by it may not have "
                                          "reached it" if routes is not None and pending else "")))
            else:
                routes.fail(d)
                dropped[d] = why
                chunk_ids.again.extend(pending)       # encoded again for the other targets
                exhausted = synced_all = False
                if routes.survivors() == 0:
                    fail(TargetIOError(f"every target failed; the last: {why}"))
        for d in iow.hung:       # what workers still send to a hung writer: forward it, or free it
            while (rec := writer_qs[d].get(0)) is not None:
                if rec[0] >= SYNC:
                    continue
                if routes is None or error is not None or not routes.forward(*rec):
                    free.append(rec[1])
                    inflight -= 1

    stalled: set[int] = set()

    def watch_workers():
        """Kill a worker stuck on one chunk (a read that never returns) so it can be retried."""
        now = time.monotonic()
        for i, p in enumerate(workers):
            cid, slot, t0 = CURRENT.unpack_from(current, i * CURRENT.size)
            # t0 == 0: the worker is between writing cid and t0 (pack_into is not atomic)
            if cid and t0 and p.exitcode is None and now - t0 > cfg.stall_seconds and i not in stalled:
                stalled.add(i)
                say(f"worker {i} has been on chunk {cid - 1} for {now - t0:.0f} s; killing it")
                p.kill()

    def dead_children(procs, label):
        for i, p in enumerate(procs):
            killed = i in stalled and p.exitcode is not None
            if procs is workers and (p.exitcode == -signal.SIGBUS or killed):
                # a page of the source could not be read through mmap (SIGBUS:
                # bad or poisoned memory), or the read never returned: retry
                # that chunk page by page with read(), each page once more
                stalled.discard(i)
                cid, slot, _ = CURRENT.unpack_from(current, i * CURRENT.size)
                if cid and cid - 1 not in retried:
                    retried.add(cid - 1)
                    CURRENT.pack_into(current, i * CURRENT.size, 0, 0, 0.0)
                    why = "hit unreadable memory" if p.exitcode == -signal.SIGBUS else "was stuck"
                    say(f"worker {i} {why} in chunk {cid - 1}; reading it page by page")
                    p.join()
                    procs[i] = new_worker(i)
                    procs[i].start()
                    tasks.put(cid - 1, slot | CAREFUL)
                    continue
            if p.exitcode is not None:
                fail(StripedumpError(f"{label} {i} (pid {p.pid}) {_describe_exit(p)} unexpectedly")
                     if p.exitcode != 0 else StripedumpError(f"{label} {i} stopped unexpectedly"))
                return True
        return False

    with _Signals() as sig:
        # Phase 1: feed chunks while slots are free; drain what is in flight.
        while True:
            if sig.signum and error is None:
                fail(Interrupted(f"interrupted by {signal.Signals(sig.signum).name}; "
                                 "members finalized as incomplete", sig.signum))
            while error is None and free and not exhausted:
                cid = next(chunk_ids, None)
                if cid is None:
                    exhausted = True
                    break
                tasks.put(cid, free.pop())
                inflight += 1
            if inflight == 0 and exhausted and error is None and not synced_all:
                # a durable point on every target before the end: a target that hangs now is
                # noticed while the workers can still encode its chunks again (continue) and
                # before the others are finalized (stop: incomplete, naming it)
                synced_all = True
                for d in set(range(D)) - set(iow.hung):
                    writer_qs[d].put(SYNC, 0, 0, 0, 0)
                    barrier.add(d)
                    inflight += 1
            if inflight == 0 and (exhausted or error is not None):
                break
            evs = events.get_all(POLL)
            watch_workers()
            watch_targets()
            if not evs or any(p.exitcode is not None for p in workers):
                if dead_children(workers, "worker") or dead_children(writers, "writer"):
                    break       # a dead child's slots never come back: stop waiting for them
                if not evs:
                    continue
            for ev in evs:
                kind = ev[0]
                if kind == "free" and ev[1] not in retired:
                    free.append(ev[1])
                    inflight -= 1
                    done_in += ev[2]
                elif kind == "skip":
                    free.append(ev[1])
                    inflight -= 1
                elif kind == "unreadable":
                    unreadable += ev[2]
                elif kind == "err":
                    _, who, slot, name, msg = ev
                    fail(from_wire(name, msg))
                    if slot is not None:
                        free.append(slot)
                        inflight -= 1
                elif kind in ("diskfail", "lost"):     # --on-disk-error continue (degraded.py)
                    on_degraded(ev)
                elif kind == "synced" and ev[1] in barrier:
                    barrier.discard(ev[1])
                    inflight -= 1
            if progress:
                progress(done_in, plan.input_bytes)
        for d, n in staged.items():
            fail(TargetIOError(f"target {targets[d].path} failed ({dropped[d]}) with {n} chunk(s) in its "
                               "O_DIRECT staging buffer, not all of which reached the disk"))
        # Phase 2: stop workers, then tell writers how to finish.
        for _ in workers:
            tasks.put(END, 0)
        _join_all(workers, fail, "worker")
        state = STATE_COMPLETE if error is None else STATE_INCOMPLETE
        note = "" if error is None else str(error)
        if dropped and error is None:
            note = "degraded: " + "; ".join(f"target {targets[d].path} failed ({m}) and was dropped"
                                            for d, m in sorted(dropped.items()))
        _write_note(notes, note)
        for q in writer_qs:
            q.put(END, state, 0, 0, 0)
        deadline = time.monotonic() + JOIN_TIMEOUT + 60
        while len(members_done) < D and time.monotonic() < deadline:
            evs = events.get_all(POLL)
            watch_targets(final=True)
            if not evs and all(p.exitcode is not None for p in writers):
                break
            for ev in evs:
                if ev[0] == "done":
                    members_done[ev[1]] = ev[2:]
                    say(f"member {targets[ev[1]].path}: {ev[3]} chunks, {ev[2]} bytes, synced")
                elif ev[0] == "err":
                    fail(from_wire(ev[3], ev[4]))
        _join_all(writers, fail, "writer")
        for d in range(D):
            if d not in members_done:
                fail(TargetIOError(f"target {targets[d].path}: writer did not finish; "
                                   "the member is incomplete"))
    pool.close()
    for pipe in [tasks, events] + writer_qs:
        pipe.close()
    if error is not None:
        if not isinstance(error, Interrupted):
            error = IncompleteDump(f"dump incomplete: {error}; the members hold every chunk "
                                   "written before the failure")
        raise error
    degraded = [{"member": d, "path": targets[d].path, "error": m,
                 "moved": sum(v[3].get(d, 0) for v in members_done.values())}
                for d, m in sorted(dropped.items())]
    return DumpResult("", src.path, str(cfg.codec), [t.path for t in targets], plan.input_bytes,
                      [members_done[d][0] for d in range(D)], plan.n_chunks, 0.0, W,
                      {"block_bytes": block_bytes, "chunk_bytes": plan.chunk_bytes,
                       "slots": nslots, "pool_bytes": nslots * slot_size,
                       "unreadable_blocks": unreadable, "degraded": degraded})


def _join_all(procs, fail, label) -> None:
    deadline = time.monotonic() + JOIN_TIMEOUT
    for i, p in enumerate(procs):
        p.join(max(0.1, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(5)
            fail(StripedumpError(f"{label} {i} (pid {p.pid}) did not stop in time and was killed"))
        elif p.exitcode not in (0, None):
            fail(StripedumpError(f"{label} {i} (pid {p.pid}) {_describe_exit(p)}"))
