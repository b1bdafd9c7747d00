"""The dump's event loop: the coordinator process from its children's start to its members' end.

Why a module of its own: coordinator.py sets a dump up (source, plan,
level, targets and their heads) and explains the design; this is the part
that runs, in three named steps (``Coordinator.run``): the children
started (crew.py); ``feed`` (phase 1: hand out chunks while slots are free,
handle the children's events, watch for dead or stuck children); and
``shutdown`` (phase 2: stop the workers, tell each writer how to finish,
collect the members, join every child, kill what does not stop).  Phase 2
runs whatever happened in phase 1, so every member is finalized.

What it keeps elsewhere: the slots it hands out (``Slots``), the books of a
degraded dump (degraded.Resends), the ``--codec auto`` statistics
(autocodec.AutoStats), the children and the memory and pipes they share
(crew.py), the hung-target watch (iowatch.IOWatch), what the children run
and are started with (stages.py) and what they send (runtime/ipc.py's event
records), and what the dump reports (result.py).
"""

from __future__ import annotations

import signal
import time

from ..errors import Interrupted, StripedumpError, TargetIOError
from ..format.structs import STATE_COMPLETE, STATE_INCOMPLETE
from ..runtime.ipc import END, DiskFailed, Failed, Lost, MemberDone, Skipped, Synced, Unclassified, Unreadable, Written
from ..runtime.plain import Plain
from ..runtime.procs import JOIN_TIMEOUT, POLL, Signals, signal_name
from .autocodec import AutoStats
from .crew import Crew
from .degraded import Resends
from .result import DumpResult, dump_result, level_report, stopped
from .stages import write_note
from .wire import CAREFUL, SYNC

WRITERS_GRACE = 60.0  # seconds writers get beyond JOIN_TIMEOUT to finalize (a final fsync of a slow disk)


class DumpJob(Plain):
    """What the coordinator runs, as coordinator.py set it up.

    ``cfg``: the DumpConfig, its workers fitted to the machine; ``targets``:
    the TargetSet, open, every head written; ``slots`` of ``slot_size``
    bytes: the slot pool (resources.fit_pool); ``level``: a DumpLevel
    (dump -d N) or None; ``room``: the bytes the members can take together
    (space.dump_room, once the targets are open), or None where unknown.
    """
    __slots__ = ("cfg", "src", "plan", "targets", "block_bytes", "slots", "slot_size", "level", "room")

    def __init__(self, cfg, src, plan, targets, block_bytes: int, slots: int, slot_size: int, level=None,
                 room: int | None = None):
        self.cfg, self.src, self.plan, self.targets = cfg, src, plan, targets
        self.block_bytes, self.slots, self.slot_size, self.level = block_bytes, slots, slot_size, level
        self.room = room


def as_error(e: BaseException) -> StripedumpError:
    """Any exception that reaches the coordinator as the error that ends the dump."""
    if isinstance(e, StripedumpError):
        return e
    if isinstance(e, KeyboardInterrupt):
        return Interrupted("interrupted by SIGINT; members finalized as incomplete", signal.SIGINT)
    return StripedumpError(f"internal error in the coordinator: {type(e).__name__}: {e}")


class Slots:
    """The slot pool's free list: backpressure, since a chunk is handed out only when a slot is free.

    ``inflight``: slots handed out and not back yet.  ``retired``: slots a
    hung writer still holds; never used again, and counted back when it was
    abandoned (``Coordinator.watch_targets``), not when they come back.
    """

    def __init__(self, n: int):
        self.free = list(range(n))
        self.inflight = 0
        self.retired: set[int] = set()

    def take(self) -> int:
        self.inflight += 1
        return self.free.pop()

    def give_back(self, slot: int) -> bool:
        """``slot`` came back (False, and nothing changes: a retired one)."""
        if slot in self.retired:
            return False
        self.free.append(slot)
        self.inflight -= 1
        return True

    def retire(self, slot: int) -> None:
        self.retired.add(slot)
        self.inflight -= 1


