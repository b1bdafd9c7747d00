"""``stripedump mount``: the dump as read-only files, served through FUSE, without a join.

Why: a join is a second full pass over the dump and needs the dump's size
again in free space; crash and drgn want a handful of pages first.  Here the
members are opened once (``reader.open``: headers, manifests and indexes
only) and each file of the mount is an object with ``size`` and
``pread(offset, n)``:

* ``vmcore``       the ELF vmcore, byte for byte what ``join`` writes (``reader.Dump``);
* ``vmcore.kdump`` makedumpfile's kdump-compressed format (``KdumpView``, when available);
* ``dump.json``    what ``stripedump info --json`` prints.

The binding is mfusepy (docs/mount.md says why: maintained, libfuse 3, a
pure-Python wheel over ctypes, so no compiler; libfuse's multithreaded loop
calls ``read`` from several threads at once, and ``Dump`` is thread-safe).
mfusepy looks for libfuse 2 first; we point it at libfuse 3 before it is
imported (``load_fuse``).

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

Reads: a chunk that fails its checks is EIO (``reader`` logs it once per
chunk); any other exception is EIO too, logged once per distinct message,
and the server keeps serving.  Missing chunks (``--allow-incomplete``) read
as zeros, as join writes them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import logging.handlers
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time

from .errors import MountError, StripedumpError

FSTYPE = "fuse.stripedump"              # type in /proc/self/mountinfo: "fuse." + subtype
READY_TIMEOUT = 30.0                    # seconds the parent waits for the mount to be live
UMOUNT_WAIT = 10.0                      # seconds umount waits for the server to exit
# libfuse's worker threads: enough for crash, drgn and a few copies at once; each idles in read(2)
MAX_THREADS = 16
# glibc gives each thread that mallocs its own arena (up to 8 per CPU), and each keeps the 1 MiB
# chunk buffers it freed: reading a 512 MiB dump (lz4, 1 MiB chunks, 256 MiB cache) with cat, the
# server's peak RSS beyond its cache was 121 MiB with the default and 42-56 MiB with two arenas
MALLOC_ARENAS = 2
# the kernel's read-ahead on a FUSE mount is the bdi default, 128 KiB: one request per 128 KiB.
# Same test, 3 runs each on 2 busy CPUs: 128 KiB 2.1-2.7 s; 512 KiB 1.6-1.8 s, 56-60 MiB beyond
# the cache; 1 MiB 1.5-2.4 s, 71-97 MiB (each thread's request buffer fills).  Root only (sysfs).
READAHEAD_KB = 512
HOW_TO_GET_FUSE = "on Debian: apt-get install fuse3"
log = logging.getLogger("stripedump.mount")


# -- the files ----------------------------------------------------------------

class BytesFile:
    """A small file held in memory (dump.json)."""

    def __init__(self, data: bytes):
        self.data = data
        self.size = len(data)

    def pread(self, offset: int, n: int) -> bytes:
        return self.data[offset:offset + n]


def info_json(members: list[str]) -> bytes:
    """Exactly what ``stripedump info --json MEMBER...`` prints (cli.run_info)."""
    from .info import info
    return (json.dumps(info(list(members)), indent=1) + "\n").encode()


def kdump_view(dump):
    """``vmcore.kdump``: the one place the kdump view plugs in; None where it is not available.

    A view that cannot be built (say the page holding utsname is damaged) leaves the file out,
    with a warning: the ELF ``vmcore`` still serves everything else."""
    try:
        from .kdumpview import KdumpView        # helper K's module (issue 10)
    except ImportError:
        return None
    try:
        return KdumpView(dump)
    except StripedumpError as e:
        print(f"stripedump: mount: warning: no vmcore.kdump: {e}", file=sys.stderr)
    except Exception as e:   # a bug there must not keep the ELF vmcore from the engineer
        print(f"stripedump: mount: warning: no vmcore.kdump: internal error: {type(e).__name__}: {e}",
              file=sys.stderr)
    return None


def files_of(dump, members: list[str]) -> dict:
    """name -> file object (``size``, ``pread``) served by the mount."""
    files = {"vmcore": dump}
    kd = kdump_view(dump)
    if kd is not None:
        files["vmcore.kdump"] = kd
    files["dump.json"] = BytesFile(info_json(members))
    return files


# -- FUSE ---------------------------------------------------------------------

@contextlib.contextmanager
def _env(**values):
    """Environment variables set for the duration of a block, then as they were."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def load_fuse():
    """mfusepy over libfuse 3, or MountError saying how to get FUSE."""
    if not os.path.exists("/dev/fuse"):
        raise MountError(f"FUSE is not available: no /dev/fuse (load the kernel module: modprobe fuse; "
                         f"{HOW_TO_GET_FUSE}; a container needs the device passed in)")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise MountError("FUSE is not available to this user: /dev/fuse cannot be opened for "
                         "reading and writing")
    from ctypes.util import find_library
    lib = find_library("fuse3")
    if lib is None:
        raise MountError(f"FUSE is not available: libfuse 3 is not installed ({HOW_TO_GET_FUSE})")
    if os.geteuid() != 0 and shutil.which("fusermount3") is None:
        raise MountError(f"FUSE is not available: fusermount3 is not installed ({HOW_TO_GET_FUSE})")
    # mfusepy takes libfuse 2 when both are installed (Debian's libfuse2 is common): name the
    # one we want before it is imported.  Its module is "mfusepy"; fusepy's "fuse" stays separate.
    # Only while it is imported: the variable would otherwise reach every child of this process
    # (fusepy's libfuse 2 file systems in the test suite failed with it set).
    with _env(FUSE_LIBRARY_PATH=lib):
        try:
            import mfusepy
        except ImportError:
            raise MountError("the mfusepy package is not installed (pip install mfusepy)") from None
        except OSError as e:
            raise MountError(f"FUSE is not available: libfuse 3 cannot be loaded: {e} "
                             f"({HOW_TO_GET_FUSE})") from None
    if mfusepy.fuse_version_major != 3:
        raise MountError(f"mfusepy loaded libfuse {mfusepy.fuse_version_major}, not libfuse 3 "
                         f"({HOW_TO_GET_FUSE})")
    return mfusepy


