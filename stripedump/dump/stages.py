"""What each child process of a dump runs: the worker and the writer loops, and their pipe records.

Why a module of its own: the coordinator (loop.py) decides (feed, failures,
shutdown); these loops only do.  A worker takes (chunk id, slot) from the
task pipe, encodes the chunk from the source straight into its shared-memory
slot and hands (chunk id, slot, length, checksum, bytes) to the writer of
the chunk's member; a writer appends records to its member, acknowledges
each one on the event pipe (``ipc.Written``, with what is durable since its
last sync) and finalizes the member when told.  Neither ever decides to stop
the dump: an error travels to the coordinator as data (``ipc.Failed``), and
a child whose coordinator is gone stops by itself (procs.parent_gone).  Each
is started with one frozen value (``WorkerArgs``, ``WriterArgs``).
"""

from __future__ import annotations

import os
import struct
import time

from ..errors import StripedumpError
from ..format.structs import KIND_PAGES, STATE_INCOMPLETE
from ..runtime.ipc import (END, DiskFailed, Failed, Lost, MemberDone, Skipped, Synced, Unclassified, Unreadable,
                           Written)
from ..runtime.plain import Frozen
from .iowatch import IOWatch
from ..format.encode import encode_chunk
from .writer import MemberWriter
from ..format.plan import Plan, placement
from ..runtime.procs import POLL, child_init, coordinator_pid, parent_gone
from .wire import CAREFUL, CLASS_NAMES, CURRENT, SYNC, class_totals

ZERO_COMPARE_BYTES = 1 << 20    # a worker's zeros to compare with: bounded, whatever the chunk size


class WorkerArgs(Frozen):
    """What worker ``wid`` is started with (crew.py makes one per worker).

    ``codec``: a CodecSpec, or an AutoSpec (``--codec auto``): a task's
    codec choice indexes its ``ladder``, one codec instance per choice, and
    ``stats`` (shared doubles, autocodec.AutoStats.worker_row) gets, per
    choice, the raw bytes, record bytes, CPU-seconds and wall seconds of
    every chunk this worker encodes.

    ``level`` (dump levels): (applied level, VmcoreInfo, shared u64
    counters): the worker builds its own PageClassifier, classifies the
    pages of each pages chunk from the bytes it reads for encoding (no
    second read), and adds what it leaves out per class to its row of the
    counters (CLASS_NAMES).
    """
    __slots__ = ("wid", "src", "codec", "plan_json", "block_bytes", "pool", "slot_size", "tasks", "writer_qs",
                 "events", "stop", "current", "stats", "level")

    def __init__(self, wid, src, codec, plan_json, block_bytes, pool, slot_size, tasks, writer_qs, events, stop,
                 current, stats=None, level=None):
        _set_fields(self, locals())


def _set_fields(args: Frozen, values: dict) -> None:
    for f in args.__slots__:
        object.__setattr__(args, f, values[f])


def worker_main(a: WorkerArgs) -> None:
    """Encode the chunks the coordinator hands out (``a``: WorkerArgs)."""
    child_init()
    wid, src, events, current = a.wid, a.src, a.events, a.current
    try:
        classify = _classifier(wid, src, a.level) if a.level is not None else None
        ladder = a.codec.ladder        # a plain codec: a ladder of one
        codecs = [None] * len(ladder)
        codecs[a.codec.start] = a.codec.make()
        plan = Plan.from_json(a.plan_json)
        # encode._nonzero_blocks: a chunk all zero is found one MiB at a time (a compare each)
        zero = bytes(max(a.block_bytes, min(plan.chunk_bytes, ZERO_COMPARE_BYTES)))
        pool_mv, slot_size = memoryview(a.pool), a.slot_size
        mine = a.stats
        for cid, slot, choice in a.tasks.records(POLL):
            careful, slot = bool(slot & CAREFUL), slot & ~CAREFUL
            if a.stop.value:
                events.put(Skipped(slot))
                continue
            # what this worker is on, for the coordinator if a page fault kills us
            CURRENT.pack_into(current, wid * CURRENT.size, cid + 1, slot, time.monotonic())
            try:
                chunk = plan.chunk(cid)
                codec = codecs[choice] or _make(codecs, ladder, choice)
                out = pool_mv[slot * slot_size:(slot + 1) * slot_size]
                t0, w0 = time.process_time(), time.monotonic()
                length, csum, unreadable = encode_chunk(
                    src, codec, chunk, a.block_bytes, out, zero, careful,
                    excluded=classify(chunk, careful) if classify is not None and chunk.kind == KIND_PAGES
                    else None)
                out.release()
                if mine is not None:     # raw last: the coordinator reads a chunk's numbers by its raw
                    mine[4 * choice + 1] += length
                    mine[4 * choice + 2] += time.process_time() - t0
                    mine[4 * choice + 3] += time.monotonic() - w0
                    mine[4 * choice] += chunk.raw_bytes(plan.page_size)
            except StripedumpError as e:
                events.put(Failed.of(f"worker {wid}", e, slot=slot))
                continue
            finally:
                CURRENT.pack_into(current, wid * CURRENT.size, 0, 0, 0.0)
            if unreadable:
                events.put(Unreadable(cid, unreadable))
            if classify is not None and classify.failed:
                events.put(Unclassified(cid, classify.failed.pop()))
            a.writer_qs[placement(cid, len(a.writer_qs))].put(
                cid, slot, length, csum, chunk.raw_bytes(plan.page_size))
    except Exception as e:   # a bug: report it rather than die silently
        events.put(Failed.of(f"worker {wid}", e))


