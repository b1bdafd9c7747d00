"""Where kdump output goes: a file written in place, or makedumpfile's flattened stream.

Why two sinks with one interface: the kdump-compressed file is random
access (each chunk's page descriptors have a fixed slot, its page data a
place in chunk-id order), so join's workers write ``(offset, bytes)``
pieces.  To a file that is ``pwrite``, in any order.  Through a pipe (``stripedump join --format flat -o - | ssh host
makedumpfile -R vmcore``) each piece becomes a flattened-format record,
"write these bytes at this offset", which ``makedumpfile -R`` replays
(kdump-format.md §10):

    0      "makedumpfile" + 4 NUL       16 bytes
    16     type    = 1, big-endian i64
    24     version = 1, big-endian i64
    32     zeros up to 4096
    4096   records: offset (BE i64), size (BE i64), size bytes of data
    end    offset = -1, size = -1

Readers and ``-R`` apply records by offset, so any order would do; join
appends each chunk's records in the chunk's turn (``pool.Turns``), so the
stream is the same bytes whatever the number of workers, and under one lock,
a record at a time and never interleaved.  A record never has size 0: ``-R`` would take it for
the end and then fail its end check.  The end record is written only after
every page made it.  When a join fails, the stream ends with the *abort*
record (offset -1, size 0), which ``makedumpfile -R`` rejects at once ("Can't
get valid end header") instead of waiting 600 s for more input, so a failed
join never becomes a plausible but incomplete file at the far end of a pipe.
"""

from __future__ import annotations

import errno
import os
import struct

from ..errors import OutputError
from ..runtime.fileio import write_exact

SIGNATURE = b"makedumpfile".ljust(16, b"\0")
TYPE_FLAT_HEADER = 1
VERSION_FLAT_HEADER = 1
HEADER_SIZE = 4096
RECORD_HEAD = struct.Struct(">qq")
END_RECORD = RECORD_HEAD.pack(-1, -1)
ABORT_RECORD = RECORD_HEAD.pack(-1, 0)     # ends -R's loop, fails its end check
LOCK_POLL = 1.0     # seconds between checks that the coordinator is still there


def flat_header() -> bytes:
    head = SIGNATURE + struct.pack(">qq", TYPE_FLAT_HEADER, VERSION_FLAT_HEADER)
    return head + bytes(HEADER_SIZE - len(head))


def write_fully(fd: int, bufs, where: str) -> None:
    """Write every byte of ``bufs`` (a list of buffers) to a stream; OutputError on failure."""
    views = [memoryview(b).cast("B") for b in bufs if len(b)]
    while views:
        try:
            n = os.writev(fd, views[:512])
        except OSError as e:
            if e.errno == errno.EPIPE:
                raise OutputError(f"{where}: the reading end of the pipe was closed") from None
            raise OutputError(f"{where}: write failed: {e.strerror}") from None
        if n == 0:
            raise OutputError(f"{where}: write failed: short write (device full?)")
        while n:
            if n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][n:]
                n = 0


class FileSink:
    """Pieces written in place with ``pwrite``: the kdump-compressed file itself."""

    def __init__(self, fd: int, where: str):
        self.fd, self.where = fd, where

    def write(self, parts) -> None:
        for offset, data in parts:
            if len(data):
                write_exact(self.fd, data, OutputError, self.where, offset)

    def finish(self) -> None:
        pass

    def abort(self) -> None:
        pass      # the partial file is removed instead


class FlatSink:
    """Pieces as flattened-format records appended to a stream, one writer at a time.

    ``lock`` is a multiprocessing lock shared by the coordinator and the
    workers it forks; a worker that waits for it gives up when the
    coordinator has gone, so no process is left blocked forever.
    """

    def __init__(self, fd: int, where: str, lock):
        self.fd, self.where, self.lock = fd, where, lock
        self.owner = os.getpid()
        write_fully(fd, [flat_header()], where)

    def _acquire(self) -> None:
        while not self.lock.acquire(timeout=LOCK_POLL):
            if os.getpid() != self.owner and os.getppid() != self.owner:
                raise OutputError(f"{self.where}: the coordinating process has gone")

    def write(self, parts) -> None:
        bufs = []
        for offset, data in parts:
            if len(data):         # a zero-length record would read as the end marker
                bufs += [RECORD_HEAD.pack(offset, len(data)), data]
        if not bufs:
            return
        self._acquire()
        try:
            write_fully(self.fd, bufs, self.where)
        finally:
            self.lock.release()

    def finish(self) -> None:
        """The end record: only after every record was written."""
        self._acquire()
        try:
            write_fully(self.fd, [END_RECORD], self.where)
        finally:
            self.lock.release()

    def abort(self) -> None:
        """Mark the stream as failed; called after every worker has stopped."""
        try:
            write_fully(self.fd, [ABORT_RECORD], self.where)
        except OutputError:
            pass      # the reader is gone: nobody to tell
