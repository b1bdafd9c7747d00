"""The dump pipeline: a coordinator, a pool of workers, one writer per member.

Design
------
Processes, not threads: per-page compression calls are ~3 us and the GIL
hand-off between CPUs eats the gain of threads (machine-limits §3).  Every
child is forked from the coordinator (procs.py: fork, signal policy,
liveness, joining; stages.py: the loops the children run), so the source's file descriptor and one anonymous
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
dump.  W and the pool are lowered to what the machine has (``resources.fit_pool``:
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
A writer blocked on a target that stopped answering (D state) is noticed by
the progress of its device, abandoned and never waited for (iowatch.py);
once the writers run, only its writer holds a target open.

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
sync (a barrier; under ``stop`` too, so that a target hanging in its last
sync is noticed before the others are finalized) and repeats this for any
that fails, so by the time the
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
import time
from array import array
from collections import deque

from .autocodec import EXPLORE as AUTO_EXPLORE
from .config import DumpConfig
from ..errors import IncompleteDump, Interrupted, StripedumpError, TargetIOError, UsageError, from_wire
from ..format.structs import (FEATURE_EXCLUDED, FEATURE_STREAMED, HEADER_BLOCK, STATE_COMPLETE, STATE_INCOMPLETE,
                     first_record_offset, pack_manifest)
from ..runtime.ipc import END, MessagePipe, RecordPipe, SharedFlag
from ..format.manifest import build_manifest, dump_level_entry
from .writer import AUTO_FIRST_SYNC, AUTO_KICK_EVERY, MemberWriter, new_member_header, write_member_head
from .degraded import Routes
from .iowatch import IOWatch
from ..runtime.plain import Plain
from ..format.plan import Plan
from .resources import fit_pool, fit_workers
from ..runtime.fileio import fsync_dir
from .stages import (CAREFUL, CLASS_NAMES, CURRENT, SYNC, TASK, WRITE, class_totals, worker_main, write_note,
                     writer_main)
from ..runtime.procs import JOIN_TIMEOUT, POLL, Signals, describe_exit, join_all, reap, signal_name, spawn
from .targets import check_targets, close_targets, end_streams, open_targets
from ..source.vmcore import Source

WRITERS_GRACE = 60.0  # seconds writers get beyond JOIN_TIMEOUT to finalize (a final fsync of a slow disk)
# the default --workers starts at most one worker per this many chunks: a worker costs about 8 ms of
# CPU (fork, start, exit, join), an lz4 chunk of memory-like data 0.8 ms, and a second worker did not
# make a dump of a 4, 16 or 64 MiB synthetic core faster on this 2-CPU machine with other load on it
# (issue 12; docs/benchmarks.md, "Issue 12: fixed cost of a small dump"); --workers N is taken as given
CHUNKS_PER_WORKER = 16


class DumpResult(Plain):
    __slots__ = ("dump_id", "source", "codec", "members", "bytes_in", "bytes_out", "chunks", "seconds",
                 "workers", "extra")

    def __init__(self, dump_id: str, source: str, codec: str, members: list[str], bytes_in: int,
                 bytes_out: list[int], chunks: int, seconds: float, workers: int, extra: dict | None = None):
        self.dump_id = dump_id
        self.source = source
        self.codec = codec
        self.members = members
        self.bytes_in = bytes_in
        self.bytes_out = bytes_out
        self.chunks = chunks
        self.seconds = seconds
        self.workers = workers
        self.extra = {} if extra is None else extra

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
                + (" (chunks per codec: " + ", ".join(f"{c} {n}" for c, n in self.extra["auto_chunks"].items())
                   + ")" if self.extra.get("auto_chunks") else "")
                + (f"; {bad} block(s) of source memory could not be read and are recorded as "
                   "unreadable" if bad else "")
                + self.level_summary()
                + "".join(f"; degraded: target {f['path']} failed and was dropped, {f['moved']} of its "
                          "chunks are on the other members" for f in self.extra.get("degraded", [])))

    def level_summary(self) -> str:
        lv = self.extra.get("dump_level")
        if lv is None:
            return ""
        per = ", ".join(f"{k} {n}" for k, n in lv["excluded"].items() if n)
        return (f"; dump level {lv['applied']}" + (f" (asked {lv['asked']})" if lv["applied"] != lv["asked"] else "")
                + f": {lv['excluded_pages']} pages left out" + (f" ({per})" if per else ""))

    def to_json(self) -> dict:
        return {"dump_id": self.dump_id, "source": self.source, "codec": self.codec,
                "members": [{"path": p, "bytes": n} for p, n in zip(self.members, self.bytes_out)],
                "input_bytes": self.bytes_in, "output_bytes": sum(self.bytes_out),
                "chunks": self.chunks, "seconds": round(self.seconds, 6),
                "mb_per_s": round(self.mb_per_s, 3), "ratio": round(self.ratio, 4),
                "workers": self.workers, **self.extra}




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
        if cfg.codec.is_auto:   # --codec auto: the default ladder less missing libraries
            cfg = cfg._replace(codec=cfg.codec.resolve())
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
    lowered = cfg.block_lowered(src.page_size)
    if lowered:
        say(lowered, 0)
    targets = check_targets(list(cfg.targets), src.st, cfg.force)
    plan = Plan(src.pfn_ranges, src.residue(), src.page_size, chunk_pages)
    nmem = len(targets)
    # workers and pool lowered to what the machine has, a warning each, never refused
    workers, too_many = fit_workers(cfg.workers)
    workers = max(1, min(workers, plan.n_chunks))    # a small dump starts no idle worker (issue 12)
    if not cfg.workers:
        workers = min(workers, -(-plan.n_chunks // CHUNKS_PER_WORKER))
    fit = fit_pool(workers, nmem, plan.chunk_bytes, block_bytes, cfg.memory_limit, cfg.direct_io)
    for note in ((too_many,) if too_many else ()) + fit.warnings:
        say(note, 0)
    cfg = cfg._replace(workers=fit.workers)
    if cfg.codec.is_auto and plan.n_chunks > AUTO_EXPLORE:
        cfg.codec.make_all()      # --codec auto long enough to try its whole ladder: every library now
    pool = (fit.slots, fit.slot_size)
    info = src.info
    level = _dump_level(cfg, src, say)
    say(f"source {src.path}: ELF{info.elfclass}, {len(info.loads)} PT_LOADs, page size {src.page_size}, "
        f"{plan.total_pages} pages in {len(plan.pfn_ranges)} range(s), {plan.residue_bytes} bytes of "
        f"headers and padding, kernel {info.vmcoreinfo.get('OSRELEASE', 'unknown')}")
    say(f"plan: {plan.n_chunks} chunks of {plan.chunk_bytes >> 10} KiB, blocks of {block_bytes >> 10} KiB, "
        f"codec {cfg.codec}, {cfg.nworkers} worker(s), {nmem} member(s) round robin, "
        f"{pool[0]} buffer slots = {pool[0] * pool[1] / 2**20:.1f} MiB"
        + (", O_DIRECT" if cfg.direct_io else ""))
    dump_id = DumpId.new()
    manifest = build_manifest(src, plan, cfg, str(dump_id), block_bytes, nmem,
                              level.entry if level is not None else None)
    manifest_rec = pack_manifest(manifest, dump_id.bytes)
    # chunk records start page-aligned, so --direct-io can write them as they come
    start = first_record_offset(HEADER_BLOCK, len(manifest_rec))
    headers = []
    if cfg.manifest_path:       # a --manifest that cannot be written fails before any target is touched
        folder = os.path.dirname(os.path.abspath(cfg.manifest_path))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise TargetIOError(f"cannot write manifest {cfg.manifest_path}: "
                                f"{'no directory' if not os.path.isdir(folder) else 'no permission to write in'} "
                                f"{folder}")
    # every target locked (canonical order) before any is truncated or written;
    # held until the members are finalized (targets.py: exclusive targets)
    open_targets(targets, start + 4096, cfg.direct_io, cfg.force, cfg.ssh_options, cfg.io_timeout)
    try:
        for t in targets:
            if t.remote is not None and t.remote.avail is not None and t.remote.avail < plan.input_bytes // nmem:
                say(f"target {t.path}: {t.remote.avail / 1e6:.0f} MB free there, less than the source's "
                    f"{plan.input_bytes / 1e6:.0f} MB / {nmem} target(s) (fine if it compresses that well)", 0)
        for i, t in enumerate(targets):
            h = new_member_header(dump_id.bytes, i, nmem, cfg.codec.codec_id, cfg.codec.stored_level,
                                  src.page_size, chunk_pages, block_bytes // src.page_size, len(manifest_rec),
                                  FEATURE_EXCLUDED if level is not None and level.applied else 0,
                                  features_optional=FEATURE_STREAMED if t.stream else 0)
            write_member_head(t.fd, t.path, h, manifest_rec, start, t.stream)
            headers.append(h)
        if cfg.manifest_path:
            try:
                _write_json_manifest(cfg.manifest_path, manifest, [t.path for t in targets])
            except StripedumpError as e:
                # the heads are written: no member is left "writing" for a failure before any chunk
                for t, h in zip(targets, headers):
                    try:
                        member_writer(t, h, start, cfg).finish(
                            STATE_INCOMPLETE, f"the dump stopped before its first chunk: {e}")
                    except StripedumpError:
                        pass         # that target's own failure: the manifest's error is the one to report
                raise
        result = _run(cfg, src, plan, targets, headers, start, block_bytes, pool, progress, say, sig, level)
    finally:
        close_targets(targets)
        end_streams(targets, 10.0)
    result.dump_id = str(dump_id)
    result.seconds = time.monotonic() - t0
    result.extra["lowered"] = [n for n in (too_many,) + fit.warnings if n]   # --json: what was lowered
    return result


class DumpLevel(Plain):
    """``dump -d N`` as it can be applied to this source: what the coordinator tells the workers."""
    __slots__ = ("asked", "applied", "missing", "weaker", "info")

    def __init__(self, asked: int, applied: int, missing: tuple, weaker: tuple, info):
        self.asked, self.applied, self.missing, self.weaker, self.info = asked, applied, missing, weaker, info

    @property
    def entry(self) -> dict:
        return dump_level_entry(self.asked, self.applied, self.missing, self.weaker)


def _dump_level(cfg: DumpConfig, src: Source, say) -> DumpLevel | None:
    """The level that can be applied (issue 11), from VMCOREINFO read once; None without -d.

    Never guess, never lose the dump: the bits whose VMCOREINFO entries are
    missing are dropped (down to level 0), with one warning naming the
    entries, and the dump goes on.  No numpy here: pageclass resolves the rules without it.
    """
    if not cfg.dump_level:
        return None
    from ..levels.pageclass import PageClassifier
    from ..source.vmcoreinfo import VmcoreInfo
    info = VmcoreInfo.from_source(src)
    pc = PageClassifier(src, info, cfg.dump_level)
    level = DumpLevel(cfg.dump_level, pc.level_applied, pc.missing, pc.weaker, info)
    if level.applied != level.asked:
        say(f"dump level {level.asked} lowered to {level.applied}: VMCOREINFO lacks "
            f"{', '.join(level.missing) or 'what the page classes need'}; those pages are kept", 0)
    elif level.weaker:
        say(f"dump level {level.asked}: VMCOREINFO lacks {', '.join(level.weaker)}; some pages of "
            "those classes are kept", 1)
    return level


class DumpId:
    """A random (version 4) UUID, as uuid.uuid4() makes it, without importing uuid (and platform,
    5 ms of every run: issue 12).  ``bytes`` and ``str()`` as a uuid.UUID has them."""
    __slots__ = ("bytes",)

    def __init__(self, raw: bytes):
        self.bytes = raw

    @classmethod
    def new(cls) -> "DumpId":
        b = bytearray(os.urandom(16))
        b[6] = b[6] & 0x0F | 0x40       # version 4
        b[8] = b[8] & 0x3F | 0x80       # RFC 4122 variant
        return cls(bytes(b))

    def __str__(self) -> str:
        h = self.bytes.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


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


def member_writer(t, header, start: int, cfg) -> MemberWriter:
    """The writer of target ``t``'s member (a stream: append-only through its sink, never O_DIRECT)."""
    return MemberWriter(t.fd, t.path, header, start, cfg.direct_io and not t.stream, cfg.discard, t.sink)