def _classifier(wid, src, level):
    """A function of a pages chunk that gives ``encode_chunk``'s ``excluded`` for it (a callable of the
    chunk's bytes), counting each page left out in this worker's row of the shared counters."""
    from ..levels.pageclass import CLASSES, PageClassifier
    applied, info, counters = level
    pc = PageClassifier(src, info, applied)
    row = counters[wid * len(CLASS_NAMES):(wid + 1) * len(CLASS_NAMES)]
    at = [CLASS_NAMES.index(name) for name in CLASSES[1:]]

    def for_chunk(chunk, careful=False):
        def excluded(data):
            # careful (a worker died of SIGBUS in this chunk): the struct pages are read with pread,
            # so that one that cannot be read is a read error (it excludes nothing), not a SIGBUS again
            saved = src.use_mmap
            src.use_mmap = saved and not careful
            try:
                r = pc.classify(chunk.start, chunk.count, data=data)
            except Exception as e:       # never lose the dump over a classification: keep the pages
                for_chunk.failed.append(f"{type(e).__name__}: {e}")
                return None
            finally:
                src.use_mmap = saved
            for i, name in zip(at, CLASSES[1:]):
                row[i] += r.counts[name]
            row[len(CLASS_NAMES) - 1] += r.unreadable
            # zero pages (bit 1) are not left out but stored as BLOCK_ZERO, which costs as little:
            # makedumpfile's kdump output keeps them in its bitmap too (one shared zero page), and
            # crash needs them (a zero page of kernel data, e.g. a memory section root table)
            return r.left_out()
        return excluded
    for_chunk.failed = []
    return for_chunk


def _make(codecs, ladder, choice):
    codecs[choice] = ladder[choice].make()
    return codecs[choice]


class WriterArgs(Frozen):
    """What the writer process of member ``d`` is started with.

    ``writer``: its MemberWriter.  ``routes`` (``--on-disk-error continue``,
    degraded.py): after a failed write or sync the writer drops its target
    and forwards every chunk it gets to a live writer instead of freeing it
    unwritten.  ``watch`` (iowatch.py): where the writer says it is inside a
    call on its target (and on which chunk), so that a hung target is
    noticed.  ``others``: the other targets' fds, closed at once (it holds
    its own only).  ``classes`` (dump levels): the workers' shared counters,
    final when END comes (the workers are joined first): their sums go into
    the footer.
    """
    __slots__ = ("d", "writer", "pool", "slot_size", "inbox", "events", "notes", "routes", "watch", "others",
                 "classes")

    def __init__(self, d, writer: MemberWriter, pool, slot_size, inbox, events, notes, routes=None,
                 watch: IOWatch | None = None, others=(), classes=None):
        _set_fields(self, locals())


def writer_main(a: WriterArgs) -> None:
    """Append the chunks of member ``a.d``; finalize it at END.

    Each chunk written is acknowledged with ``Written`` (its ``durable``:
    -1, or, when that write was followed by a sync, how many of the latest
    chunks are still not on the disk: ``--direct-io``: staged).  From these
    the coordinator knows which chunks a failure of this target can take
    with it: those since its last sync.  SYNC (the coordinator's barrier
    before END) syncs now and answers ``Synced``.
    """
    child_init()
    release_output()
    for fd in a.others:
        os.close(fd)
    _WriterLoop(a).run(coordinator_pid())


