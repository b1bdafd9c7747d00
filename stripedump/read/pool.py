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
import sys
from typing import NamedTuple

from ..errors import Interrupted, MemberError, StripedumpError, VerifyError, from_wire
from ..runtime.procs import POLL, Signals, child_init, describe_exit, join_all, messages, queue_pair, spawn
from .reader import MISSING, ChunkError, Dump

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
    (``batch_size``); every outcome is an event: ("ok", raw bytes,
    unreadable ranges) or ("err", class name, message[, chunk id]), sent
    back as one list per batch.
    """
    child_init()
    # the coordinator reports every failed chunk; the reader's log line would be a second one
    logging.getLogger("stripedump.read.reader").disabled = True
    paths = dump.paths
    fds = {}
    remotes = {}         # member position -> remote.RemoteFile: this worker's own connection
    # one buffer for every record (issue 12: ``preadv`` into it takes half the CPU of ``pread``,
    # which allocates and faults in a new bytes object per record).  The handler is done with
    # a record (its turn included) before the next one is read; a longer record gets a new
    # buffer, never a resized one (views of the old one may live on)
    buf = memoryview(bytearray(0))

    def one(t: Task):
        """The event of one task."""
        where = dump.where(t.chunk_id)
        nonlocal buf
        try:
            try:
                if paths[t.member].startswith("ssh://"):
                    try:
                        rec = _remote(t.member, paths, remotes).pread(t.offset, t.length)
                    except MemberError as e:
                        if getattr(e, "absent", False):
                            remotes[t.member] = e     # the host went away: its other chunks fail at once
                        raise
                    if len(rec) != t.length:
                        raise MemberError(f"{where}: record truncated")
                else:
                    fd = fds.get(t.member)
                    if fd is None:
                        fd = fds[t.member] = os.open(paths[t.member], os.O_RDONLY)
                    if len(buf) < t.length:
                        buf = memoryview(bytearray(t.length))
                    rec = buf[:t.length]
                    if os.preadv(fd, [rec], t.offset) != t.length:
                        raise MemberError(f"{where}: record truncated")
                try:
                    checked = dump.check_record(t.chunk_id, rec)
                except ChunkError as e:
                    raise VerifyError(str(e)) from None
                bad, then = handle(rec, checked, where, t)
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
            return ("ok", t.raw, [(c.kind, c.start, a, b) for a, b in bad])
        except StripedumpError as e:
            return ("err", *e.to_wire(), t.chunk_id)
        except OSError as e:
            return ("err", "MemberError", f"{where}: read error: {e.strerror}", t.chunk_id)

    try:
        handle = make_handler()
        for batch in messages(tasks):
            done: list = []
            try:
                _prefetch_remote(batch, paths, remotes)
                for t in batch:
                    done.append(one(Task(*t)))
            finally:
                events.put(done)        # one message for the batch (issue 12: fewer wake-ups)
    except StripedumpError as e:
        events.put([("err", *e.to_wire())])
    except Exception as e:
        events.put([("err", "StripedumpError", f"internal error in join worker {wid}: {type(e).__name__}: {e}")])


def _prefetch_remote(batch, paths, remotes: dict) -> None:
    """The records of a batch's ``ssh://`` members, asked for together (one round trip a member).

    Each worker opens the remote members it reads on its own connection
    (remote.py: no SSH stream crosses a fork).  A member that cannot be
    opened is left out here: its tasks then fail one by one, as for a local
    member that cannot be read.
    """
    by_member: dict[int, list] = {}
    for t in batch:
        if paths[t[0]].startswith("ssh://"):
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
        from ..remote.sshread import open_member
        try:
            f = remotes[pos] = open_member(paths[pos], head=False)
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
    if unreadable is None:
        unreadable = []
    failed: list[int] = []
    ds, index, plan = dump.ds, dump.index, dump.plan
    tasks, events = queue_pair()
    remote = sys.modules.get("stripedump.remote.sshread")
    if remote is not None:
        remote.before_fork()      # no SSH connection is shared with the workers: each opens its own
    procs = [spawn(pool_worker, f"stripedump-join-{i}", (i, dump, make_handler, tasks, events, turns))
             for i in range(workers)]
    errors: list[str] = []
    fatal: StripedumpError | None = None
    ok = nbytes = inflight = 0
    per_batch = batch_size(plan.n_chunks, workers, turns)
    limit = INFLIGHT_PER_WORKER * workers * per_batch

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
                for ev in events.get(timeout=POLL):     # a batch's events
                    handle(ev)
                return True
            except queue.Empty:
                if sig.signum:    # a worker may be stuck on a stalled pipe: do not wait for it
                    fatal = fatal or Interrupted("interrupted; output removed", sig.signum)
                    return False
                for i, p in enumerate(procs):
                    if p.exitcode is not None:
                        fatal = fatal or StripedumpError(f"join worker {i} (pid {p.pid}) "
                                                         f"{describe_exit(p)} unexpectedly")
                        return False

    alive = True
    with Signals() as sig:
        try:
            seq = 0
            batch: list = []
            for cid in range(plan.n_chunks):
                if sig.signum:
                    fatal = Interrupted("interrupted; output removed", sig.signum)
                if fatal is not None:
                    break
                pos = index.member[cid]
                if pos == MISSING or (wanted is not None and not wanted(cid)):
                    continue
                batch.append((pos, cid, index.offset[cid], index.length[cid],
                              plan.chunk(cid).raw_bytes(dump.page_size), seq))
                seq += 1
                if len(batch) < per_batch and cid + 1 < plan.n_chunks:
                    continue
                tasks.put(batch)
                inflight += len(batch)
                batch = []
                while inflight >= limit and alive and fatal is None:
                    alive = wait_one()
            if batch and fatal is None:      # the last chunks were not wanted: what was gathered
                tasks.put(batch)
                inflight += len(batch)
            while inflight > 0 and alive:
                if fatal is not None and turns is not None:
                    turns.stop()      # the failed join's later chunks need no turn: none waits for one
                alive = wait_one()
        except StripedumpError as e:
            fatal = fatal or e
        finally:
            if turns is not None and (fatal is not None or inflight > 0):
                turns.stop()     # workers waiting for a turn that will not come give up
            for _ in procs:
                tasks.put(None)
            join_all(procs, lambda e: None, "join worker")
    if fatal is not None:
        raise fatal
    absent = list(dump.missing)
    if missing is not None:
        missing.extend(sorted(set(absent + failed)))
    elif absent:
        errors.append(ds.describe_absent(absent))
    return ok, nbytes, errors
