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
* **Without multiprocessing where it is not needed**: importing it (with
  socket, selectors, pickle, subprocess and threading) was about a tenth of
  a small dump's time (issue 12).  A dump's children talk through its own
  pipes and shared memory (ipc.py), so ``spawn`` forks them itself
  (``Child``: what the coordinator uses of a ``multiprocessing.Process``).
  Where multiprocessing is loaded (join's pool: its queues), its objects
  need its after-fork hooks in the child, so there ``spawn`` starts a
  ``multiprocessing.Process`` as before.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

POLL = 0.5            # seconds between liveness checks while waiting (a stop is seen within this)
JOIN_TIMEOUT = 30.0   # seconds a child gets to exit after it was told to
KILL_WAIT = 5.0       # seconds a killed child gets to disappear before it is forgotten
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_PARENT: int | None = None     # in a Child: the pid of the process that forked it


def _mp_context():
    import multiprocessing
    return multiprocessing.get_context("fork")


def spawn(target, name: str, args: tuple):
    """Fork a child that runs ``target(*args)``; it must call ``child_init`` first.

    A ``Child``, or a ``multiprocessing.Process`` where multiprocessing is
    loaded (its queues and locks are reset in the child by its hooks).
    """
    if "multiprocessing" in sys.modules:
        p = _mp_context().Process(target=target, name=name, args=args, daemon=True)
    else:
        p = Child(target, name, args)
    p.start()
    return p


class Child:
    """A forked child with what the coordinator uses of ``multiprocessing.Process``: ``pid``,
    ``name``, ``sentinel`` (readable once it has exited), ``exitcode`` (-N: killed by signal N),
    ``is_alive``, ``join``, ``kill``, ``terminate``.

    The child does what multiprocessing's bootstrap does for a forked
    process that uses none of its objects: standard input from /dev/null,
    exit status 0, or the SystemExit code, or 1 with the traceback on stderr
    after an exception; the standard streams flushed; ``os._exit``.
    """

    def __init__(self, target, name: str, args: tuple):
        self._target, self.name, self._args = target, name, args
        self.pid: int | None = None
        self.sentinel: int | None = None
        self._code: int | None = None
        self.cpu: float | None = None    # user + system seconds the kernel counted, once reaped (wait4)

    def start(self) -> None:
        global _PARENT
        parent = os.getpid()
        _flush_std_streams()      # or the child would write what the parent had buffered again
        r, w = os.pipe()          # the child holds w until it exits: r reads EOF then
        try:
            pid = os.fork()
        except BaseException:
            os.close(r)
            os.close(w)
            raise
        if pid == 0:              # the child: never returns
            code = 1
            try:
                os.close(r)
                _PARENT = parent
                code = self._run()
            finally:
                os._exit(code)
        os.close(w)
        self.pid, self.sentinel = pid, r

    def _run(self) -> int:
        try:
            try:
                sys.stdin.close()
                sys.stdin = open(os.devnull)
            except (AttributeError, OSError, ValueError):
                pass
            self._target(*self._args)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if not isinstance(e.code, int) and e.code is not None:
                sys.stderr.write(f"{e.code}\n")
        except BaseException:
            code = 1
            import traceback
            sys.stderr.write(f"Process {self.name}:\n")
            traceback.print_exc()
        _flush_std_streams()
        return code

    @property
    def exitcode(self) -> int | None:
        if self._code is None and self.pid is not None:
            try:
                pid, status, ru = os.wait4(self.pid, os.WNOHANG)
            except ChildProcessError:
                return None
            if pid:
                self._reaped(status, ru)
        return self._code

    def _reaped(self, status: int, ru) -> None:
        self._code = os.waitstatus_to_exitcode(status)
        self.cpu = ru.ru_utime + ru.ru_stime

    def is_alive(self) -> bool:
        return self.pid is not None and self.exitcode is None

    def join(self, timeout: float | None = None) -> None:
        if self.pid is None or self._code is not None:
            return
        if timeout is None:
            try:
                _, status, ru = os.wait4(self.pid, 0)
                self._reaped(status, ru)
            except ChildProcessError:
                pass
            return
        if select.select([self.sentinel], [], [], max(0.0, timeout))[0]:
            self.join()            # it has exited: the wait does not block

    def _signal(self, sig: int) -> None:
        if self.pid is not None and self.exitcode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def __del__(self):
        if self.sentinel is not None:
            try:
                os.close(self.sentinel)
            except OSError:
                pass
            self.sentinel = None


def _flush_std_streams() -> None:
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except (AttributeError, OSError, ValueError):
            pass


def queue_pair():
    """Two multiprocessing queues for a pool of forked children (join's task and event queues)."""
    ctx = _mp_context()
    return ctx.Queue(), ctx.Queue()


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
    if _PARENT is not None:
        return _PARENT
    mp = sys.modules.get("multiprocessing")
    p = mp.parent_process() if mp is not None else None
    return p.pid if p is not None else os.getppid()


def parent_gone(ppid: int) -> bool:
    """True when the process that forked us (``ppid``: ``coordinator_pid()``) is no longer our parent."""
    return os.getppid() != ppid


def messages(q):
    """Messages from a child's multiprocessing inbox until the ``None`` sentinel.

    Stops as well when the coordinator has gone (the child was re-parented):
    nobody would read the child's results, so it must not wait forever.
    """
    import queue
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
    """Stop multiprocessing from joining ``p`` (without a timeout) at interpreter exit (a Child: it
    never knew of it)."""
    mpp = sys.modules.get("multiprocessing.process")
    if mpp is not None:
        mpp._children.discard(p)


def join_all(procs, fail, label: str, timeout: float = JOIN_TIMEOUT) -> None:
    """Wait for children told to stop; kill the ones that do not within ``timeout`` seconds.

    ``fail(error)`` hears of every child that had to be killed or did not
    exit cleanly.
    """
    from ..errors import StripedumpError
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
