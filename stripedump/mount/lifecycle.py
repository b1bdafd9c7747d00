"""``stripedump mount``: the dump as read-only files, served through FUSE, without a join.

Why: a join is a second full pass over the dump and needs the dump's size
again in free space; crash and drgn want a handful of pages first.  Here the
members are opened once (``reader.open``: headers, manifests and indexes
only) and served as files (``vmcore``, ``vmcore.kdump``, ``dump.json``) by
``fusefs.py``; this module is the lifecycle.

Lifecycle.  Everything that can be refused is checked in the calling process,
before anything is mounted: the members (the usual one-line errors and exit
codes), the mount point (an empty directory that is not a mount point), and
FUSE itself (/dev/fuse, libfuse 3, fusermount3 when not root).  Then the
process forks (no thread exists before the fork: the Dump's descriptors and
locks are inherited as they are).  The child starts a new session, points
stdin and stdout at /dev/null and stderr at a private file (libfuse writes
its mount errors there), and mounts.  libfuse calls ``init`` once the kernel
has the mount (mount(2) has returned in this process), and only then does
the child write ``ok`` to the pipe; the parent exits 0 when it reads it, or
with the child's error line and exit code, and never holds the caller's
terminal or pipes.  From then on the child's stderr is the log (``--log
FILE``; otherwise syslog, when /dev/log exists; otherwise nothing).

The serving process is named in the mount's source, ``stripedump:PID``
(/proc/self/mountinfo, ``findmnt``, ``df``), so ``umount`` knows whom to wait
for without a pid file, even when the mount point no longer answers because
the server died.  SIGINT, SIGTERM and SIGHUP end the server (libfuse's
handlers): it unmounts and exits 0.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import time

from ..errors import MountError
from ..read.member import remote_before_fork
from ..runtime.progress import Output
from .fusefs import files_of, load_fuse, serve

FSTYPE = "fuse.stripedump"              # type in /proc/self/mountinfo: "fuse." + subtype
READY_TIMEOUT = 30.0                    # seconds the parent waits for the mount to be live
UMOUNT_WAIT = 10.0                      # seconds umount waits for the server to exit
log = logging.getLogger("stripedump.mount.lifecycle")


# -- the mount point ------------------------------------------------------------

def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as \\ooo."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts() -> list[tuple[str, str, str]]:
    """(mount point, file system type, source) of this mount namespace, in mount order."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            a, b = pre.split(), post.split()
            if len(a) >= 5 and len(b) >= 2:
                out.append((_unescape(a[4]), _unescape(b[0]), _unescape(b[1])))
    return out


def _canonical(path: str) -> str:
    """The absolute path with the parent's symlinks resolved; the last name is not followed
    (stat of a mount whose server died fails)."""
    path = os.path.abspath(path)
    parent, name = os.path.split(path)
    return os.path.join(os.path.realpath(parent), name) if name else os.path.realpath(path)


def mounted_at(path: str):
    """The (type, source) of the last mount on ``path``, or None."""
    hits = [(t, s) for mp, t, s in mounts() if mp == path]
    return hits[-1] if hits else None


