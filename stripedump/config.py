"""Frozen configuration built once at the CLI edge (or by a library caller).

Why: user choices (codec and level, sizes like ``4M``, disk lists, worker
counts) are parsed and validated in one place; the library then takes a
frozen object and never re-parses strings.  Checks that need the source (the page
size) happen in ``DumpConfig.geometry``.
"""

from __future__ import annotations

import os
import re

from .codecs import CodecSpec
from .errors import UsageError
from .plain import Frozen

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
DEFAULT_CHUNK = 1 << 20        # machine-limits §5: shared-memory hand-off runs at 18 GB/s per 1 MiB
MAX_CHUNK = 256 << 20
JOIN_FORMATS = ("elf", "kdump", "flat")
ON_DISK_ERROR = ("stop", "continue")   # dump --on-disk-error


def parse_size(text: str, what: str = "size") -> int:
    """``4096``, ``4K``, ``64M``, ``10G``, ``1.5G`` (binary units, optional ``iB``/``B``)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:I?B)?\s*", str(text).upper())
    if not m:
        raise UsageError(f"invalid {what} {text!r}: use a number with an optional unit K, M, G or T")
    value = float(m.group(1)) * _UNITS[m.group(2)]
    if value != int(value):
        raise UsageError(f"invalid {what} {text!r}: not a whole number of bytes")
    return int(value)


def usable_cpus() -> int:
    """CPUs this process may run on (affinity), as the capture kernel allows.

    The OS call, not psutil: importing psutil is 10-15 ms of every run's fixed cost (issue 12).
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class DumpConfig(Frozen):
    """What to dump where, and how (plain.Frozen: no dataclass on the dump path, issue 12)."""
    __slots__ = ("source", "targets", "codec", "workers", "chunk_size", "block_size", "force", "manifest_path",
                 "use_mmap", "direct_io", "memory_limit", "discard", "stall_seconds", "on_disk_error",
                 "io_timeout", "ssh_options")

    def __init__(self, source: str, targets: tuple[str, ...],
                 codec: CodecSpec | None = None,    # None: lz4
                 workers: int = 0,                  # 0: one per usable CPU; at most 2 per CPU (fit_workers)
                 chunk_size: int = DEFAULT_CHUNK,
                 block_size: int = 0,               # 0: one page
                 force: bool = False,
                 manifest_path: str | None = None,
                 use_mmap: bool = True,
                 direct_io: bool = False,
                 memory_limit: int = 0,             # 0: derived from available memory (resources.fit_pool)
                 discard: bool = False,             # bench only: compress but write nothing
                 stall_seconds: float = 60.0,       # a worker on one chunk this long is killed, chunk retried
                 on_disk_error: str = "stop",       # a target fails: "stop" the dump, or "continue" without it
                 io_timeout: float = 60.0,          # no byte reaches a target's device this long: it hung
                 ssh_options: tuple[str, ...] = ()):   # ssh:// targets: -o OPT each (sshtarget.py)
        if workers < 0:
            raise UsageError("--workers must be at least 1")
        if not io_timeout > 0:
            raise UsageError("--io-timeout must be a positive number of seconds")
        if on_disk_error not in ON_DISK_ERROR:
            raise UsageError(f"--on-disk-error must be one of {', '.join(ON_DISK_ERROR)}")
        if chunk_size <= 0 or chunk_size > MAX_CHUNK:
            raise UsageError(f"--chunk-size must be between one page and {MAX_CHUNK >> 20}M")
        if block_size < 0:
            raise UsageError("--block-size must be positive")
        for k, v in (("source", source), ("targets", targets),
                     ("codec", CodecSpec("lz4") if codec is None else codec), ("workers", workers),
                     ("chunk_size", chunk_size), ("block_size", block_size), ("force", force),
                     ("manifest_path", manifest_path), ("use_mmap", use_mmap), ("direct_io", direct_io),
                     ("memory_limit", memory_limit), ("discard", discard), ("stall_seconds", stall_seconds),
                     ("on_disk_error", on_disk_error), ("io_timeout", io_timeout),
                     ("ssh_options", tuple(ssh_options))):
            object.__setattr__(self, k, v)

    @property
    def nworkers(self) -> int:
        return self.workers or usable_cpus()

    def geometry(self, page_size: int) -> tuple[int, int]:
        """(chunk_pages, block_bytes) for a source with this page size."""
        if self.chunk_size % page_size:
            raise UsageError(f"--chunk-size {self.chunk_size} is not a multiple of the "
                             f"dump's page size ({page_size})")
        block = self.block_size or page_size
        if block % page_size or block > self.chunk_size:
            raise UsageError(f"--block-size {block} must be a multiple of the page size ({page_size}) "
                             f"and at most --chunk-size ({self.chunk_size})")
        return self.chunk_size // page_size, block


class JoinConfig(Frozen):
    __slots__ = ("members", "output", "force", "workers", "format", "codec", "allow_incomplete")

    def __init__(self, members: tuple[str, ...], output: str, force: bool = False, workers: int = 0,
                 format: str = "elf",                 # elf, kdump or flat (JOIN_FORMATS)
                 codec: CodecSpec | None = None,      # kdump/flat page codec; None: the dump's, else lzo
                 allow_incomplete: bool = False):     # recover what reached disk; zeros (holes) for the rest
        if format not in JOIN_FORMATS:
            raise UsageError(f"unknown join format {format!r}; choose one of {', '.join(JOIN_FORMATS)}")
        if codec is not None and format == "elf":
            raise UsageError("--codec applies to --format kdump or flat only (ELF output is not compressed)")
        if output == "-" and format != "flat":
            raise UsageError(f"{format} output is written out of order and cannot go to standard "
                             "output; give a file name, or use --format flat")
        for k, v in (("members", members), ("output", output), ("force", force), ("workers", workers),
                     ("format", format), ("codec", codec), ("allow_incomplete", allow_incomplete)):
            object.__setattr__(self, k, v)

    @property
    def nworkers(self) -> int:
        return self.workers or usable_cpus()
