"""The child processes of dump and join: fork, signal policy, liveness, joining.

Why one module: a dump is only as trustworthy as the code that owns its
processes.  Whoever forks a child must also decide what a signal does to it,
notice when it dies, and make sure it is gone (or knowingly left behind)
before the coordinator exits.  Dump (pipeline.py) and join/verify (join.py)
share that policy here, so it is written, and tested, once:

* **Fork**: every child is a ``fork`` of the coordinator (``spawn``), so it
  inherits the source's descriptor and anonymous shared memory; nothing
  needs /dev/shm, which a capture kernel may not mount.
* **Signals**: SIGINT, SIGTERM and SIGHUP reach the coordinator alone (kill
  PID) or the whole process group (Ctrl-C, systemd stopping the unit,
  ``timeout``, ``kill -- -PGID``).  Children ignore all three
  (``child_init``): a child killed mid-write leaves a member no one
  finalizes.  The coordinator turns them into a flag (``Signals``), stops
  the feed, tells every child to finish and finalizes the members.  A SIGHUP
  that was ignored when the coordinator started (``nohup``) stays ignored,
  in the coordinator and in its children.
* **Liveness**: a child polls ``parent_gone`` every POLL seconds while it
  waits, and stops when the coordinator has gone (SIGKILL, a crash): no one
  would read its results.  The coordinator reads a child's ``exitcode``
  between waits (``describe_exit`` says how it died).
* **Joining**: ``join_all`` gives children JOIN_TIMEOUT seconds, then kills
  them; ``reap`` kills whatever is left.  A child that even SIGKILL cannot
  end at once (stuck in the kernel, D state, on a hung disk) is forgotten
  by multiprocessing, which would otherwise join it without a timeout at
  interpreter exit (after a SIGTERM that children ignore): the coordinator
  must be able to exit and report.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.process
import os
import queue
import select
import signal
import time

POLL = 0.5            # seconds between liveness checks while waiting (a stop is seen within this)
JOIN_TIMEOUT = 30.0   # seconds a child gets to exit after it was told to
KILL_WAIT = 5.0       # seconds a killed child gets to disappear before it is forgotten
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_CTX = multiprocessing.get_context("fork")


def spawn(target, name: str, args: tuple):
    """Fork a child that runs ``target(*args)``; it must call ``child_init`` first."""
    p = _CTX.Process(target=target, name=name, args=args, daemon=True)
    p.start()
    return p


def queue_pair():
    """Two multiprocessing queues for a pool of forked children (join's task and event queues)."""
    return _CTX.Queue(), _CTX.Queue()


def child_init() -> None:
    """Signal policy of every child: the coordinator alone decides what a stop signal means.

    Until this runs, a forked child has the coordinator's handlers, which
    only set a flag in the child's copy of ``Signals``: no window in which
    a signal to the process group kills it.
    """
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def coordinator_pid() -> int:
    """The pid of the process that forked this child, as the coordinator recorded it before the fork.

    Not ``os.getppid()`` read in the child: a coordinator SIGKILLed between
    the fork and that call leaves the child re-parented already, and the
    child would then wait for ever for a parent that is gone (seen in the
    soak: two children alive a minute after the coordinator was killed).
    """
    p = multiprocessing.parent_process()
    return p.pid if p is not None else os.getppid()


def parent_gone(ppid: int) -> bool:
    """True when the process that forked us (``ppid``: ``coordinator_pid()``) is no longer our parent."""
    return os.getppid() != ppid


def messages(q):
    """Messages from a child's multiprocessing inbox until the ``None`` sentinel.

    Stops as well when the coordinator has gone (the child was re-parented):
    nobody would read the child's results, so it must not wait forever.
    """
    ppid = coordinator_pid()
    while True:
        try:
            msg = q.get(timeout=POLL)
        except queue.Empty:
            if parent_gone(ppid):
                return
            continue
        if msg is None:
            return
        yield msg


def describe_exit(p) -> str:
    code = p.exitcode
    if code is not None and code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Signals:
    """SIGINT, SIGTERM and SIGHUP become a flag (the first one received) that a loop checks.

    A SIGHUP ignored on entry (``nohup``) is left ignored.  Outside the main
    thread signals cannot be caught: they are left alone.  Leaving restores
    the previous handlers.
    """

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    def __enter__(self):
        for s in STOP_SIGNALS:
            try:
                if s == signal.SIGHUP and signal.getsignal(s) == signal.SIG_IGN:
                    continue
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:   # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()


def _forget(p) -> None:
    """Stop multiprocessing from joining ``p`` (without a timeout) at interpreter exit."""
    multiprocessing.process._children.discard(p)


def join_all(procs, fail, label: str, timeout: float = JOIN_TIMEOUT) -> None:
    """Wait for children told to stop; kill the ones that do not within ``timeout`` seconds.

    ``fail(error)`` hears of every child that had to be killed or did not
    exit cleanly.
    """
    from .errors import StripedumpError
    deadline = time.monotonic() + timeout
    for i, p in enumerate(procs):
        _join(p, max(0.1, deadline - time.monotonic()))
        if p.is_alive():
            _kill(p)
            fail(StripedumpError(f"{label} {i} (pid {p.pid}) did not stop in time and was killed"))
        elif p.exitcode not in (0, None):
            fail(StripedumpError(f"{label} {i} (pid {p.pid}) {describe_exit(p)}"))


def _join(p, timeout: float) -> None:
    """``p.join(timeout)`` without the import of multiprocessing.connection that a join with a
    timeout makes (8 ms of a small dump's fixed cost: issue 12): wait on its sentinel here."""
    try:
        ready = select.select([p.sentinel], [], [], timeout)[0]
    except (AttributeError, ValueError, OSError):    # not a Process (iowatch's stand-in), never started
        p.join(timeout)
        return
    if ready:
        p.join()          # it has exited: the wait does not block


def _kill(p) -> None:
    try:
        p.kill()
    except (OSError, ValueError):    # gone already, or never started
        return
    p.join(KILL_WAIT)
    if p.is_alive():      # in the kernel (D state): do not wait for it at exit
        _forget(p)


def reap(procs) -> None:
    """Kill every child of ``procs`` still alive: nothing the coordinator forked outlives it."""
    for p in procs:
        try:
            alive = p.is_alive()
        except (AssertionError, ValueError):     # never started, or closed
            continue
        if alive:
            _kill(p)
        else:
            p.join(0)
