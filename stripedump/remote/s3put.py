"""The uploader of one ``s3://`` member: its byte stream in, one multipart upload out.

Why a process of its own: a member is written as a stream (writer.py's
``Sink``, as for ``ssh://``), and the uploader is the remote end of that
stream: s3target.py forks it per target, with the member's bytes on its
standard input and the same one-line answers on its standard output that
sshtarget.py's remote script gives (``ready``, ``refused WHY``, ``error
WHY``, ``done N``).  So the writer, the coordinator's books of what a failed
target takes with it, ``--on-disk-error continue`` and ``--io-timeout`` work
on S3 members unchanged, and botocore (with its threads and sockets) lives
only here, never in the coordinator, a worker or a writer.

1. Checks, before the dump writes anything anywhere: the object does not
   exist (a ranged GET: ``refused`` unless ``--force``), no other upload to
   the key is open (another dump writing it, or one that was killed:
   ``refused``; ``--force`` aborts them), the bucket exists and the
   credentials are taken (``error``), and the multipart upload is created
   (so the right to write is proven).  Then ``ready``; a ``go`` line on
   stdin starts the stream, anything else (EOF: another target was refused)
   aborts the upload: nothing was stored.
2. The stream: parts of ``part_size`` bytes, at most ``in_flight`` uploading
   at once while the next is read (memory: (in_flight + 1) x part_size,
   counted in ``--memory-limit``); botocore retries each request as
   s3url.py says.  A reader blocked for a free buffer blocks the writer on
   the pipe: the link sets the pace.
3. The end.  The upload is completed only when the stream ends with this
   member's own trailer (format/structs.Trailer: its dump id, its length =
   every byte received): a stream cut short (the dump killed, its writer
   gone) is aborted, never stored; a member is visible only whole.  The
   completion carries ``If-None-Match: *`` (unless ``--force``): an object
   that appeared at the key during the dump is not overwritten.  ``done N``
   (N: the stored object's size, read back) follows.

No ``synced`` answer comes before ``done``: the parts of an upload that is
aborted are gone, so until the object exists every chunk of the member is
one a failure can take (the coordinator keeps their ids, 8 bytes each, and
encodes them again for the other targets under ``--on-disk-error
continue``).

A failure (a part refused after its retries, the store unreachable) aborts
the upload and answers ``error WHY``; when the abort fails too, the answer
names the upload id that stays open (invisible, holding its parts until a
lifecycle rule or ``aws s3api abort-multipart-upload`` removes it, and
refused by the next dump to the key until ``--force``).  SIGINT, SIGTERM
and SIGHUP are ignored, as in the dump's other children: the uploader ends
when its stream does.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time

from ..errors import TargetIOError, TargetRefused, UsageError
from ..format.structs import HEADER_BLOCK, TRAILER_SIZE, MemberHeader, Trailer
from .s3url import S3Options, S3Url, error_code, make_client, say

GO_WAIT = 600.0      # seconds the uploader waits for go (the coordinator checks its other targets)


class Uploader:
    """One member's multipart upload, from its checks to its completion or abort."""

    def __init__(self, url: str, opts: S3Options, force: bool, timeout: float):
        self.url, self.opts, self.force = url, opts, force
        self.at = S3Url.parse(url)
        t = max(2.0, timeout / 8)    # x ATTEMPTS tries, plus backoff: a request fails within --io-timeout
        self.client = make_client(self.at, opts, t, t, pool=opts.in_flight + 2)
        self.upload_id: str | None = None
        self.parts: dict[int, str] = {}           # part number -> ETag
        self.failed: str | None = None            # the first part that failed, and why
        self._lock = threading.Lock()
        self._free: list[bytearray] = []
        self._buffers = 0
        self._room = threading.Semaphore(opts.in_flight + 1)
        self._pool = None

    # -- 1. checks ---------------------------------------------------------------
    def check(self) -> None:
        b, k, c = self.at.bucket, self.at.key, self.client
        try:
            got = c.get_object(Bucket=b, Key=k, Range="bytes=0-0")
            got["Body"].close()
            size = got.get("ContentRange", "").rpartition("/")[2]
            if not self.force:
                raise TargetRefused(f"target {self.url}: the object exists ({size or '?'} bytes); "
                                    "refusing to overwrite it (use --force)")
        except TargetRefused:
            raise
        except Exception as e:
            code = error_code(e)
            if code == "InvalidRange" and not self.force:      # an empty object
                raise TargetRefused(f"target {self.url}: the object exists (0 bytes); refusing to "
                                    "overwrite it (use --force)") from None
            if code == "NoSuchBucket":
                raise TargetIOError(f"target {self.url}: bucket {b} does not exist there") from None
            if code not in ("NoSuchKey", "InvalidRange", "AccessDenied", "403"):
                raise TargetIOError(f"target {self.url}: {say(e)}") from None
            # AccessDenied: credentials that may write but not read (as a crash upload's should);
            # the completion's If-None-Match still never overwrites an object
        try:
            ups = c.list_multipart_uploads(Bucket=b, Prefix=k).get("Uploads", [])
        except Exception as e:
            if error_code(e) == "NoSuchBucket":
                raise TargetIOError(f"target {self.url}: bucket {b} does not exist there") from None
            if error_code(e) not in ("AccessDenied", "403", "NotImplemented"):
                raise TargetIOError(f"target {self.url}: {say(e)}") from None
            ups = []
        ups = [u for u in ups if u.get("Key") == k]
        if ups and not self.force:
            when = ups[0].get("Initiated")
            raise TargetRefused(f"target {self.url}: {len(ups)} unfinished upload(s) to it are open (the "
                                f"first started {when:%Y-%m-%d %H:%M:%S %Z}): another dump is writing it, "
                                "or one was killed; refusing (--force aborts them)" if when else
                                f"target {self.url}: an unfinished upload to it is open (another dump "
                                "writing it, or one that was killed); refusing (--force aborts it)")
        for u in ups:
            self._abort_id(u["UploadId"])
        try:
            self.upload_id = c.create_multipart_upload(Bucket=b, Key=k)["UploadId"]
        except Exception as e:
            raise TargetIOError(f"target {self.url}: cannot start the upload: {say(e)}") from None

    # -- 2. parts ------------------------------------------------------------------
    def buffer(self) -> bytearray:
        """A part buffer, once fewer than in_flight + 1 are in use (blocks: the backpressure)."""
        self._room.acquire()
        with self._lock:
            if self._free:
                return self._free.pop()
            self._buffers += 1
        return bytearray(self.opts.part_size)

    def unused(self, buf: bytearray) -> None:
        with self._lock:
            self._free.append(buf)
        self._room.release()

    def put(self, number: int, buf: bytearray, length: int) -> None:
        """Upload part ``number`` (``length`` bytes of ``buf``) in the background."""
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor
            self._pool = ThreadPoolExecutor(self.opts.in_flight, thread_name_prefix="s3-part")
        body = buf if length == len(buf) else bytes(memoryview(buf)[:length])
        self._pool.submit(self._put, number, buf, body)

    def _put(self, number: int, buf: bytearray, body) -> None:
        try:
            if self.failed is None:
                r = self.client.upload_part(Bucket=self.at.bucket, Key=self.at.key, UploadId=self.upload_id,
                                            PartNumber=number, Body=body)
                with self._lock:
                    self.parts[number] = r["ETag"]
        except Exception as e:
            with self._lock:
                if self.failed is None:
                    self.failed = f"part {number} failed: {say(e)}"
        finally:
            self.unused(buf)

    def drain(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # -- 3. the end --------------------------------------------------------------------
    def complete(self, length: int) -> int:
        """Complete the upload; the stored object's size."""
        parts = [{"PartNumber": n, "ETag": e} for n, e in sorted(self.parts.items())]
        kw = {} if self.force else {"IfNoneMatch": "*"}
        b, k = self.at.bucket, self.at.key
        try:
            self.client.complete_multipart_upload(Bucket=b, Key=k, UploadId=self.upload_id,
                                                  MultipartUpload={"Parts": parts}, **kw)
        except Exception as e:
            if error_code(e) in ("PreconditionFailed", "412"):
                raise TargetRefused(f"target {self.url}: an object appeared at the key during the dump; "
                                    "it was not overwritten (use --force)") from None
            raise TargetIOError(f"target {self.url}: completing the upload failed: {say(e)}") from None
        self.upload_id = None
        try:
            return int(self.client.head_object(Bucket=b, Key=k)["ContentLength"])
        except Exception as e:
            raise TargetIOError(f"target {self.url}: the completed object cannot be read back: "
                                f"{say(e)}") from None

    def abort(self) -> str:
        """Abort the open upload: '' when done (or none was open), else why it stays open."""
        if self.upload_id is None:
            return ""
        uid, self.upload_id = self.upload_id, None
        return self._abort_id(uid)

    def _abort_id(self, uid: str) -> str:
        try:
            self.client.abort_multipart_upload(Bucket=self.at.bucket, Key=self.at.key, UploadId=uid)
            return ""
        except Exception as e:
            if error_code(e) == "NoSuchUpload":
                return ""
            return (f"aborting its upload failed too ({say(e)}): upload {uid} stays open, invisible, "
                    "until a lifecycle rule or abort-multipart-upload removes it")


def serve(url: str, opts: S3Options, force: bool, timeout: float, fd_in: int = 0, fd_out: int = 1) -> int:
    """The uploader's whole life on its two descriptors; the exit status (0: done)."""
    def answer(line: str) -> None:
        try:
            os.write(fd_out, (" ".join(line.split()) + "\n").encode())
        except OSError:
            pass
    up = None
    try:
        up = Uploader(url, opts, force, timeout)
        up.check()
    except TargetRefused as e:
        answer(f"refused {_tail(e, url)}")
        return 1
    except UsageError as e:          # the S3 configuration itself (a profile that does not exist)
        answer(f"usage {_tail(e, url)}")
        return 1
    except Exception as e:
        if up is not None:
            up.abort()
        answer(f"error {_tail(e, url)}")
        return 1
    answer("ready")
    if _read_line(fd_in, GO_WAIT) != b"go":
        why = up.abort()          # another target was refused: nothing stored here
        if why:
            answer(f"error {why}")
        return 1
    try:
        length = _stream(up, fd_in)
        up.drain()
        if up.failed:
            raise TargetIOError(f"target {url}: {up.failed}")
        size = up.complete(length)
    except Exception as e:
        up.failed = up.failed or "stopped"
        up.drain()
        why = up.abort()
        answer(f"error {_tail(e, url)}{'; ' + why if why else '; the upload was aborted, nothing stored'}")
        return 1
    answer(f"done {size}")
    return 0


def _tail(e: BaseException, url: str) -> str:
    text = str(e) if str(e) else type(e).__name__
    return text.split(f"target {url}: ", 1)[-1]


def _read_line(fd: int, wait: float) -> bytes:
    """One short line from ``fd`` read byte by byte (nothing after it is consumed); b"" at EOF."""
    out = b""
    deadline = time.monotonic() + wait
    while len(out) < 64:
        left = deadline - time.monotonic()
        if left <= 0:
            return b""
        if not select.select([fd], [], [], min(left, 1.0))[0]:
            continue
        try:
            c = os.read(fd, 1)
        except (BlockingIOError, InterruptedError):
            continue
        if not c:
            return b""
        if c == b"\n":
            return out
        out += c
    return out


def read_part(up: Uploader, fd: int) -> tuple[bytearray, int]:
    """The next part of the stream on ``fd``: a part buffer (once one is free) and how many bytes of
    it were read (fewer than its size only at the end of the stream)."""
    buf = up.buffer()
    n = 0
    with memoryview(buf) as mv:
        while n < len(buf):
            got = os.readv(fd, [mv[n:]])
            if not got:
                break
            n += got
    return buf, n


def _stream(up: Uploader, fd: int) -> int:
    """Read the member into parts and upload them; the member's length, once its trailer is seen."""
    total, number = 0, 0
    head = b""
    tail = b""
    while True:
        buf, n = read_part(up, fd)
        if up.failed:
            raise TargetIOError(f"target {up.url}: {up.failed}")
        if n:
            number += 1
            if len(head) < HEADER_BLOCK:
                head += bytes(buf[:HEADER_BLOCK - len(head)])
            tail = (tail + bytes(buf[max(0, n - TRAILER_SIZE):n]))[-TRAILER_SIZE:]
            total += n
            up.put(number, buf, n)
        else:
            up.unused(buf)
        if n < len(buf):
            break
    if not _ends_whole(head, tail, total):
        raise TargetIOError(f"target {up.url}: the member's stream ended after {total} bytes without its "
                            "trailer (the dump was stopped or killed before finishing it)")
    return total


def _ends_whole(head: bytes, tail: bytes, total: int) -> bool:
    """The stream is one whole member: its header, and at its end its own sound trailer."""
    try:
        h = MemberHeader.unpack(head, "stream")
    except Exception:
        return False
    t = Trailer.unpack(tail, h.dump_id)
    return t is not None and t.member_length == total and t.member_index == h.member_index


def child_main(url: str, opts: S3Options, force: bool, timeout: float) -> int:
    """In the forked uploader: the dump's stop signals ignored, then ``serve`` on fds 0 and 1."""
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    return serve(url, opts, force, timeout)
