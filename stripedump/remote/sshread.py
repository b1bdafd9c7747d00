"""Members where they are: ``ssh://[user@]host[:port]/path`` opened for random reads over SFTP.

Why: a dump striped over three crash servers (issue 13) should be joined,
verified, described or mounted from a fourth machine without copying the
members first.  This module turns a member URL into an object with what
``member.MemberReader`` and the read pool use of a local file: ``size``,
``pread(offset, length)``, ``close()``, plus ``prefetch(ranges)``.  Nothing
else in stripedump speaks SSH on the read side.

* paramiko, imported only when an ``ssh://`` member is opened: a local join
  and the dump (in the capture kernel) never load it.
* The user's OpenSSH configuration as ``ssh`` reads it (``~/.ssh/config``
  through ``paramiko.SSHConfig``: HostName, Port, User, IdentityFile,
  IdentitiesOnly, UserKnownHostsFile, StrictHostKeyChecking, ConnectTimeout,
  ServerAliveInterval x ServerAliveCountMax as the longest wait for an
  answer, ProxyCommand); a port or user in the URL wins over the
  configuration.  ``--ssh-option KEY=VALUE`` (``use_options``) applies
  those of ``READ_OPTIONS`` over it, as ``ssh -o`` does (an IdentityFile
  given is tried first); any other is refused, naming these.
  Keys come from the agent, the configured identity files and the default
  ones.  Host keys are checked against the known_hosts files; an unknown
  host is refused unless the configuration says ``StrictHostKeyChecking
  no`` (or ``accept-new``: accepted, not recorded: the reader writes nothing);
  a changed key is always refused.
* Round trips.  SFTP reads are requests of at most ``REQUEST`` bytes; a read
  sends all of its requests before waiting for the first answer (one round
  trip, however long the read), through paramiko's request/response layer
  (``_async_request``/``_read_response``: paramiko's own ``readv`` starts a
  thread per call and its file object's buffering reads past what is asked).
  Opening a member is two round trips (OPEN and STAT together, then the
  first ``HEAD`` and last ``TAIL`` bytes together: header, manifest,
  trailer, footer and the last index record of a finalized member), and
  ``prefetch`` lets the index records come in batches of ``PREFETCH_GROUP``.
  A small read outside what is held fetches ``held.READAHEAD`` bytes, so walking
  an unfinished member's records is not one round trip per record head.
* One connection per host (user, address, port) per process, shared by the
  members there; requests on one connection are serialized by its lock
  (libfuse calls ``pread`` from several threads).  A connection is never
  used across ``fork``: ``before_fork`` closes this process's connections
  (join's read pool and mount's daemon call it) and the files reopen
  lazily in whichever process reads next, each with its own connection; a
  connection found in a process other than the one that made it is left
  untouched (closing it there would write to the parent's stream).  Read
  pool workers each opening their own connection was measured against
  reading in the parent: docs/benchmarks.md.
* Errors: ``RemoteError`` (a MemberError, exit 6, like a local member that
  cannot be opened), one line, with ``absent`` set when the member is not
  there to be read (host unreachable, no such file): ``join
  --allow-incomplete`` then goes on without it.  A refused login or host key
  is never taken for a missing member.
"""

from __future__ import annotations

import errno
import getpass
import logging
import os
import re
import socket
import threading

from ..errors import MemberError, RemoteError, UsageError
from .held import HeldReads
from .sshtarget import SCHEME, SshUrl

REQUEST = 32768              # bytes per SFTP read request: what every server answers whole (paramiko's own size)
HEAD = 256 << 10             # read at open: the header and the manifest (a real kernel's: 20-90 KiB)
TAIL = 64 << 10              # read at open: trailer, footer and the last index record (28 KiB)
PREFETCH_GROUP = 64          # index records asked for in one round trip (64 x 28 KiB)
CONNECT_TIMEOUT = 15.0       # seconds, unless ConnectTimeout says otherwise
IO_TIMEOUT = 120.0           # seconds without an answer on an open connection: the host is gone
                             # (unless ServerAliveInterval says otherwise)

STATS = {"round_trips": 0, "requests": 0, "bytes": 0, "connections": 0}   # this process's, for tests and bench

# --ssh-option of join, info, verify and mount: the ssh -o options a reader applies (over the
# configuration, as ssh applies -o); BatchMode yes is how it always runs (nothing is ever asked)
READ_OPTIONS = ("HostName", "Port", "User", "IdentityFile", "IdentitiesOnly", "UserKnownHostsFile",
                "GlobalKnownHostsFile", "StrictHostKeyChecking", "ConnectTimeout", "ServerAliveInterval",
                "ServerAliveCountMax", "ProxyCommand", "BatchMode")
