"""ssh:// targets and other streams: a member written append-only through a pipe.

Why a module of its own: a member on another host is written through the
system ``ssh`` client (the one a kdump initramfs carries, honouring
``~/.ssh/config`` aliases, ports and identity files as ``ssh`` itself does),
so the writer sees a pipe, not a file: it cannot rewrite offset 0, cannot
fsync, and learns what reached the remote disk only from what the remote end
says.  Everything about that conversation is here; targets.py opens it,
writer.py streams through it (``Sink``).  Nothing of ours runs on the remote
host: one POSIX ``sh`` script (``REMOTE``, below) using coreutils (dd, stat,
df, sync) and util-linux (flock), sent as the ssh command.

One connection per target, in two phases:

1. checks, before any byte of the dump is sent anywhere: the path absolute,
   its directory there and writable, the path not existing (unless
   ``--force``), then the member created mode 0600 (umask 077) and locked
   with ``flock -n`` on a descriptor the remote shell holds until it exits (a
   second dump to the same path is refused, exit 4).  The remote answers one
   line: ``ready AVAIL`` (free bytes, for the coordinator's warning),
   ``refused WHY`` (exit 4) or ``error WHY`` (exit 5); an ssh that exits first
   is an unreachable host (exit 5, ssh's own last line of stderr).  The
   coordinator waits for every target's answer, checks its local targets,
   and only then sends ``go``; a dump refused anywhere sends nothing more,
   and the remote removes the empty file it created (a retry is not refused).
2. the member's bytes: the remote copies them with ``dd iflag=fullblock``
   one segment of ``segment`` bytes at a time; after each it starts a
   ``sync`` of the file in the background (while the next segment arrives:
   the link never waits for the remote disk; at most one sync at a time) that
   answers ``synced N`` (the member's size on its disk) when it returns, and
   ``done N`` after the end of the stream and a last sync.  A sync that fails
   answers ``error``: nothing unsynced is ever acknowledged.  The writer keeps the member offsets of its
   chunks not yet covered by a ``synced`` (``Sink.pending``): those are the
   chunks a failing host can take with it (degraded.py re-encodes them for the
   others under ``--on-disk-error continue``); and it waits for ``done N``,
   N = every byte it sent, before it reports the member finalized, so exit 0
   still means every member is on stable storage.

A host that dies resets the connection: ssh exits, the next write gets
EPIPE, the target failed.  A host that hangs leaves the TCP connection open
and silent: ``ServerAliveInterval`` makes ssh give up after about 3/4 of
``--io-timeout``, and iowatch.py abandons a writer stuck in one write for
``--io-timeout`` (a pipe has no device statistics).

``-`` (standard output) is the same stream without the remote end: nothing
acknowledges it (a regular file behind it is fsynced at the end).
"""

from __future__ import annotations

import errno
import os
import stat
import time

from ..errors import TargetIOError, TargetRefused, UsageError
from ..runtime.plain import Plain

SCHEME = "ssh://"
PIPE_BYTES = 1 << 20     # the pipe to each ssh child (F_SETPIPE_SZ; /proc/sys/fs/pipe-max-size allows 1 MiB)
SEGMENT_MIB = 64         # the remote syncs and acknowledges every this many MiB (STRIPEDUMP_SYNC_EVERY lowers it)

