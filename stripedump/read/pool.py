"""The read pool of join, verify and kdump output: chunk records -> a handler, in chunk-id order.

Why a module of its own: ELF join, verify and ``--format kdump``/``flat``
all read every chunk record of a dump through a pool of forked workers and
differ only in what is done with a record (the handler).  The pool owns the
processes (procs.py's policy: fork, signals, liveness, joining), the feed
and the tally; the handlers own the output.

The dump's chunk index (``reader.Dump.index``: the member indexes, or walks)
says where every chunk is; the coordinator hands the chunks out in chunk-id
order, and a worker reads a record and has the reader check it
(``Dump.check_record``: the one place that says "this record is the chunk
the index and the plan promise").  Each task is numbered in that order
(``Task.seq``): a handler that must do something in order (take
space for page data, append to a stream) waits for its turn (``Turns``) and
the output is the same whatever the number of workers.  A stop (an error
without ``keep_going``, a signal, a dead worker) calls ``stop`` before the
workers are joined, so a worker waiting for a turn that will never come gives
up.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
from typing import NamedTuple

from ..errors import Interrupted, MemberError, StripedumpError
from .member import is_remote, open_remote, remote_before_fork
from ..runtime.ipc import ChunkRead, Failed, decode
from ..runtime.procs import POLL, Signals, child_init, describe_exit, join_all, messages, queue_pair, spawn
from .reader import MISSING, Dump

INFLIGHT_PER_WORKER = 4
TURN_POLL = 1.0         # seconds between checks, while waiting for a turn, that the pool still runs


class Turns:
    """Turns in dispatch order (``Task.seq``) across the pool's processes, and a shared cursor.

    Made by the coordinator before the pool forks.  A worker does what
    must happen in chunk-id order (take space from ``cursor``, append to a
    stream) inside ``with turns.turn(seq, where):``; the turn passes on when
    the block ends, also by an exception, so a worker whose chunk failed
    must still take (and pass) its turn.  Nobody waits forever: ``stop()``
    (the coordinator, when the pool stops early) makes every waiter raise,
    and so does the coordinator's death.
    """

    def __init__(self, cursor: int = 0):
        ctx = multiprocessing.get_context("fork")
        self._cond = ctx.Condition()        # guards _next
        self._next = ctx.RawValue("q", 0)   # the seq whose turn it is
        self._stopped = ctx.RawValue("b", 0)
        self.cursor = ctx.RawValue("Q", cursor)   # changed only by the turn's holder
        self.owner = os.getpid()

    def stop(self) -> None:
        with self._cond:
            self._stopped.value = 1
            self._cond.notify_all()

    @contextlib.contextmanager
    def turn(self, seq: int, where: str):
        with self._cond:
            while self._next.value != seq:
                if self._stopped.value:
                    raise Interrupted(f"{where}: the join stopped")
                if os.getpid() != self.owner and os.getppid() != self.owner:
                    raise StripedumpError(f"{where}: the coordinating process has gone")
                self._cond.wait(TURN_POLL)
        try:
            yield
        finally:
            with self._cond:
                self._next.value = seq + 1
                self._cond.notify_all()


class Task(NamedTuple):
    """One chunk for a pool worker: where its record is (``Dump.index``) and its place in the order."""
    member: int
    chunk_id: int
    offset: int
    length: int
    raw: int
    seq: int          # position in the dispatch (chunk-id) order


def pool_worker(wid, dump: Dump, make_handler, tasks, events, turns: Turns | None = None) -> None:
    """Read each task's record, check it (``Dump.check_record``) and hand it to the handler.

    ``make_handler`` runs in the child (after fork) so that file
    descriptors and codec state belong to this process; the handler is
    called as ``handle(rec, (header, body, blocks), where, task)`` and
    returns ``(unreadable, then)``: the byte ranges of the chunk that the
    source could not give at dump time, and None or what must be done in
    the task's turn (``then()``, with ``turns``).  A task that fails before
    its turn still takes it and passes it on.  Tasks come in batches
    (``batch_size``); every outcome is an event (runtime/ipc.py):
    ``ChunkRead``, or ``Failed`` with the chunk id and the error, of its own
    class (a record that fails its checks: errors.ChunkError), sent back as
    one list per batch.
    """
    child_init()
    # the coordinator reports every failed chunk; the reader's log line would be a second one
    logging.getLogger("stripedump.read.reader").disabled = True
    who = f"join worker {wid}"
    try:
        w = _PoolReader(who, dump, make_handler(), turns)
        for batch in messages(tasks):
            done: list = []
            try:
                _prefetch_remote(batch, dump.paths, w.remotes)
                for t in batch:
                    done.append(w.one(Task(*t)))
            finally:
                events.put([ev.wire() for ev in done])    # one message for the batch (issue 12: fewer wake-ups)
    except Exception as e:
        events.put([Failed.of(who, e).wire()])


class _PoolReader:
    """A pool worker's reads: its own descriptors and ssh:// connections, and one record buffer.

    One buffer for every record (issue 12: ``preadv`` into it takes half the
    CPU of ``pread``, which allocates and faults in a new bytes object per
    record).  The handler is done with a record (its turn included) before
    the next one is read; a longer record gets a new buffer, never a resized
    one (views of the old one may live on).
    """

    def __init__(self, who: str, dump: Dump, handle, turns: Turns | None):
        self.who, self.dump, self.handle, self.turns = who, dump, handle, turns
        self.fds: dict = {}
        self.remotes: dict = {}      # member position -> remote.RemoteFile: this worker's own connection
        self.buf = memoryview(bytearray(0))

    def one(self, t: Task):
        """The event of one task."""
        dump, turns = self.dump, self.turns
        where = dump.where(t.chunk_id)
        try:
            try:
                rec = self.record(t, where)
                bad, then = self.handle(rec, dump.check_record(t.chunk_id, rec), where, t)
            except BaseException:
                if turns is not None:
                    with turns.turn(t.seq, where):    # nothing to do in it: pass it on
                        pass
                raise
            if turns is not None:
                with turns.turn(t.seq, where):
                    if then is not None:
                        then()
            c = dump.plan.chunk(t.chunk_id)
            return ChunkRead(t.raw, [(c.kind, c.start, a, b) for a, b in bad])
        except StripedumpError as e:
            return Failed.of(self.who, e, chunk=t.chunk_id)
        except OSError as e:
            return Failed.of(self.who, MemberError(f"{where}: read error: {e.strerror}"), chunk=t.chunk_id)

    def record(self, t: Task, where: str):
        """The bytes of task ``t``'s record (a view of the buffer, for a local member)."""
        paths = self.dump.paths
        if is_remote(paths[t.member]):
            try:
                rec = _remote(t.member, paths, self.remotes).pread(t.offset, t.length)
            except MemberError as e:
                if getattr(e, "absent", False):
                    self.remotes[t.member] = e     # the host went away: its other chunks fail at once
                raise
            if len(rec) != t.length:
                raise MemberError(f"{where}: record truncated")
            return rec
        fd = self.fds.get(t.member)
        if fd is None:
            fd = self.fds[t.member] = os.open(paths[t.member], os.O_RDONLY)
        if len(self.buf) < t.length:
            self.buf = memoryview(bytearray(t.length))
        rec = self.buf[:t.length]
        if os.preadv(fd, [rec], t.offset) != t.length:
            raise MemberError(f"{where}: record truncated")
        return rec