_NUMBERS = {"port": int, "connecttimeout": float, "serveraliveinterval": float, "serveralivecountmax": int}
# this process's options (use_options, by the command line); forked readers (pool workers, the mount
# server) inherit them with the connections' other settings
_options: list[tuple[str, str]] = []



def is_remote(path: str) -> bool:
    return isinstance(path, str) and path.startswith(SCHEME)


def parse(url: str) -> tuple[str | None, str, int | None, str]:
    """(user or None, host, port or None, absolute path) of an ``ssh://`` URL: the dump's own
    parser (sshtarget.SshUrl), its refusals as member errors."""
    try:
        u = SshUrl.parse(url)
    except UsageError as e:
        raise MemberError(str(e).replace("target ", "member ", 1)) from None
    return u.user, u.host, u.port, u.path


# -- connections ----------------------------------------------------------------

class _Conn:
    """One SSH connection and its SFTP session, owned by the process that made it."""

    def __init__(self, client, sftp, label: str):
        self.client, self.sftp, self.label = client, sftp, label
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.pid == os.getpid():
            try:
                self.client.close()
            except Exception:
                pass


_conns: dict[tuple, _Conn] = {}
_orphans: list = []                    # connections inherited through fork: kept, never touched
_conns_lock = threading.Lock()


def parse_option(text: str) -> tuple[str, str]:
    """One ``--ssh-option`` (``Key=Value`` or ``Key Value``, as ``ssh -o`` takes it), checked: the
    lower-case key and the value; an option a reader does not apply is a UsageError naming those it does."""
    key, sep, value = text.partition("=")
    if not sep:
        key, _, value = text.strip().partition(" ")
    key, value = key.strip(), value.strip()
    if key.lower() not in {k.lower() for k in READ_OPTIONS}:
        raise UsageError(f"--ssh-option {text!r}: {key or 'no key'} is not applied when reading members (over "
                         f"SFTP with paramiko, not ssh); these are: {', '.join(READ_OPTIONS)}")
    if not value:
        raise UsageError(f"--ssh-option {text!r}: no value (KEY=VALUE)")
    key = key.lower()
    if key == "batchmode" and value.lower() != "yes":
        raise UsageError(f"--ssh-option {text!r}: reading members never asks for a password or passphrase: "
                         "keys come from ssh-agent or identity files (BatchMode yes is how it runs)")
    try:
        _NUMBERS.get(key, str)(value)
    except ValueError:
        raise UsageError(f"--ssh-option {text!r}: {value!r} is not a number") from None
    return key, value


def use_options(options) -> None:
    """Apply these ``--ssh-option``s (``parse_option``'s pairs) to every connection this process makes."""
    _options[:] = [parse_option(o) if isinstance(o, str) else o for o in options]


def _ssh_config(host: str) -> dict:
    import paramiko
    path = os.path.expanduser("~/.ssh/config")
    cfg = paramiko.SSHConfig.from_path(path) if os.path.exists(path) else paramiko.SSHConfig()
    out = cfg.lookup(host)
    given = [v for k, v in _options if k == "identityfile"]      # tried first, then the configured ones
    if given:
        out["identityfile"] = given + [f for f in out.get("identityfile", []) if f not in given]
    out.update((k, v) for k, v in _options if k not in ("identityfile", "batchmode"))
    return out


def _where(user: str, host: str, port: int) -> str:
    return f"{user}@{host}" + (f":{port}" if port != 22 else "")