def operations(mfusepy, files: dict, on_init=None):
    """The read-only file system: a directory (0555) of files (0444)."""
    from .reader import ChunkError
    now = time.time_ns()
    uid, gid = os.getuid(), os.getgid()
    times = {"st_atime": now, "st_mtime": now, "st_ctime": now}
    root = {"st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2, "st_uid": uid, "st_gid": gid, **times}
    attrs = {f"/{name}": {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": f.size,
                          "st_uid": uid, "st_gid": gid, "st_blocks": -(-f.size // 512), **times}
             for name, f in files.items()}
    by_path = {f"/{name}": f for name, f in files.items()}
    logged: set[str] = set()
    logged_lock = threading.Lock()

    def failed(why: str, exc_info=False) -> None:
        with logged_lock:
            if why in logged:
                return
            logged.add(why)
        log.error("%s", why, exc_info=exc_info)

    class Operations(mfusepy.Operations):
        use_ns = True                     # st_*time in nanoseconds (mfusepy 3's convention)

        def init(self, path):
            if on_init is not None:
                on_init()

        def getattr(self, path, fh=None):
            if path == "/":
                return root
            a = attrs.get(path)
            if a is None:
                raise mfusepy.FuseOSError(errno.ENOENT)
            return a

        def readdir(self, path, fh):
            if path != "/":
                raise mfusepy.FuseOSError(errno.ENOTDIR)
            return [".", "..", *files]

        def open(self, path, flags):
            if path not in by_path:
                raise mfusepy.FuseOSError(errno.ENOENT)
            if flags & os.O_ACCMODE != os.O_RDONLY:
                raise mfusepy.FuseOSError(errno.EROFS)
            return 0

        def read(self, path, size, offset, fh):
            f = by_path.get(path)
            if f is None:
                raise mfusepy.FuseOSError(errno.ENOENT)
            try:
                return bytes(f.pread(offset, size))
            except ChunkError:            # reader.Dump logged it, once per chunk
                raise mfusepy.FuseOSError(errno.EIO) from None
            except StripedumpError as e:
                failed(f"{path[1:]}: read of {size} bytes at offset {offset}: {e}")
                raise mfusepy.FuseOSError(errno.EIO) from None
            except Exception as e:        # a bug: EIO for this read, the server goes on
                failed(f"{path[1:]}: read of {size} bytes at offset {offset}: internal error: "
                       f"{type(e).__name__}: {e}", exc_info=True)
                raise mfusepy.FuseOSError(errno.EIO) from None

        def statfs(self, path):
            total = sum(f.size for f in files.values())
            return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": -(-total // 4096), "f_bfree": 0,
                    "f_bavail": 0, "f_files": len(files) + 1, "f_ffree": 0, "f_namemax": 255}

    return Operations()


def _limit_arenas() -> None:
    """mallopt(M_ARENA_MAX, MALLOC_ARENAS) before libfuse starts its threads (best effort)."""
    try:
        import ctypes
        ctypes.CDLL(None).mallopt(-8, MALLOC_ARENAS)       # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def _tune_readahead(mountpoint: str) -> None:
    """Raise the mount's read-ahead (its bdi is named by st_dev); best effort: root only."""
    try:
        dev = os.stat(mountpoint).st_dev    # answered once init has returned
        with open(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb", "w") as f:
            f.write(str(READAHEAD_KB))
    except OSError:
        pass


def serve(mfusepy, files: dict, mountpoint: str, on_init=None) -> bool:
    """Mount and serve until unmounted or signalled; True when the mount was live at some point."""
    live = []
    _limit_arenas()

    def init():
        live.append(True)
        # stat(2) of the mount point waits for this init to return: from another thread
        threading.Thread(target=_tune_readahead, args=(mountpoint,), daemon=True).start()
        if on_init is not None:
            on_init()
    ops = operations(mfusepy, files, init)
    try:
        # foreground: we detach ourselves (mount()); libfuse's own daemonizing would fork after the
        # mount, out of our sight.  default_permissions: the kernel checks the 0444/0555 modes.
        # max_idle_threads: libfuse 3.14's default (-1) is out of range and is complained about.
        mfusepy.FUSE(ops, mountpoint, foreground=True, ro=True, default_permissions=True,
                     fsname=f"stripedump:{os.getpid()}", subtype="stripedump", kernel_cache=True,
                     attr_timeout=86400, entry_timeout=86400, max_threads=MAX_THREADS,
                     max_idle_threads=MAX_THREADS)
    except RuntimeError:
        # fuse_main's status: non-zero both when mounting failed and when a signal ended the
        # loop (libfuse keeps the signal number as the loop's error); only the first is ours
        if not live:
            return False
    return bool(live)


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
        raise MountError(f"mount point {path} is not empty ({len(entries)} entries)")
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
    # the reader imports numpy, whose OpenBLAS starts a thread pool at import: the fork below
    # wants a process with one thread, and the server does no linear algebra
    from . import reader
    with _env(OPENBLAS_NUM_THREADS=os.environ.get("OPENBLAS_NUM_THREADS", "1")):
        dump = reader.open(list(members), allow_incomplete=allow_incomplete,
                           cache_bytes=reader.DEFAULT_CACHE if cache_bytes is None else cache_bytes,
                           verify_walks=allow_incomplete)   # what join --allow-incomplete finds, byte for byte
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
            return _foreground(mfusepy, files, mp, log_path)
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


def _foreground(mfusepy, files, mp, log_path) -> int:
    _setup_logging(_log_handler(log_path, True))
    if not serve(mfusepy, files, mp):
        raise MountError(f"mounting {mp} failed (libfuse said why above)")
    return 0


def _daemon(mfusepy, files, mp, log_path) -> int:
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


def _alive(pid: int) -> bool:
    """The process exists, is not a zombie, and is a stripedump (not a reused pid)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except (OSError, IndexError):
        return False
    return state != b"Z" and b"stripedump" in cmd


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
        while _alive(pid):
            if time.monotonic() > deadline:
                raise MountError(f"{mountpoint} is unmounted, but its server (pid {pid}) has not "
                                 f"exited after {UMOUNT_WAIT:.0f} s")
            time.sleep(0.02)
    return 0
