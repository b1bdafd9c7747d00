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
    REFUSED = 4       # a target was refused for safety (use --force to override), given twice, or in use
    TARGET_IO = 5     # a target cannot be created, opened or written before the dump starts (during it: 8)
    MEMBER = 6        # members are unreadable, mismatched, missing or corrupt
    VERIFY = 7        # a checksum or decompression check failed
    INCOMPLETE = 8    # the dump was stopped early; members hold what was written
    OUTPUT = 9        # join/verify output cannot be written
    MOUNT = 10        # mount/umount: the mount point cannot be used, FUSE is unavailable, or mounting failed
    WIRING = 11       # kdump: the kdump wiring has problems (test), or a capture initramfs cannot be packed
    REPAIRED = 12     # verify: damage that readers repair (join and mount give the whole dump, with a warning)
    SIGHUP = 129
    SIGINT = 130
    SIGTERM = 143


# wire name ("module.QualifiedName") -> class, of every StripedumpError subclass defined so far
_REGISTRY: dict = {}


def _wire_name(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class StripedumpError(Exception):
    """Base of every error stripedump reports to the user."""

    exit_code = ExitCode.INTERNAL
    # the attributes, besides the message, that the class's __init__ takes as keywords and that a
    # child sends along, so the parent rebuilds the error whole (an exit code that depends on them)
    wire_attrs: tuple = ()

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        _REGISTRY[_wire_name(cls)] = cls

    def __str__(self) -> str:  # one line, always
        return " ".join(self.message.split())

    def to_wire(self) -> tuple:
        """(class names, this class first, then its parents up to StripedumpError; message;
        {attribute: value} of ``wire_attrs``): what ``from_wire`` rebuilds it from."""
        names = tuple(_wire_name(k) for k in type(self).__mro__
                      if isinstance(k, type) and issubclass(k, StripedumpError))
        return names, self.message, {a: _plain(getattr(self, a)) for a in self.wire_attrs}


_REGISTRY[_wire_name(StripedumpError)] = StripedumpError


def _plain(value):
    """A wire attribute as a built-in type that marshal carries (signal.SIGINT is an IntEnum)."""
    for t in (bool, int, float, str):
        if isinstance(value, t):
            return t(value)
    return value


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


class DamagedHeader(MemberError):
    """A member header whose checksum fails: its copy, or another member of the dump, may rebuild it."""


class Repaired(StripedumpError):
    """verify: the members are damaged only where the readers repair it (a header from its copy, a
    footer or index from the records, a manifest from another member): a plain join and mount give
    the whole dump, each with a warning naming the damage."""
    exit_code = ExitCode.REPAIRED


class RemoteError(MemberError):
    """An ``ssh://`` or ``s3://`` member cannot be read; ``absent``: it is not there (host or store
    down, no such file or object)."""

    wire_attrs = ("absent",)

    def __init__(self, message: str, absent: bool = False):
        super().__init__(message)
        self.absent = absent


class VerifyError(StripedumpError):
    exit_code = ExitCode.VERIFY


class ChunkError(VerifyError):
    """Reading a dump: a chunk's record fails its checks (or cannot be read): its bytes are unknown."""


class MissingChunk(ChunkError):
    """No member holds the chunk (an incomplete dump)."""


class NotDumped(VerifyError):
    """A physical address outside the dump's page ranges."""


class IncompleteDump(StripedumpError):
    exit_code = ExitCode.INCOMPLETE


class OutputError(StripedumpError):
    exit_code = ExitCode.OUTPUT


class MountError(StripedumpError):
    """mount/umount: not an empty directory, not a stripedump mount, busy, no FUSE, mount failed."""
    exit_code = ExitCode.MOUNT


class WiringError(StripedumpError):
    """kdump test found problems in the kdump wiring; kdump pack cannot pack a capture initramfs."""
    exit_code = ExitCode.WIRING


class Interrupted(StripedumpError):
    """A stop signal (``signum``: SIGHUP, SIGINT, else SIGTERM's exit code), or a join pool stopping."""
    wire_attrs = ("signum",)

    def __init__(self, message: str, signum: int | None = None):
        super().__init__(message)
        self.signum = signum
        self.exit_code = {1: ExitCode.SIGHUP, 2: ExitCode.SIGINT}.get(signum, ExitCode.SIGTERM)


class CodecUnavailable(UsageError):
    """The chosen codec's library is not installed."""


def from_wire(names, message: str, attrs: dict | None = None) -> StripedumpError:
    """Rebuild an error a child sent (``StripedumpError.to_wire``) as the first class of ``names``
    this process knows: its own, or else its nearest registered parent (StripedumpError at least)."""
    attrs = attrs or {}
    for name in names:
        cls = _REGISTRY.get(name)
        if cls is None:
            continue
        try:
            return cls(message, **{a: attrs[a] for a in cls.wire_attrs if a in attrs})
        except TypeError:      # an __init__ that wants more than wire_attrs says: its parent, then
            continue
    return StripedumpError(message)
