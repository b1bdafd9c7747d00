"""The error hierarchy and the exit codes it maps to.

Why: stripedump runs unattended in a capture kernel.  A failure must end in
one plain line and an exit code a kdump script can act on, never a traceback.
Every error the library raises is a StripedumpError subclass carrying its exit
code; only ``cli.main()`` turns them into process exit codes.  Errors that
happen inside worker or writer processes travel back as data (class name and
message) and are re-raised here by ``from_wire``.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    INTERNAL = 1      # a bug: please report it (traceback with --debug)
    USAGE = 2         # bad command line or option value
    SOURCE = 3        # the vmcore cannot be opened or is not a valid ELF core
    REFUSED = 4       # a target was refused for safety (use --force to override)
    TARGET_IO = 5     # writing or syncing a target failed
    MEMBER = 6        # members are unreadable, mismatched, missing or corrupt
    VERIFY = 7        # a checksum or decompression check failed
    INCOMPLETE = 8    # the dump was stopped early; members hold what was written
    OUTPUT = 9        # join/verify output cannot be written
    MOUNT = 10        # mount/umount: the mount point cannot be used, FUSE is unavailable, or mounting failed
    SIGHUP = 129
    SIGINT = 130
    SIGTERM = 143


class StripedumpError(Exception):
    """Base of every error stripedump reports to the user."""

    exit_code = ExitCode.INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # one line, always
        return " ".join(self.message.split())

    def to_wire(self) -> tuple[str, str]:
        return (type(self).__name__, self.message)


class UsageError(StripedumpError):
    exit_code = ExitCode.USAGE


class SourceError(StripedumpError):
    exit_code = ExitCode.SOURCE


class VmcoreFormatError(SourceError):
    """The source is not an ELF core file we can read."""


class TargetRefused(StripedumpError):
    exit_code = ExitCode.REFUSED


class TargetIOError(StripedumpError):
    exit_code = ExitCode.TARGET_IO


class MemberError(StripedumpError):
    exit_code = ExitCode.MEMBER


class VerifyError(StripedumpError):
    exit_code = ExitCode.VERIFY


class IncompleteDump(StripedumpError):
    exit_code = ExitCode.INCOMPLETE


class OutputError(StripedumpError):
    exit_code = ExitCode.OUTPUT


class MountError(StripedumpError):
    """mount/umount: not an empty directory, not a stripedump mount, busy, no FUSE, mount failed."""
    exit_code = ExitCode.MOUNT


class Interrupted(StripedumpError):
    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = {1: ExitCode.SIGHUP, 2: ExitCode.SIGINT}.get(signum, ExitCode.SIGTERM)


class CodecUnavailable(UsageError):
    """The chosen codec's library is not installed."""


_BY_NAME = {cls.__name__: cls for cls in (
    StripedumpError, UsageError, SourceError, VmcoreFormatError, TargetRefused,
    TargetIOError, MemberError, VerifyError, IncompleteDump, OutputError,
    CodecUnavailable, MountError)}


def from_wire(name: str, message: str) -> StripedumpError:
    """Rebuild an error sent by a child process; unknown kinds are internal."""
    cls = _BY_NAME.get(name)
    if cls is None:
        return StripedumpError(f"internal error in a child process: {name}: {message}")
    return cls(message)
