"""A dump's child processes as the coordinator sees them: what they share, started, watched, joined.

Why a module of its own: the coordinator's loop (loop.py) decides what a
death means for the dump; this module knows the processes and what they
share with the coordinator: anonymous shared memory and pipes made before
the first fork (``Crew.open``) and closed after the last join
(``Crew.close``).  It forks each child with its one arguments value
(stages.py: WorkerArgs, WriterArgs), and reads the table in shared memory
where each worker says which chunk it is on (``CURRENT``: chunk id + 1,
slot, start time).  From it:

* a worker on one chunk longer than ``--stall-seconds`` (a read of the
  source that never returns) is killed;
* a worker that died of SIGBUS (memory the source could not give) or was
  killed as stuck is replaced, and its chunk handed out again to be read
  page by page (CAREFUL), once per chunk;
* any other child that exits before it was told to is reported, and the
  dump stops (its slots would never come back);
* at the end the workers are told to stop and joined, the writers joined
  after their members are finalized, and whatever is left killed
  (procs.py's policy: nothing the coordinator forked outlives it);
* the CPU each child spent (``cpu``): what the kernel counted for it when
  it was reaped (``procs.Child.cpu``, from ``wait4``), per role.  Not sent
  by the children in an event: a child's own count misses its exit and
  any child that was killed, and the kernel's needs no protocol.
"""

from __future__ import annotations

import mmap
import signal
import time

from ..errors import StripedumpError
from ..runtime.ipc import END, EventPipe, RecordPipe, SharedFlag
from ..runtime.procs import describe_exit, join_all, reap, spawn
from .degraded import Routes
from .iowatch import IOWatch
from .stages import WorkerArgs, WriterArgs, worker_main, writer_main
from .wire import CAREFUL, CLASS_NAMES, CURRENT, TASK, WRITE


