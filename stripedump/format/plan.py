"""Chunking of the source and placement of chunks on members: pure functions.

Why: the plan is a function of a few numbers stored in the manifest (merged
PFN ranges, residue file ranges, chunk size), so it is never materialised: a
2 TiB machine cut into 1 MiB chunks has two million chunks, and the
coordinator, the writers and join each regenerate what they need on demand.
Chunk IDs are dense (0..n-1): first the page chunks in PFN order, then the
file (residue) chunks in file order.

Page chunks are aligned to multiples of ``chunk_pages`` in absolute PFN and
never cross a range boundary, so the chunk holding a PFN is found in
O(log ranges).  Placement is RAID0-style round robin: chunk i lives on member
``i % members`` (docs/format.md, "Placement").
"""

from __future__ import annotations

import bisect

from .structs import KIND_FILE, KIND_PAGES
from ..runtime.plain import Frozen


class Chunk(Frozen):
    __slots__ = ("id", "kind", "start", "count")

    def __init__(self, id: int,
                 kind: int,      # KIND_PAGES or KIND_FILE
                 start: int,     # first PFN, or file offset
                 count: int):    # pages, or bytes
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "count", count)

    def raw_bytes(self, page_size: int) -> int:
        return self.count * page_size if self.kind == KIND_PAGES else self.count

    def describe(self, page_size: int) -> str:
        if self.kind == KIND_PAGES:
            return f"chunk {self.id} (PFN {self.start:#x}-{self.start + self.count - 1:#x})"
        return f"chunk {self.id} (file bytes {self.start:#x}-{self.start + self.count - 1:#x})"


def placement(chunk_id: int, members: int) -> int:
    """The member that stores a chunk: RAID0 round robin."""
    return chunk_id % members


