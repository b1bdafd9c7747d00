"""A FUSE file system whose files fail writes with EIO past a byte offset: a disk going bad mid-dump.

    python failing_target_fs.py BACKING_DIR MOUNTPOINT LIMIT [FAIL_SYNC_FROM]

Files created under MOUNTPOINT live in BACKING_DIR.  A write that reaches
byte LIMIT of a file or beyond fails with EIO (nothing of it is written), as
a block device does on a bad sector; reads, and writes below LIMIT, work.
With FAIL_SYNC_FROM = N > 0, the Nth fsync or fdatasync of the file system
and every later one fail with EIO (a disk whose cache flush fails: the
writes were acknowledged, but whether they are on the disk is unknown).
Used by tests/test_disk_errors.py; runs in the foreground until unmounted.
"""

import errno
import os
import sys

from fuse import FUSE, FuseOSError, Operations


class FailingTarget(Operations):
    def __init__(self, backing: str, limit: int, fail_sync_from: int = 0):
        self.backing, self.limit = backing, limit
        self.fail_sync_from, self.syncs = fail_sync_from, 0

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
        return os.open(self._path(path), os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)

    def open(self, path, flags):
        return os.open(self._path(path), flags & ~(os.O_APPEND | getattr(os, "O_DIRECT", 0)))

    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        if offset + len(data) > self.limit:
            raise FuseOSError(errno.EIO)
        return os.pwrite(fh, data, offset)

    def truncate(self, path, length, fh=None):
        os.truncate(self._path(path), length)

    def fsync(self, path, datasync, fh):
        self.syncs += 1
        if self.fail_sync_from and self.syncs >= self.fail_sync_from:
            raise FuseOSError(errno.EIO)
        return 0

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        os.close(fh)

    def unlink(self, path):
        os.unlink(self._path(path))


if __name__ == "__main__":
    FUSE(FailingTarget(sys.argv[1], int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 0),
         sys.argv[2], foreground=True, nothreads=True)