def check_mountpoint(path: str) -> str:
    """An existing, empty directory that is not a mount point: its canonical path."""
    mp = os.path.realpath(path)            # mount(2) follows a symlink: mountinfo names the target
    hit = mounted_at(mp)
    if hit is not None:
        end = f" ('stripedump umount {path}' ends it)" if hit[0] == FSTYPE else ""
        raise MountError(f"{path} is already a mount point, of a {hit[0]} file system{end}")
    try:
        st = os.stat(mp)
    except FileNotFoundError:
        raise MountError(f"mount point {path} does not exist (create an empty directory)") from None
    except OSError as e:
        raise MountError(f"mount point {path} cannot be used: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"mount point {path} is not a directory")
    try:
        entries = os.listdir(mp)
    except OSError as e:
        raise MountError(f"mount point {path} cannot be listed: {e.strerror}") from None
    if entries:
        raise MountError(f"mount point {path} is not empty ({len(entries)} "
                         f"{'entry' if len(entries) == 1 else 'entries'}: {', '.join(sorted(entries)[:3])}"
                         f"{', ...' if len(entries) > 3 else ''})")
    return mp


# -- mount --------------------------------------------------------------------

def _log_handler(log_path: str | None, foreground: bool):
    fmt = logging.Formatter("stripedump mount: %(message)s")
    if log_path:
        h = logging.FileHandler(log_path)
        h.setFormatter(logging.Formatter("%(asctime)s stripedump mount[%(process)d]: %(message)s"))
        return h
    if foreground:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(fmt)
        return h
    try:
        h = logging.handlers.SysLogHandler(address="/dev/log")
    except OSError:
        return None
    h.setFormatter(logging.Formatter("stripedump[%(process)d]: %(message)s"))
    return h


def mount(members: list[str], mountpoint: str, allow_incomplete: bool = False,
          cache_bytes: int | None = None, foreground: bool = False, log_path: str | None = None) -> int:
    """Mount the dump on ``mountpoint``; return once the mount is live (or, with ``foreground``,
    once it has ended).  Bad input raises before anything is mounted."""
    # numpy, when the reader imports it, starts OpenBLAS at one thread (resources.numpy_if_safe):
    # the fork below wants a process with one thread
    from ..read import reader
    dump = reader.open(list(members), allow_incomplete=allow_incomplete,
                       cache_bytes=reader.DEFAULT_CACHE if cache_bytes is None else cache_bytes,
                       verify_walks=allow_incomplete)   # what join --allow-incomplete finds, byte for byte
    for line in dump.repairs:      # damage worked around: said once, before the mount detaches
        print(f"stripedump: mount: warning: {line}", file=sys.stderr)
    try:
        mp = check_mountpoint(mountpoint)
        mfusepy = load_fuse()
        files = files_of(dump, members)
        if log_path:
            log_path = os.path.abspath(log_path)
            try:
                open(log_path, "a").close()
            except OSError as e:
                raise MountError(f"--log {log_path} cannot be written: {e.strerror}") from None
        if foreground:
            what = (f"dump {dump.ds.dump_id} ({len(members)} member(s): {', '.join(members)}) as "
                    f"{', '.join(files)}")
            return _foreground(mfusepy, files, mp, log_path, what)
        return _daemon(mfusepy, files, mp, log_path)
    finally:
        dump.close()


def _setup_logging(handler) -> None:
    root = logging.getLogger("stripedump")
    for h in list(root.handlers):
        root.removeHandler(h)
    root.propagate = False
    if handler is not None:
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("fuse").setLevel(logging.CRITICAL)   # mfusepy's own chatter


def _foreground(mfusepy, files, mp, log_path, what: str) -> int:
    _setup_logging(_log_handler(log_path, True))

    def ready():        # said once, on the terminal (also with --log): where, what, how to stop it
        Output(sys.stderr).print(
            f"stripedump: mount: serving {what} on {mp} (pid {os.getpid()}); stop it with Ctrl-C, "
            f"kill {os.getpid()} or 'stripedump umount {mp}'")
        if log_path:
            log.info("serving %s (pid %d)", mp, os.getpid())
    if not serve(mfusepy, files, mp, ready):
        raise MountError(f"mounting {mp} failed (libfuse said why above)")
    log.info("unmounted %s", mp)
    return 0


def _daemon(mfusepy, files, mp, log_path) -> int:
    remote_before_fork()        # ssh:// and s3:// members: the server reads on connections of its own
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:                           # the server
        code = 1
        try:
            os.close(r)
            code = _child(mfusepy, files, mp, log_path, w)
        finally:
            os._exit(code)
    os.close(w)
    try:
        return _await_ready(r, pid, mp)
    except BaseException:                  # interrupted (Ctrl-C) or refused: no server stays behind
        _stop(pid)
        raise


def _stop(pid: int) -> None:
    """End the child: SIGTERM (libfuse's handler unmounts if it got that far), SIGKILL after 5 s."""
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return
            time.sleep(0.02)
    except (ProcessLookupError, ChildProcessError):
        pass


def _child(mfusepy, files, mp, log_path, w) -> int:
    os.setsid()                            # no controlling terminal, not in the caller's group
    os.chdir("/")                          # pins no directory
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    import tempfile
    early = tempfile.TemporaryFile()       # libfuse's messages until the mount is live
    os.dup2(early.fileno(), 2)
    handler = _log_handler(log_path, False)
    _setup_logging(handler)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)     # libfuse installs its own over SIG_DFL only
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def ready():
        # the mount is live: the caller may go; from now on stderr is the log (or nothing)
        target = null
        if log_path:
            target = os.open(log_path, os.O_WRONLY | os.O_APPEND)
        os.dup2(target, 2)
        try:
            os.write(w, b"ok\n")
        except OSError:
            pass
        os.close(w)
        log.info("serving %s (pid %d)", mp, os.getpid())

    try:
        live = serve(mfusepy, files, mp, ready)
    except Exception as e:                 # pragma: no cover - a bug before the mount
        live = False
        print(f"internal error: {type(e).__name__}: {e}", file=sys.stderr)
    if live:
        log.info("unmounted %s", mp)
        return 0
    early.seek(0)
    said = [ln.strip() for ln in early.read().decode(errors="replace").splitlines() if ln.strip()]
    why = said[-1] if said else "libfuse gave no reason"
    try:
        os.write(w, f"error {int(MountError.exit_code)} mounting {mp} failed: {why}\n".encode())
    except OSError:
        pass
    return int(MountError.exit_code)