def _prefetch_remote(batch, paths, remotes: dict) -> None:
    """The records of a batch's ``ssh://`` members, asked for together (one round trip a member).

    Each worker opens the remote members it reads on its own connection
    (remote.py: no SSH stream crosses a fork).  A member that cannot be
    opened is left out here: its tasks then fail one by one, as for a local
    member that cannot be read.
    """
    by_member: dict[int, list] = {}
    for t in batch:
        if is_remote(paths[t[0]]):
            by_member.setdefault(t[0], []).append((t[2], t[3]))
    for pos, ranges in by_member.items():
        try:
            _remote(pos, paths, remotes).prefetch(ranges)
        except StripedumpError:
            pass        # each task says why


def _remote(pos: int, paths, remotes: dict):
    """This worker's RemoteFile of member ``pos``; a member that failed fails again at once
    (a host that went down is not asked again for every chunk)."""
    f = remotes.get(pos)
    if isinstance(f, StripedumpError):
        raise f
    if f is None:
        try:
            f = remotes[pos] = open_remote(paths[pos], head=False)
        except StripedumpError as e:
            remotes[pos] = e
            raise
    return f


# Tasks go to the workers in batches of up to BATCH_MAX (issue 12: one message each way per
# batch instead of per chunk: with a handler that does nothing, the coordinator of a pool over
# the 1,024 chunks of a 1 GiB dump took 0.10-0.14 CPU s, now 0.04-0.05), as long as each
# worker still gets BATCH_SPREAD batches or more, so the last batches keep both busy.  With
# turns a batch is one task: a worker waiting for its turn would otherwise wait for another
# worker's whole batch.
BATCH_MAX = 8
BATCH_SPREAD = 32


