"""The fixed-size records a dump's processes pass, and the shared counters of a dump level.

Why a module of its own: the coordinator (loop.py, crew.py), the degraded
routes (degraded.py), the report (result.py) and the children (stages.py)
all speak these layouts; keeping them apart from the loops that use them
means none of those modules imports the children's code to learn a format.
What children *tell* the coordinator are runtime/ipc.py's event records.
"""

from __future__ import annotations

import struct

from ..runtime.ipc import END

TASK = "<QIB"         # coordinator -> workers: chunk id, slot (| CAREFUL: read page by page), codec choice
CAREFUL = 1 << 31
CURRENT = struct.Struct("<QId")  # per worker, in shared memory: chunk id + 1 (0: idle), slot, start
WRITE = "<QIIQQ"      # worker -> writer: chunk id, slot, record length, checksum, source bytes
SYNC = END - 1        # coordinator -> writer: sync now, say what is durable (the barrier: degraded.Resends)
# dump levels: per worker, in shared memory, pages left out per class (pageclass.CLASSES without "kept"),
# then pages whose struct page could not be read (they exclude nothing)
CLASS_NAMES = ("zero", "cache", "cache_private", "user", "free", "hwpoison", "offline", "struct_unread")


def class_totals(counters) -> tuple[tuple[str, int], ...]:
    """((class name, pages), ...) summed over the workers' rows of the shared counters."""
    n = len(CLASS_NAMES)
    rows = [counters[w * n:(w + 1) * n].tolist() for w in range(len(counters) // n)]
    return tuple((name, sum(r[i] for r in rows)) for i, name in enumerate(CLASS_NAMES))
