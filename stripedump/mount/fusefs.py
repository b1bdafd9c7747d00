"""The dump's files as a read-only FUSE file system (mfusepy over libfuse 3).

Why a module of its own: ``mount.py`` is the lifecycle (checks, the daemon,
``umount``); this is what is served and how.  Each file is a read-only view
(``read.fileview.FileView``: ``size`` and ``pread(offset, n)``):

* ``vmcore``       the ELF vmcore, byte for byte what ``join`` writes (``reader.Dump``);
* ``vmcore.kdump`` makedumpfile's kdump-compressed format (``KdumpView``, when available);
* ``dump.json``    what ``stripedump info --json`` prints.

The binding is mfusepy (docs/mount.md says why: maintained, libfuse 3, a
pure-Python wheel over ctypes, so no compiler; libfuse's multithreaded loop
calls ``read`` from several threads at once, and ``Dump`` is thread-safe).
mfusepy looks for libfuse 2 first; we point it at libfuse 3 while it is
imported (``load_fuse``), and only then: the variable would reach every
child process.

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
import os
import shutil
import stat
import sys
import threading
import time

from ..errors import MountError, StripedumpError
from ..read.fileview import FileView

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
log = logging.getLogger("stripedump.mount.lifecycle")


# -- the files ----------------------------------------------------------------

class BytesFile(FileView):
    """A small file held in memory (dump.json)."""

    def __init__(self, data: bytes):
        self.data = data
        self.size = len(data)

    def _fill(self, out: bytearray, offset: int, end: int) -> None:
        out[:] = self.data[offset:end]


def info_json(members: list[str]) -> bytes:
    """Exactly what ``stripedump info --json MEMBER...`` prints (cli.run_info)."""
    from ..read.info import info
    return (json.dumps(info(list(members)), indent=1) + "\n").encode()


def kdump_view(dump, kept=None):
    """``vmcore.kdump``: the one place the kdump view plugs in; None where it is not available.

    A view that cannot be built (say the page holding utsname is damaged) leaves the file out,
    with a warning: the ELF ``vmcore`` still serves everything else."""
    try:
        from ..kdump.view import KdumpView        # helper K's module (issue 10)
    except ImportError:
        return None
    try:
        return KdumpView(dump, kept=kept)
    except StripedumpError as e:
        print(f"stripedump: mount: warning: no vmcore.kdump: {e}", file=sys.stderr)
    except Exception as e:   # a bug there must not keep the ELF vmcore from the engineer
        print(f"stripedump: mount: warning: no vmcore.kdump: internal error: {type(e).__name__}: {e}",
              file=sys.stderr)
    return None


def files_of(dump, members: list[str]) -> dict:
    """name -> file (a ``FileView``: ``size``, ``pread``) served by the mount."""
    # a filtered dump (dump -d N): the ELF file join writes for it (makedumpfile -E's layout), whose
    # PT_LOADs leave the excluded pages out, never the source's layout with zeros in their place
    from ..read.filtered import FilteredElf, KeptMap
    kept = KeptMap.build(dump)
    files = {"vmcore": dump if kept is None else FilteredElf(dump, kept)}
    kd = kdump_view(dump, kept)
    if kd is not None:
        files["vmcore.kdump"] = kd
    files["dump.json"] = BytesFile(info_json(members))
    return files


# -- FUSE ---------------------------------------------------------------------

@contextlib.contextmanager
def scoped_env(**values):
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
    with scoped_env(FUSE_LIBRARY_PATH=lib):
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
    from ..errors import ChunkError
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
