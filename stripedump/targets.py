"""Choosing and opening dump targets without destroying anything else.

Why a module of its own: the one unforgivable failure of a dump tool is to
overwrite a disk it was not meant to touch.  Every target is checked before
any byte is written, and every refusal names the target and the reason:

* the source itself, or one target given twice (same inode or device);
* a regular file that is not empty, or a block device that carries a known
  filesystem, partition table, volume or dump signature (the magic numbers
  wipefs/blkid look for, list below), or a stripedump member;
* a mounted block device (never, even with --force);
* a block device too small to hold the member header and manifest.

``--force`` lets a dump overwrite a non-empty file or a signed device; it
never lets one target be used twice, the source be overwritten, or a mounted
device be written.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from .errors import TargetIOError, TargetRefused, UsageError

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


@dataclass
class Target:
    path: str
    is_block: bool
    existed: bool
    fd: int = -1
    capacity: int | None = None   # bytes, for block devices


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
        try:
            st = os.stat(p)
        except FileNotFoundError:
            parent = os.path.dirname(os.path.abspath(p))
            if not os.path.isdir(parent):
                raise TargetIOError(f"target {p}: directory {parent} does not exist") from None
            key = ("new", os.path.abspath(p))
            if key in seen:
                raise TargetRefused(f"target {p} is given twice (also as {seen[key]})")
            seen[key] = p
            out.append(Target(p, False, False))
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


def open_target(t: Target, min_size: int, direct: bool = False) -> None:
    """Open a checked target for writing (fd stored on the Target)."""
    flags = getattr(os, "O_CLOEXEC", 0) | (getattr(os, "O_DIRECT", 0) if direct else 0)
    try:
        if t.is_block:
            t.fd = os.open(t.path, os.O_WRONLY | flags)
            t.capacity = os.lseek(t.fd, 0, os.SEEK_END)
            os.lseek(t.fd, 0, os.SEEK_SET)
            if t.capacity < min_size:
                os.close(t.fd)
                t.fd = -1
                raise TargetRefused(f"target {t.path} is too small ({t.capacity} bytes; "
                                    f"the member header and manifest alone need {min_size})")
        else:
            t.fd = os.open(t.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | flags, 0o600)
    except OSError as e:
        if direct and e.errno == errno.EINVAL:
            raise TargetIOError(f"target {t.path}: its filesystem does not support O_DIRECT "
                                "(--direct-io); dump without it") from None
        raise TargetIOError(f"target {t.path}: cannot open for writing: {e.strerror}") from None
