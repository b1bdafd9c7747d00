"""The FUSE pass-through the fault-injecting target file systems share: files live in a backing directory.

Why: a disk going bad (failing_target_fs.py), a hung or slow disk
(hanging_target_fs.py) and a power-loss recorder (recording_fs.py) differ
only in what they do to writes and syncs; everything else is this plain
pass-through, so each of them overrides just those.  Not run on its own.
"""

import os

from fuse import FuseOSError, Operations


class Passthrough(Operations):
    def __init__(self, backing: str):
        self.backing = backing

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
        return os.open(self._path(path), os.O_RDWR | os.O_CREAT | os.O_TRUNC, mode)

    def open(self, path, flags):
        return os.open(self._path(path), flags & ~(os.O_APPEND | getattr(os, "O_DIRECT", 0)))

    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        return os.pwrite(fh, data, offset)

    def truncate(self, path, length, fh=None):
        os.truncate(self._path(path), length)

    def fsync(self, path, datasync, fh):
        return 0

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        os.close(fh)

    def unlink(self, path):
        os.unlink(self._path(path))
