"""What the machine can give a dump: CPUs, memory, address space; settings lowered to fit.

Why a module of its own: a capture kernel has 128-512 MiB and often one CPU,
and a refused dump there means no dump at all.  So ``--workers`` and
``--memory-limit`` are never refused while one worker fits: each is lowered
to what the machine has (usable CPUs, MemAvailable or the memory cgroup's
headroom, ``ulimit -v``) with a warning that says so.  The buffer pool's
geometry (slots x slot size) is derived here too, as a pure function of those
numbers, so its tests need no dump.
"""

from __future__ import annotations

from ..runtime.machine import address_space_room, available_memory, usable_cpus
from ..runtime.units import human_size
from ..errors import UsageError
from ..runtime.plain import Frozen
from ..format.structs import record_bound
from .writer import STAGE_BYTES

SLOT_ALIGN = 4096     # pool slots are page-aligned: O_DIRECT writes straight from them


# Compression is CPU bound: two processes scale x1.9-2.0 on two CPUs and more
# add nothing (machine-limits: conclusions, §3), while every worker costs a process (about
# 8 MiB, PROC_BYTES below) and two buffer slots.  A few more workers than
# CPUs can still help when workers wait on the source (a /proc/vmcore read that
# stalls, a source file on a slow disk), so up to twice the usable CPUs is
# allowed; a larger --workers is lowered to that, with a warning, never refused
# (in a capture kernel, often with one CPU, a refusal means no dump).
MAX_WORKERS_PER_CPU = 2


def fit_workers(requested: int) -> tuple[int, str | None]:
    """(workers to start, warning or None) for ``--workers requested`` (0: one per usable CPU)."""
    cpus = usable_cpus()
    if not requested:
        return cpus, None
    cap = MAX_WORKERS_PER_CPU * cpus
    if requested > cap:
        return cap, (f"--workers {requested} is more than {MAX_WORKERS_PER_CPU} per usable CPU "
                     f"({cpus} CPU(s) here); using {cap} workers")
    return requested, None


# Private memory of one worker or writer process outside the pool: measured
# 1.7-2.9 MiB private dirty and 5-6 MiB PSS per child (zlib:9, 1 MiB chunks,
# Python 3.11, forked from the coordinator), rounded up.
PROC_BYTES = 8 << 20
# Address space a child needs beyond the pool it inherits (ulimit -v counts the
# pool in every process): Python's heap and the codec's state; its mmap window
# of the source (one chunk) is counted on top.
AS_RESERVE = 64 << 20


class PoolFit(Frozen):
    __slots__ = ("workers", "slots", "slot_size", "warnings")

    def __init__(self, workers: int, slots: int, slot_size: int, warnings: tuple[str, ...] = ()):
        object.__setattr__(self, "workers", workers)
        object.__setattr__(self, "slots", slots)
        object.__setattr__(self, "slot_size", slot_size)
        object.__setattr__(self, "warnings", warnings)


def fit_pool(workers: int, disks: int, chunk_bytes: int, block_bytes: int, memory_limit: int = 0,
             direct_io: bool = False, avail: int | None = None, as_room: int | None = None,
             stream_bytes: int = 0) -> PoolFit:
    """Workers and buffer pool that fit the machine; lowered with a warning, refused only if nothing fits.

    slot = roundup(chunk + 4 * chunk/block + 52, 4 KiB): a chunk stored raw
    plus its block table.  Slots S = 2W + 2D: each worker fills one while the
    next waits, each writer writes one while the next waits; W + D at least.
    The pool (S x slot) plus D staging buffers of 4 MiB with --direct-io, plus
    ``stream_bytes`` (the part buffers of the s3:// targets' uploaders,
    s3put.py) must fit in the limit; the default limit is a quarter of the available memory,
    as makedumpfile sizes its cyclic buffer from free memory (raised up to
    half of it when one worker's pool would not fit in a quarter).  What
    cannot fit is lowered, never refused while one worker fits (a capture
    kernel has 128-512 MiB and a refusal there means no dump):

    * ``--memory-limit`` above half of the available memory (MemAvailable,
      or the cgroup's headroom), or above what ``ulimit -v`` leaves (the pool
      is mapped in every process): lowered to that;
    * more workers than the available memory holds as processes
      (PROC_BYTES each, within the other half): fewer workers;
    * a pool too small for one slot per worker and disk: fewer workers,
      then fewer slots.
    """
    slot = -(-record_bound(chunk_bytes, block_bytes) // SLOT_ALIGN) * SLOT_ALIGN
    stage = (disks * STAGE_BYTES if direct_io is not False else 0) + stream_bytes   # None: O_DIRECT may be taken
    avail = available_memory() if avail is None else avail
    as_room = address_space_room() if as_room is None else as_room
    notes = []
    ceiling, what = avail // 2, f"half of the available memory ({human_size(avail)})"
    if as_room is not None and as_room - AS_RESERVE - chunk_bytes < ceiling:
        ceiling = max(0, as_room - AS_RESERVE - chunk_bytes)
        what = f"the address-space limit (ulimit -v: {human_size(as_room)} left)"
    if memory_limit:
        limit = memory_limit
        if limit > ceiling:
            limit = ceiling
            notes.append(f"--memory-limit {human_size(memory_limit)} does not fit in {what}; "
                         f"using {human_size(limit)}")
    else:
        limit = min(ceiling, max(avail // 4, (1 + disks) * slot + stage))
    procs = max(1, avail // 2 // PROC_BYTES - disks - 1)
    if workers > procs:
        notes.append(f"{workers} worker processes do not fit in half of the available memory "
                     f"({human_size(avail)}, about {PROC_BYTES >> 20} MiB per process); using {procs}")
        workers = procs
    budget = limit - stage
    fits = budget // slot if budget > 0 else 0
    if fits < workers + disks:
        if fits < 1 + disks:
            raise UsageError(f"memory limit {human_size(limit)} is too small for one worker and {disks} "
                             f"disk(s) with {chunk_bytes >> 10} KiB chunks: the buffer pool needs at least "
                             f"{human_size((1 + disks) * slot + stage)}"
                             + ("" if limit == memory_limit else f" ({what} caps it)")
                             + "; lower --chunk-size or raise --memory-limit")
        notes.append(f"the buffer pool of {workers} worker(s) does not fit in the memory limit "
                     f"({human_size(limit)}: {fits} slot(s) of {slot >> 10} KiB, one per worker and disk "
                     f"at least); using {fits - disks} worker(s)")
        workers = fits - disks
    return PoolFit(workers, min(2 * workers + 2 * disks, fits), slot, tuple(notes))


def pool_geometry(workers: int, disks: int, chunk_bytes: int, block_bytes: int,
                  memory_limit: int = 0, direct_io: bool = False) -> tuple[int, int]:
    """(slots, slot size) of the buffer pool for ``workers`` (see fit_pool, which may lower them)."""
    fit = fit_pool(workers, disks, chunk_bytes, block_bytes, memory_limit, direct_io)
    return fit.slots, fit.slot_size


