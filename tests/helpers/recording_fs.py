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

from fuse import FUSE, FuseOSError, Operations

ENTRY = struct.Struct("<cBHQI")


class Recording(Operations):
    def __init__(self, backing: str, log: str):
        self.backing = backing
        self.log = open(log, "wb")

    def _rec(self, op: bytes, path: str, value: int, data=b"", flag: int = 0) -> None:
        name = path.encode()
        self.log.write(ENTRY.pack(op, flag, len(name), value, len(data)) + name + bytes(data))

    def _path(self, path):
        return os.path.join(self.backing, path.lstrip("/"))

    def getattr(self, path, fh=None):
        try:
            st = os.lstat(self._path(path))
        except OSError as e:
            raise FuseOSError(e.errno)
        return {k: getattr(st, k) for k in ("st_mode", "st_nlink", "st_size", "st_uid", "st_gid",
                                            "st_atime", "st_mtime", "st_ctime")}

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._path(path))

    def create(self, path, mode, fi=None):
        self._rec(b"T", path, 0)     # a new file: empty
        return os.open(self._path(path), os.O_RDWR | os.O_CREAT | os.O_TRUNC, mode)

    def open(self, path, flags):
        if flags & os.O_TRUNC:
            self._rec(b"T", path, 0)
        return os.open(self._path(path), flags & ~(os.O_APPEND | getattr(os, "O_DIRECT", 0)))

    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        n = os.pwrite(fh, data, offset)
        self._rec(b"W", path, offset, data[:n])
        return n

    def truncate(self, path, length, fh=None):
        os.truncate(self._path(path), length)
        self._rec(b"T", path, length)

    def fsync(self, path, datasync, fh):
        self._rec(b"S", path, 0, flag=1 if datasync else 0)
        self.log.flush()
        return 0

    def flush(self, path, fh):
        self._rec(b"F", path, 0)
        return 0

    def release(self, path, fh):
        os.close(fh)

    def unlink(self, path):
        os.unlink(self._path(path))

    def destroy(self, path):
        self.log.close()


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: recording_fs.py BACKING_DIR MOUNTPOINT LOG")
    FUSE(Recording(sys.argv[1], sys.argv[3]), sys.argv[2], foreground=True, nothreads=True,
         direct_io=True, big_writes=True, max_write=131072)
