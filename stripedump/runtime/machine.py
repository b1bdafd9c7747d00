"""What this machine gives a process: usable CPUs, available memory, address space, room for numpy.

Why a module of its own: the dump side fits its workers and buffer pool to
these numbers (dump/resources.py) and the read side decides from them whether
numpy may be imported; each is read from the kernel directly (no psutil import
on the dump path: 10-15 ms of every run, issue 12).
"""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """CPUs this process may run on (affinity), as the capture kernel allows.

    The OS call, not psutil: importing psutil is 10-15 ms of every run's fixed cost (issue 12).
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def available_memory() -> int:
    """Memory this dump may use: MemAvailable, lowered to the cgroup's headroom if it has a limit."""
    avail = None
    try:     # what psutil.virtual_memory().available reads, without its import (10-15 ms: issue 12)
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError):
        pass
    if avail is None:
        try:
            import psutil
            avail = psutil.virtual_memory().available
        except Exception:
            pass
    if avail is None:
        avail = 256 << 20
    room = _cgroup_room()
    return avail if room is None else max(0, min(avail, room))


def _cgroup_room() -> int | None:
    """limit - usage + reclaimable page cache of the tightest memory cgroup above us (v2 or v1)."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = [ln.rstrip("\n").split(":", 2) for ln in f]
    except OSError:
        return None
    best = None
    for _, controllers, path in (ln for ln in lines if len(ln) == 3):
        if controllers == "":
            base, files = "/sys/fs/cgroup", ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):
            base, files = "/sys/fs/cgroup/memory", ("memory.limit_in_bytes", "memory.usage_in_bytes",
                                                    "total_inactive_file")
        else:
            continue
        parts = [p for p in path.split("/") if p]
        while True:
            d = os.path.join(base, *parts)
            try:
                with open(os.path.join(d, files[0])) as f:
                    text = f.read().strip()
                if text != "max" and int(text) < 1 << 60:
                    with open(os.path.join(d, files[1])) as f:
                        used = int(f.read())
                    with open(os.path.join(d, "memory.stat")) as f:
                        stat = dict(ln.split() for ln in f if len(ln.split()) == 2)
                    room = int(text) - used + int(stat.get(files[2], 0))
                    best = room if best is None else min(best, room)
            except (OSError, ValueError):
                pass
            if not parts:
                break
            parts.pop()
    return best


def address_space_room() -> int | None:
    """Bytes this process may still map under RLIMIT_AS (ulimit -v), or None without a limit."""
    import resource
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return max(0, soft - int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    return soft


# numpy's OpenBLAS allocates its buffers when numpy is imported, and aborts the process (no
# exception: "Memory allocation still failed after 10 retries") when an address-space limit
# (ulimit -v, RLIMIT_AS) leaves it less than about 100 MiB, even at one thread.  The read side
# uses numpy only as a faster path, so it imports it only with this much room.
NUMPY_ROOM = 256 << 20


def numpy_if_safe():
    """numpy, or None when it is missing or importing it could abort this process (see NUMPY_ROOM).

    Imported with OpenBLAS at one thread unless the environment says otherwise (readers do no
    linear algebra; a FUSE server forks after this).
    """
    import sys
    if "numpy" in sys.modules:
        return sys.modules["numpy"]
    import resource
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        try:
            with open("/proc/self/statm") as f:
                vsz = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None
        if soft - vsz < NUMPY_ROOM:
            return None
    had = os.environ.get("OPENBLAS_NUM_THREADS")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        import numpy
    except ImportError:
        return None
    finally:
        if had is None:
            os.environ.pop("OPENBLAS_NUM_THREADS", None)
    return numpy