# $1 path, $2 force (0/1), $3 segment in MiB.  Lines to the writer: ready/refused/error, then synced/done.
REMOTE = r"""
P=$1; F=$2; K=$3
case $P in /*) ;; *) echo "refused the path is not absolute"; exit 0;; esac
for t in dd flock stat df sync dirname tail chmod; do
  command -v $t >/dev/null 2>&1 || { echo "error $t is not installed there"; exit 0; }; done
D=$(dirname -- "$P")
[ -d "$D" ] || { echo "error directory $D does not exist there"; exit 0; }
[ -w "$D" ] && [ -x "$D" ] || { echo "error no permission to write in $D there"; exit 0; }
new=1
if [ -e "$P" ] || [ -L "$P" ]; then
  new=0
  [ -f "$P" ] || { echo "refused it exists there and is not a regular file"; exit 0; }
  [ "$F" = 1 ] || { echo "refused it exists there ($(stat -c %s -- "$P") bytes); refusing to overwrite it (use --force)"; exit 0; }
fi
umask 077
true 2>/dev/null >>"$P" || { echo "error cannot create it there"; exit 0; }
exec 9>>"$P"
flock -n 9 || { echo "refused it is in use: another dump holds its lock there"; exit 0; }
if [ "$new" = 1 ] && [ -s "$P" ]; then echo "refused another dump has just written it"; exit 0; fi
chmod 600 -- "$P"
echo "ready $(df -B1 --output=avail -- "$D" 2>/dev/null | tail -n 1)"
read go || go=
if [ "$go" != go ]; then
  if [ "$new" = 1 ] && [ ! -s "$P" ]; then rm -f -- "$P"; fi
  exit 0
fi
true >"$P" || { echo "error cannot truncate it there"; exit 0; }
sync -- "$D"
s=0 p=
while :; do
  e=$(dd bs=1M count="$K" iflag=fullblock status=none 2>&1 >&9) || { echo "error writing it failed there: ${e##*: }"; exit 0; }
  n=$(stat -c %s -- "$P")
  if [ -n "$p" ]; then wait "$p" || { echo "error syncing it failed there"; exit 0; }; fi
  { sync -- "$P" && echo "synced $n"; } & p=$!
  [ "$n" -lt $((s + K * 1048576)) ] && break
  s=$n
done
wait "$p" && sync -- "$P" || { echo "error syncing it failed there"; exit 0; }
echo "done $n"
"""


def is_stream(name: str) -> bool:
    return name == "-" or name.startswith(SCHEME)


class SshUrl(Plain):
    """``ssh://[user@]host[:port]/absolute/path``, parsed once at the CLI edge."""
    __slots__ = ("user", "host", "port", "path")

    def __init__(self, user: str | None, host: str, port: int | None, path: str):
        self.user, self.host, self.port, self.path = user, host, port, path

    @classmethod
    def parse(cls, url: str) -> "SshUrl":
        if not url.startswith(SCHEME):
            raise UsageError(f"target {url}: not an ssh:// URL")
        rest = url[len(SCHEME):]
        slash = rest.find("/")
        if slash <= 0:
            raise UsageError(f"target {url}: give ssh://[user@]host[:port]/absolute/path")
        where, path = rest[:slash], rest[slash:]
        user = None
        if "@" in where:
            user, where = where.rsplit("@", 1)
            if not user:
                raise UsageError(f"target {url}: empty user name")
        port = None
        if where.startswith("["):            # [ipv6]:port
            host, _, tail = where[1:].partition("]")
            if tail.startswith(":"):
                port = tail[1:]
        else:
            host, _, port = where.partition(":")
            port = port or None
        if port is not None:
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise UsageError(f"target {url}: bad port {port!r}")
            port = int(port)
        if not host or host.startswith("-") or any(c.isspace() for c in host):
            raise UsageError(f"target {url}: bad host name {host!r}")
        if path in ("/", "") or path.endswith("/"):
            raise UsageError(f"target {url}: give the member's file name, not a directory")
        return cls(user, host, port, path)

    @property
    def key(self) -> tuple:
        return ("ssh", self.user, self.host, self.port, os.path.normpath(self.path))

    def argv(self, options: tuple[str, ...], timeout: float) -> list[str]:
        """The ssh command line: the user's -o options first (ssh takes the first value given),
        then ours: never a password prompt, and a dead or silent host noticed in time."""
        alive = max(1, int(timeout / 4))
        argv = ["ssh"]
        for o in options:
            argv += ["-o", o]
        argv += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, int(min(timeout, 30)))}",
                 "-o", f"ServerAliveInterval={alive}", "-o", "ServerAliveCountMax=3",
                 "-T", "-x", "-a", "-e", "none"]
        if self.port is not None:
            argv += ["-p", str(self.port)]
        if self.user is not None:
            argv += ["-l", self.user]
        return argv + ["--", self.host]


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def segment_mib(sync_every: int) -> int:
    """MiB per remote segment: SEGMENT_MIB, or less when the local writers sync more often."""
    return max(1, min(SEGMENT_MIB, sync_every >> 20))


