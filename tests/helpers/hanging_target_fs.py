"""A FUSE file system whose files stop answering writes, or answer them slowly: a hung or slow disk.

    python hanging_target_fs.py BACKING_DIR MOUNTPOINT HANG_AT DELAY

Files under MOUNTPOINT live in BACKING_DIR.  A write that reaches byte
HANG_AT of a file or beyond never returns (0: no limit), as a disk that
stops answering; so does every request after it, since the file system
serves one request at a time: the kernel side stays blocked until the test
aborts the connection (/sys/fs/fuse/connections/N/abort), which fails every
pending request.  Every write first sleeps DELAY seconds: a slow disk that
still makes progress.  Used by tests/dump/test_hung.py (under a loop device, so
the dump's writer blocks in the block layer, in D state); runs in the
foreground until unmounted or killed.
"""

import sys
import threading
import time

from fuse import FUSE

from passthrough_fs import Passthrough


class HangingTarget(Passthrough):
    def __init__(self, backing: str, hang_at: int, delay: float):
        super().__init__(backing)
        self.hang_at, self.delay = hang_at, delay

    def write(self, path, data, offset, fh):
        if self.hang_at and offset + len(data) > self.hang_at:
            sys.stderr.write(f"hanging_target_fs: hanging at offset {offset}\n")
            sys.stderr.flush()
            threading.Event().wait()          # for ever: the test aborts the connection
        if self.delay:
            time.sleep(self.delay)
        return super().write(path, data, offset, fh)


if __name__ == "__main__":
    FUSE(HangingTarget(sys.argv[1], int(sys.argv[3]), float(sys.argv[4])), sys.argv[2],
         foreground=True, nothreads=True, big_writes=True, max_write=131072)