def _connect(url: str, user: str | None, host: str, port: int | None) -> _Conn:
    import paramiko
    quiet = logging.getLogger("paramiko")      # its transport thread logs failures with tracebacks:
    if not quiet.handlers:                      # the one-line RemoteError says what happened
        quiet.addHandler(logging.NullHandler())
        quiet.propagate = False
    try:
        cfg = _ssh_config(host)
    except Exception as e:
        raise RemoteError(f"member {url}: ~/.ssh/config cannot be read: {e}") from None
    hostname = cfg.get("hostname", host)
    port = port or int(cfg.get("port", 22))
    user = user or cfg.get("user") or getpass.getuser()
    key = (user, hostname, port)
    c = _cached(key)
    if c is not None:
        return c
    where = _where(user, hostname, port)
    client, files = _client(url, cfg)
    idents = [os.path.expanduser(f) for f in cfg.get("identityfile", [])]
    only = str(cfg.get("identitiesonly", "no")).lower() == "yes"
    timeout = float(cfg.get("connecttimeout", CONNECT_TIMEOUT))
    sock = paramiko.ProxyCommand(cfg["proxycommand"]) if cfg.get("proxycommand", "none") != "none" else None
    try:
        client.connect(hostname, port, user, key_filename=[f for f in idents if os.path.exists(f)] or None,
                       allow_agent=not only, look_for_keys=not only, timeout=timeout,
                       banner_timeout=timeout, auth_timeout=timeout, sock=sock)
        sftp = client.open_sftp()
        sftp.get_channel().settimeout(_io_timeout(cfg))
    except paramiko.BadHostKeyException:
        client.close()
        raise RemoteError(f"member {url}: the host key of {hostname} port {port} does not match the one "
                          "in known_hosts (a man in the middle, or a reinstalled host): refused") from None
    except paramiko.AuthenticationException as e:
        client.close()
        raise RemoteError(f"member {url}: {where} refused the login ({_say(e)}); an ssh-agent key or an "
                          "IdentityFile (~/.ssh/config, --ssh-option) must be one the host accepts") from None
    except paramiko.ssh_exception.NoValidConnectionsError as e:
        client.close()
        why = "; ".join(sorted({_say(x) for x in e.errors.values()})) or _say(e)
        raise RemoteError(f"member {url}: cannot connect to {where}: {why}", absent=True) from None
    except (socket.gaierror, socket.timeout, TimeoutError, ConnectionError, EOFError) as e:
        client.close()
        raise RemoteError(f"member {url}: cannot connect to {where}: "
                          f"{_say(e) if not isinstance(e, EOFError) else 'the connection was closed'}",
                          absent=True) from None
    except paramiko.SSHException as e:
        t = client.get_transport()
        dead = t is None or not t.is_active()
        cause = getattr(t, "saved_exception", None) if t is not None else None
        client.close()
        text = _say(e)
        if (dead and cause is not None) or "no existing session" in text.lower():
            # the transport died under the handshake (paramiko then says "No existing session")
            why = _say(cause) if cause is not None else text
            raise RemoteError(f"member {url}: cannot connect to {where}: {why} (no SSH answer within "
                              f"{timeout:g} s?)", absent=True) from None
        if "not found in known_hosts" in text:
            raise RemoteError(f"member {url}: the host key of {hostname} port {port} is not in known_hosts "
                              f"({', '.join(files[:-1])}): refused; connect once with ssh to check and "
                              "record it, or set StrictHostKeyChecking no for that host in "
                              "~/.ssh/config (or --ssh-option)") from None
        raise RemoteError(f"member {url}: SSH to {where} failed: {text}", absent=_gone(e)) from None
    except OSError as e:
        client.close()
        raise RemoteError(f"member {url}: cannot connect to {where}: {_say(e)}", absent=True) from None
    c = _Conn(client, sftp, where)
    STATS["connections"] += 1
    with _conns_lock:
        _conns[key] = c
    return c


def _cached(key: tuple) -> "_Conn | None":
    """This process's live connection to (user, address, port), if there is one."""
    with _conns_lock:
        c = _conns.get(key)
        if c is not None and c.pid != os.getpid():      # inherited through fork: not ours to use
            _orphans.append(_conns.pop(key))
            c = None
        if c is not None and not c.closed and c.client.get_transport() is not None \
                and c.client.get_transport().is_active():
            return c
    return None


def _client(url: str, cfg: dict):
    """(a paramiko SSHClient that knows the configured known hosts and checks host keys as
    StrictHostKeyChecking says, the known hosts files it looked in: the user's, then the global one)."""
    import paramiko
    client = paramiko.SSHClient()
    known = cfg.get("userknownhostsfile")
    files = [os.path.expanduser(f) for f in known.split()] if known else [os.path.expanduser("~/.ssh/known_hosts")]
    files.append(cfg.get("globalknownhostsfile", "/etc/ssh/ssh_known_hosts"))
    for f in files:
        if os.path.isfile(f):
            try:
                client.load_system_host_keys(f)
            except Exception as e:
                raise RemoteError(f"member {url}: known hosts file {f} cannot be read: {e}") from None
    strict = str(cfg.get("stricthostkeychecking", "yes")).lower()
    client.set_missing_host_key_policy(_Accept() if strict in ("no", "off", "accept-new")
                                       else paramiko.RejectPolicy())
    return client, files


def _io_timeout(cfg: dict) -> float:
    """Seconds without an answer after which the host is taken for gone: ssh's ServerAliveInterval
    x ServerAliveCountMax (default 3) when the configuration sets an interval, else IO_TIMEOUT."""
    try:
        interval = float(cfg.get("serveraliveinterval", 0))
        count = int(cfg.get("serveralivecountmax", 3))
    except ValueError:
        return IO_TIMEOUT
    return interval * max(1, count) if interval > 0 else IO_TIMEOUT


