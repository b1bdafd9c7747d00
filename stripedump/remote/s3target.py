"""s3:// targets, the coordinator's side: the uploader child and the checks conversation.

Why a module of its own: an ``s3://`` member is a stream (sshtarget.py's
``Sink`` and writer.py's streamed mode) whose remote end is an uploader
process (s3put.py) instead of an ssh child; this module starts that process
and holds the phase-1 conversation with it, as ``sshtarget.Remote`` does
with ssh.  targets.py opens it; the writer streams into ``fd`` and reads
``ack``/``err`` through its Sink.

The uploader is a ``fork`` of the coordinator, made while the targets are
opened (before any worker or writer exists), in a session of its own (a
Ctrl-C to the terminal does not cut the stream: the coordinator decides
what a signal means and finalizes the members).  It keeps only its three
pipes (every other descriptor is closed, so no other target's stream is
held open by it) and imports botocore only there.  A fork, not ``python -m``:
no second interpreter to find (a packed initramfs runs ``python -I``) and
no start-up besides botocore's import.
"""

from __future__ import annotations

import os
import signal
import time

from ..errors import TargetIOError
from .s3url import S3Options, S3Url
from .sshtarget import PIPE_BYTES, close_pipes, last_line, read_all, read_some, ready_answer


class S3Remote:
    """The coordinator's side of one s3:// target: the uploader child and its answers.

    What targets.py and the Sink use of ``sshtarget.Remote``: ``fd`` (the
    member's stream), ``ack`` and ``err`` (the uploader's answers and its
    stderr), ``avail`` (None: a store has no free-space figure),
    ``wait_ready``, ``go`` and ``end``.
    """

    def __init__(self, url: str, force: bool, opts: S3Options | None, timeout: float):
        self.url, self.timeout = url, timeout
        self.at = S3Url.parse(url)           # checked again: a bad URL fails here, not in the child
        self.avail = None
        self._buf = b""
        (in_r, in_w), (ack_r, ack_w), (err_r, err_w) = os.pipe(), os.pipe(), os.pipe()
        try:
            pid = os.fork()
        except OSError as e:
            for fd in (in_r, in_w, ack_r, ack_w, err_r, err_w):
                os.close(fd)
            raise TargetIOError(f"target {url}: cannot start its uploader: {e.strerror}") from None
        if pid == 0:
            _child(in_r, ack_w, err_w, url, opts, force, timeout)     # never returns
        self.pid = pid
        for fd in (in_r, ack_w, err_w):
            os.close(fd)
        try:
            import fcntl
            fcntl.fcntl(in_w, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
        except OSError:
            pass
        os.set_blocking(ack_r, False)
        os.set_blocking(err_r, False)
        self.fd, self.ack, self.err = in_w, ack_r, err_r
        self.status: int | None = None

    def wait_ready(self, deadline: float) -> None:
        """Phase 1's answer: ready, or the refusal / error it says."""
        while b"\n" not in self._buf:
            data = read_some(self.ack, deadline)
            if data is None:
                raise TargetIOError(f"target {self.url}: the store did not answer the checks within "
                                    f"{self.timeout:g} s (--io-timeout)")
            if not data:
                self._reap(max(0.1, deadline - time.monotonic()))
                why = last_line(read_all(self.err)) or f"its uploader exited ({self._how()})"
                raise TargetIOError(f"target {self.url}: {why}")
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        ready_answer(self.url, line, "its uploader")

    def go(self) -> None:
        try:
            os.write(self.fd, b"go\n")
        except OSError as e:
            raise TargetIOError(f"target {self.url}: its uploader is gone: {e.strerror}") from None

    def end(self, wait: float) -> None:
        """Reap the uploader (its writer is done with it); kill it after ``wait`` seconds."""
        close_pipes(self)
        if not self._reap(wait):
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._reap(5.0)

    def _reap(self, wait: float) -> bool:
        if self.status is not None:
            return True
        deadline = time.monotonic() + wait
        while True:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.status = -1
                return True
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def _how(self) -> str:
        if self.status is None:
            return "still running"
        return f"killed by signal {-self.status}" if self.status < 0 else f"status {self.status}"


def _child(in_r: int, ack_w: int, err_w: int, url: str, opts, force: bool, timeout: float) -> None:
    """The uploader: its pipes on 0, 1, 2, nothing else open, then s3put.serve; never returns."""
    code = 1
    try:
        os.setsid()
        for src, dst in ((in_r, 0), (ack_w, 1), (err_w, 2)):
            if src != dst:
                os.dup2(src, dst)
        os.closerange(3, _max_fd())
        from .s3put import child_main
        code = child_main(url, opts, force, timeout)
    except BaseException as e:       # one line on the err pipe: the writer's Sink reads it
        try:
            os.write(2, f"uploader failed: {type(e).__name__}: {e}\n".encode())
        except OSError:
            pass
    finally:
        os._exit(code)


def _max_fd() -> int:
    try:
        return os.sysconf("SC_OPEN_MAX")
    except (ValueError, OSError):
        return 65536
