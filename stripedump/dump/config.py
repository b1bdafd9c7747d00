"""Frozen configuration built once at the CLI edge (or by a library caller).

Why: user choices (codec and level, sizes like ``4M``, disk lists, worker
counts) are parsed and validated in one place; the library then takes a
frozen object and never re-parses strings.  Checks that need the source (the page
size) happen in ``DumpConfig.geometry``.
"""

from __future__ import annotations

from ..format.codecs import CodecSpec, Spec
from ..errors import UsageError
from ..runtime.machine import usable_cpus
from ..runtime.plain import Frozen

DEFAULT_CHUNK = 1 << 20        # machine-limits §5: shared-memory hand-off runs at 18 GB/s per 1 MiB
MAX_CHUNK = 256 << 20
# dump --dump-level's default chunk: classifying a chunk's struct pages costs about 1 ms of numpy calls
# whatever its size; at 4 MiB a -d 31 worker encodes the filled 1.5 GiB real-kernel guest 2.5 times as
# fast as at 1 MiB (docs/benchmarks.md, issue 11)
DUMP_LEVEL_CHUNK = 4 << 20
ON_DISK_ERROR = ("stop", "continue")   # dump --on-disk-error
MAX_DUMP_LEVEL = 31                    # dump --dump-level: makedumpfile's bits 1, 2, 4, 8, 16


class DumpConfig(Frozen):
    """What to dump where, and how (plain.Frozen: no dataclass on the dump path, issue 12)."""
    __slots__ = ("source", "targets", "codec", "workers", "chunk_size", "block_size", "force", "manifest_path",
                 "use_mmap", "direct_io", "memory_limit", "discard", "stall_seconds", "on_disk_error",
                 "io_timeout", "ssh_options", "dump_level", "s3")

    def __init__(self, source: str, targets: tuple[str, ...],
                 codec: Spec | None = None,         # a CodecSpec or an AutoSpec; None: lz4
                 workers: int = 0,                  # 0: one per usable CPU; at most 2 per CPU (fit_workers)
                 chunk_size: int = DEFAULT_CHUNK,
                 block_size: int = 0,               # 0: one page
                 force: bool = False,
                 manifest_path: str | None = None,
                 use_mmap: bool = True,
                 direct_io: bool | None = None,     # None: O_DIRECT where a target takes it; True: required
                                                    # (--direct-io); False: buffered (--buffered)
                 memory_limit: int = 0,             # 0: derived from available memory (resources.fit_pool)
                 discard: bool = False,             # bench only: compress but write nothing
                 stall_seconds: float = 60.0,       # a worker on one chunk this long is killed, chunk retried
                 on_disk_error: str = "stop",       # a target fails: "stop" the dump, or "continue" without it
                 io_timeout: float = 60.0,          # no byte reaches a target's device this long: it hung
                 ssh_options: tuple[str, ...] = (),   # ssh:// targets: -o OPT each (sshtarget.py)
                 dump_level: int = 0,               # makedumpfile's -d bits (issue 11): pages left out
                 s3=None):                          # s3:// targets: remote.s3url.S3Options (None: defaults)
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
        if type(dump_level) is not int or not 0 <= dump_level <= MAX_DUMP_LEVEL:
            raise UsageError(f"--dump-level must be an integer from 0 to {MAX_DUMP_LEVEL}")
        for k, v in (("source", source), ("targets", targets),
                     ("codec", CodecSpec("lz4") if codec is None else codec), ("workers", workers),
                     ("chunk_size", chunk_size), ("block_size", block_size), ("force", force),
                     ("manifest_path", manifest_path), ("use_mmap", use_mmap), ("direct_io", direct_io),
                     ("memory_limit", memory_limit), ("discard", discard), ("stall_seconds", stall_seconds),
                     ("on_disk_error", on_disk_error), ("io_timeout", io_timeout),
                     ("ssh_options", tuple(ssh_options)), ("dump_level", dump_level), ("s3", s3)):
            object.__setattr__(self, k, v)

    @property
    def nworkers(self) -> int:
        return self.workers or usable_cpus()

    def geometry(self, page_size: int) -> tuple[int, int]:
        """(chunk_pages, block_bytes) for a source with this page size.

        With a dump level, blocks are one page (``block_lowered`` says when a
        larger ``--block-size`` was given)."""
        if self.chunk_size % page_size:
            raise UsageError(f"--chunk-size {self.chunk_size} is not a multiple of the "
                             f"dump's page size ({page_size})")
        block = page_size if self.dump_level else self.block_size or page_size
        if block % page_size or block > self.chunk_size:
            raise UsageError(f"--block-size {block} must be a multiple of the page size ({page_size}) "
                             f"and at most --chunk-size ({self.chunk_size})")
        return self.chunk_size // page_size, block

    def block_lowered(self, page_size: int) -> str | None:
        """The warning for a ``--block-size`` larger than a page that a dump level lowers, or None."""
        if self.dump_level and self.block_size > page_size:
            return (f"--block-size {self.block_size} lowered to one page ({page_size}): with --dump-level "
                    "each page is kept or left out on its own")
        return None