class _Accept:
    """StrictHostKeyChecking no / accept-new: an unknown host key is taken, and not recorded."""

    def missing_host_key(self, client, hostname, key):
        return None


def _say(e: BaseException) -> str:
    text = re.sub(r"^\[Errno [^\]]*\] ", "", " ".join(str(e).split()))
    return text or type(e).__name__


def _gone(e: BaseException) -> bool:
    """The connection dropped or timed out (the host went away), as opposed to a protocol refusal."""
    text = str(e).lower()
    return any(w in text for w in ("connection dropped", "eof", "reset", "timed out", "timeout",
                                   "closed", "banner"))


def before_fork() -> None:
    """Close this process's connections: no SSH stream may be shared with a child.

    Files reopen lazily, each process on its own connection.
    """
    with _conns_lock:
        conns = list(_conns.values())
        _conns.clear()
    for c in conns:
        c.close()


# -- files ----------------------------------------------------------------------

class RemoteFile(HeldReads):
    """One member read over SFTP: ``size``, ``pread``, ``prefetch``, ``close`` (thread-safe)."""

    PREFETCH_GROUP = PREFETCH_GROUP

    def __init__(self, url: str, head: bool = True):
        """``head``: read the member's first HEAD and last TAIL bytes at open (a reader of
        records only, such as a read pool worker, asks for none)."""
        self.url = url
        self.user, self.host, self.port, self.path = parse(url)
        self.size = -1
        self._conn: _Conn | None = None
        self._handle: bytes | None = None
        HeldReads.__init__(self)
        with self._lock:
            self._open()
            if not head:
                return
            ranges = [(0, min(HEAD, self.size))]
            if self.size > HEAD:
                t = max(HEAD, self.size - TAIL)
                ranges.append((t, self.size - t))
            self._keep = list(zip((o for o, _ in ranges), self._fetch(ranges)))

    # the connection and the handle, (re)opened in the process that reads
    def _open(self) -> None:
        from paramiko.sftp import CMD_ATTRS, CMD_HANDLE, CMD_OPEN, CMD_STAT, SFTP_FLAG_READ
        from paramiko.sftp_attr import SFTPAttributes
        c = _connect(self.url, self.user, self.host, self.port)
        try:
            with c.lock:
                sftp = c.sftp
                got = _Batch()
                nums = [sftp._async_request(got, CMD_OPEN, self.path.encode(), SFTP_FLAG_READ, SFTPAttributes()),
                        sftp._async_request(got, CMD_STAT, self.path.encode())]
                STATS["round_trips"] += 1
                STATS["requests"] += 2
                answers = []
                for n in nums:
                    try:
                        answers.append(got.wait(sftp, n))
                    except _Status as e:
                        answers.append(e)
        except Exception as e:
            self._conn_failed(c, e)
        for a, want in zip(answers, (CMD_HANDLE, CMD_ATTRS)):
            if isinstance(a, _Status):
                self._status(c, a.e)
            if a[0] != want:
                raise RemoteError(f"member {self.url}: unexpected SFTP answer from {c.label}")
        (_, m1), (_, m2) = answers
        handle = m1.get_binary()
        size = SFTPAttributes._from_msg(m2).st_size
        if self.size >= 0 and size != self.size:
            raise RemoteError(f"member {self.url}: its size changed from {self.size} to {size} bytes "
                              "while it was being read")
        self.size, self._conn, self._handle = size, c, handle

    def _status(self, c: _Conn, e: BaseException):
        """RemoteError for an error status (paramiko's EOFError or IOError)."""
        if isinstance(e, EOFError):
            raise RemoteError(f"member {self.url}: unexpected end of file on {c.label}") from None
        if getattr(e, "errno", None) == errno.ENOENT:
            raise RemoteError(f"member {self.url}: no such file on {c.label}", absent=True) from None
        if getattr(e, "errno", None) == errno.EACCES:
            raise RemoteError(f"member {self.url}: permission denied on {c.label}") from None
        raise RemoteError(f"member {self.url}: {c.label} says: {_say(e)}") from None

    def _conn_failed(self, c: _Conn, e: BaseException):
        c.close()
        with _conns_lock:
            for k, v in list(_conns.items()):
                if v is c:
                    del _conns[k]
        raise RemoteError(f"member {self.url}: the connection to {c.label} failed: {_say(e)}",
                          absent=True) from None

    def _ready(self) -> _Conn:
        c = self._conn
        if c is None or c.closed or c.pid != os.getpid():
            self._open()
            c = self._conn
        return c

    def _fetch(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        """The bytes of each (offset, length), all requests sent before the first answer is read."""
        from paramiko.sftp import CMD_DATA, CMD_READ, int64
        c = self._ready()
        pieces = []        # (range index, offset, length)
        for i, (off, n) in enumerate(ranges):
            for o in range(off, off + n, REQUEST):
                pieces.append((i, o, min(REQUEST, off + n - o)))
        out = [bytearray() for _ in ranges]
        failed = None      # every answer is read, also after an error, so none is left behind
        try:
            with c.lock:
                sftp, got = c.sftp, _Batch()
                nums = [sftp._async_request(got, CMD_READ, self._handle, int64(o), int(k)) for _, o, k in pieces]
                STATS["round_trips"] += 1
                STATS["requests"] += len(nums)
                for (i, o, k), num in zip(pieces, nums):
                    try:
                        t, msg = got.wait(sftp, num)
                        data = msg.get_string() if t == CMD_DATA else None
                    except _Status as e:
                        if not isinstance(e.e, EOFError):
                            failed = failed or e.e
                        data = b""                    # past the end: the caller sees a short read
                    if data is None:
                        raise RemoteError(f"member {self.url}: unexpected SFTP answer from {c.label}")
                    while 0 < len(data) < k and failed is None:      # a short answer: ask for the rest
                        more = self._one(sftp, got, o + len(data), k - len(data))
                        if not more:
                            break
                        data += more
                    out[i] += data
                    STATS["bytes"] += len(data)
        except RemoteError:
            raise
        except _Status as e:
            self._status(c, e.e)
        except Exception as e:
            self._conn_failed(c, e)
        if failed is not None:
            self._status(c, failed)
        return [bytes(b) for b in out]

    def _one(self, sftp, got: "_Batch", off: int, n: int) -> bytes:
        """One more read request, awaited (the rest of a short answer); b"" at the end of the file."""
        from paramiko.sftp import CMD_DATA, CMD_READ, int64
        num = sftp._async_request(got, CMD_READ, self._handle, int64(off), int(n))
        STATS["round_trips"] += 1
        STATS["requests"] += 1
        try:
            t, msg = got.wait(sftp, num)
        except _Status as e:
            if isinstance(e.e, EOFError):
                return b""
            raise
        return msg.get_string() if t == CMD_DATA else b""

    def _fetch_one(self, offset: int, length: int) -> bytes:
        return self._fetch([(offset, length)])[0]

    def prefetch(self, ranges: list[tuple[int, int]]) -> None:
        """Fetch these ranges in one round trip; reads inside them are then served from memory
        (until the next prefetch or read-ahead)."""
        ranges = [(o, min(n, self.size - o)) for o, n in ranges if 0 <= o < self.size and n > 0]
        with self._lock:
            ranges = [(o, n) for o, n in ranges if self._held(o, n) is None]
            if ranges:
                self._spans = list(zip((o for o, _ in ranges), self._fetch(ranges)))

    def close(self) -> None:
        from paramiko.sftp import CMD_CLOSE
        with self._lock:
            c, self._conn = self._conn, None
            self._keep = self._spans = []
            if c is not None and not c.closed and c.pid == os.getpid() and self._handle is not None:
                try:
                    with c.lock:
                        c.sftp._async_request(type(None), CMD_CLOSE, self._handle)   # no answer awaited
                except Exception:
                    pass


class _Batch:
    """Answers to this batch's requests that arrived while another one was awaited (paramiko
    hands them to the request's "file object")."""

    def __init__(self):
        self.got: dict[int, tuple] = {}

    def _async_response(self, t, msg, num) -> None:
        self.got[num] = (t, msg)

    def wait(self, sftp, num: int) -> tuple:
        """(type, message) of the answer to request ``num``; ``_Status`` for an error status."""
        from paramiko.sftp import CMD_STATUS
        if num in self.got:
            t, msg = self.got.pop(num)
        else:
            try:
                t, msg = sftp._read_response(num)      # converts a status it waits for itself
            except TimeoutError:
                raise
            except (EOFError, OSError) as e:
                raise _Status(e) from None
        if t == CMD_STATUS:
            try:
                sftp._convert_status(msg)
            except (EOFError, OSError) as e:
                raise _Status(e) from None
        return t, msg


class _Status(Exception):
    """The server answered a request with an error status (``e``: paramiko's EOFError or IOError)."""

    def __init__(self, e: BaseException):
        super().__init__(str(e))
        self.e = e


def open_member(url: str, head: bool = True) -> RemoteFile:
    return RemoteFile(url, head)
