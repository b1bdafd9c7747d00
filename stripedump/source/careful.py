"""Reading source memory that may not be readable: one page at a time, each failure retried once.

Why a module of its own: /proc/vmcore can hold pages that cannot be read
(EIO or EFAULT through read(); the same pages raise SIGBUS through mmap and
kill the worker that touched them).  The fast path reads a chunk through a
window (vmcore.Source); when that fails, or when a worker already died of a
page fault in the chunk, the encoder falls back to this slow, safe read and
marks the pages it could not get.  It is about the source, not about the
record format: it knows pages and file offsets, never a chunk record.
"""

from __future__ import annotations

from ..errors import SourceError
from .vmcore import Window


def read_carefully(src, pages: bool, start: int, count: int) -> tuple[Window, list[tuple[int, int]]]:
    """Bytes of ``src`` read one page at a time with read(), each failure retried once.

    ``pages``: ``count`` pages from PFN ``start`` (``Source.phys_window``);
    else ``count`` file bytes from offset ``start`` (``Source.window``).
    Returns a window whose unreadable pages are zeros, and the list of their
    byte ranges within it (neighbours merged).  mmap is off while it reads
    (a page that cannot be read must be an error, not a SIGBUS) and restored
    after.
    """
    ps = src.page_size
    n = count * ps if pages else count
    buf, bad = bytearray(n), []
    saved, src.use_mmap = src.use_mmap, False
    try:
        for a in range(0, n, ps):
            b = min(a + ps, n)
            for attempt in (1, 2):
                try:
                    w = src.phys_window(start + a // ps, 1) if pages else src.window(start + a, b - a)
                    with w:
                        buf[a:b] = w.view()[:b - a]
                    break
                except SourceError:
                    if attempt == 2:
                        if bad and bad[-1][1] == a:
                            bad[-1] = (bad[-1][0], b)
                        else:
                            bad.append((a, b))
    finally:
        src.use_mmap = saved
    return Window(buf, 0, n), bad
