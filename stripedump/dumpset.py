"""A set of members opened together: validation, manifest, chunk locations.

Why: join, verify and info all start from "these files claim to be one
dump".  This module checks that claim once: every file is a member, all
belong to the same dump, none is given twice, none is missing, the manifests
agree, and every member was finalized.  It then streams chunk locations from
the members' indexes (never holding a whole index) and keeps a bitmap of
chunk IDs seen, so that a chunk missing from every member is named.
"""

from __future__ import annotations

import base64
import uuid

from .errors import IncompleteDump, MemberError
from .format import STATE_NAMES, IndexEntry
from .member import MemberReader, is_complete
from .plan import Plan, placement


class DumpSet:
    def __init__(self, paths: list[str]):
        if not paths:
            raise MemberError("no members given")
        self.readers: list[MemberReader] = []
        try:
            for p in paths:
                self.readers.append(MemberReader(p))
            self._check_set()
            self.manifest = self.readers[0].manifest()
            self._check_manifest()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for r in self.readers:
            r.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _check_set(self) -> None:
        ids: dict[bytes, list[str]] = {}
        for r in self.readers:
            ids.setdefault(r.header.dump_id, []).append(r.path)
        if len(ids) > 1:
            groups = "; ".join(f"dump {uuid.UUID(bytes=k)}: {', '.join(v)}" for k, v in ids.items())
            raise MemberError(f"members belong to different dumps ({groups})")
        h0 = self.readers[0].header
        by_index: dict[int, MemberReader] = {}
        for r in self.readers:
            h = r.header
            if (h.member_count, h.page_size, h.chunk_pages, h.block_pages, h.manifest_length) != \
                    (h0.member_count, h0.page_size, h0.chunk_pages, h0.block_pages, h0.manifest_length):
                raise MemberError(f"member {r.path} disagrees with member {self.readers[0].path} "
                                  "on the dump geometry")
            if h.member_index in by_index:
                raise MemberError(f"member {h.member_index} is given twice ({by_index[h.member_index].path} "
                                  f"and {r.path})")
            by_index[h.member_index] = r
        missing = [i for i in range(h0.member_count) if i not in by_index]
        if missing:
            raise MemberError(f"dump {uuid.UUID(bytes=h0.dump_id)} has {h0.member_count} members; "
                              f"missing member(s) {', '.join(map(str, missing))} "
                              f"(given: {', '.join(r.path for r in self.readers)})")
        self.readers = [by_index[i] for i in range(h0.member_count)]
        self.header = self.readers[0].header

    def _check_manifest(self) -> None:
        m = self.manifest
        where = self.readers[0].where
        try:
            src = m["source"]
            self.page_size = int(src["page_size"])
            self.source_size = int(src["size"])
            self.segments = list(src["segments"])
            self.notes = base64.b64decode(src["notes"])
            self.block_bytes = int(m["block_bytes"])
            self.plan = Plan.from_json(m["plan"])
            for s in self.segments:
                for k in ("type", "offset", "paddr", "filesz", "memsz"):
                    if not isinstance(s[k], int) or s[k] < 0:
                        raise ValueError(f"segment field {k}")
        except (KeyError, TypeError, ValueError) as e:
            raise MemberError(f"{where}: manifest is malformed ({e})") from None
        if self.page_size != self.header.page_size or self.plan.chunk_pages != self.header.chunk_pages \
                or self.block_bytes != self.header.block_pages * self.page_size:
            raise MemberError(f"{where}: manifest and member header disagree")
        for r in self.readers[1:]:
            if r.pread(r.header.manifest_offset, r.header.manifest_length) != \
                    self.readers[0].pread(self.header.manifest_offset, self.header.manifest_length):
                raise MemberError(f"{r.where}: manifest differs from {self.readers[0].path}'s")

    @property
    def dump_id(self) -> str:
        return str(uuid.UUID(bytes=self.header.dump_id))

    def footers(self, allow_incomplete: bool = False):
        out = []
        for r in self.readers:
            f = r.footer()
            if not is_complete(f) and not allow_incomplete:
                why = STATE_NAMES.get(r.header.state, f"state {r.header.state}") if f is None \
                    else f"incomplete: {f.note or 'no reason recorded'}"
                raise IncompleteDump(f"{r.where} is {why}; the dump did not finish")
            out.append(f)
        return out

    def locations(self, seen: bytearray):
        """(member index, IndexEntry) for every chunk, checked against the plan.

        Marks each chunk ID in ``seen`` (a bitmap); a chunk listed twice or
        on the wrong member is a MemberError.

        The members' indexes are read round robin, one entry of each in
        turn, so a pool reading the chunks keeps every member (disk) busy
        and meets the chunks roughly in chunk-id (PFN) order.
        """
        streams = [self._member_locations(d, r, f, seen)
                   for d, (r, f) in enumerate(zip(self.readers, self.footers()))]
        while streams:
            for s in list(streams):
                loc = next(s, None)
                if loc is None:
                    streams.remove(s)
                else:
                    yield loc

    def _member_locations(self, d: int, r: MemberReader, f, seen: bytearray):
        n = self.plan.n_chunks
        D = len(self.readers)
        for e in r.index(f):
            e = IndexEntry(*e)
            if e.chunk_id >= n or placement(e.chunk_id, D) != d:
                raise MemberError(f"{r.where}: index lists chunk {e.chunk_id}, which does not "
                                  "belong to this member")
            byte, bit = divmod(e.chunk_id, 8)
            if seen[byte] & (1 << bit):
                raise MemberError(f"{r.where}: chunk {e.chunk_id} is listed twice")
            seen[byte] |= 1 << bit
            if e.offset + e.length > r.size:
                raise MemberError(f"{r.where}: chunk {e.chunk_id} lies past the end of the member "
                                  f"(member truncated to {r.size} bytes?)")
            yield d, e

    def record(self, chunk_id: int) -> bytes | None:
        """One chunk's record, found by scanning its member's index; None if not listed.

        For the odd single chunk (kdump output reads ``init_uts_ns``): the
        scan streams the index, so memory stays bounded.
        """
        r = self.readers[placement(chunk_id, len(self.readers))]
        for e in r.index(r.footer()):
            e = IndexEntry(*e)
            if e.chunk_id == chunk_id:
                return r.read_record(e)
        return None

    def missing_chunks(self, seen: bytearray) -> list[int]:
        return [c for c in range(self.plan.n_chunks) if not seen[c >> 3] & (1 << (c & 7))]