def _run(cfg, src, plan, targets, headers, start, block_bytes, geometry, progress, say,
         sig=None, level=None) -> DumpResult:
    return _Coordinator(cfg, src, plan, targets, headers, start, block_bytes, geometry, progress, say,
                        sig, level).run()


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

    def __init__(self, cfg, src, plan, targets, headers, start, block_bytes, geometry, progress, say, sig,
                 level=None):
        self.cfg, self.src, self.plan, self.targets = cfg, src, plan, targets
        self.level = level             # DumpLevel (dump -d N), or None
        self.classes = None            # its per-worker, per-class counters (shared u64)
        self.unclassified = 0          # chunks whose classification failed (their pages kept)
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
        self.iow: IOWatch | None = None    # hung targets (iowatch.py)
        self.retired: set[int] = set()     # slots a hung writer still holds: never used again
        # --codec auto (autocodec.py): the controller, and shared doubles the children publish
        # (per worker and choice: raw bytes, record bytes, CPU and wall seconds; per writer: bytes synced,
        # seconds in write + sync, CPU-seconds of them) with what was last fed to it
        self.ladder = cfg.codec.ladder if cfg.codec.is_auto else None
        self.ctl = self.stats = self.seen = None
        if self.ladder is not None:
            from .autocodec import Controller
            # encode rates are per wall second of a worker (autocodec.py): W workers, however many CPUs
            self.ctl = Controller([str(c) for c in self.ladder], self.W, cfg.codec.start)

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
        self.iow = IOWatch(self.targets, self.cfg.io_timeout)
        if self.level is not None and self.level.applied:
            self.classes = memoryview(mmap.mmap(-1, 8 * self.W * len(CLASS_NAMES), mmap.MAP_SHARED)).cast("Q")
        if self.ctl is not None:
            n = self.W * len(self.ladder) * 4 + self.D * 3
            self.stats = memoryview(mmap.mmap(-1, 8 * n, mmap.MAP_SHARED)).cast("d")
            self.seen = [0.0] * n

    def start_children(self) -> None:
        for d, t in enumerate(self.targets):
            w = member_writer(t, self.headers[d], self.start, self.cfg)
            if self.stats is not None:
                at = self.W * len(self.ladder) * 4 + 3 * d
                w.io_stats, w.sync_every, w.kick_every = self.stats[at:at + 3], AUTO_FIRST_SYNC, AUTO_KICK_EVERY
            others = tuple(fd for u in self.targets if u is not t for fd in u.fds())
            self.writers.append(spawn(writer_main, f"stripedump-writer-{d}",
                                      (d, w, self.pool, self.slot_size, self.writer_qs[d], self.events,
                                       self.notes, self.routes, self.iow, others, self.classes)))
        # from here on each target is open in its writer only (iowatch.py): no other process's
        # close (a flush, on NFS or FUSE) waits on a hung target, the coordinator's exit included
        close_targets(self.targets)
        for i in range(self.W):
            self.workers.append(self.new_worker(i))
        for p in self.writers + self.workers:
            self.say(f"started {p.name} (pid {p.pid})", 2)

    def new_worker(self, i: int):
        return spawn(worker_main, f"stripedump-worker-{i}",
                     (i, self.src, self.cfg.codec, self.plan_json, self.block_bytes, self.pool,
                      self.slot_size, self.tasks, self.writer_qs, self.events, self.stop, self.current,
                      self.stats, (self.level.applied, self.level.info, self.classes)
                      if self.classes is not None else None))

    # -- phase 1: the feed loop ------------------------------------------------------

    def feed(self) -> None:
        """Hand out chunks while slots are free and handle events, until all are written or the dump stops."""
        while True:
            if self.sig.signum and self.error is None:
                self.fail(Interrupted(f"interrupted by {signal_name(self.sig.signum)}; members finalized "
                                      "as incomplete", self.sig.signum))
            self.hand_out()
            # the SYNC barrier runs under stop too: a target that hangs in its last sync is noticed
            # before the others are finalized (iowatch.py)
            if self.idle() and (self.error is not None or self.barrier_passed()):
                return
            evs = self.events.get_all(POLL)
            self.watch_workers()
            self.watch_targets()
            if not evs or any(p.exitcode is not None for p in self.workers):
                if self.dead_children(self.workers, "worker") or self.dead_children(self.writers, "writer"):
                    return      # a dead child's slots never come back: stop waiting for them
            for ev in evs:
                self.on_event(ev)
            self.observe()
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
            self.tasks.put(cid, self.free.pop() | (CAREFUL if cid in self.retried else 0), self.choose())
            self.inflight += 1

    def choose(self) -> int:
        """The codec choice (ladder index) for the next chunk: 0 unless --codec auto."""
        return self.ctl.choose() if self.ctl is not None else 0

    def observe(self) -> None:
        """--codec auto: feed the controller what the children published since the last look."""
        if self.ctl is None:
            return
        st, seen, L = self.stats, self.seen, len(self.ladder)
        for w in range(self.W):
            for c in range(L):
                i = (w * L + c) * 4
                raw = st[i] - seen[i]
                if raw > 0:
                    now = st[i:i + 4].tolist()
                    self.ctl.observe_encode(c, now[0] - seen[i], now[1] - seen[i + 1], now[2] - seen[i + 2],
                                            now[3] - seen[i + 3])
                    seen[i:i + 4] = now
        # the targets together: D times the slowest writer's rate (chunks are placed round robin)
        rates, base = [], self.W * L * 4
        for d in range(self.D):
            i = base + 3 * d
            secs, cpu = st[i + 1] - seen[i + 1], st[i + 2] - seen[i + 2]
            nb = st[i] - seen[i]
            if nb > 0 and d not in self.dropped:
                rates.append((nb, secs, cpu))
                seen[i:i + 3] = st[i:i + 3].tolist()
        if rates:
            nb, secs, cpu = min(rates, key=lambda r: r[0] / r[1] if r[1] > 0 else float("inf"))
            k = max(len(rates), self.D - len(self.dropped))
            self.ctl.observe_disk(nb * k, secs, cpu * k)

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
        if kind in ("free", "skip") and ev[1] in self.retired:
            return                     # a hung writer's slot, already counted (watch_targets)
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
        elif kind == "unclassified":   # dump -d: a chunk whose classification failed keeps its pages
            if not self.unclassified:
                self.say(f"could not classify the pages of chunk {ev[1]} ({ev[2]}); its pages are kept, "
                         "and so are those of any other chunk this happens to", 0)
            self.unclassified += 1
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

    def watch_targets(self, final: bool = False) -> None:
        """A hung target (iowatch.py): dropped (continue) or the dump stopped (stop); never waited for.

        ``final``: the writers were told to finish; a hang now ends the dump as incomplete.
        """
        if self.iow is None:
            return
        for d in self.iow.check():
            self.writers[d] = self.iow.abandon(self.writers[d])
            why, cur = self.iow.hung[d], self.iow.current(d)
            self.say(f"{why}; abandoned its writer (pid {self.writers[d].pid})")
            if cur is not None:          # the slot it is writing never comes back
                self.retired.add(cur[1])
                self.inflight -= 1
            self.members_done[d] = (self.iow.position(d), 0, 0, {})
            if self.routes is None or final:
                self.fail(TargetIOError(why))
                continue
            self.routes.fail(d)
            self.target_failed(d, why)   # its chunks since its last sync: encoded again
            if cur is not None:
                (self.resend if self.routes.survivors() else self.lost).append(cur[0])
        for d in self.iow.hung:          # what still reaches a hung writer's pipe: forward or free it
            while (rec := self.writer_qs[d].get(0)) is not None:
                if rec[0] >= SYNC:
                    continue
                if self.routes is None or self.error is not None or not self.routes.forward(*rec):
                    self.free.append(rec[1])
                    self.inflight -= 1

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
        self.tasks.put(cid - 1, slot | CAREFUL, self.choose())
        return True

    # -- phase 2: shutdown, whatever happened ----------------------------------------

    def shutdown(self) -> None:
        """Stop the workers, finalize every member, join every child; kill what does not stop."""
        try:
            for _ in self.workers:
                self.tasks.put(END, 0, 0)
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
            write_note(self.notes, note)
        for q in self.writer_qs[:len(self.writers)]:
            q.put(END, state, 0, 0, 0)
        deadline = time.monotonic() + JOIN_TIMEOUT + WRITERS_GRACE
        while len(self.members_done) < self.D and time.monotonic() < deadline:
            evs = self.events.get_all(POLL)
            self.watch_targets(final=True)
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
            w = member_writer(t, self.headers[d], self.start, self.cfg)
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
                           "unreadable_blocks": sum(self.unreadable.values()), "degraded": degraded,
                           **(self.auto_report() if self.ctl is not None else {}),
                           **(self.level_report() if self.level is not None else {})})

    def level_report(self) -> dict:
        """dump -d N, for the summary and --json: the level asked and applied, the pages left out."""
        lv = self.level
        per = dict(class_totals(self.classes)) if self.classes is not None else {}
        unread = per.pop("struct_unread", 0)
        return {"dump_level": {**lv.entry, "excluded_pages": sum(per.values()), "excluded": per,
                               "struct_unreadable_pages": unread, "unclassified_chunks": self.unclassified}}

    def auto_report(self) -> dict:
        """--codec auto, for --json: chunks per codec, and the model's last estimates."""
        ctl = self.ctl
        def mb(r):
            return round(r / 1e6, 1) if r not in (None, float("inf")) else r
        est = {str(c): {"cpu_mb_s": mb(ctl.cpu_rate(i)), "wall_mb_s": mb(ctl.encode_rate(i)),
                        "ratio": round(ctl.ratio(i), 4) if ctl.ratio(i) is not None else None}
               for i, c in enumerate(self.ladder)}
        disk = ctl.disk_rate()
        return {"auto_chunks": {str(c): n for c, n in zip(self.ladder, ctl.handed) if n},
                "auto_model": {"codecs": est, "parallel": ctl.parallel,
                               "disk_mb_s": mb(disk)}}

    def describe_lost(self) -> str:
        lost = sorted(set(self.lost))
        ps = self.plan.page_size
        named = ", ".join(f"chunk {c} ({self.plan.chunk(c).describe(ps)})" for c in lost[:5])
        more = f" and {len(lost) - 5} more" if len(lost) > 5 else ""
        return (f"{len(lost)} chunk(s) were on failed targets only, not synced, and may be lost: "
                f"{named}{more}")
