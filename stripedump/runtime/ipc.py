"""Pipes that carry a few integers between the dump's processes, cheaply.

Why not multiprocessing.Queue: each put pickles, wakes a feeder thread and
takes locks; at a thousand chunks a second the coordinator spent a third of
a CPU on it (measured with ``stripedump bench``), on a machine that may have
two.  Here a message is one ``write()`` of a fixed-size struct (or a short
length-prefixed marshal of a tuple for the rare event), smaller than PIPE_BUF, so
writes from many processes never interleave, and a reader gets whole records.

Every wait is bounded: readers ``select()`` with a timeout and give up when
their parent has gone, so no process waits forever on a peer that died.
Read ends are non-blocking, so when several workers race for one task, the
losers go back to ``select()`` instead of blocking in ``read()``.
"""

from __future__ import annotations

import marshal
import os
import select
import struct

from .procs import coordinator_pid

PIPE_BUF = select.PIPE_BUF          # writes up to this size are atomic (POSIX: >= 512)
END = (1 << 64) - 1                 # a record whose first field is END is a sentinel


class SharedFlag:
    """One byte of anonymous shared memory, inherited across fork.

    Not multiprocessing.Value: that takes its memory from a file in /dev/shm,
    which a capture kernel's ramdisk may not have mounted.
    """

    def __init__(self):
        import mmap
        self._mm = mmap.mmap(-1, mmap.PAGESIZE, mmap.MAP_SHARED)

    @property
    def value(self) -> int:
        return self._mm[0]

    @value.setter
    def value(self, v: int) -> None:
        self._mm[0] = v


class RecordPipe:
    """Fixed-size struct records; any number of writers and readers."""

    def __init__(self, fmt: str):
        self.st = struct.Struct(fmt)
        assert self.st.size <= PIPE_BUF
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)

    def put(self, *fields) -> None:
        os.write(self.w, self.st.pack(*fields))

    def close(self) -> None:
        for fd in (self.r, self.w):
            try:
                os.close(fd)
            except OSError:
                pass

    def get(self, timeout: float):
        """One record, or None when nothing came within ``timeout`` seconds."""
        n = self.st.size
        try:
            b = os.read(self.r, n)
        except BlockingIOError:
            if not select.select([self.r], [], [], timeout)[0]:
                return None
            try:
                b = os.read(self.r, n)
            except BlockingIOError:      # another reader took it
                return None
        return self.st.unpack(b)

    def records(self, poll: float):
        """Records until an END record, or until the parent process has gone."""
        ppid = coordinator_pid()
        while True:
            rec = self.get(poll)
            if rec is None:
                if os.getppid() != ppid:
                    return
                continue
            if rec[0] == END:
                return
            yield rec


class MessagePipe:
    """Small messages (under PIPE_BUF); many writers, one reader.

    A message is a tuple of ints, floats, strings, None and small lists and
    dicts of them, from the dump's own children: ``marshal`` carries that,
    and is built in (pickle was an import of 2 ms in every run, issue 12).
    """

    HEAD = struct.Struct("<I")

    def __init__(self):
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        self._buf = b""

    close = RecordPipe.close

    def put(self, obj) -> None:
        data = marshal.dumps(obj)
        if len(data) + 4 > PIPE_BUF:            # only error texts can be long: shorten them
            obj = tuple(x[:PIPE_BUF // 4] if isinstance(x, str) else x for x in obj)
            data = marshal.dumps(obj)
        os.write(self.w, self.HEAD.pack(len(data)) + data)

    def get_all(self, timeout: float) -> list:
        """Every complete message available within ``timeout`` seconds (maybe none)."""
        if not select.select([self.r], [], [], timeout)[0]:
            return []
        try:
            self._buf += os.read(self.r, 1 << 16)
        except BlockingIOError:
            return []
        out, pos, buf = [], 0, self._buf
        while pos + 4 <= len(buf):
            (n,) = self.HEAD.unpack_from(buf, pos)
            if pos + 4 + n > len(buf):
                break
            out.append(marshal.loads(buf[pos + 4:pos + 4 + n]))
            pos += 4 + n
        self._buf = buf[pos:]
        return out
