"""Choosing and opening dump targets without destroying anything else.

Why a module of its own: the one unforgivable failure of a dump tool is to
overwrite a disk it was not meant to touch.  Every target is checked before
any byte is written, and every refusal names the target and the reason:

* the source itself, or one target given twice (same inode or device; a
  file not created yet: the same directory, by device and inode, and name,
  symlinks resolved);
* a regular file that is not empty, or a block device that carries a known
  filesystem, partition table, volume or dump signature (the magic numbers
  wipefs/blkid look for, list below), or a stripedump member;
* a mounted block device (never, even with --force);
* a block device too small to hold the member header and manifest;
* a target another process holds: another dump on it, a mount, a RAID or
  device-mapper holder (exclusive targets, below).

Exclusive targets: two dumps started at once on the same targets (a kdump
service and a manual run) must not both write, or each would overwrite the
other's records and both could exit 0 over members nobody can read.  So
``open_targets`` opens every target without truncating it, then takes every
lock (``flock(LOCK_EX|LOCK_NB)`` for files; ``O_EXCL`` for block devices,
which the kernel also refuses while the device is mounted or claimed by
md/dm or by another O_EXCL opener, plus a flock that names the holder in
/proc/locks and keeps udev from probing the device mid-dump), and only then
checks the targets again, truncates files and lets anything be written.
Locks are taken in one canonical order (by device and inode), never
waiting: of two dumps started together on overlapping targets, in whatever
order their ``--disks`` name them, the one that takes the first shared
target first gets all of them; the other is refused at once (exit 4,
naming the target and the holder's pid where /proc/locks knows it),
having written nothing.  The locks are held until the members are
finalized (the dump closes the descriptors at its very end).

Durability: the directory of every member file is fsynced once the files
exist, so a power loss right after the dump cannot lose a member's name.

Nothing left behind: a dump refused here, or stopped before its first chunk
(``TargetSet.abandon``), removes the member files it created (made with
O_EXCL, so it knows), under their lock and while their name still leads to
that inode (``remove_created``); never a file that existed before, never a
device, never a file another dump locked first.

``--force`` lets a dump overwrite a non-empty file or a signed device; it
never lets one target be used twice, the source be overwritten, or a mounted
device be written.

Streams (sshtarget.py): an ``ssh://`` target is checked and locked on its
host by the one ssh connection that will carry the member, before any local
target is locked, and is told to go only when every target passed; an
``s3://`` target likewise by its uploader (s3target.py: the object absent,
no other upload open to it, the upload started); ``-`` (standard output) is
a stream nobody acknowledges and must not be a terminal.

A dump holds its targets as one ``TargetSet``, opened and closed in one
place (coordinator.py): checked, opened and locked, heads written, handed
to the writers, closed, and the streams' ssh children reaped.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time

from ..errors import StripedumpError, TargetIOError, TargetRefused, UsageError
from ..format.structs import STATE_INCOMPLETE
from ..runtime.fileio import fsync_dir
from .directio import O_DIRECT, is_direct, try_direct
from .writer import SYNC_EVERY, MemberWriter, write_member_head
from ..runtime.plain import Plain
from ..remote.sshtarget import SCHEME, Remote, Sink, SshUrl, close_quietly
from ..remote.s3url import S3Url, is_s3
from ..remote.s3target import S3Remote

# (offset, magic, what) -- from util-linux libblkid's probers
SIGNATURES = (
    (0, b"STRIPEDM", "a stripedump member"),
    (0, b"KDUMP   ", "a kdump-compressed dump"),
    (0, b"makedumpfile\0", "a flattened makedumpfile dump"),
    (0, b"\x7fELF", "an ELF file (a dump?)"),
    (0, b"XFSB", "an XFS filesystem"),
    (0x438, b"\x53\xef", "an ext2/3/4 filesystem"),
    (0x10040, b"_BHRfS_M", "a btrfs filesystem"),
    (0x400, b"\x10\x20\xf5\xf2", "an F2FS filesystem"),
    (3, b"NTFS    ", "an NTFS filesystem"),
    (3, b"EXFAT   ", "an exFAT filesystem"),
    (0x36, b"FAT1", "a FAT filesystem"),
    (0x52, b"FAT32   ", "a FAT32 filesystem"),
    (0x8001, b"CD001", "an ISO 9660 filesystem"),
    (0, b"LUKS\xba\xbe", "a LUKS encrypted volume"),
    (0x200, b"LABELONE", "an LVM physical volume"),
    (0x218, b"LVM2 001", "an LVM physical volume"),
    (0x1000 - 10, b"SWAPSPACE2", "a swap area"),
    (0x1000 - 10, b"SWAP-SPACE", "a swap area"),
    (0x200, b"EFI PART", "a GPT partition table"),
    (0x1fe, b"\x55\xaa", "a DOS partition table or boot sector"),
    (0x1000, b"\xfc\x4e\x2b\xa9", "an MD RAID member"),
)
PROBE_BYTES = 0x10100


def probe_signature(head: bytes) -> str | None:
    for off, magic, what in SIGNATURES:
        if head[off:off + len(magic)] == magic:
            return what
    return None


class Target(Plain):
    __slots__ = ("path", "is_block", "existed", "fd", "capacity", "key", "stream", "remote", "sink",
                 "real", "created", "direct")

    def __init__(self, path: str, is_block: bool, existed: bool, fd: int = -1,
                 capacity: int | None = None,   # bytes, for block devices
                 key: tuple = (),               # canonical lock order: ("blk", rdev) or ("ino", dev, ino)
                 stream: bool = False,          # written append-only: ssh:// or - (sshtarget.py)
                 remote: Remote | S3Remote | None = None,  # ssh:// or s3://: its child and its checks
                 sink: Sink | None = None,      # a stream's acknowledgements (its writer's)
                 real: str = "",                # a new file: its path, symlinks resolved (created there)
                 created: bool = False):        # this dump created the file (O_EXCL): removed on a refusal
        self.path = path
        self.is_block = is_block
        self.existed = existed
        self.fd = fd
        self.capacity = capacity
        self.key = key
        self.stream = stream
        self.remote = remote
        self.sink = sink
        self.real = real
        self.created = created
        self.direct = False       # written with O_DIRECT (directio.py), once open

    def fds(self) -> tuple[int, ...]:
        """Every descriptor of this target the coordinator holds (a stream: its acknowledgements too)."""
        return ((self.fd,) if self.fd >= 0 else ()) + (self.sink.fds() if self.sink is not None else ())


def _mounted_devices() -> dict[int, str]:
    out = {}
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                dev, mnt = line.split()[:2]
                if dev.startswith("/"):
                    try:
                        out[os.stat(dev).st_rdev] = mnt
                    except OSError:
                        pass
    except OSError:
        pass
    return out


def check_targets(paths: list[str], source_st: os.stat_result, force: bool) -> list[Target]:
    """Validate every target; raise TargetRefused naming the first bad one."""
    if not paths:
        raise UsageError("no targets: give --disks T1[,T2...]")
    seen: dict[tuple, str] = {}
    src_key = _key(source_st)
    mounted = None
    out = []
    for p in paths:
        if not p:
            raise UsageError("empty target name in --disks")
        if p == "-" or p.startswith(SCHEME) or is_s3(p):
            key = ("stdout",) if p == "-" else S3Url.parse(p).ident if is_s3(p) else SshUrl.parse(p).key
            if key in seen:
                raise TargetRefused(f"target {p} is given twice (also as {seen[key]})")
            seen[key] = p
            out.append(Target(p, False, False, key=key, stream=True))
            continue
        try:
            st = os.stat(p)
        except FileNotFoundError:
            real, key = _new_file(p)
            if key in seen:
                raise TargetRefused(f"target {p} is given twice (also as {seen[key]})")
            seen[key] = p
            out.append(Target(p, False, False, key=key, real=real))
            continue
        except OSError as e:
            raise TargetIOError(f"target {p}: {e.strerror}") from None
        key = _key(st)
        if key in seen:
            raise TargetRefused(f"target {p} is given twice (also as {seen[key]})")
        seen[key] = p
        if key == src_key:
            raise TargetRefused(f"target {p} is the source itself; refusing to overwrite it")
        if stat.S_ISDIR(st.st_mode):
            raise TargetRefused(f"target {p} is a directory; give a file or block device path")
        is_block = stat.S_ISBLK(st.st_mode)
        if not is_block and not stat.S_ISREG(st.st_mode):
            raise TargetRefused(f"target {p} is neither a regular file nor a block device")
        if is_block:
            if mounted is None:
                mounted = _mounted_devices()
            if st.st_rdev in mounted:
                raise TargetRefused(f"target {p} is mounted at {mounted[st.st_rdev]}; "
                                    "unmount it first (not even --force writes to a mounted device)")
        sig = _read_signature(p)
        if sig and not force:
            raise TargetRefused(f"target {p} holds {sig}; refusing to overwrite it (use --force)")
        if not is_block and st.st_size > 0 and not force:
            raise TargetRefused(f"target {p} is a non-empty file ({st.st_size} bytes); "
                                "refusing to overwrite it (use --force)")
        out.append(Target(p, is_block, True))
    return out


def _new_file(p: str) -> tuple[str, tuple]:
    """A target file that does not exist yet: where it will be created (symlinks resolved: a
    dangling link names the file it points to) and its key, the device and inode of that directory
    and the name in it, so that one new file named twice, through a symlink to it or to its
    directory, is found before anything is created (issue 24, item 5)."""
    real = os.path.realpath(p)
    parent = os.path.dirname(real)
    try:
        pst = os.stat(parent)
    except OSError:
        pst = None
    if pst is None or not stat.S_ISDIR(pst.st_mode):
        raise TargetIOError(f"target {p}: directory {parent} does not exist") from None
    return real, ("new", pst.st_dev, pst.st_ino, os.path.basename(real))


def _key(st: os.stat_result) -> tuple:
    if stat.S_ISBLK(st.st_mode):
        return ("blk", st.st_rdev)
    return ("ino", st.st_dev, st.st_ino)


def _read_signature(path: str) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise TargetIOError(f"target {path}: cannot open to check it: {e.strerror}") from None
    try:
        head = os.pread(fd, PROBE_BYTES, 0)
    except OSError as e:
        raise TargetIOError(f"target {path}: cannot read it to check it: {e.strerror}") from None
    finally:
        os.close(fd)
    return probe_signature(head)


UDEV_LOCK_WAIT = 3.0   # seconds: udev holds a shared flock on a block device while it probes it


def open_targets(targets: list[Target], min_size: int, direct: bool | None = False, force: bool = False,
                 ssh_options: tuple[str, ...] = (), timeout: float = 60.0, s3=None) -> None:
    """Open, lock (canonical order, never waiting), re-check, then truncate every target.

    Streams first: every ssh:// target's connection and every s3:// target's
    uploader is started (in parallel) and its checks (and lock) awaited, ``-`` is checked; then the local
    targets as below; then the streams are told to go.  On any refusal or
    error every descriptor opened here is closed (releasing its lock), every
    ssh child ended, and nothing has been written or truncated.  The
    descriptors stay on the Targets, locked, until ``close_targets``.
    ``direct``: True, opened with O_DIRECT (``--direct-io``: refused, an
    error); None, O_DIRECT where a target takes it (directio.py); False, buffered.
    """
    flags = os.O_WRONLY | getattr(os, "O_CLOEXEC", 0) | (O_DIRECT if direct else 0)
    try:
        _open_streams([t for t in targets if t.stream], force, ssh_options, timeout, s3)
        local = [t for t in targets if not t.stream]
        _open_and_lock(local, flags, min_size, bool(direct), force)
        for t in local:
            t.direct = bool(direct) or (direct is None and try_direct(t.fd))
        for t in targets:
            if t.remote is not None:
                t.remote.go()
    except BaseException:
        remove_created(targets)
        close_targets(targets)
        end_streams(targets, 5.0)
        raise


def remove_created(targets: list[Target]) -> list[Target]:
    """Remove the files this dump created (refused, or stopped before its first chunk: issue 24,
    item 6); never a file that existed before, never a device.  Only under the file's lock and
    only while its name still leads to the inode created here: a file another dump holds (it
    opened the new file by its name and locked it first) is left to that dump."""
    removed = []
    for t in targets:
        if not t.created or t.fd < 0:
            continue
        try:
            fcntl.flock(t.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)     # held already, or free: ours to remove
            mine, now = os.fstat(t.fd), os.stat(t.real)
            if (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino):
                os.unlink(t.real)
                t.created = False
                removed.append(t)
        except OSError:
            pass
    return removed


def _open_streams(targets: list[Target], force: bool, options: tuple[str, ...], timeout: float,
                  s3=None) -> None:
    for t in targets:
        if t.path == "-":
            if os.isatty(1):
                raise TargetRefused("target - is standard output, a terminal here; refusing to write a "
                                    "dump to it (redirect or pipe it)")
            try:
                t.fd = os.dup(1)
            except OSError as e:
                raise TargetIOError(f"target -: standard output: {e.strerror}") from None
            os.set_inheritable(t.fd, False)
            t.sink = Sink("-")
        elif is_s3(t.path):
            t.remote = S3Remote(t.path, force, s3, timeout)
            t.fd = t.remote.fd
            t.sink = Sink(t.path, t.remote.ack, t.remote.err, timeout)
        else:
            t.remote = Remote(t.path, force, options, timeout, SYNC_EVERY)
            t.fd = t.remote.fd
            t.sink = Sink(t.path, t.remote.ack, t.remote.err, timeout)
    deadline = time.monotonic() + timeout
    for t in targets:
        if t.remote is not None:
            t.remote.wait_ready(deadline)


def end_streams(targets: list[Target], wait: float) -> None:
    """Reap the ssh children and s3 uploaders (after their writers finished, or on a refusal: they
    get EOF)."""
    for t in targets:
        if t.remote is not None:
            t.remote.end(wait)


def _open_and_lock(targets: list[Target], flags: int, min_size: int, direct: bool, force: bool) -> None:
    # 1. files: open (create) without truncating, to learn their inode;
    #    a block device's O_EXCL open is its lock, so it waits for step 2
    seen: dict[tuple, str] = {}
    for t in targets:
        if t.is_block:
            t.key = ("blk", _stat(t.path).st_rdev)
        else:
            _open_file(t, flags, direct)
            st = _io(t, os.fstat, t.fd)
            t.key = ("ino", st.st_dev, st.st_ino)
        # the same file or device under two names that the checks could not tell apart (it was
        # made or linked in between): refused as given twice, never taken for another holder's lock
        if t.key in seen:
            raise TargetRefused(f"target {t.path} is given twice (also as {seen[t.key]})")
        seen[t.key] = t.path
    # 2. every lock, in one order
    for t in sorted(targets, key=lambda t: t.key):
        if t.is_block:
            try:
                t.fd = os.open(t.path, flags | os.O_EXCL)
            except OSError as e:
                if e.errno == errno.EBUSY:
                    raise TargetRefused(f"target {t.path} is in use: {_holder(t.path)}; "
                                        "refusing to write to it") from None
                _open_error(t.path, e, direct)
            _flock(t, UDEV_LOCK_WAIT)
        else:
            _flock(t, 0)
    # 3. under the locks: what was checked before may have changed (a dump
    #    that held a target a moment ago may have finished writing it)
    for t in targets:
        _recheck(t, min_size, force)
    # 4. only now: truncate, and make the new names durable
    for t in targets:
        if not t.is_block:
            _io(t, os.ftruncate, t.fd, 0)
    for d in sorted({os.path.dirname(os.path.realpath(t.path)) for t in targets if not t.is_block}):
        fsync_dir(d, TargetIOError)


def _open_file(t: Target, flags: int, direct: bool) -> None:
    """Open a target file for writing, creating it where it did not exist (``t.created``: this dump
    made it, O_EXCL says so; another process that made it first leaves it an existing file)."""
    if not t.existed and t.real:
        try:
            t.fd = os.open(t.real, flags | os.O_CREAT | os.O_EXCL, 0o600)
            t.created = True
            return
        except FileExistsError:
            pass
        except OSError as e:
            _open_error(t.path, e, direct)
    t.fd = _open(t.path, flags | os.O_CREAT, direct)


def _io(t: Target, call, *args):
    try:
        return call(*args)
    except OSError as e:
        raise TargetIOError(f"target {t.path}: {e.strerror}") from None


def close_targets(targets: list[Target]) -> None:
    """Close every open target descriptor, which releases its lock (a stream: its EOF, once its
    writer closed it too)."""
    for t in targets:
        for fd in t.fds():
            close_quietly(fd)
        t.fd = -1
        if t.remote is not None:
            t.remote.fd = t.remote.ack = t.remote.err = -1
        if t.sink is not None:
            t.sink.ack = t.sink.err = -1


def _stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as e:
        raise TargetIOError(f"target {path}: {e.strerror}") from None


def _open(path: str, flags: int, direct: bool) -> int:
    try:
        return os.open(path, flags, 0o600)
    except OSError as e:
        _open_error(path, e, direct)


def _open_error(path: str, e: OSError, direct: bool):
    if direct and e.errno == errno.EINVAL:
        raise TargetIOError(f"target {path}: its filesystem does not support O_DIRECT "
                            "(--direct-io); dump without it") from None
    raise TargetIOError(f"target {path}: cannot open for writing: {e.strerror}") from None


def _flock(t: Target, wait: float) -> None:
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(t.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise TargetIOError(f"target {t.path}: cannot lock it: {e.strerror}") from None
        if time.monotonic() >= deadline:
            raise TargetRefused(f"target {t.path} is in use: {_holder(t.path)}; refusing to write to it")
        time.sleep(0.05)


def _recheck(t: Target, min_size: int, force: bool) -> None:
    st = _io(t, os.fstat, t.fd)
    if t.is_block:
        t.capacity = _io(t, os.lseek, t.fd, 0, os.SEEK_END)
        _io(t, os.lseek, t.fd, 0, os.SEEK_SET)
        if t.capacity < min_size:
            raise TargetRefused(f"target {t.path} is too small ({t.capacity} bytes; "
                                f"the member header and manifest alone need {min_size})")
    else:
        try:
            now = os.stat(t.path)
        except OSError:
            now = None
        if now is None or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise TargetRefused(f"target {t.path} was removed or replaced while it was being opened; "
                                "refusing to write to it")
        if st.st_size > 0 and not force:
            raise TargetRefused(f"target {t.path} is a non-empty file ({st.st_size} bytes; another dump "
                                "may have just written it); refusing to overwrite it (use --force)")
    if not force and (t.is_block or st.st_size > 0):
        sig = _read_signature(t.path)
        if sig:
            raise TargetRefused(f"target {t.path} holds {sig}; refusing to overwrite it (use --force)")


def _holder(path: str) -> str:
    """Who holds ``path``, as far as the kernel says: a flock's pid, a mount, a md/dm holder."""
    try:
        st = os.stat(path)
    except OSError:
        return "another process holds it"
    node = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    try:
        with open("/proc/locks") as f:
            for line in f:
                parts = line.split()
                if "->" in parts or len(parts) < 6:
                    continue            # a waiter, not a holder
                if parts[1] == "FLOCK" and parts[5] == node and parts[3] == "WRITE":
                    pids.append(int(parts[4]))
    except (OSError, ValueError):
        pass
    if pids and pids[0] != os.getpid():
        return f"another process holds a lock on it (pid {pids[0]}: {_cmdline(pids[0])})"
    if stat.S_ISBLK(st.st_mode):
        mounted = _mounted_devices()
        if st.st_rdev in mounted:
            return f"it is mounted at {mounted[st.st_rdev]}"
        try:
            holders = os.listdir(f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}/holders")
        except OSError:
            holders = []
        if holders:
            return f"it is held by {', '.join(sorted(holders))}"
        return "another process holds it open exclusively (a mount, RAID, device-mapper or another dump)"
    return "another process holds a lock on it"


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read().split(b"\0")
    except OSError:
        return "unknown"
    text = " ".join(w.decode("utf-8", "replace") for w in words if w)
    return text[:120] + ("..." if len(text) > 120 else "") or "unknown"