def _await_ready(r: int, pid: int, mp: str) -> int:
    deadline = time.monotonic() + READY_TIMEOUT
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([r], [], [], left)[0]:
            os.close(r)
            raise MountError(f"the FUSE server did not mount {mp} within {READY_TIMEOUT:.0f} s")
        part = os.read(r, 4096)
        if not part:
            break
        buf += part
    os.close(r)
    line = buf.decode(errors="replace").strip()
    if line == "ok":
        return 0
    if line.startswith("error "):
        _, code, msg = line.split(" ", 2)
        e = MountError(msg)
        e.exit_code = int(code)
        raise e
    raise MountError(f"the FUSE server exited before {mp} was mounted")


# -- umount -------------------------------------------------------------------

def _server_pid(source: str) -> int | None:
    name, _, pid = source.partition(":")
    return int(pid) if name == "stripedump" and pid.isdigit() else None


def _alive(pid: int, exiting: bool = False) -> bool:
    """The process exists, is not a zombie, and is a stripedump (not a reused pid).

    ``exiting``: a process known to be the server a moment ago whose command
    line is already empty (an exiting process releases its memory first)
    counts until it is a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except (OSError, IndexError):
        return False
    return state != b"Z" and (b"stripedump" in cmd or (exiting and cmd == b""))


def _unmount_cmd(mp: str, lazy: bool) -> list[str]:
    if shutil.which("fusermount3"):
        return ["fusermount3", "-uz" if lazy else "-u", "--", mp]
    return ["umount", "-l", mp] if lazy else ["umount", mp]


def umount(mountpoint: str, lazy: bool = False) -> int:
    """Unmount a stripedump mount (also when its server died) and wait for the server to exit.

    ``lazy``: detach it even while files in it are open (umount -l); the server then serves
    those until they are closed, and is not waited for."""
    mp = _canonical(mountpoint)
    hit = mounted_at(mp)
    if hit is None and mp != os.path.realpath(mp):     # a symlink to the mount point
        mp = os.path.realpath(mp)
        hit = mounted_at(mp)
    if hit is None:
        if not os.path.lexists(mp):
            raise MountError(f"{mountpoint} does not exist")
        raise MountError(f"{mountpoint} is not a mount point")
    fstype, source = hit
    if fstype != FSTYPE:
        raise MountError(f"{mountpoint} is not a stripedump mount (it is a {fstype} mount of {source})")
    pid = _server_pid(source)
    alive = pid is not None and _alive(pid)
    res = subprocess.run(_unmount_cmd(mp, lazy), capture_output=True, text=True,
                         stdin=subprocess.DEVNULL)
    if res.returncode != 0 and mounted_at(mp) is not None:
        said = " ".join(res.stderr.split()) or f"exit status {res.returncode}"
        if alive and "busy" in said.lower():
            raise MountError(f"{mountpoint} is busy: a process has a file or directory open in it "
                             f"(fuser -vm {mountpoint} names it); close it, or umount --lazy")
        # the server died ("Transport endpoint is not connected") or the mount is stuck:
        # detach it now; the kernel lets go of it when its last user does
        again = subprocess.run(_unmount_cmd(mp, True), capture_output=True, text=True,
                               stdin=subprocess.DEVNULL)
        if again.returncode != 0 and mounted_at(mp) is not None:
            said = " ".join(again.stderr.split()) or said
            raise MountError(f"unmounting {mountpoint} failed: {said}")
    if alive and not lazy:
        deadline = time.monotonic() + UMOUNT_WAIT
        while _alive(pid, exiting=True):
            if time.monotonic() > deadline:
                raise MountError(f"{mountpoint} is unmounted, but its server (pid {pid}) has not "
                                 f"exited after {UMOUNT_WAIT:.0f} s")
            time.sleep(0.02)
    return 0
