"""Whole reads and writes on file descriptors, with the caller's error class.

Why: ``os.pread`` and ``os.write`` may move fewer bytes than asked (signals,
block device boundaries, pipes).  Every reader and writer in stripedump needs
the same loop; only the error it raises (SourceError, MemberError, ...) and
the words of the message differ.  The same holds for making a file or a new
name durable (``fsync_dir``, ``write_json_atomic``: dump --manifest).
"""

from __future__ import annotations

import errno
import os

MAX_IO = 1 << 24     # bytes per system call: bounded, so one call never allocates more


def pread_exact(fd: int, offset: int, length: int, error, what: str) -> bytes:
    """``length`` bytes at ``offset``; ``error(message)`` for a read error or early end."""
    parts, done = [], 0
    while done < length:
        try:
            b = os.pread(fd, min(length - done, MAX_IO), offset + done)
        except OSError as e:
            raise error(f"{what}: read error at offset {offset + done:#x}: {e.strerror}") from None
        if not b:
            raise error(f"{what}: ends early at offset {offset + done:#x} (truncated?)")
        parts.append(b)
        done += len(b)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def write_exact(fd: int, data, error, what: str, offset: int | None = None) -> None:
    """All of ``data``, at the file position or at ``offset``; ``error(message)`` on failure."""
    mv = memoryview(data)
    done = 0
    while done < len(mv):
        at = "" if offset is None else f" at offset {offset + done:#x}"
        try:
            n = os.write(fd, mv[done:]) if offset is None else os.pwrite(fd, mv[done:], offset + done)
        except OSError as e:
            raise error(f"{what}: write failed{at}: {e.strerror}") from None
        if n == 0:
            raise error(f"{what}: write failed{at}: short write (device full?)")
        done += n


def fsync_dir(path: str, error) -> None:
    """fsync directory ``path`` so the names created or renamed in it survive a power loss.

    File systems that cannot sync a directory (EINVAL, ENOTSUP: some FUSE and
    network file systems) are skipped: there is nothing more to be done there.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise error(f"cannot open directory {path} to sync it: {e.strerror}") from None
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EROFS):
            raise error(f"cannot sync directory {path}: {e.strerror}") from None
    finally:
        os.close(fd)


def write_json_atomic(path: str, obj, error, what: str) -> None:
    """Write ``obj`` as JSON so that a reader sees the old file or the new one, never a part.

    A temporary file in the same directory, synced, renamed over ``path``, and
    the directory synced: after a power loss the name points at a whole file.
    The file gets the mode ``open()`` would have given it.  On failure the
    temporary file is removed and ``error("cannot write <what>: ...")`` raised.
    """
    import json
    import tempfile
    folder, name = os.path.split(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)    # mkstemp makes 0600; keep what open() would have made
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise error(f"cannot write {what}: {e.strerror}") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    fsync_dir(folder, error)
