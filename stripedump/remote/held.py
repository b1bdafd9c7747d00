"""What a remote member keeps in memory, and reads through it: one rule for ssh:// and s3://.

Why: a remote read is a round trip, so both remote readers (sshread's SFTP
file, s3read's ranged GETs) keep the member's head and tail from its open
(``_keep``: the header, manifest, footer, index and trailer that info and
the readers look up again and again) and the last prefetch or read-ahead
span (``_spans``), and turn a small read outside them into one read-ahead
of ``READAHEAD`` bytes.  The rule is the same for both; only how bytes are
fetched differs (``_fetch_one``), so it lives here once.
"""

from __future__ import annotations

import threading

READAHEAD = 1 << 20          # a small read outside what is held fetches this much from there on


class HeldReads:
    """``pread`` served from the held head, tail and spans, else fetched (``_fetch_one``)."""

    size: int

    def __init__(self) -> None:
        self._keep: list[tuple[int, bytes]] = []      # head and tail: read at open, kept
        self._spans: list[tuple[int, bytes]] = []     # the last prefetch or read-ahead
        self._lock = threading.Lock()

    def _fetch_one(self, offset: int, length: int) -> bytes:
        raise NotImplementedError

    def _held(self, offset: int, length: int) -> bytes | None:
        for off, data in (*self._keep, *self._spans):
            if off <= offset and offset + length <= off + len(data):
                return data[offset - off:offset - off + length]
        return None

    def pread(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (fewer only at the end of the member)."""
        with self._lock:
            data = self._held(offset, length)
            if data is not None:
                return data
            if length < READAHEAD // 4:
                n = min(READAHEAD, self.size - offset)
                if n > length:
                    self._spans = [(offset, self._fetch_one(offset, n))]
                    return self._spans[0][1][:length]
            return self._fetch_one(offset, length)
