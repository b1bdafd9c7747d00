"""Hung targets: a target on which no bytes reach the device for ``--io-timeout`` fails.

Why
---
A disk that stops answering (a dead path to a SAN, a controller that drops
commands, a network block device whose server is gone) does not fail a
write: it leaves the writer blocked in ``write()`` or ``fdatasync()`` for
ever, in uninterruptible sleep (D state: even SIGKILL waits until the call
returns).  Without this module the dump waited with it.  The coordinator
must notice, go on without that writer (or stop the dump cleanly), and never
wait for it again: not at the end of the dump, not at interpreter exit
(multiprocessing joins its children there without a timeout), not when it
closes file descriptors (closing a file on a hung FUSE or network file
system sends a flush that blocks too).

What counts as a hang: progress, not the length of a call.  A buffered
writer's fdatasync of 256 MiB on a slow disk may take minutes and is
healthy as long as bytes keep reaching the device.  So, per writer:

* the writer publishes, in a small anonymous shared mapping (not /dev/shm,
  which a capture kernel may not mount), whether it is inside a call on its
  target, on which chunk and slot, and a counter it bumps after every call;
* while a call is in progress the coordinator also reads the write
  statistics of the block device behind the target
  (``/sys/dev/block/MAJ:MIN/stat``: writes, sectors written, discards and
  flushes completed): the target itself when it is a block device, else the
  device of the file system that holds it (``st_dev``);
* a writer is hung when it has been inside one call while neither its
  counter nor its device's counters moved for ``io_timeout`` seconds.  A
  writer waiting for work is never hung, however long it waits.

Limits: a file on a file system without a block device (NFS, FUSE, tmpfs)
has no statistics; there one call that lasts ``io_timeout`` is a hang (a
call writes at most one record, or syncs at most SYNC_EVERY bytes: choose
``--io-timeout`` to match such a target's speed).  Statistics are per
device: traffic of another process on the same device counts as progress (a
device that serves anyone is not hung).

What happens to a hung writer: it gets SIGKILL at once, which stays pending
until its call returns, so it never runs another line of ours whatever the
device does later; its Process object is taken out of multiprocessing's list
of children and replaced by a stand-in (``Abandoned``) that is neither alive
nor dead, so no join, liveness check or exit handler waits for it.  Once
the writers run, each target is open in its writer only (pipeline.py closes
the coordinator's descriptors before the workers are forked, and each writer
the other targets'): closing a descriptor of a file on a hung NFS or FUSE
file system sends a flush that blocks too, and every process's exit closes
its descriptors.

Which chunks it held: the slot it is writing (published here: retired,
never used again), the records waiting in its pipe (the coordinator reads
them out), and the chunks it acknowledged since its last successful sync,
which may never reach the disk (the coordinator keeps those per writer for
failed targets already: pipeline.py, ``target_failed``).  Under
``--on-disk-error continue`` they are encoded again from the source and go to
the other members (the pipe's records are forwarded, as degraded.py does for
a failed write); under ``stop`` the dump stops and says so.  The
coordinator's SYNC barrier before the end runs under ``stop`` too, so a disk
that hangs in its last sync is noticed before the other members are
finalized: they say it, as incomplete.
"""

from __future__ import annotations

import mmap
import os
import signal
import stat
import struct
import sys
import time

CHECK_EVERY = 0.25        # seconds between reads of the device statistics

# per writer: calls completed, busy since (monotonic, 0: idle), chunk id + 1 in the call (0: none),
# its slot, member position when the call began
HEAD = struct.Struct("<QdQQQ")
_Q, _D = struct.Struct("<Q"), struct.Struct("<d")
STRIDE = 64

# /sys/dev/block/M:m/stat fields that count completed writes: writes, write sectors,
# discards, discard sectors, flushes (older kernels have fewer fields)
_PROGRESS_FIELDS = (4, 6, 11, 13, 15)


def device_stat_path(fd: int) -> str | None:
    """The statistics file of the block device that ``fd``'s bytes go to, if there is one."""
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    dev = st.st_rdev if stat.S_ISBLK(st.st_mode) else st.st_dev
    if os.major(dev) == 0:          # anonymous: tmpfs, FUSE, NFS, btrfs subvolumes
        return None
    path = f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/stat"
    return path if os.path.exists(path) else None


