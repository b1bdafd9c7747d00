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
  like any other (``Resends``, the coordinator's side of it: loop.py).

Ordering: a forwarded chunk keeps its slot until the survivor has written
it and freed it, so the coordinator's count of chunks in flight stays exact
and it sends the writers their end only once nothing is left in any pipe.
After the last chunk the coordinator asks every live writer to sync (the
barrier, ``Resends.barrier_passed``) and repeats this for any that fails,
so by the time the writers are told to finish every chunk is synced on a
live target, or named as lost.
"""

from __future__ import annotations

import mmap
from array import array
from collections import deque

from ..format.plan import degraded_placement
from .wire import SYNC


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


class Resends:
    """The coordinator's books of what a failed target may take with it.

    Per writer, the chunk ids it acknowledged since its last successful
    sync (at most SYNC_CHUNKS: a writer syncs every SYNC_EVERY bytes or
    SYNC_CHUNKS chunks and says so with the slot it frees); the targets
    dropped and why; the chunks to encode again (``resend``, handed out
    before any new one) or that had no live target left (``lost``); and the
    SYNC barrier after the last chunk.  Under ``--on-disk-error stop`` only
    the barrier is used: it makes a target that hangs in its last sync seen
    before the others are finalized.
    """

    def __init__(self, members: int):
        self.acked = [array("q") for _ in range(members)]
        self.written = [0] * members       # chunks each writer acknowledged, in all
        self.kept: dict[int, int] = {}     # member -> chunks synced on its target before it failed
        self.resend: deque[int] = deque()  # chunks to encode again: their target failed before a sync
        self.resent: dict[int, int] = {}   # member -> chunks encoded again after its target failed
        self.lost: list[int] = []          # chunks that may be on no disk
        self.dropped: dict[int, str] = {}  # member -> why its target failed
        self.barrier: set[int] | None = None   # writers whose SYNC answer is awaited
        self.barrier_drops = 0

    def acknowledged(self, d: int, cid: int | None, durable: int) -> None:
        """Writer ``d`` wrote ``cid``; ``durable`` >= 0: it synced all but its last ``durable`` chunks."""
        acked = self.acked[d]
        if cid is not None:
            acked.append(cid)
            self.written[d] += 1
        if durable >= 0:
            del acked[:max(0, len(acked) - durable)]

    def synced(self, d: int, durable: int) -> None:
        """Writer ``d`` answered the barrier's SYNC."""
        self.acknowledged(d, None, durable)
        if self.barrier is not None:
            self.barrier.discard(d)

    def target_failed(self, d: int, why: str, survivors: int) -> list[int]:
        """Member ``d``'s target failed: its chunks since its last sync, to be encoded again for the
        ``survivors`` (or lost, when none is left)."""
        self.dropped[d] = why
        if self.barrier is not None:
            self.barrier.discard(d)
        again, self.acked[d] = list(self.acked[d]), array("q")
        # what it synced before it failed is on that target only: a join needs it (issue 24, item 3)
        self.kept.setdefault(d, self.written[d] - len(again))
        if survivors == 0:
            self.lost.extend(again)
        else:
            self.resent[d] = self.resent.get(d, 0) + len(again)
            self.resend.extend(again)
        return again

    def barrier_passed(self, writer_qs) -> bool:
        """All written: have the live writers synced it all?

        A target whose sync fails here is dropped like any failed target and
        its chunks since its last sync are encoded again for the others; then
        the survivors are asked again, until a barrier passes with no new
        failure.  The writers are told to finish only after that.
        """
        if self.barrier is None:
            self.barrier = {d for d in range(len(writer_qs)) if d not in self.dropped}
            self.barrier_drops = len(self.dropped)
            for d in self.barrier:
                writer_qs[d].put(SYNC, 0, 0, 0, 0)
            return False
        if self.barrier:
            return False       # answers pending
        self.barrier = None
        return len(self.dropped) == self.barrier_drops

    def note(self, paths) -> str:
        """The footer note of a dump that completed: "" or the targets it dropped."""
        if not self.dropped:
            return ""
        return "degraded: " + "; ".join(f"target {paths[d]} failed ({m}) and was dropped"
                                        for d, m in sorted(self.dropped.items()))

    def report(self, paths, members_done) -> list[dict]:
        """For the summary and --json: each dropped target, why, how many of its chunks the others
        hold (``members_done``: the writers' ipc.MemberDone, each with the chunks it took of which
        member), how many were encoded again, and how many it alone holds (``kept``: synced there
        before it failed; a join needs that member unless it is 0)."""
        return [{"member": d, "path": paths[d], "error": m, "moved": sum(v.taken.get(d, 0) for v in members_done),
                 "resent": self.resent.get(d, 0), "kept": self.kept.get(d, 0)}
                for d, m in sorted(self.dropped.items())]

    def describe_lost(self, plan) -> str:
        lost = sorted(set(self.lost))
        named = ", ".join(f"chunk {c} ({plan.chunk(c).describe(plan.page_size)})" for c in lost[:5])
        more = f" and {len(lost) - 5} more" if len(lost) > 5 else ""
        return (f"{len(lost)} chunk(s) were on failed targets only, not synced, and may be lost: "
                f"{named}{more}")