class _WriterLoop:
    """A writer process's state: its member, whether its target failed, what it took for others."""

    def __init__(self, a: WriterArgs):
        self.a, self.d, self.writer, self.events = a, a.d, a.writer, a.events
        self.pool_mv = memoryview(a.pool)
        self.failed: str | None = None      # why its target failed (then: forward, or free unwritten)
        self.taken: dict[int, int] = {}     # member -> its chunks written here after it failed
        self.cid = self.slot = None          # the chunk being written, for iowatch

    def run(self, ppid: int) -> None:
        a, writer = self.a, self.writer
        while True:
            msg = a.inbox.get(POLL)
            if msg is None:
                if parent_gone(ppid):
                    return      # coordinator gone: leave the member unfinalized
                continue
            self.cid = self.slot = None
            if msg[0] == END:
                with target_call(a.watch, self.d, None, 0, writer.pos):
                    self.finish(msg[1])
                return
            if msg[0] == SYNC:
                if not self.failed and self.attempt(writer.sync):
                    self.events.put(Synced(self.d, writer.pending_chunks()))
                continue
            self.chunk(*msg)

    def chunk(self, cid: int, slot: int, length: int, csum: int, raw_len: int) -> None:
        """Append one chunk; or forward it (a failed target, with routes); or free its slot unwritten."""
        d, writer, routes = self.d, self.writer, self.a.routes
        self.cid, self.slot = cid, slot
        if not self.failed:
            syncs, at = writer.syncs, slot * self.a.slot_size
            if self.attempt(writer.append, self.pool_mv[at:at + length], cid, csum, raw_len):
                if routes is not None and cid % routes.members != d:
                    self.taken[cid % routes.members] = self.taken.get(cid % routes.members, 0) + 1
                self.events.put(Written(slot, raw_len, d, cid,
                                        writer.pending_chunks() if writer.syncs != syncs else -1))
                return
        if routes is not None:
            if routes.forward(cid, slot, length, csum, raw_len):
                return         # the slot now belongs to the writer it went to
            self.events.put(Lost(d, cid))
        self.events.put(Skipped(slot))

    def attempt(self, fn, *args) -> bool:
        """Run a write or sync of the target; on failure drop the target (or report: stop)."""
        d = self.d
        try:
            with target_call(self.a.watch, d, self.cid, self.slot, self.writer.pos):
                fn(*args)
            return True
        except Exception as e:
            ev = Failed.of(f"writer {d}", e)
        self.failed = str(ev.error)
        if self.a.routes is None:
            self.events.put(ev)
        else:
            self.a.routes.fail(d)
            self.failed += " (target dropped: --on-disk-error continue; its chunks are on the other members)"
            self.events.put(DiskFailed(d, str(ev.error)))
        return False

    def finish(self, state: int) -> None:
        """Index, footer, header: complete or incomplete as the coordinator says (a dropped target:
        incomplete)."""
        a, writer, failed = self.a, self.writer, self.failed
        note = read_note(a.notes)
        if failed:
            state, note = STATE_INCOMPLETE, failed
        try:
            length = writer.finish(state, note, a.routes.footer_entries(self.taken) if a.routes else (),
                                   class_totals(a.classes) if a.classes is not None else ())
        except Exception as e:
            if not failed:        # a dropped target's finish may well fail: it was reported already
                self.events.put(Failed.of(f"writer {self.d}", e))
            length = writer.pos
        self.events.put(MemberDone(self.d, length, writer.chunks, writer.bytes_in, self.taken,
                                   writer.excluded_pages))


def release_output() -> None:
    """A writer holds no pipe of the caller's: one hung on its disk (iowatch.py) must not keep
    ``stripedump ... | logger`` waiting after the dump has exited.  Writers report through the
    event pipe; an unexpected death is reported by the coordinator from its exit status."""
    null = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        os.dup2(null, fd)
    os.close(null)


def target_call(watch, d, cid, slot, pos):
    from contextlib import nullcontext
    return nullcontext() if watch is None else watch.call(d, cid, slot or 0, pos)


def write_note(notes, text: str) -> None:
    data = text.encode()[:len(notes) - 4]
    notes[:4 + len(data)] = struct.pack("<I", len(data)) + data


def read_note(notes) -> str:
    (n,) = struct.unpack_from("<I", notes)
    return bytes(notes[4:4 + n]).decode("utf-8", "replace")