def read_progress(path: str | None) -> tuple | None:
    if path is None:
        return None
    try:
        with open(path) as f:
            fields = f.read().split()
    except OSError:
        return None
    return tuple(int(fields[i]) for i in _PROGRESS_FIELDS if i < len(fields))


class Abandoned:
    """Stands in for a hung writer's Process: nothing waits for it, nothing reports it dead."""

    exitcode = None

    def __init__(self, proc):
        self.pid, self.name = proc.pid, proc.name

    def is_alive(self) -> bool:
        return False

    def join(self, timeout=None) -> None:
        pass

    def kill(self) -> None:
        pass

    terminate = kill


class IOWatch:
    """Shared per-writer call state; the writers publish it, the coordinator judges it.

    Owned: each writer writes only its own stride; the coordinator reads
    all of them and keeps the progress history (``_last``, ``_since``).
    """

    def __init__(self, targets, timeout: float):
        self.timeout = timeout
        self.paths = [t.path for t in targets]
        self.mm = mmap.mmap(-1, max(1, len(targets)) * STRIDE, mmap.MAP_SHARED)
        self.stats = [device_stat_path(t.fd) for t in targets]
        self._last: list = [None] * len(targets)
        self._since = [0.0] * len(targets)
        self._checked = 0.0
        self.hung: dict[int, str] = {}      # member -> why

    # -- writer side -----------------------------------------------------------------------
    def _head(self, d: int) -> tuple:
        return HEAD.unpack_from(self.mm, d * STRIDE)

    def call(self, d: int, cid: int | None = None, slot: int = 0, pos: int = 0) -> "IOWatch":
        """``with watch.call(d, cid, slot):`` writer ``d`` is inside a call on its target.

        (A plain context manager, not @contextmanager: this runs for every
        chunk, and the generator machinery tripled its cost.)"""
        base = d * STRIDE
        _Q.pack_into(self.mm, base + 16, 0 if cid is None else cid + 1)
        _Q.pack_into(self.mm, base + 24, slot)
        _Q.pack_into(self.mm, base + 32, pos)
        _D.pack_into(self.mm, base + 8, time.monotonic())    # last: the chunk is known when busy is
        self._in = base
        return self

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc) -> None:
        base = self._in
        _D.pack_into(self.mm, base + 8, 0.0)
        _Q.pack_into(self.mm, base, _Q.unpack_from(self.mm, base)[0] + 1)

    # -- coordinator side ------------------------------------------------------------------
    def check(self, now: float | None = None) -> list[int]:
        """Members whose writer is newly hung (also recorded in ``self.hung``)."""
        now = time.monotonic() if now is None else now
        if now - self._checked < CHECK_EVERY:
            return []
        self._checked = now
        out = []
        for d in range(len(self.paths)):
            if d in self.hung:
                continue
            calls, busy = self._head(d)[:2]
            if not busy:
                self._last[d] = None
                continue
            key = (calls, busy, read_progress(self.stats[d]))
            if key != self._last[d]:
                self._last[d], self._since[d] = key, now
                continue
            if now - self._since[d] >= self.timeout:
                where = "its device" if self.stats[d] else "it (no device statistics: one call)"
                self.hung[d] = (f"target {self.paths[d]} hung: no write reached {where} for "
                                f"{now - self._since[d]:.0f} s (--io-timeout {self.timeout:g})")
                out.append(d)
        return out

    def current(self, d: int) -> tuple[int, int] | None:
        """(chunk id, slot) writer ``d`` is stuck on, if it is on a chunk."""
        h = self._head(d)
        return (h[2] - 1, h[3]) if h[2] else None

    def position(self, d: int) -> int:
        return self._head(d)[4]

    @staticmethod
    def abandon(proc) -> Abandoned:
        """Kill a hung writer (pending until its call returns) and stop anything waiting for it."""
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, TypeError):
            pass
        # multiprocessing joins the children it knows of at exit, without a timeout (procs.Child:
        # it knows none; then it need not be imported, issue 12)
        mpp = sys.modules.get("multiprocessing.process")
        if mpp is not None:
            mpp._children.discard(proc)
        return Abandoned(proc)
