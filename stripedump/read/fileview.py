"""A read-only file whose bytes are made on demand: ``size`` and ``pread(offset, n)``.

Why a module of its own: the files a dump can be read as (the ELF vmcore,
``reader.Dump``; the kdump-compressed file, ``kdump.view.KdumpView``; the
filtered ELF file, ``filtered.FilteredElf``; the mount's small files,
``mount.fusefs.BytesFile``) are never written out whole; each serves a
read by filling the bytes it covers.  What a read may ask is the same for
all of them and decided here once: an offset before the start reads from
the start, a read past the end is cut at the end, and a read of nothing or
wholly past the end is ``b""`` (as pread(2) at EOF), so that a subclass
fills a buffer that is never empty and lies inside the file.
"""

from __future__ import annotations


class FileView:
    """Base of a read-only file view: a subclass sets ``size`` and writes ``_fill``."""
    __slots__ = ()
    size: int

    def pread(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes of the file at ``offset`` (fewer at its end)."""
        offset = max(0, offset)
        end = min(self.size, offset + max(0, n))
        if offset >= end:
            return b""
        out = bytearray(end - offset)
        self._fill(out, offset, end)
        return bytes(out)

    def _fill(self, out: bytearray, offset: int, end: int) -> None:
        """Write the file's bytes [offset, end) into ``out`` (zeros already, ``end - offset`` long)."""
        raise NotImplementedError
