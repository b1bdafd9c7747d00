"""``--on-disk-error continue``: a failed target is dropped and the others take its chunks.

Why a module of its own: the dump pipeline routes every chunk to the writer
of member ``chunk_id % members``, and workers keep doing so whatever
happens (they know nothing of disks).  What changes when a target fails is
confined here, on the writers' side:

* the writer whose write failed marks its member dead in a table shared by
  all writers (``alive``, one byte per member, in anonymous shared memory
  written only by the writer that fails), tells the coordinator once, and
  from then on *forwards* every chunk it receives, the one that failed
  included, to a survivor chosen by ``plan.degraded_placement``: one more
  pipe record per chunk, no page data moves (the slot is handed on);
* a survivor appends what it gets like any chunk; its member's index lists
  the chunk ids it holds, so readers need no rule to find a moved chunk, and
  its footer names the dropped members (``Footer.degraded``) and how many of
  their chunks it took;
* when no writer is left, a chunk cannot be placed: it is reported lost and
  its slot freed, and the coordinator stops the dump;
* what the failed target took before it failed is not trusted either: a
  write that returned may never reach the disk when a later write or the
  fdatasync fails.  The coordinator, which hears of every chunk written and
  of every successful sync, sends the chunks since that target's last sync
  to the workers again; their writer (the failed one) forwards them here
  like any other (pipeline.py, ``_Coordinator.target_failed``).

Ordering: a forwarded chunk keeps its slot until the survivor has written
it and freed it, so the coordinator's count of chunks in flight stays exact
and it sends the writers their end only once nothing is left in any pipe.
"""

from __future__ import annotations

import mmap

from ..format.plan import degraded_placement


class Routes:
    """The shared table of live targets and the writers' pipes, for forwarding."""

    def __init__(self, writer_qs):
        self.writer_qs = writer_qs
        self.alive = mmap.mmap(-1, len(writer_qs), mmap.MAP_SHARED)   # one byte per member
        self.alive.write(b"\1" * len(writer_qs))

    @property
    def members(self) -> int:
        return len(self.writer_qs)

    def fail(self, d: int) -> None:
        """Member ``d``'s target failed (called by its writer, once)."""
        self.alive[d] = 0

    def failed(self) -> list[int]:
        return [d for d in range(self.members) if not self.alive[d]]

    def survivors(self) -> int:
        return sum(self.alive[d] for d in range(self.members))

    def forward(self, cid: int, slot: int, length: int, csum: int, raw_len: int) -> bool:
        """Hand a chunk this writer cannot write to a live one; False when none is left."""
        d = degraded_placement(cid, self.members, self.alive)
        if d is None:
            return False
        self.writer_qs[d].put(cid, slot, length, csum, raw_len)
        return True

    def footer_entries(self, taken: dict[int, int]) -> tuple:
        """Footer.degraded for one member: every dropped member, with its chunks stored here."""
        return tuple((m, taken.get(m, 0)) for m in self.failed())