def batch_size(n_chunks: int, workers: int, turns) -> int:
    if turns is not None:
        return 1
    return max(1, min(BATCH_MAX, n_chunks // (max(1, workers) * BATCH_SPREAD)))


def run_pool(dump: Dump, workers: int, make_handler, keep_going: bool, progress,
             wanted=None, unreadable: list | None = None, allow_incomplete: bool = False,
             missing: list | None = None, turns: Turns | None = None) -> tuple:
    """Stream every chunk (or those ``wanted(chunk_id)`` accepts) through a pool.

    Returns (chunks ok, raw bytes, errors).  Chunks missing from every
    member are errors even when not wanted: the dump is not whole; given a
    ``missing`` list, their ids go there instead, with (``allow_incomplete``)
    those that failed their checks, whose errors are still returned.
    Ranges the source could not give at dump time are added to
    ``unreadable`` as (kind, chunk start, byte offset, byte end).  Tasks go
    out in chunk-id order, numbered (``Task.seq``) in that order; with
    ``turns``, each task's in-order part runs in its turn, and the pool
    stops ``turns`` when it stops before every task was done.
    """
    run = _PoolRun(dump, workers, keep_going, progress, [] if unreadable is None else unreadable,
                   allow_incomplete, turns)
    tasks, run.events = queue_pair()
    remote_before_fork()      # no SSH or S3 connection is shared with the workers: each opens its own
    run.procs = [spawn(pool_worker, f"stripedump-join-{i}", (i, dump, make_handler, tasks, run.events, turns))
                 for i in range(workers)]
    with Signals() as run.sig:
        try:
            run.feed(tasks, wanted)
        except StripedumpError as e:
            run.fatal = run.fatal or e
        finally:
            if turns is not None and (run.fatal is not None or run.inflight > 0):
                turns.stop()     # workers waiting for a turn that will not come give up
            for _ in run.procs:
                tasks.put(None)
            join_all(run.procs, lambda e: None, "join worker")
    if run.fatal is not None:
        raise run.fatal
    absent = list(dump.missing)
    if missing is not None:
        missing.extend(sorted(set(absent + run.failed)))
    elif absent:
        run.errors.append(dump.ds.describe_absent(absent))
    return run.ok, run.nbytes, run.errors


class _PoolRun:
    """The coordinator's side of one pool run: the feed, the tally of the workers' events, the stop."""

    def __init__(self, dump: Dump, workers: int, keep_going: bool, progress, unreadable: list,
                 allow_incomplete: bool, turns: Turns | None):
        self.dump, self.keep_going, self.progress = dump, keep_going, progress
        self.unreadable, self.allow_incomplete, self.turns = unreadable, allow_incomplete, turns
        self.per_batch = batch_size(dump.plan.n_chunks, workers, turns)
        self.limit = INFLIGHT_PER_WORKER * workers * self.per_batch
        self.procs: list = []
        self.events = self.sig = None
        self.errors: list[str] = []
        self.failed: list[int] = []        # chunks that failed their checks (allow_incomplete)
        self.fatal: StripedumpError | None = None
        self.ok = self.nbytes = self.inflight = 0
        self.alive = True

    def feed(self, tasks, wanted) -> None:
        """Hand out every wanted chunk in batches, in chunk-id order, then wait for what is in flight."""
        dump, plan, index = self.dump, self.dump.plan, self.dump.index
        seq = 0
        batch: list = []
        for cid in range(plan.n_chunks):
            if self.sig.signum:
                self.fatal = Interrupted("interrupted; output removed", self.sig.signum)
            if self.fatal is not None:
                break
            pos = index.member[cid]
            if pos == MISSING or (wanted is not None and not wanted(cid)):
                continue
            batch.append((pos, cid, index.offset[cid], index.length[cid],
                          plan.chunk(cid).raw_bytes(dump.page_size), seq))
            seq += 1
            if len(batch) < self.per_batch and cid + 1 < plan.n_chunks:
                continue
            tasks.put(batch)
            self.inflight += len(batch)
            batch = []
            while self.inflight >= self.limit and self.alive and self.fatal is None:
                self.alive = self.wait_one()
        if batch and self.fatal is None:      # the last chunks were not wanted: what was gathered
            tasks.put(batch)
            self.inflight += len(batch)
        while self.inflight > 0 and self.alive:
            if self.fatal is not None and self.turns is not None:
                self.turns.stop()      # the failed join's later chunks need no turn: none waits for one
            self.alive = self.wait_one()

    def handle(self, ev) -> None:
        """One task's event (runtime/ipc.py: ChunkRead or Failed)."""
        self.inflight -= 1
        if type(ev) is ChunkRead:
            self.ok += 1
            self.nbytes += ev.raw
            self.unreadable.extend(ev.unreadable)
            if self.progress:
                self.progress(self.nbytes, self.dump.ds.plan.input_bytes)
            return
        self.errors.append(str(ev.error))
        if self.allow_incomplete and ev.chunk is not None:
            self.failed.append(ev.chunk)      # a damaged chunk: missing, the rest goes on
        elif not self.keep_going and self.fatal is None:
            self.fatal = ev.error

    def wait_one(self) -> bool:
        """Handle a batch's events; False when the pool must stop waiting (a signal, a dead worker)."""
        while True:
            try:
                for wire in self.events.get(timeout=POLL):
                    self.handle(decode(wire))
                return True
            except queue.Empty:
                if self.sig.signum:    # a worker may be stuck on a stalled pipe: do not wait for it
                    self.fatal = self.fatal or Interrupted("interrupted; output removed", self.sig.signum)
                    return False
                for i, p in enumerate(self.procs):
                    if p.exitcode is not None:
                        self.fatal = self.fatal or StripedumpError(f"join worker {i} (pid {p.pid}) "
                                                                   f"{describe_exit(p)} unexpectedly")
                        return False
