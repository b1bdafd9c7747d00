"""A FUSE file system that records every write and sync its files receive, in order: a power-loss recorder.

    python recording_fs.py BACKING_DIR MOUNTPOINT LOG

Files created or opened under MOUNTPOINT live in BACKING_DIR, and work as
usual.  Every operation that changes what a disk would hold is appended to
LOG as it arrives, before it is answered: ``write(offset, bytes)``,
``truncate(length)``, ``fsync``/``fdatasync`` (a barrier: what was written
before it is on stable storage once it returns) and ``flush`` (sent at each
close(); recorded, but no barrier: close() promises nothing on power loss).
The mount uses ``direct_io``, so no page cache sits between the dump and this
file system: writes arrive as the dump issues them (cut into ``max_write``
pieces), in the order it issues them.  Requests are served one at a time
(``nothreads``), so the log is one total order over all files.
``tests/helpers/crashstates.py`` reads LOG and builds crash states from it.
Used by tests/test_powerloss.py and bench/powerloss.py; runs in the
foreground until unmounted.

LOG format: entries of ``struct "<cBHQI"`` (op, datasync flag, name length,
offset or length, data length), then the file name, then the data.
"""

import os
import struct
import sys

from fuse import FUSE

from passthrough_fs import Passthrough

ENTRY = struct.Struct("<cBHQI")


class Recording(Passthrough):
    def __init__(self, backing: str, log: str):
        super().__init__(backing)
        self.log = open(log, "wb")

    def _rec(self, op: bytes, path: str, value: int, data=b"", flag: int = 0) -> None:
        name = path.encode()
        self.log.write(ENTRY.pack(op, flag, len(name), value, len(data)) + name + bytes(data))

    def create(self, path, mode, fi=None):
        self._rec(b"T", path, 0)     # a new file: empty
        return super().create(path, mode, fi)

    def open(self, path, flags):
        if flags & os.O_TRUNC:
            self._rec(b"T", path, 0)
        return super().open(path, flags)

    def write(self, path, data, offset, fh):
        n = super().write(path, data, offset, fh)
        self._rec(b"W", path, offset, data[:n])
        return n

    def truncate(self, path, length, fh=None):
        super().truncate(path, length, fh)
        self._rec(b"T", path, length)

    def fsync(self, path, datasync, fh):
        self._rec(b"S", path, 0, flag=1 if datasync else 0)
        self.log.flush()
        return 0

    def flush(self, path, fh):
        self._rec(b"F", path, 0)
        return 0

    def destroy(self, path):
        self.log.close()


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: recording_fs.py BACKING_DIR MOUNTPOINT LOG")
    FUSE(Recording(sys.argv[1], sys.argv[3]), sys.argv[2], foreground=True, nothreads=True,
         direct_io=True, big_writes=True, max_write=131072)