class Coordinator:
    """One dump's parent process: starts the children, feeds chunks, handles events, shuts down.

    ``run`` = the children started (crew.py), then ``feed`` (phase 1),
    inside a handler that turns any exception into the dump's error, then
    ``shutdown`` (phase 2), which always runs: every member is finalized and
    every child joined or killed, whatever happened before.
    """

    def __init__(self, job: DumpJob, progress, say, sig=None):
        self.job, self.cfg, self.plan, self.targets = job, job.cfg, job.plan, job.targets
        self.progress, self.say = progress, say
        self.sig = sig if sig is not None else Signals()
        self.W, self.D = job.cfg.nworkers, len(job.targets)
        self.slots = Slots(job.slots)
        self.book = Resends(self.D)
        self.crew = Crew(job, say, self.choose)   # the children, and what they share (opened in run)
        self.auto: AutoStats | None = None  # --codec auto
        self.error: StripedumpError | None = None
        self.chunk_ids = job.plan.feed_order()
        self.exhausted = False
        self.done_in = 0
        self.unreadable: dict[int, int] = {}   # chunk id -> blocks the source could not give
        self.unclassified = 0                  # chunks whose classification failed (their pages kept)
        self.members_done: dict[int, MemberDone] = {}

    # -- the whole run ---------------------------------------------------------------

    def run(self) -> DumpResult:
        try:
            if self.cfg.codec.is_auto:
                self.auto = AutoStats(self.cfg.codec, self.W, self.D, self.job.room, self.plan.input_bytes)
            self.crew.open(self.auto)
            self.crew.start()
            self.feed()
        except BaseException as e:    # a bug, or KeyboardInterrupt at a bad moment
            self.fail(as_error(e))
        finally:
            self.shutdown()
        return self.result()

    def fail(self, e: StripedumpError) -> None:
        """The first error ends the dump: the feed stops, workers skip what is left."""
        if self.error is None:
            self.error = e
            if self.crew.stop is not None:
                self.crew.stop.value = 1

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
            if self.idle() and (self.error is not None or self.book.barrier_passed(self.crew.writer_qs)):
                return
            evs = self.crew.events.get_all(POLL)
            self.crew.watch(self.cfg.stall_seconds)
            self.watch_targets()
            if not evs or any(p.exitcode is not None for p in self.crew.workers):
                if self.crew.dead(self.fail):
                    return      # a dead child's slots never come back: stop waiting for them
            for ev in evs:
                self.on_event(ev)
            if self.auto is not None:
                self.auto.observe(self.book.dropped)
            if self.progress:
                self.progress(self.done_in, self.plan.input_bytes)

    def hand_out(self) -> None:
        resend = self.book.resend
        while self.error is None and self.slots.free:
            if resend:
                cid = resend.popleft()
            elif self.exhausted:
                return
            else:
                cid = next(self.chunk_ids, None)
                if cid is None:
                    self.exhausted = True
                    return
            self.crew.tasks.put(cid, self.slots.take() | (CAREFUL if cid in self.crew.retried else 0),
                                self.choose(cid))

    def choose(self, cid: int) -> int:
        """The codec choice (ladder index) for chunk ``cid``: 0 unless --codec auto."""
        if self.auto is None:
            return 0
        # its raw bytes, for the room's books (autocodec.py), where there is a room
        return self.auto.choose(self.plan.chunk(cid).raw_bytes(self.plan.page_size) if self.auto.room else 0)

    def idle(self) -> bool:
        """Nothing in flight, and nothing more to hand out."""
        return self.slots.inflight == 0 and (self.error is not None or (self.exhausted and not self.book.resend))

    # -- events from the children (runtime/ipc.py) -----------------------------------

    def on_event(self, ev) -> None:
        kind = type(ev)
        if kind is Written:            # a chunk written: slot back
            if self.slots.give_back(ev.slot):      # (not a hung writer's: counted already)
                self.done_in += ev.raw
                if self.crew.routes is not None:
                    self.book.acknowledged(ev.member, ev.chunk, ev.durable)
        elif kind is Skipped:          # a chunk not written (the dump stops): slot back
            self.slots.give_back(ev.slot)
        elif kind is Unreadable:
            self.unreadable[ev.chunk] = ev.blocks
        elif kind is Unclassified:     # dump -d: a chunk whose classification failed keeps its pages
            if not self.unclassified:
                self.say(f"could not classify the pages of chunk {ev.chunk} ({ev.why}); its pages are kept, "
                         "and so are those of any other chunk this happens to", 0)
            self.unclassified += 1
        elif kind is Failed:
            self.fail(ev.error)
            if ev.slot is not None:
                self.slots.give_back(ev.slot)
        elif kind is Synced:
            self.book.synced(ev.member, ev.durable)
        elif kind is DiskFailed:       # --on-disk-error continue (degraded.py)
            self.target_failed(ev.member, ev.why)
        elif kind is Lost:             # a chunk found no target left to go to
            self.book.lost.append(ev.chunk)
            self.fail(TargetIOError(f"every target failed; the last: {self.targets[ev.member].path}: "
                                    f"{self.book.dropped.get(ev.member)}"))

    def target_failed(self, d: int, why: str) -> None:
        """Member ``d``'s target failed: its chunks since its last sync go to the others again."""
        survivors = self.crew.routes.survivors()
        again = self.book.target_failed(d, why, survivors)
        self.say(f"target {self.targets[d].path} failed ({why}); dropped it, striping over {survivors} "
                 f"other target(s); {len(again)} chunk(s) written there since its last sync are "
                 "encoded again for them")
        if survivors == 0:
            self.fail(TargetIOError(f"every target failed; the last: {self.targets[d].path}: {why}"))
            return
        for cid in again:
            self.done_in -= self.plan.chunk(cid).raw_bytes(self.plan.page_size)

    # -- children that die or hang ---------------------------------------------------

    def watch_targets(self, final: bool = False) -> None:
        """A hung target (iowatch.py): dropped (continue) or the dump stopped (stop); never waited for.

        ``final``: the writers were told to finish; a hang now ends the dump as incomplete.
        """
        iow, writers = self.crew.iow, self.crew.writers
        if iow is None:                  # open() failed before it was made
            return
        for d in iow.check():
            writers[d] = iow.abandon(writers[d])
            why, cur = iow.hung[d], iow.current(d)
            self.say(f"{why}; abandoned its writer (pid {writers[d].pid})")
            if cur is not None:          # the slot it is writing never comes back
                self.slots.retire(cur[1])
            self.members_done[d] = MemberDone(d, iow.position(d), 0, 0, {}, 0)
            if self.crew.routes is None or final:
                self.fail(TargetIOError(why))
                continue
            self.crew.routes.fail(d)
            self.target_failed(d, why)   # its chunks since its last sync: encoded again
            if cur is not None:
                (self.book.resend if self.crew.routes.survivors() else self.book.lost).append(cur[0])
        for d in iow.hung:               # what still reaches a hung writer's pipe: forward or free it
            while (rec := self.crew.writer_qs[d].get(0)) is not None:
                if rec[0] >= SYNC:
                    continue
                if self.crew.routes is None or self.error is not None or not self.crew.routes.forward(*rec):
                    self.slots.give_back(rec[1])

    # -- phase 2: shutdown, whatever happened ----------------------------------------

    def shutdown(self) -> None:
        """Stop the workers, finalize every member, join every child; kill what does not stop."""
        try:
            self.crew.stop_workers(self.fail)
            self.finish_members()
            self.crew.join_writers(self.fail)
        except BaseException as e:
            self.fail(as_error(e))
        finally:
            self.crew.reap()
            self.crew.close()
        for d in range(self.D):
            if d not in self.members_done:
                self.fail(TargetIOError(f"target {self.targets[d].path}: writer did not finish; "
                                        "the member is incomplete"))

    def finish_members(self) -> None:
        """Tell every writer how to finish (complete, or incomplete and why); collect what they say."""
        state = STATE_COMPLETE if self.error is None else STATE_INCOMPLETE
        note = str(self.error) if self.error is not None else self.book.note(self.targets.paths)
        writers = self.crew.writers
        for d in range(len(writers), self.D):
            self.finish_here(d, note)
        if self.crew.notes is not None:
            write_note(self.crew.notes, note)
        for q in self.crew.writer_qs[:len(writers)]:
            q.put(END, state, 0, 0, 0)
        deadline = time.monotonic() + JOIN_TIMEOUT + WRITERS_GRACE
        while len(self.members_done) < self.D and time.monotonic() < deadline:
            evs = self.crew.events.get_all(POLL)
            self.watch_targets(final=True)
            if not evs and all(p.exitcode is not None for p in writers):
                break
            for ev in evs:
                if type(ev) is MemberDone:
                    self.members_done[ev.member] = ev
                    self.say(f"member {self.targets[ev.member].path}: {ev.chunks} chunks, {ev.length} bytes, "
                             "synced")
                elif type(ev) is Failed:
                    self.fail(ev.error)
        if self.sig.signum and self.error is None:
            self.say(f"{signal_name(self.sig.signum)} came after the last chunk was written; the dump "
                     "is complete")

    def finish_here(self, d: int, note: str) -> None:
        """Member ``d``'s writer never started (a failed fork): finalize it here, as incomplete."""
        try:
            self.members_done[d] = MemberDone(d, self.targets.writer(d).finish(STATE_INCOMPLETE, note), 0, 0, {}, 0)
        except StripedumpError as e:
            self.fail(e)

    def result(self) -> DumpResult:
        """What the dump did; or its error (result.stopped)."""
        if self.error is not None:
            raise stopped(self.error, self.book.describe_lost(self.plan) if self.book.lost else "")
        extra = {"unreadable_blocks": sum(self.unreadable.values()),
                 "degraded": self.book.report(self.targets.paths, self.members_done.values()),
                 "cpu_children": self.crew.cpu()}       # result.CpuClock makes cpu_seconds of it
        if self.auto is not None:
            extra.update(self.auto.report())
        if self.job.level is not None:
            extra.update(level_report(self.job.level.entry, self.crew.classes, self.unclassified,
                                      sum(m.excluded for m in self.members_done.values())))
        return dump_result(self.job, self.targets.paths, [self.members_done[d].length for d in range(self.D)],
                           extra)