class Crew:
    """The workers and writers of one dump (``job``: loop.DumpJob), and what they share.

    ``say``: the dump's messages; ``choose()``: the codec choice of a
    retried chunk.  Before ``open`` (a dump that failed before it) there is
    nothing to start, watch, join or close.
    """

    def __init__(self, job, say, choose):
        self.job, self.W, self.D = job, job.cfg.nworkers, len(job.targets)
        self.say, self.choose = say, choose
        # shared memory and pipes (open): anonymous, inherited across fork
        self.pool = self.notes = self.stop = self.current = self.routes = self.iow = self.classes = None
        self.auto = None                   # --codec auto: autocodec.AutoStats
        self.tasks = self.events = self.plan_json = None
        self.writer_qs: list[RecordPipe] = []
        self.workers: list = []
        self.writers: list = []
        self.retried: set[int] = set()     # chunks handed out again to be read page by page
        self.replaced: list = []           # workers that died and were replaced (their CPU still counts)
        self.stalled: set[int] = set()     # workers killed as stuck, not yet replaced

    def open(self, auto) -> None:
        """The slot pool, the notes (why the dump ended early, for the writers), the stop flag (set
        by the coordinator: workers skip what is left), the table of what each worker is on, the
        pipes (tasks, events, one per writer), the writers' routes (``--on-disk-error continue``),
        the hung-target watch, a dump level's per-worker class counters, and ``auto``'s statistics."""
        job, cfg = self.job, self.job.cfg
        self.pool = mmap.mmap(-1, job.slots * job.slot_size, mmap.MAP_SHARED)
        self.notes = mmap.mmap(-1, 4096, mmap.MAP_SHARED)
        self.stop = SharedFlag()
        self.current = mmap.mmap(-1, self.W * CURRENT.size, mmap.MAP_SHARED)
        self.tasks, self.events = RecordPipe(TASK), EventPipe()
        self.writer_qs = [RecordPipe(WRITE) for _ in range(self.D)]
        if cfg.on_disk_error == "continue":
            self.routes = Routes(self.writer_qs)
        self.iow = IOWatch(job.targets, cfg.io_timeout)
        if job.level is not None and job.level.applied:
            self.classes = memoryview(mmap.mmap(-1, 8 * self.W * len(CLASS_NAMES), mmap.MAP_SHARED)).cast("Q")
        self.auto = auto
        self.plan_json = job.plan.to_json()

    def start(self) -> None:
        """Fork the writers, hand the targets to them, fork the workers."""
        for d in range(self.D):        # a failed fork leaves the rest unstarted (finalized by the coordinator)
            self.writers.append(spawn(writer_main, f"stripedump-writer-{d}", (self.writer_args(d),)))
        self.job.targets.release()     # from here on each target is open in its writer only (iowatch.py)
        for i in range(self.W):
            self.workers.append(self.new_worker(i))
        for p in self.writers + self.workers:
            self.say(f"started {p.name} (pid {p.pid})", 2)

    def writer_args(self, d: int) -> WriterArgs:
        targets = self.job.targets
        w = targets.writer(d)
        if self.auto is not None:
            self.auto.time_writer(d, w)
        others = tuple(fd for u in targets if u is not targets[d] for fd in u.fds())
        return WriterArgs(d, w, self.pool, self.job.slot_size, self.writer_qs[d], self.events, self.notes,
                          self.routes, self.iow, others, self.classes)

    def new_worker(self, i: int):
        job = self.job
        level = (job.level.applied, job.level.info, self.classes) if self.classes is not None else None
        args = WorkerArgs(i, job.src, job.cfg.codec, self.plan_json, job.block_bytes, self.pool, job.slot_size,
                          self.tasks, self.writer_qs, self.events, self.stop, self.current,
                          self.auto.worker_row(i) if self.auto is not None else None, level)
        return spawn(worker_main, f"stripedump-worker-{i}", (args,))

    def watch(self, stall_seconds: float) -> None:
        """Kill a worker stuck on one chunk (a read that never returns) so it can be retried."""
        now = time.monotonic()
        for i, p in enumerate(self.workers):
            cid, slot, t0 = CURRENT.unpack_from(self.current, i * CURRENT.size)
            # t0 == 0: the worker is between writing cid and t0 (pack_into is not atomic)
            if cid and t0 and p.exitcode is None and now - t0 > stall_seconds and i not in self.stalled:
                self.stalled.add(i)
                self.say(f"worker {i} has been on chunk {cid - 1} for {now - t0:.0f} s; killing it")
                p.kill()

    def dead(self, fail) -> bool:
        """True when a child died unexpectedly (``fail`` hears why); a worker killed by a bad page or
        as stuck is replaced instead."""
        for children, label in ((self.workers, "worker"), (self.writers, "writer")):
            for i, p in enumerate(children):
                if children is self.workers and self.retry_chunk_of(i, p):
                    continue
                if p.exitcode is not None:
                    fail(StripedumpError(f"{label} {i} (pid {p.pid}) {describe_exit(p)} unexpectedly")
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
        self.replaced.append(p)
        self.workers[i] = self.new_worker(i)
        self.tasks.put(cid - 1, slot | CAREFUL, self.choose(cid - 1))
        return True

    def stop_workers(self, fail) -> None:
        """Tell every worker to stop, and join them (killing what does not stop)."""
        for _ in self.workers:
            self.tasks.put(END, 0, 0)
        join_all(self.workers, fail, "worker")

    def join_writers(self, fail) -> None:
        join_all(self.writers, fail, "writer")

    def reap(self) -> None:
        reap(self.workers + self.writers)

    def cpu(self) -> dict | None:
        """CPU seconds (user + system) of each worker and writer, once all were reaped: {"workers": [...],
        "writers": [...]}; None where one was not reaped here (a multiprocessing.Process, or a writer
        abandoned on a hung target)."""
        out = {}
        for role, procs in (("workers", self.workers + self.replaced), ("writers", self.writers)):
            secs = [getattr(p, "cpu", None) for p in procs]
            if None in secs:
                return None
            out[role] = secs
        return out

    def close(self) -> None:
        """The pipes and the slot pool, once every child is gone."""
        for pipe in [self.tasks, self.events] + self.writer_qs:
            if pipe is not None:
                pipe.close()
        if self.pool is not None:
            self.pool.close()
