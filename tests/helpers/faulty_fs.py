"""A FUSE file system with one file, ``vmcore``, whose reads fail where told.

    python faulty_fs.py BACKING MOUNTPOINT START:END [START:END ...]

Reads that touch a byte in [START, END) of the file fail with EIO, as
/proc/vmcore does for memory the capture kernel cannot read (hardware
errors, poisoned pages); through mmap the same pages raise SIGBUS.  Used by
tests/dump/test_unreadable.py; runs in the foreground until unmounted.
"""

import errno
import os
import stat
import sys

from fuse import FUSE, FuseOSError, Operations


class Faulty(Operations):
    def __init__(self, backing, bad):
        self.fd = os.open(backing, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size
        self.bad = bad

    def getattr(self, path, fh=None):
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}
        if path == "/vmcore":
            return {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": self.size}
        raise FuseOSError(errno.ENOENT)

    def readdir(self, path, fh):
        return [".", "..", "vmcore"]

    def open(self, path, flags):
        return 0

    def read(self, path, size, offset, fh):
        if any(offset < b and a < offset + size for a, b in self.bad):
            raise FuseOSError(errno.EIO)
        return os.pread(self.fd, size, offset)


if __name__ == "__main__":
    ranges = [tuple(int(x, 0) for x in r.split(":")) for r in sys.argv[3:]]
    FUSE(Faulty(sys.argv[1], ranges), sys.argv[2], foreground=True, ro=True, nothreads=True)