class TargetSet:
    """A dump's targets, from their check to the end of their streams.

    ``TargetSet.check`` validates every target and opens none;
    ``with targets.open(min_size, cfg):`` opens and locks them all
    (``open_targets``: on a refusal nothing was written and everything opened
    is closed again).  Inside the block: ``write_heads`` (every member's
    header block and manifest), ``writer(d)`` (the MemberWriter of member
    ``d``), ``release()`` once the writers have forked (from then on each
    target is open in its writer only: no other process's close waits on a
    hung target, iowatch.py).  Leaving the block closes every descriptor
    still held, which releases its lock, and reaps the ssh children of the
    streams (their writers have finished by then, or they get EOF).
    """
    STREAMS_END_WAIT = 10.0      # seconds an ssh child or uploader gets to confirm its member is stored

    def __init__(self, targets: list[Target]):
        self.targets = targets
        self.headers: list = []          # each member's MemberHeader, once written
        self.start = 0                   # where the chunk records begin (first_record_offset)
        self.direct_required = self.discard = False

    @classmethod
    def check(cls, paths, source_st: os.stat_result, force: bool) -> "TargetSet":
        return cls(check_targets(list(paths), source_st, force))

    def __len__(self) -> int:
        return len(self.targets)

    def __iter__(self):
        return iter(self.targets)

    def __getitem__(self, d: int) -> Target:
        return self.targets[d]

    @property
    def paths(self) -> list[str]:
        return [t.path for t in self.targets]

    def open(self, min_size: int, cfg) -> "TargetSet":
        """Open and lock every target (``cfg``: the DumpConfig's direct_io, force, ssh_options,
        io_timeout, discard, s3); the set is then the context manager that closes them."""
        open_targets(self.targets, min_size, cfg.direct_io, cfg.force, cfg.ssh_options, cfg.io_timeout,
                     cfg.s3)
        self.direct_required, self.discard = cfg.direct_io is True, cfg.discard
        return self

    def __enter__(self) -> "TargetSet":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
        end_streams(self.targets, self.STREAMS_END_WAIT)

    def release(self) -> None:
        close_targets(self.targets)

    def write_heads(self, headers: list, manifest_rec: bytes, start: int) -> None:
        """Every member's header block and manifest record; its chunk records begin at ``start``."""
        self.start = start
        for t, h in zip(self.targets, headers):
            write_member_head(t.fd, t.path, h, manifest_rec, start, t.stream, self.direct_required)
            t.direct = t.direct and is_direct(t.fd)      # its O_DIRECT write refused: buffered now
            self.headers.append(h)

    def writer(self, d: int) -> MemberWriter:
        """The writer of member ``d`` (a stream: append-only through its sink, never O_DIRECT)."""
        t = self.targets[d]
        return MemberWriter(t.fd, t.path, self.headers[d], self.start, t.direct, self.discard, t.sink)

    def abandon(self, why: str) -> None:
        """The dump stopped before its first chunk: the member files it created are removed
        (``remove_created``); every other member whose head was written is finalized as
        incomplete, so none is left "writing".  A target's own failure here is not the one to report."""
        removed = remove_created(self.targets)
        for d in range(len(self.headers)):
            if any(t is self.targets[d] for t in removed):
                continue
            try:
                self.writer(d).finish(STATE_INCOMPLETE, why)
            except StripedumpError:
                pass