class Remote:
    """The coordinator's side of one ssh:// target: the ssh child and the phase-1 conversation.

    Owned by the coordinator; the writer gets ``fd`` (ssh's stdin), ``ack``
    (its stdout) and ``err`` (its stderr) through the Target's Sink.
    """

    def __init__(self, url: str, force: bool, options: tuple[str, ...], timeout: float, sync_every: int):
        import subprocess
        self.url, self.timeout = url, timeout
        self.at = SshUrl.parse(url)
        cmd = " ".join(["exec sh -c", _quote(REMOTE), "stripedump", _quote(self.at.path),
                        "1" if force else "0", str(segment_mib(sync_every))])
        pipes = [os.pipe() for _ in range(3)]
        (in_r, in_w), (ack_r, ack_w), (err_r, err_w) = pipes
        try:
            # a session of its own: a Ctrl-C to the terminal's process group does not cut the
            # stream (the coordinator decides what a signal means and finalizes the member)
            self.proc = subprocess.Popen(self.at.argv(options, timeout) + [cmd], stdin=in_r, stdout=ack_w,
                                         stderr=err_w, close_fds=True, start_new_session=True)
        except OSError as e:
            for fd in (in_r, in_w, ack_r, ack_w, err_r, err_w):
                os.close(fd)
            raise TargetIOError(f"target {url}: cannot run ssh: {e.strerror}") from None
        for fd in (in_r, ack_w, err_w):
            os.close(fd)
        for fd in (in_w, ack_r, err_r):
            os.set_inheritable(fd, False)
        try:    # fewer, larger hand-overs to ssh than the 64 KiB default pipe (advice only)
            import fcntl
            fcntl.fcntl(in_w, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
        except OSError:
            pass
        os.set_blocking(ack_r, False)
        os.set_blocking(err_r, False)
        self.fd, self.ack, self.err = in_w, ack_r, err_r
        self.avail: int | None = None
        self._buf = b""

    def host(self) -> str:
        return self.at.host + (f":{self.at.port}" if self.at.port else "")

    def wait_ready(self, deadline: float) -> None:
        """Phase 1's answer: ready (avail noted), or the refusal / error it says."""
        while b"\n" not in self._buf:
            data = read_some(self.ack, deadline)
            if data is None:
                raise TargetIOError(f"target {self.url}: host {self.host()} did not answer within "
                                    f"{self.timeout:g} s (--io-timeout)")
            if not data:
                self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                why = last_line(read_all(self.err)) or f"ssh exited with status {self.proc.returncode}"
                raise TargetIOError(f"target {self.url}: cannot reach host {self.host()}: {why}")
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        why = ready_answer(self.url, line, f"host {self.host()}", " (does the remote account's shell "
                           "print something at login?)")
        self.avail = int(why) if why.strip().isdigit() else None

    def go(self) -> None:
        try:
            os.write(self.fd, b"go\n")
        except OSError as e:
            raise TargetIOError(f"target {self.url}: host {self.host()}: {e.strerror}") from None

    def end(self, wait: float) -> None:
        """Reap the ssh child (its writer is done with it); kill it after ``wait`` seconds."""
        import subprocess
        close_pipes(self)
        try:
            self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def ready_answer(url: str, line: bytes, who: str, hint: str = "") -> str:
    """Phase 1's answer from a target's child (``ready [ARG]``): ARG, or the refusal, the error or
    the usage error (an S3 configuration) it names, raised with the target's URL."""
    word, _, why = line.decode("utf-8", "replace").partition(" ")
    if word == "ready":
        return why
    if word == "refused":
        raise TargetRefused(f"target {url}: {why}")
    if word == "error":
        raise TargetIOError(f"target {url}: {why}")
    if word == "usage":
        raise UsageError(f"target {url}: {why}")
    raise TargetIOError(f"target {url}: unexpected answer from {who}: {line[:80]!r}{hint}")


def close_pipes(remote) -> None:
    """Close a remote's stream and answer pipes (``fd``, ``ack``, ``err``) and mark them closed."""
    for fd in ("fd", "ack", "err"):
        close_quietly(getattr(remote, fd))
        setattr(remote, fd, -1)


class Sink:
    """The writer's side of a stream: acknowledgements read as they come, the final one awaited.

    ``ack`` -1: nothing acknowledges this stream (``-``); a regular file
    behind it is fsynced at the end.
    """

    def __init__(self, label: str, ack: int = -1, err: int = -1, timeout: float = 60.0):
        self.label, self.ack, self.err, self.timeout = label, ack, err, timeout
        self.synced = 0          # the member's bytes the remote says are on its disk
        self._buf = b""
        self.done: int | None = None
        self.refusal = ""

    def fds(self) -> tuple[int, ...]:
        return tuple(fd for fd in (self.ack, self.err) if fd >= 0)

    def poll(self) -> bool:
        """Read what the remote said since the last look; True when ``synced`` moved."""
        if self.ack < 0:
            return False
        before = self.synced
        while True:
            try:
                data = os.read(self.ack, 4096)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            if not data:
                break
            self._buf += data
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            word, _, rest = line.decode("utf-8", "replace").partition(" ")
            if word in ("synced", "done") and rest.isdigit():
                self.synced = max(self.synced, int(rest))
                if word == "done":
                    self.done = int(rest)
            elif word == "error":
                self.refusal = rest
        return self.synced != before

    def why(self) -> str:
        """What the remote end or ssh said about a failure (one line), or ''."""
        self.poll()          # an ``error`` line the remote sent before it went away
        if self.refusal:
            return self.refusal
        return last_line(read_all(self.err)) if self.err >= 0 else ""

    def close(self, fd: int, length: int) -> None:
        """End of the stream: EOF to the remote, then wait for it to say all ``length`` bytes are synced."""
        if self.ack < 0:
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    os.fsync(fd)
            except OSError as e:
                raise TargetIOError(f"target {self.label}: sync failed: {e.strerror}") from None
            return
        close_quietly(fd)
        deadline = time.monotonic() + self.timeout
        while self.done is None:
            data = read_some(self.ack, deadline)
            if data is None:
                raise TargetIOError(f"target {self.label}: the remote end did not confirm the member "
                                    f"synced within {self.timeout:g} s")
            if not data:
                self.poll()
                if self.done is None:
                    raise TargetIOError(f"target {self.label}: the stream ended before the remote end "
                                        f"confirmed the member synced: {self.why() or 'connection lost'}")
                break
            self._buf += data
            self.poll()
        if self.done != length:
            raise TargetIOError(f"target {self.label}: the remote end has {self.done} bytes of the member, "
                                f"{length} were sent: {self.why() or 'the stream was cut'}")


def read_some(fd: int, deadline: float) -> bytes | None:
    """What non-blocking ``fd`` has by ``deadline``: bytes, b"" at its end, None when time is up."""
    import select
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        if not select.select([fd], [], [], min(left, 0.5))[0]:
            continue
        try:
            return os.read(fd, 4096)
        except (BlockingIOError, InterruptedError):
            continue


def read_all(fd: int) -> bytes:
    out = b""
    while fd >= 0:
        try:
            data = os.read(fd, 65536)
        except (BlockingIOError, InterruptedError):
            break
        except OSError as e:
            if e.errno == errno.EBADF:
                break
            break
        if not data:
            break
        out += data
    return out


def last_line(data: bytes) -> str:
    lines = [ln.strip() for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def close_quietly(fd: int) -> None:
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass
