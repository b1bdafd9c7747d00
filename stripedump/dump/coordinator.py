"""The dump pipeline: a coordinator, a pool of workers, one writer per member.

Design
------
Processes, not threads: per-page compression calls are ~3 us and the GIL
hand-off between CPUs eats the gain of threads (machine-limits §3).  Every
child is forked from the coordinator (procs.py: fork, signal policy,
liveness, joining; stages.py: the loops the children run, each started with
one frozen value, WorkerArgs or WriterArgs), so the source's file descriptor
and one anonymous shared mapping (the *slot pool*) are inherited; nothing
needs /dev/shm, which a capture kernel may not mount.

    coordinator --(chunk id, slot)--> task pipe --> worker 1..W
        worker: maps the chunk's source pages itself (mmap window), zero-tests
        and compresses block by block straight into its slot, then
        --(chunk id, slot, length, checksum)--> pipe of writer (id % D)
        writer d: one large write() of the slot to member d, index entry,
        --Written(slot, chunk id, synced?)--> coordinator's event pipe

No page data passes through the coordinator or through a pipe: pipes carry a
few integers per chunk as fixed-size records, and the children's events as
named records (runtime/ipc.py, decoded in one place), the bytes stay in the
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

Where it is written: this module sets a dump up (``dump``: the level, the
plan, the workers and slot pool fitted to the machine, the manifest, the
targets as one ``TargetSet`` opened and closed here, every member's head);
the coordinator (loop.py's ``Coordinator``) then runs in three named steps:
the children started (crew.py: the shared memory and pipes, then the
forks); ``feed`` (phase 1: hand out chunks while slots are free, handle the
children's events, watch for dead or stuck children); and ``shutdown``
(phase 2: stop the workers, tell each writer how to finish, collect the
members, join every child, kill what does not stop).  Phase 2 runs whatever
happened in phase 1, so every member is finalized.  What it reports is
result.py's ``DumpResult``; ``--codec auto``'s statistics are autocodec.py's,
the books of a degraded dump degraded.py's.

Exit 0 means every chunk is on a member that was finalized and synced; every
other outcome raises.  Failure: every error in a child travels back on the
event pipe as a ``Failed`` record, the error rebuilt as its own class (or
its nearest parent this process knows: errors.from_wire), with its exit
code.  The first one stops the feed: new tasks are skipped, in-flight slots
drain, writers finalize their members as INCOMPLETE with the reason, and the
coordinator raises the error.  Any exception in the coordinator itself (a
bug, a KeyboardInterrupt at a bad moment) is such an error too.  A child
that dies is noticed within POLL seconds (its exit code); nothing blocks
without a timeout, so the coordinator never hangs.  SIGINT, SIGTERM and
SIGHUP (to the coordinator or to the whole process group: children ignore
them) stop the feed the same way and end in exit 130/143/129; a signal that
arrives after the last chunk was written changes nothing.  Progress and
messages are output, best effort: an output that fails (a closed stderr) is
switched off, nothing else.  A writer blocked on a target that stopped
answering (D state) is noticed by the progress of its device, abandoned and
never waited for (iowatch.py); once the writers run, only its writer holds a
target open.

With ``--on-disk-error continue`` a writer's failed write is not the dump's:
that writer drops its target and forwards its chunks to the others
(degraded.py); the dump stops only when no target is left.  Nothing is lost
silently: a write acknowledged before a failed sync may never reach the
disk, so the coordinator keeps (degraded.Resends), per writer, the chunk ids
it acknowledged since its last successful sync (at most SYNC_CHUNKS: a
writer syncs every SYNC_EVERY bytes or SYNC_CHUNKS chunks, and says so with
the slot it frees).  When a target fails (a write, an fdatasync, an O_DIRECT
stage flush), those chunks are encoded again from the source and go to the
survivors.  After the last chunk the coordinator asks every live writer to
sync (a barrier; under ``stop`` too, so that a target hanging in its last
sync is noticed before the others are finalized) and repeats this for any
that fails, so by the time the writers are told to finish, every chunk is
synced on a live target; a chunk that has no live target left is named in
the error (exit 8).

Order: the file (residue) chunks are handed out first: they hold the ELF
header, program headers and notes, without which the pages of a dump that
was stopped early are of little use.
"""


from __future__ import annotations

import os
import time

from ..errors import StripedumpError, TargetIOError, UsageError
from ..format.manifest import build_manifest, dump_level_entry
from ..format.plan import Plan
from ..format.structs import (FEATURE_EXCLUDED, FEATURE_STREAMED, HEADER_BLOCK, first_record_offset, pack_manifest,
                              record_bound)
from ..remote.s3url import S3Options, is_s3
from ..runtime.fileio import write_json_atomic
from ..runtime.plain import Plain
from ..runtime.procs import Signals
from ..source.vmcore import Source
from .autocodec import EXPLORE as AUTO_EXPLORE
from .config import DumpConfig
from .loop import Coordinator, DumpJob
from . import space
from .resources import fit_pool, fit_workers
from .result import CpuClock, DumpResult
from .targets import TargetSet
from .writer import new_member_header

# the default --workers starts at most one worker per this many chunks: a worker costs about 8 ms of
# CPU (fork, start, exit, join), an lz4 chunk of memory-like data 0.8 ms, and a second worker did not
# make a dump of a 4, 16 or 64 MiB synthetic core faster on this 2-CPU machine with other load on it
# (issue 12; docs/benchmarks.md, "Issue 12: fixed cost of a small dump"); --workers N is taken as given
CHUNKS_PER_WORKER = 16


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
        t0, clock = time.monotonic(), CpuClock()
        if cfg.codec.is_auto:   # --codec auto: the default ladder less missing libraries
            cfg = cfg._replace(codec=cfg.codec.resolve())
        cfg.codec.make()      # a missing codec library is a usage error, before anything is touched
        src = Source(cfg.source, use_mmap=cfg.use_mmap)
        try:
            result = _dump(cfg, src, t0, _best_effort(progress),
                           _best_effort(say or (lambda msg, level=1: None)), sig)
        finally:
            src.close()
        result.extra["cpu_seconds"] = clock.report(result.extra.pop("cpu_children"))   # the targets closed
        return result


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
    """Set the dump up, open its targets, write their heads, run the coordinator, close the targets."""
    job, lowered = _prepare(cfg, src, say)
    targets, level = job.targets, job.level
    dump_id = DumpId.new()
    manifest = build_manifest(src, job.plan, job.cfg, str(dump_id), job.block_bytes, len(targets),
                              level.entry if level is not None else None)
    manifest_rec = pack_manifest(manifest, dump_id.bytes)
    # chunk records start page-aligned, so --direct-io can write them as they come
    start = first_record_offset(HEADER_BLOCK, len(manifest_rec))
    if cfg.manifest_path:       # a --manifest that cannot be written fails before any target is touched
        _check_manifest_folder(cfg.manifest_path)
    # every target locked (canonical order) before any is truncated or written; held until the
    # members are finalized (targets.py: exclusive targets), closed when this block ends
    with targets.open(start + 4096, job.cfg):
        # a target that will probably fill up: said at once (a warning: the data may compress better);
        # --codec auto keeps to the room (space.py)
        room = space.rooms(list(targets), start)
        for line in space.warnings(list(targets), start, job.plan.input_bytes, job.cfg.codec):
            say(line, 0)
        job.room = space.dump_room(room)
        chunk_pages, page_size = job.plan.chunk_pages, src.page_size
        try:
            targets.write_heads([new_member_header(
                dump_id.bytes, i, len(targets), cfg.codec.codec_id, cfg.codec.stored_level, page_size,
                chunk_pages, job.block_bytes // page_size, len(manifest_rec),
                FEATURE_EXCLUDED if level is not None and level.applied else 0,
                features_optional=FEATURE_STREAMED if t.stream else 0) for i, t in enumerate(targets)],
                manifest_rec, start)
            if cfg.manifest_path:
                _write_json_manifest(cfg.manifest_path, manifest, targets.paths)
            modes = [_write_mode(t) for t in targets]
            say("writes: " + ", ".join(f"{t.path} {m}" for t, m in zip(targets, modes)), 1)
        except StripedumpError as e:
            # before any chunk: the member files this dump created are removed, and no other
            # member is left "writing" (TargetSet.abandon)
            targets.abandon(f"the dump stopped before its first chunk: {e}")
            raise
        result = Coordinator(job, progress, say, sig).run()
    result.dump_id = str(dump_id)
    result.seconds = time.monotonic() - t0
    result.extra["lowered"] = lowered    # --json: what was lowered
    result.extra["write_modes"] = modes  # --json: O_DIRECT, buffered or streamed, per member
    return result


def _prepare(cfg: DumpConfig, src: Source, say) -> tuple[DumpJob, list[str]]:
    """The job (targets checked, not opened; the plan; workers and slot pool fitted to the machine; the
    dump level), and the warnings of what was lowered to fit."""
    chunk_pages, block_bytes = cfg.geometry(src.page_size)
    lowered = cfg.block_lowered(src.page_size)
    if lowered:
        say(lowered, 0)
    targets = TargetSet.check(cfg.targets, src.st, cfg.force)
    plan = Plan(src.pfn_ranges, src.residue(), src.page_size, chunk_pages)
    nmem = len(targets)
    # workers and pool lowered to what the machine has, a warning each, never refused
    workers, too_many = fit_workers(cfg.workers)
    workers = max(1, min(workers, plan.n_chunks))    # a small dump starts no idle worker (issue 12)
    if not cfg.workers:
        workers = min(workers, -(-plan.n_chunks // CHUNKS_PER_WORKER))
    cfg, stream_bytes = _s3_parts(cfg, plan, block_bytes, say)
    cfg, fit = _fit_pool(cfg, workers, nmem, plan.chunk_bytes, block_bytes, stream_bytes, say)
    for note in ((too_many,) if too_many else ()) + fit.warnings:
        say(note, 0)
    cfg = cfg._replace(workers=fit.workers)
    if cfg.codec.is_auto and plan.n_chunks > AUTO_EXPLORE:
        cfg.codec.make_all()      # --codec auto long enough to try its whole ladder: every library now
    info = src.info
    level = _dump_level(cfg, src, say)
    say(f"source {src.path}: ELF{info.elfclass}, {len(info.loads)} PT_LOADs, page size {src.page_size}, "
        f"{plan.total_pages} pages in {len(plan.pfn_ranges)} range(s), {plan.residue_bytes} bytes of "
        f"headers and padding, kernel {info.vmcoreinfo.get('OSRELEASE', 'unknown')}")
    say(f"plan: {plan.n_chunks} chunks of {plan.chunk_bytes >> 10} KiB, blocks of {block_bytes >> 10} KiB, "
        f"codec {cfg.codec}, {cfg.nworkers} worker(s), {nmem} member(s) round robin, "
        f"{fit.slots} buffer slots = {fit.slots * fit.slot_size / 2**20:.1f} MiB"
        + {True: ", O_DIRECT", False: ", buffered writes"}.get(cfg.direct_io, ""))
    job = DumpJob(cfg, src, plan, targets, block_bytes, fit.slots, fit.slot_size, level)
    return job, [n for n in (too_many,) + fit.warnings if n]


def _fit_pool(cfg: DumpConfig, workers: int, nmem: int, chunk_bytes: int, block_bytes: int, stream_bytes: int,
              say):
    """resources.fit_pool for this dump.  O_DIRECT where taken (the default) needs a 4 MiB staging
    buffer per writer; where that would cost a worker or a slot (a small --memory-limit, a capture
    kernel's memory), the dump writes buffered instead: workers matter more than the copy saved."""
    def fit(direct):
        return fit_pool(workers, nmem, chunk_bytes, block_bytes, cfg.memory_limit, direct, stream_bytes=stream_bytes)
    if cfg.direct_io is not None:
        return cfg, fit(cfg.direct_io)
    plain = fit(False)
    try:
        staged = fit(None)
    except UsageError:
        staged = None
    if staged is not None and (staged.workers, staged.slots) >= (plain.workers, plain.slots):
        return cfg, staged
    say("buffered writes: O_DIRECT's staging buffers (4 MiB per target) would not leave the buffer pool "
        "as many slots", 1)
    return cfg._replace(direct_io=False), plain


def _write_mode(t) -> str:
    """How a target is written: "direct" (O_DIRECT), "buffered" (refused it, or --buffered), "stream"."""
    return "stream" if t.stream else "direct" if t.direct else "buffered"


def _s3_parts(cfg: DumpConfig, plan: Plan, block_bytes: int, say) -> tuple[DumpConfig, int]:
    """s3:// targets: the part size raised where a member holding every chunk (a degraded dump)
    would need more than S3's 10,000 parts, and the uploaders' part buffers (for fit_pool)."""
    n = sum(1 for p in cfg.targets if is_s3(p))
    if not n:
        return cfg, 0
    asked = cfg.s3 or S3Options()
    bound = plan.n_chunks * (record_bound(plan.chunk_bytes, block_bytes) + 64) + (16 << 20)
    s3 = asked.fit_member(bound)
    if s3.part_size != asked.part_size:
        say(f"s3:// part size raised from {asked.part_size >> 20} MiB to {s3.part_size >> 20} MiB: a member "
            f"of up to {bound / 2**30:.1f} GiB must fit in S3's 10,000 parts", 1)
    return cfg._replace(s3=s3), n * s3.buffer_bytes()


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


def _check_manifest_folder(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise TargetIOError(f"cannot write manifest {path}: "
                            f"{'no directory' if not os.path.isdir(folder) else 'no permission to write in'} "
                            f"{folder}")


def _write_json_manifest(path: str, manifest: dict, members: list[str]) -> None:
    """--manifest: the dump's manifest as JSON, with the members' paths, written atomically (fileio.py)."""
    if any(os.path.exists(p) and os.path.samefile(p, path) for p in members if os.path.exists(path)):
        raise UsageError(f"--manifest {path} is one of the targets")
    write_json_atomic(path, {**manifest, "member_paths": members}, TargetIOError, f"manifest {path}")
