"""O_DIRECT where a target accepts it, buffered writes where it does not (issue 25, item 2).

Why: a buffered writer copies every byte of its member into the page cache
and the kernel then writes it back; on the filled real-kernel fixture that
was about 0.3 CPU s per writer (docs/benchmarks.md), paid on top of the
codec, and in a capture kernel the page cache is memory it does not have.
With O_DIRECT the device reads the writer's own buffer.  So a dump writes
every target that accepts O_DIRECT that way (block devices, ext4, xfs, ...)
and the others (ramfs, which a capture kernel's initramfs may be; some
network and FUSE file systems) buffered, each target on its own:
``--buffered`` chooses buffered writes for all, ``--direct-io`` makes
O_DIRECT a requirement (a target that refuses it is an error, exit 5).

How a target is tried: it is opened (and locked, and truncated) as every
target is, then O_DIRECT is set on its descriptor (``fcntl(F_SETFL)``, which
the kernel refuses with EINVAL where the file system cannot do direct I/O,
the same test as an ``open`` with O_DIRECT) and read back (``F_GETFL``,
what /proc/PID/fdinfo shows).  The first write, the member's head (a
page-aligned buffer at offset 0), is the proof: a file system that took
the flag but refuses the I/O (EINVAL) has the flag cleared and the head
written buffered (``write_head``).  What was chosen is said per target
(``-v``, ``dump --json``'s ``write_modes``).  A dump whose memory limit
cannot spare the 4 MiB staging buffer per writer without losing a slot of
the buffer pool writes buffered (coordinator._fit_pool).

What stays as it was: the writer's O_DIRECT path (writer.py: records
gathered in a page-aligned staging buffer and written in multiples of
DIRECT_ALIGN, so the member's layout is unchanged), its syncs (the staged
whole pages written first) and its accounting of the chunks whose records
are still staged (``Written.durable``), on which the degraded mode relies;
and the end of a member: its last partial page is written buffered
(``buffered``, then the final fsync), so the member ends where its
trailer says, as a buffered member does.
"""

from __future__ import annotations

import errno
import fcntl
import os

from ..errors import TargetIOError
from ..runtime.fileio import write_exact

O_DIRECT = getattr(os, "O_DIRECT", 0)
DIRECT_ALIGN = 4096        # O_DIRECT offset and length alignment (logical block size or less)


def try_direct(fd: int) -> bool:
    """Set O_DIRECT on ``fd``; True when the kernel took it (and says so), False where refused."""
    if not O_DIRECT:
        return False
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | O_DIRECT)
        return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & O_DIRECT)
    except OSError:       # EINVAL: no direct I/O here; anything else: a preference, not worth failing for
        return False


def is_direct(fd: int) -> bool:
    """Whether ``fd`` has O_DIRECT now (as /proc/PID/fdinfo's flags say)."""
    return bool(O_DIRECT) and bool(fcntl.fcntl(fd, fcntl.F_GETFL) & O_DIRECT)


def buffered(fd: int) -> None:
    """Clear O_DIRECT on ``fd``: later writes go through the page cache (any length, any offset)."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if flags & O_DIRECT:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~O_DIRECT)


def write_head(fd: int, block, what: str, required: bool) -> None:
    """Write a member's head (a page-aligned ``block``) at offset 0.  Where ``fd`` has O_DIRECT and the
    first page of it is refused (EINVAL: the flag was taken, the I/O is not), O_DIRECT is cleared and
    the head written buffered, unless O_DIRECT was required (``--direct-io``: the error stands)."""
    if not required and is_direct(fd):
        try:
            with memoryview(block) as mv:
                os.pwrite(fd, mv[:DIRECT_ALIGN], 0)      # the head's own first page, where it goes
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise TargetIOError(f"{what}: write failed at offset 0x0: {e.strerror}") from None
            buffered(fd)
    write_exact(fd, block, TargetIOError, what, 0)
