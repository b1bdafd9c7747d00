"""Members where they are: ``s3://[PROFILE@]BUCKET/KEY`` opened for random reads with ranged GETs.

Why: a dump in object storage should be joined, verified, described or
mounted without downloading its members first (``info`` reads headers,
footers and indexes; ``mount`` the records a reader asks for).  This module
turns a member URL into what ``member.MemberReader`` and the read pool use
of a local file, as sshread.py does for ``ssh://``: ``size``,
``pread(offset, length)``, ``prefetch(ranges)``, ``close()``.

* botocore, imported only when an ``s3://`` member is opened; the endpoint,
  credentials and CA bundle as s3url.py says (``configure`` sets the
  command line's ``--s3-endpoint``/``--s3-ca-bundle`` for this process).
* Requests.  Opening a member is two GETs: its first ``HEAD`` bytes (the
  header and manifest; the answer's Content-Range gives the size and its
  ETag pins the version) and its last ``TAIL`` bytes (trailer, footer, last
  index record).  Every later GET carries ``If-Match`` with that ETag: a
  member replaced while it is read fails instead of mixing two dumps.
  ``prefetch`` fetches its ranges with up to ``PARALLEL`` GETs at once
  (ranges closer than ``GAP`` merged into one), so index records come in
  batches of ``PREFETCH_GROUP``; a small read outside what is held fetches
  ``held.READAHEAD`` bytes from there on (walking an unfinished member's records).
* Memory: the head and tail kept, plus the last prefetch or read-ahead (at
  most ``PREFETCH_GROUP`` index records, or the records of one read pool
  batch): a bounded cache, as for ``ssh://``.
* One client per process and settings, made lazily; a client is never used
  across ``fork`` (its connection pool's sockets): ``before_fork`` drops
  this process's, and one found in a process other than its maker's is
  replaced.
* Errors: ``RemoteError`` (errors.py: a MemberError, exit 6), one line,
  ``absent`` when the member is not there to be read (no such key or
  bucket, the store unreachable): ``join --allow-incomplete`` then goes on
  without it.  Refused credentials are never taken for a missing member.
"""

from __future__ import annotations

import os
import threading

from ..errors import MemberError, RemoteError, UsageError
from .held import HeldReads
from .s3url import S3Options, S3Url, error_code, is_auth, is_gone, make_client, say

HEAD = 256 << 10             # read at open: the header and the manifest
TAIL = 64 << 10              # read at open: trailer, footer and the last index record
PREFETCH_GROUP = 64          # index records asked for at once
PARALLEL = 8                 # GETs in flight for one prefetch
GAP = 64 << 10               # prefetch ranges closer than this are fetched as one
CONNECT_TIMEOUT = 15.0       # seconds per attempt (x s3url.ATTEMPTS, with backoff)
READ_TIMEOUT = 60.0

STATS = {"requests": 0, "bytes": 0, "clients": 0}   # this process's, for tests and bench

_settings: S3Options | None = None
_clients: dict[tuple, tuple[int, object]] = {}      # (profile, settings) -> (maker's pid, client)
_lock = threading.Lock()


def configure(opts: S3Options | None) -> None:
    """The command line's ``--s3-endpoint`` and ``--s3-ca-bundle`` for this process's readers."""
    global _settings
    _settings = opts
    before_fork()


def before_fork() -> None:
    """Drop this process's clients: no connection is shared with a child; each reopens lazily."""
    with _lock:
        _clients.clear()


def _client(at: S3Url):
    key = (at.profile, _settings)
    with _lock:
        got = _clients.get(key)
        if got is not None and got[0] == os.getpid():
            return got[1]
    try:
        c = make_client(at, _settings, CONNECT_TIMEOUT, READ_TIMEOUT, pool=PARALLEL + 2)
    except UsageError as e:          # the S3 configuration refused (a profile not found): exit 2
        raise UsageError(f"member {at}: {e}") from None
    STATS["clients"] += 1
    with _lock:
        _clients[key] = (os.getpid(), c)
    return c


