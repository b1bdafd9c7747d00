"""A dump's child processes as the coordinator sees them: started, watched, replaced, joined.

Why a module of its own: the coordinator's loop (loop.py) decides what a
death means for the dump; this module knows the processes.  It forks each
child with its one arguments value (stages.py: WorkerArgs, WriterArgs), and
reads the table in shared memory where each worker says which chunk it is
on (``CURRENT``: chunk id + 1, slot, start time).  From it:

* a worker on one chunk longer than ``--stall-seconds`` (a read of the
  source that never returns) is killed;
* a worker that died of SIGBUS (memory the source could not give) or was
  killed as stuck is replaced, and its chunk handed out again to be read
  page by page (CAREFUL), once per chunk;
* any other child that exits before it was told to is reported, and the
  dump stops (its slots would never come back);
* at the end the workers are told to stop and joined, the writers joined
  after their members are finalized, and whatever is left killed
  (procs.py's policy: nothing the coordinator forked outlives it).
"""

from __future__ import annotations

import mmap
import signal
import time

from ..errors import StripedumpError
from ..runtime.ipc import END
from ..runtime.procs import describe_exit, join_all, reap, spawn
from .stages import CAREFUL, CURRENT, worker_main, writer_main


class Crew:
    """The workers and writers of one dump.

    ``say``: the dump's messages; ``choose()``: the codec choice of a
    retried chunk.  ``open(tasks)`` makes the shared table and takes the
    task pipe (a retried chunk goes back on it) before any child starts;
    without it (a dump that failed before) there is nothing to watch or join.
    """

    def __init__(self, workers: int, say, choose):
        self.W, self.say, self.choose = workers, say, choose
        self.tasks = self.current = None
        self.workers: list = []
        self.writers: list = []
        self.worker_args = None            # i -> the WorkerArgs of worker i
        self.retried: set[int] = set()     # chunks handed out again to be read page by page
        self.stalled: set[int] = set()     # workers killed as stuck, not yet replaced

    def open(self, tasks) -> None:
        self.tasks = tasks
        self.current = mmap.mmap(-1, self.W * CURRENT.size, mmap.MAP_SHARED)   # CURRENT, per worker

    def start_writers(self, args: list) -> None:
        """One writer per member (``args``: its WriterArgs); a failed fork leaves the rest unstarted."""
        for a in args:
            self.writers.append(spawn(writer_main, f"stripedump-writer-{a.d}", (a,)))

    def start_workers(self, worker_args) -> None:
        self.worker_args = worker_args
        for i in range(self.W):
            self.workers.append(self.new_worker(i))
        for p in self.writers + self.workers:
            self.say(f"started {p.name} (pid {p.pid})", 2)

    def new_worker(self, i: int):
        return spawn(worker_main, f"stripedump-worker-{i}", (self.worker_args(i),))

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
        self.workers[i] = self.new_worker(i)
        self.tasks.put(cid - 1, slot | CAREFUL, self.choose())
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
