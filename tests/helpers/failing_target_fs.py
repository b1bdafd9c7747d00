"""A FUSE file system whose files fail writes with EIO past a byte offset: a disk going bad mid-dump.

    python failing_target_fs.py BACKING_DIR MOUNTPOINT LIMIT [FAIL_SYNC_FROM]

Files created under MOUNTPOINT live in BACKING_DIR.  A write that reaches
byte LIMIT of a file or beyond fails with EIO (nothing of it is written), as
a block device does on a bad sector; reads, and writes below LIMIT, work.
With FAIL_SYNC_FROM = N > 0, the Nth fsync or fdatasync of the file system
and every later one fail with EIO (a disk whose cache flush fails: the
writes were acknowledged, but whether they are on the disk is unknown).
Used by tests/dump/test_disk_errors.py; runs in the foreground until unmounted.
"""

import errno
import sys

from fuse import FUSE, FuseOSError

from passthrough_fs import Passthrough


class FailingTarget(Passthrough):
    def __init__(self, backing: str, limit: int, fail_sync_from: int = 0):
        super().__init__(backing)
        self.limit = limit
        self.fail_sync_from, self.syncs = fail_sync_from, 0

    def write(self, path, data, offset, fh):
        if offset + len(data) > self.limit:
            raise FuseOSError(errno.EIO)
        return super().write(path, data, offset, fh)

    def fsync(self, path, datasync, fh):
        self.syncs += 1
        if self.fail_sync_from and self.syncs >= self.fail_sync_from:
            raise FuseOSError(errno.EIO)
        return 0


if __name__ == "__main__":
    FUSE(FailingTarget(sys.argv[1], int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 0),
         sys.argv[2], foreground=True, nothreads=True)