class S3File(HeldReads):
    """One member read with ranged GETs: ``size``, ``pread``, ``prefetch``, ``close`` (thread-safe)."""

    PREFETCH_GROUP = PREFETCH_GROUP

    def __init__(self, url: str, head: bool = True):
        """``head``: keep the member's first HEAD and last TAIL bytes (a reader of records only,
        such as a read pool worker, asks for none: its open is one 1-byte GET)."""
        self.url = url
        try:
            self.at = S3Url.parse(url, "member")
        except UsageError as e:
            raise MemberError(str(e)) from None
        self.size = -1
        self.etag: str | None = None
        HeldReads.__init__(self)
        first = self._get(0, HEAD if head else 1, opening=True)
        if not head:
            return
        self._keep = [(0, first)]
        if self.size > len(first):
            t = max(len(first), self.size - TAIL)
            self._keep.append((t, self._get(t, self.size - t)))

    def _get(self, offset: int, length: int, opening: bool = False) -> bytes:
        """Bytes [offset, offset + length) in one GET (fewer at the end of the object)."""
        if length <= 0:
            return b""
        kw = {"IfMatch": self.etag} if self.etag else {}
        client = _client(self.at)          # outside the try: a UsageError stays one (exit 2)
        try:
            r = client.get_object(Bucket=self.at.bucket, Key=self.at.key,
                                            Range=f"bytes={offset}-{offset + length - 1}", **kw)
            data = r["Body"].read()
        except Exception as e:
            raise self._error(e) from None
        STATS["requests"] += 1
        STATS["bytes"] += len(data)
        if opening:
            total = r.get("ContentRange", "").rpartition("/")[2]
            self.size = int(total) if total.isdigit() else len(data)
            self.etag = r.get("ETag")
        return data

    def _error(self, e: BaseException) -> RemoteError:
        code = error_code(e)
        where = f"member {self.url}"
        if code in ("NoSuchKey", "404"):
            return RemoteError(f"{where}: no such object in bucket {self.at.bucket}", absent=True)
        if code == "NoSuchBucket":
            return RemoteError(f"{where}: bucket {self.at.bucket} does not exist", absent=True)
        if code == "InvalidRange" and self.size < 0:
            self.size = 0
            return RemoteError(f"{where}: the object is empty")
        if code in ("PreconditionFailed", "412"):
            return RemoteError(f"{where}: the object was replaced while it was being read")
        if is_auth(e):
            return RemoteError(f"{where}: {say(e)}")
        return RemoteError(f"{where}: {say(e)}", absent=is_gone(e))

    def _fetch_one(self, offset: int, length: int) -> bytes:
        return self._get(offset, length)

    def prefetch(self, ranges: list[tuple[int, int]]) -> None:
        """Fetch these ranges (merged where close, several GETs at once); reads inside them are then
        served from memory until the next prefetch or read-ahead."""
        ranges = sorted((o, min(n, self.size - o)) for o, n in ranges if 0 <= o < self.size and n > 0)
        with self._lock:
            ranges = [(o, n) for o, n in ranges if self._held(o, n) is None]
            if not ranges:
                return
            spans: list[list[int]] = []
            for o, n in ranges:
                if spans and o <= spans[-1][1] + GAP:
                    spans[-1][1] = max(spans[-1][1], o + n)
                else:
                    spans.append([o, o + n])
            if len(spans) == 1:
                got = [self._get(spans[0][0], spans[0][1] - spans[0][0])]
            else:
                from concurrent.futures import ThreadPoolExecutor
                with ThreadPoolExecutor(min(PARALLEL, len(spans))) as pool:
                    got = list(pool.map(lambda s: self._get(s[0], s[1] - s[0]), spans))
            self._spans = [(s[0], data) for s, data in zip(spans, got)]

    def close(self) -> None:
        with self._lock:
            self._keep = self._spans = []


def open_member(url: str, head: bool = True) -> S3File:
    return S3File(url, head)