def degraded_placement(chunk_id: int, members: int, alive) -> int | None:
    """The member that stores a chunk once some targets failed (--on-disk-error continue).

    ``alive[d]`` is true while member d's target works.  A chunk whose own
    member failed goes to the survivors in turn, stripe by stripe, so they
    share the failed member's load evenly; None when no member is left.
    Readers never recompute this: each member's index lists what it holds.
    """
    d = chunk_id % members
    if alive[d]:
        return d
    survivors = [i for i in range(members) if alive[i]]
    if not survivors:
        return None
    return survivors[(chunk_id // members) % len(survivors)]


class Plan:
    def __init__(self, pfn_ranges, residue, page_size: int, chunk_pages: int):
        self.pfn_ranges = [(int(a), int(b)) for a, b in pfn_ranges]
        self.residue = [(int(a), int(b)) for a, b in residue]
        self.page_size = page_size
        self.chunk_pages = chunk_pages
        self.chunk_bytes = chunk_pages * page_size
        # first chunk id of each pfn range, then of each residue range
        self._page_first, n = [], 0
        for a, b in self.pfn_ranges:
            self._page_first.append(n)
            n += self._range_chunks(a, b)
        self.n_page_chunks = n
        self._file_first = []
        for a, b in self.residue:
            self._file_first.append(n)
            n += -(-(b - a) // self.chunk_bytes)
        self.n_chunks = n
        self.total_pages = sum(b - a for a, b in self.pfn_ranges)
        self.residue_bytes = sum(b - a for a, b in self.residue)

    @property
    def input_bytes(self) -> int:
        return self.total_pages * self.page_size + self.residue_bytes

    def _range_chunks(self, a: int, b: int) -> int:
        cp = self.chunk_pages
        return (b - 1) // cp - a // cp + 1 if b > a else 0

    def _page_chunk(self, ri: int, k: int, cid: int) -> Chunk:
        a, b = self.pfn_ranges[ri]
        cp = self.chunk_pages
        lo = a if k == 0 else (a // cp + k) * cp
        hi = min(b, (a // cp + k + 1) * cp)
        return Chunk(cid, KIND_PAGES, lo, hi - lo)

    def _file_chunk(self, ri: int, k: int, cid: int) -> Chunk:
        a, b = self.residue[ri]
        lo = a + k * self.chunk_bytes
        return Chunk(cid, KIND_FILE, lo, min(b, lo + self.chunk_bytes) - lo)

    def chunk(self, cid: int) -> Chunk:
        if not 0 <= cid < self.n_chunks:
            raise IndexError(cid)
        if cid < self.n_page_chunks:
            ri = bisect.bisect_right(self._page_first, cid) - 1
            return self._page_chunk(ri, cid - self._page_first[ri], cid)
        ri = bisect.bisect_right(self._file_first, cid) - 1
        return self._file_chunk(ri, cid - self._file_first[ri], cid)

    def page_chunk_at(self, pfn: int) -> int | None:
        """Id of the page chunk holding ``pfn``, None when no range holds it: O(log ranges)."""
        ri = bisect.bisect_right(self.pfn_ranges, (pfn, 1 << 64)) - 1
        if ri < 0 or not self.pfn_ranges[ri][0] <= pfn < self.pfn_ranges[ri][1]:
            return None
        a = self.pfn_ranges[ri][0]
        return self._page_first[ri] + pfn // self.chunk_pages - a // self.chunk_pages

    def file_chunk_at(self, offset: int) -> int | None:
        """Id of the file (residue) chunk holding file byte ``offset``, None when none does."""
        ri = bisect.bisect_right(self.residue, (offset, 1 << 64)) - 1
        if ri < 0 or not self.residue[ri][0] <= offset < self.residue[ri][1]:
            return None
        return self._file_first[ri] + (offset - self.residue[ri][0]) // self.chunk_bytes

    def __iter__(self):
        cid = 0
        for ri, (a, b) in enumerate(self.pfn_ranges):
            for k in range(self._range_chunks(a, b)):
                yield self._page_chunk(ri, k, cid)
                cid += 1
        for ri, (a, b) in enumerate(self.residue):
            for k in range(-(-(b - a) // self.chunk_bytes)):
                yield self._file_chunk(ri, k, cid)
                cid += 1

    def feed_order(self):
        """Chunk ids in the order a dump hands them out: the file (residue) chunks first.

        They hold the ELF header, program headers and notes: small, and what
        makes an ELF join of a dump that was stopped early usable at all.
        """
        yield from range(self.n_page_chunks, self.n_chunks)
        yield from range(self.n_page_chunks)

    def chunks_of_member(self, member: int, members: int):
        for cid in range(member, self.n_chunks, members):
            yield self.chunk(cid)

    def to_json(self) -> dict:
        return {"pfn_ranges": self.pfn_ranges, "residue": self.residue,
                "page_size": self.page_size, "chunk_pages": self.chunk_pages,
                "n_chunks": self.n_chunks}

    @classmethod
    def from_json(cls, d: dict) -> "Plan":
        """A plan read from a manifest: every field checked (ValueError) before use."""
        ps, cp = d["page_size"], d["chunk_pages"]
        if not isinstance(ps, int) or ps < 512 or ps > (1 << 20) or ps & (ps - 1):
            raise ValueError(f"bad page size {ps!r}")
        if not isinstance(cp, int) or not 1 <= cp <= (1 << 30) // ps:
            raise ValueError(f"bad chunk size {cp!r} pages")
        _check_ranges(d["pfn_ranges"], 1 << 52, "PFN")
        _check_ranges(d["residue"], 1 << 62, "residue")
        p = cls(d["pfn_ranges"], d["residue"], ps, cp)
        if p.n_chunks != d["n_chunks"]:
            raise ValueError("chunk count does not match the ranges")
        return p


def _check_ranges(ranges, limit: int, what: str) -> None:
    """Sorted, disjoint, non-empty [a, b) pairs of integers below ``limit``."""
    if not isinstance(ranges, list):
        raise ValueError(f"{what} ranges are not a list")
    prev = 0
    for r in ranges:
        if not (isinstance(r, (list, tuple)) and len(r) == 2 and all(type(x) is int for x in r)):
            raise ValueError(f"malformed {what} range {r!r}")
        a, b = r
        if not prev <= a < b <= limit:
            raise ValueError(f"{what} range {r!r} is empty, unsorted, overlapping or too large")
        prev = b
