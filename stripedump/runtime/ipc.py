"""Pipes that carry a few integers between the dump's processes, cheaply, and what children send.

Why not multiprocessing.Queue: each put pickles, wakes a feeder thread and
takes locks; at a thousand chunks a second the coordinator spent a third of
a CPU on it (measured with ``stripedump bench``), on a machine that may have
two.  Here a message is one ``write()`` of a fixed-size struct (or of a
short length-prefixed marshal of an event record), smaller than PIPE_BUF,
so writes from many processes never interleave, and a reader gets whole
records.

Every wait is bounded: readers ``select()`` with a timeout and give up when
their parent has gone, so no process waits forever on a peer that died.
Read ends are non-blocking, so when several workers race for one task, the
losers go back to ``select()`` instead of blocking in ``read()``.

The protocol: what a child tells its parent is one of the named event
records below (``Event``: a dump's workers and writers on an ``EventPipe``,
the join pool's workers in batches on a multiprocessing queue).  On the wire
a record is a plain tuple, its tag first (``Event.wire``), and ``decode`` is
the one place that turns it back into a record; a ``Failed`` record carries
its error as errors.py's wire form and is decoded to the error itself, of
its own class.
"""

from __future__ import annotations

import marshal
import os
import select
import struct

from ..errors import StripedumpError, from_wire
from .plain import Record
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


class EventPipe:
    """Event records (below), each under PIPE_BUF; many writers, one reader.

    On the wire an event is a tuple of ints, floats, strings, None and small
    tuples and dicts of them, from the dump's own children: ``marshal``
    carries that, and is built in (pickle was an import of 2 ms in every
    run, issue 12).
    """

    HEAD = struct.Struct("<I")

    def __init__(self):
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        self._buf = b""

    close = RecordPipe.close

    def put(self, event: "Event") -> None:
        obj = event.wire()
        data = marshal.dumps(obj)
        if len(data) + 4 > PIPE_BUF:            # only error texts can be long: shorten them
            obj = tuple(x[:PIPE_BUF // 4] if isinstance(x, str) else x for x in obj)
            data = marshal.dumps(obj)
        os.write(self.w, self.HEAD.pack(len(data)) + data)

    def get_all(self, timeout: float) -> list:
        """Every complete event available within ``timeout`` seconds (maybe none), decoded."""
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
            out.append(decode(marshal.loads(buf[pos + 4:pos + 4 + n])))
            pos += 4 + n
        self._buf = buf[pos:]
        return out


# -- the events children send to their parent ------------------------------------------

_EVENTS: dict = {}      # tag -> Event class


class Event(Record):
    """A named record a child sends its parent: ``class X(Event, tag="x", fields=(...))``.

    Records of runtime/plain.py (no NamedTuple on the dump path, issue 12);
    ``wire()`` is the tuple that crosses the pipe (the tag, then the
    fields), ``decode`` rebuilds the record from it.
    """
    __slots__ = ()
    TAG = ""

    def __init_subclass__(cls, tag: str = "", **kw):
        super().__init_subclass__(**kw)
        if tag:
            assert tag not in _EVENTS, tag
            cls.TAG = tag
            _EVENTS[tag] = cls

    def wire(self) -> tuple:
        return (self.TAG, *self)

    @classmethod
    def unwire(cls, fields: tuple) -> "Event":
        return tuple.__new__(cls, fields)


def decode(wire: tuple) -> Event:
    """The event record a child sent (``Event.wire``): the one place the protocol is read."""
    return _EVENTS[wire[0]].unwire(wire[1:])


# a dump's workers and writers -> the coordinator (dump/stages.py -> dump/loop.py)

class Written(Event, tag="free", fields=("slot", "raw", "member", "chunk", "durable")):
    """Writer -> coordinator: ``chunk`` (``raw`` source bytes) is on ``member``; ``slot`` is free
    again.  ``durable``: -1, or (the write was followed by a sync) how many of the latest chunks
    are still not on the disk (``--direct-io``: staged; a stream: not acknowledged)."""
    __slots__ = ()


class Skipped(Event, tag="skip", fields=("slot",)):
    """Worker or writer -> coordinator: a chunk was not written (the dump stops); ``slot`` is free."""
    __slots__ = ()


class Unreadable(Event, tag="unreadable", fields=("chunk", "blocks")):
    """Worker -> coordinator: ``blocks`` blocks of ``chunk`` could not be read from the source."""
    __slots__ = ()


class Unclassified(Event, tag="unclassified", fields=("chunk", "why")):
    """Worker -> coordinator (dump levels): classifying ``chunk``'s pages failed; they are kept."""
    __slots__ = ()


class Synced(Event, tag="synced", fields=("member", "durable")):
    """Writer -> coordinator: the sync asked for (SYNC) succeeded; ``durable`` as in Written."""
    __slots__ = ()


class DiskFailed(Event, tag="diskfail", fields=("member", "why")):
    """Writer -> coordinator (``--on-disk-error continue``): its target failed and was dropped."""
    __slots__ = ()


class Lost(Event, tag="lost", fields=("member", "chunk")):
    """Writer -> coordinator (``--on-disk-error continue``): no live target was left for ``chunk``."""
    __slots__ = ()


class MemberDone(Event, tag="done", fields=("member", "length", "chunks", "bytes_in", "taken", "excluded")):
    """Writer -> coordinator: ``member`` is finalized (``length`` bytes, ``chunks`` chunks of
    ``bytes_in`` source bytes; ``taken``: {dropped member: its chunks stored here}; ``excluded``:
    pages a dump level left out of its chunks, as its footer counts them)."""
    __slots__ = ()


# the join pool's workers -> its coordinator (read/pool.py), in one list per batch

class ChunkRead(Event, tag="ok", fields=("raw", "unreadable")):
    """Pool worker -> pool: a chunk of ``raw`` bytes was handled; ``unreadable``: the ranges the
    source could not give at dump time, as (kind, chunk start, byte offset, byte end)."""
    __slots__ = ()


# any child -> its parent

class Failed(Event, tag="err", fields=("who", "slot", "chunk", "error")):
    """An error in a child (``who``: "worker 1", "writer 0", "join worker 2"): ``error`` is the
    StripedumpError itself, rebuilt in the parent as its own class (errors.from_wire); ``slot``:
    the dump slot it gives back, ``chunk``: the join chunk that failed (each None when none)."""
    __slots__ = ()

    @classmethod
    def of(cls, who: str, e: BaseException, slot: int | None = None, chunk: int | None = None) -> "Failed":
        """The event of ``e`` in ``who``: an error other than a StripedumpError is a bug there."""
        if not isinstance(e, StripedumpError):
            e = StripedumpError(f"internal error in {who}: {type(e).__name__}: {e}")
        return cls(who, slot, chunk, e)

    def wire(self) -> tuple:
        return (self.TAG, self.who, self.slot, self.chunk, *self.error.to_wire())

    @classmethod
    def unwire(cls, fields: tuple) -> "Failed":
        who, slot, chunk, names, message, attrs = fields
        return tuple.__new__(cls, (who, slot, chunk, from_wire(names, message, attrs)))
