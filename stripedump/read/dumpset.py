"""A set of members opened together: validation, manifest, chunk locations.

Why: join, verify and info all start from "these files claim to be one
dump".  This module checks that claim once: every file is a member, all
belong to the same dump, none is given twice, none is missing (unless the
caller allows it: ``join --allow-incomplete``), the manifests agree.  It then
streams chunk locations (never holding a whole index) and keeps a bitmap of
chunk IDs seen, so that a chunk missing from every member is named.

Where a member's chunks are found:

* finalized (complete, or incomplete after a failure): its footer's index;
* finished (its header or trailer says complete) but with a footer or index
  that cannot be read (a flipped byte): by walking its records, with no
  option needed; the walk must reach the footer's place, and the damage is
  told (``repairs``: join and mount warn, verify exits 12; repair.py);
* never finalized (a killed dump, power loss, a full disk) or with a footer
  or index that cannot be read (a truncated member): by walking its records
  (``MemberReader.walk``).  That is allowed when the caller accepts an
  incomplete dump, and for a member that an ``--on-disk-error continue``
  dump dropped (the survivors' footers name it): the rest of that dump is
  whole without it, so join needs no flag.

Placement: chunk i lives on member i % members, checked for every index
entry.  A dump taken with ``--on-disk-error continue`` may have moved chunks
of a failed member to the others (its manifest says so), so there any member
may hold any chunk; each chunk is still used once.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field

from ..errors import IncompleteDump, MemberError, StripedumpError, VerifyError
from ..format.structs import HEADER_BLOCK, KIND_PAGES, MAX_CHUNK_BYTES, STATE_COMPLETE, STATE_NAMES, IndexEntry
from ..format.manifest import Manifest
from .member import MemberReader, WalkReport, is_complete, is_remote, open_remote
from .repair import pick_manifest, rebuild_headers
from ..format.decode import read_chunk
from ..format.plan import placement
from ..source.vmcore import merge_ranges

MISSING = 0xFFFF     # the member position of a chunk no member holds (reader.ChunkIndex.member)
INCOMPLETE_HINT = "use --allow-incomplete to recover the chunks that reached disk"


@dataclass
class MemberSource:
    """How one member's chunks are found (decided once per DumpSet), and what was found."""
    footer: object                 # Footer, or None: never finalized or unreadable
    problem: str | None            # why the footer cannot be used; None when it can
    walk: WalkReport = field(default_factory=WalkReport)
    walked: bool = False           # chunks came from a walk (all or after a bad index)
    # the member says it finished, but its footer or index cannot be read: its records are walked
    # instead, and must reach the footer's place (``end``) for the member to count as whole
    repair: str | None = None
    end: int | None = None
    used: int = 0                  # chunk records handed out
    skipped: int = 0               # records not used: duplicates, foreign ids, cut off
    notes: list = field(default_factory=list)


class DumpSet:
    def __init__(self, paths: list[str], allow_missing: bool = False, newest_dump: bool = False):
        """``newest_dump`` (join --allow-incomplete): members of several dumps are not refused;
        the dump whose header is newest is read and the others' members count as missing."""
        if not paths:
            raise MemberError("no members given")
        # Largest raw length a chunk record may claim before anything is sized from it: the plan's
        # chunk size once the manifest is read (_check_manifest).  Readers pass it to read_chunk and
        # decode_chunk (reader.Dump); join's pool workers use what Dump.check_record checked.
        self.chunk_limit = MAX_CHUNK_BYTES
        self.readers: list[MemberReader] = []
        self.unwritten: list[str] = []    # given, but the dump stopped before writing a header there
        self.unusable: dict[int, tuple[str, str]] = {}   # member index -> (path, why): no manifest to read
        # given as ssh:// or s3://, but not there to be read (host unreachable, no such file), or
        # with a header that cannot be read nor rebuilt (repair.rebuild_headers): (path, why); with
        # allow_missing their member indexes count as missing (errors.RemoteError.absent)
        self.unreached: list[tuple[str, str]] = []
        try:
            damaged = []
            for p in paths:
                try:
                    r = MemberReader(p, damaged_ok=True)
                except MemberError as e:
                    if allow_missing and getattr(e, "absent", False):
                        self.unreached.append((p, str(e).split(f"member {p}: ", 1)[-1]))
                        continue
                    if not (allow_missing and _never_written(p)):
                        raise
                    self.unwritten.append(p)
                    continue
                (self.readers if r.header is not None else damaged).append(r)
            # a header and its copy damaged: rebuilt from another member's (or counted as not read)
            rebuild_headers(damaged, self.readers, allow_missing, self.unreached)
            if not self.readers and self.unreached:
                p, why = self.unreached[0]
                raise MemberError(f"no member could be read: member {p}: {why}")
            if not self.readers:
                raise MemberError(f"no member header in {', '.join(paths)}: the dump stopped before "
                                  "writing any; nothing to recover")
            if newest_dump:
                self._keep_newest_dump()
            ref, self.readers = pick_manifest(self.readers, allow_missing, self.unusable)
            self._check_set(allow_missing)
            self.manifest = ref.manifest()      # the JSON dict, as written
            self._check_manifest(ref)
        except BaseException:
            self.close()
            for r in damaged:
                if r.header is not None and r not in self.readers:
                    r.close()
            raise
        self._sources: list[MemberSource | None] = [None] * len(self.readers)
        # --on-disk-error continue: chunks may live on any member
        self.relaxed = self.manifest.get("on_disk_error") == "continue"
        self._dups: bool | None = None

    def _keep_newest_dump(self) -> None:
        """Keep the members of the newest dump; those of older dumps count as missing.

        Power lost while a dump over a reused device was writing its first
        member heads: one member shows the new dump's header, another still
        the older dump's.  The older member holds nothing of the new dump, so
        it is reported (by path and why) like a member that was not given.
        Only while the newest dump is unfinished (a finished one wrote every
        head, so members of two finished dumps were mixed up by hand), and two
        dumps created in the same second cannot be told apart: both refused.
        """
        groups: dict[bytes, list[MemberReader]] = {}
        for r in self.readers:
            groups.setdefault(r.header.dump_id, []).append(r)
        if len(groups) < 2:
            return
        newest = sorted(groups.values(), key=lambda g: max(r.header.created for r in g), reverse=True)
        if max(r.header.created for r in newest[0]) == max(r.header.created for r in newest[1]):
            return          # ambiguous: _check_set refuses, naming both dumps
        keep = newest[0]
        if all(_finished(r) for r in keep):
            return          # a finished dump wrote every head: members mixed up by hand, refused
        kept = {r.header.member_index for r in keep}
        for g in newest[1:]:
            for r in g:
                if r.header.member_index not in kept and r.header.member_index < keep[0].header.member_count:
                    self.unusable[r.header.member_index] = (
                        r.path, f"it holds an older dump ({uuid.UUID(bytes=r.header.dump_id)}), "
                                "not this one: the dump stopped before writing its header there")
                r.close()
        self.readers = keep

    def _named_dropped(self) -> set[int]:
        """Member indexes the given members' footers name as dropped (--on-disk-error continue).

        Such a member may be left out: the survivors hold every chunk the dump
        acknowledged (re-sent from the source after its failure); a chunk that
        is still missing is reported as for any incomplete dump.
        """
        out: set[int] = set()
        for r in self.readers:
            try:
                f = r.footer()
            except MemberError:
                continue
            out.update(m for m, _ in (f.degraded if f is not None else ()))
        return out

    def close(self) -> None:
        for r in self.readers:
            r.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _check_set(self, allow_missing: bool) -> None:
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
            if (h.version, h.member_count, h.page_size, h.chunk_pages, h.block_pages, h.manifest_length) != \
                    (h0.version, h0.member_count, h0.page_size, h0.chunk_pages, h0.block_pages,
                     h0.manifest_length):
                raise MemberError(f"member {r.path} disagrees with member {self.readers[0].path} "
                                  "on the dump geometry")
            if h.member_index in by_index:
                raise MemberError(f"member {h.member_index} is given twice ({by_index[h.member_index].path} "
                                  f"and {r.path})")
            by_index[h.member_index] = r
        self.count = h0.member_count
        self.absent = [i for i in range(self.count) if i not in by_index]
        if self.absent and not allow_missing and not set(self.absent) <= self._named_dropped():
            raise MemberError(f"dump {uuid.UUID(bytes=h0.dump_id)} has {h0.member_count} members; "
                              f"missing member(s) {', '.join(map(str, self.absent))} "
                              f"(given: {', '.join(r.path for r in self.readers)}); with "
                              "--allow-incomplete, join and mount go on without them")
        # present members in member-index order; locations() names them by position here
        self.readers = [by_index[i] for i in sorted(by_index)]
        self.header = self.readers[0].header

    def _check_manifest(self, r0: MemberReader) -> None:
        """The manifest checked once (manifest.Manifest), and the same in every member given
        (a member whose own copy is damaged reads ``r0``'s: repair.pick_manifest)."""
        m = Manifest(self.manifest, self.header, r0.where)
        self.checked = m
        self.page_size, self.source_size = m.page_size, m.source_size
        self.segments, self.notes, self.header_pieces = m.segments, m.notes, m.header_pieces
        self.block_bytes, self.plan = m.block_bytes, m.plan
        if m.members != self.count:
            raise MemberError(f"{r0.where}: the manifest and the member header disagree on the number "
                              "of members; the member is damaged")
        self.chunk_limit = max(1, min(self.plan.chunk_bytes, MAX_CHUNK_BYTES))     # no record may claim more
        for r in self.readers:
            if r is r0 or r.manifest_from is not None:
                continue
            if r.pread(r.header.manifest_offset, r.header.manifest_length) != \
                    r0.pread(r0.header.manifest_offset, r0.header.manifest_length):
                raise MemberError(f"{r.where}: manifest differs from {r0.path}'s")

    @property
    def dump_id(self) -> str:
        return str(uuid.UUID(bytes=self.header.dump_id))

    def member_name(self, d: int) -> str:
        """Member index ``d`` as a user knows it: its path, or that it was not given."""
        for r in self.readers:
            if r.header.member_index == d:
                return r.path
        return f"member {d} (not given)"

    # -- which members are whole, and how their chunks are found -------------

    def source(self, pos: int) -> MemberSource:
        s = self._sources[pos]
        if s is None:
            r = self.readers[pos]
            try:
                f = r.footer()
                s = MemberSource(f, None if f is not None else STATE_NAMES.get(r.header.state,
                                                                                 f"in state {r.header.state}"))
            except MemberError as e:
                place = r.footer_place() if _finished(r) else None
                if place is not None:        # it finished: its records say what the footer said
                    s = MemberSource(None, None, repair=_clause(e), end=place[0])
                else:
                    s = MemberSource(None, f"unreadable: {e}")
            self._sources[pos] = s
        return s

    @property
    def dropped(self) -> dict[int, int]:
        """Members an ``--on-disk-error continue`` dump dropped -> chunks of theirs moved elsewhere."""
        out: dict[int, int] = {}
        for pos in range(len(self.readers)):
            f = self.source(pos).footer
            for m, n in (f.degraded if f is not None else ()):
                out[m] = out.get(m, 0) + n
        return out

    def check_members(self, allow_incomplete: bool = False) -> None:
        """Refuse a member that was not finalized complete, unless allowed (``refusals``)."""
        if not allow_incomplete:
            for e in self.refusals():
                raise e

    def refusals(self) -> list[StripedumpError]:
        """What a join without --allow-incomplete refuses, member by member (verify reports them).

        A member with an unreadable footer (truncated, damaged) that does not say it finished
        is a MemberError; one never finalized, or finalized incomplete, is an IncompleteDump.
        Members the dump dropped, and finished members whose footer is damaged (walked:
        ``source``), are not refused.
        """
        out: list[StripedumpError] = []
        dropped = self.dropped
        for pos, r in enumerate(self.readers):
            s = self.source(pos)
            if s.repair and s.walked and s.walk.stopped_at != s.end:
                out.append(_cut_walk(r, s))       # verify, after the walk: what join would say
                continue
            if is_complete(s.footer) or s.repair or r.header.member_index in dropped:
                continue
            if s.footer is None and r.header.footer_offset != 0:
                out.append(MemberError(f"{r.where}: footer {s.problem}; the member is truncated or "
                                       f"damaged; {INCOMPLETE_HINT}"))
                continue
            why = s.problem if s.footer is None else \
                f"incomplete: {s.footer.note or 'no reason recorded'}"
            rebuilt = " (its header is damaged: rebuilt from the other members')" if r.header_error else ""
            out.append(IncompleteDump(f"{r.where}{rebuilt} is {why}; the dump did not finish; {INCOMPLETE_HINT}"))
        return out

    def repairs(self) -> list[str]:
        """What was damaged and worked around, one line per thing (join and mount warn; verify:
        exit 11).  Complete once the chunk locations were streamed (walks happen then)."""
        out = []
        for pos, r in enumerate(self.readers):
            out.extend(f"{r.where}: {d}" for d in r.damage)
            s = self._sources[pos]
            if s is not None and s.repair:
                reached = s.walk.stopped_at == s.end
                out.append(f"{r.where}: {s.repair}; it finished, so its chunks were found by walking its "
                           f"records ({s.walk.describe()}"
                           + (")" if reached else f"; the footer is at offset {s.end}: what lies between is "
                              "lost)"))
        return out

    def footers(self, allow_incomplete: bool = False):
        """Each member's footer (None where there is none to read), after ``check_members``."""
        self.check_members(allow_incomplete)
        return [self.source(pos).footer for pos in range(len(self.readers))]

    # -- chunk locations -----------------------------------------------------

    def locations(self, seen: bytearray, allow_incomplete: bool = False, payloads: bool = True):
        """(position in ``readers``, IndexEntry) for every chunk found, checked against the plan.

        Marks each chunk ID in ``seen`` (a bitmap).  From an index, a chunk
        listed twice or on the wrong member is a MemberError.  Records found by
        a walk that the plan does not place there (a record of an earlier dump
        on a reused device) or that were already found are skipped.

        The members are read round robin, one entry of each in turn, so a
        pool reading the chunks keeps every member (disk) busy and meets the
        chunks roughly in chunk-id (PFN) order.  ``payloads`` False: a walk
        checks record headers only (``info`` reads nothing but headers).
        """
        self.check_members(allow_incomplete)
        streams = [self._member_locations(pos, seen, allow_incomplete, payloads)
                   for pos in range(len(self.readers))]
        while streams:
            for s in list(streams):
                loc = next(s, None)
                if loc is None:
                    streams.remove(s)
                else:
                    yield loc

    def _member_locations(self, pos: int, seen: bytearray, allow: bool, payloads: bool = True):
        r, s = self.readers[pos], self.source(pos)
        if s.footer is not None:
            entries = r.index(s.footer)
            while True:
                try:
                    e = next(entries, None)
                except MemberError as err:
                    if is_complete(s.footer):      # it finished: its records say what the index said
                        s.repair, s.end = _clause(err), r.footer_place()[0]
                    elif not allow:
                        raise
                    else:
                        s.notes.append(f"its index cannot be read ({err}); walked its records instead")
                    break
                if e is None:
                    return
                e = IndexEntry(*e)
                if self._accept(pos, e, seen, allow, walked=False):
                    yield pos, e
        s.walked = True
        # a finished member's walk: its payloads are checked where they are read (a damaged one is
        # then a chunk error, as through an index), and a damaged index record is stepped over
        places = r.index_places(s.footer) if s.repair and s.footer is not None else None
        for e in r.walk(verify=payloads and not s.repair, report=s.walk, past_bad_index=bool(s.repair),
                        index_at=places):
            if self._accept(pos, e, seen, allow, walked=True):
                yield pos, e
        if s.repair and s.walk.stopped_at != s.end and not allow:
            raise _cut_walk(r, s)

    def _accept(self, pos: int, e: IndexEntry, seen: bytearray, allow: bool, walked: bool) -> bool:
        r, s = self.readers[pos], self.source(pos)
        if e.chunk_id >= self.plan.n_chunks or \
                (not self.relaxed and placement(e.chunk_id, self.count) != r.header.member_index):
            if walked:
                s.skipped += 1
                return False
            raise MemberError(f"{r.where}: index lists chunk {e.chunk_id}, which does not "
                              "belong to this member")
        byte, bit = divmod(e.chunk_id, 8)
        if seen[byte] & (1 << bit):
            if walked or self.relaxed:
                s.skipped += 1
                return False
            raise MemberError(f"{r.where}: chunk {e.chunk_id} is listed twice")
        if e.offset + e.length > r.size:
            if allow:
                s.skipped += 1
                s.notes.append(f"chunk {e.chunk_id} lies past the end of the member")
                return False
            raise MemberError(f"{r.where}: chunk {e.chunk_id} lies past the end of the member "
                              f"(member truncated to {r.size} bytes?)")
        if self.relaxed and not walked and self._duplicates_possible() and not self._copy_verifies(r, e):
            # a chunk may be present twice (degraded dumps): take a copy that
            # verifies, not the first one met; a later copy can still be taken
            s.skipped += 1
            s.notes.append(f"a copy of chunk {e.chunk_id} fails its checks; another copy is used if any")
            return False
        seen[byte] |= 1 << bit
        s.used += 1
        return True

    def _duplicates_possible(self) -> bool:
        """A chunk can be present twice only where a target failed and its chunks moved (DGRD)."""
        if self._dups is None:
            self._dups = bool(self.dropped)
        return self._dups

    def _copy_verifies(self, r: MemberReader, e: IndexEntry) -> bool:
        """The record an index entry points to is this chunk of this dump, and sound."""
        try:
            h, _, _ = read_chunk(r.read_record(e), r.where, self.block_bytes, r.dump_id, self.page_size,
                                 self.chunk_limit)
        except (MemberError, VerifyError):
            return False
        return h.chunk_id == e.chunk_id and h.payload_checksum == e.checksum

    def record(self, chunk_id: int) -> bytes | None:
        """One chunk's checked record, found through an index or a walk; None if not found.

        For the odd single chunk (kdump output reads ``init_uts_ns``): the
        scan streams the index or walks without reading payloads, so memory
        stays bounded.  The chunk's own member is looked at first; in a
        degraded dump the others too.
        """
        d = placement(chunk_id, self.count)
        order = sorted(range(len(self.readers)), key=lambda p: self.readers[p].header.member_index != d)
        for pos in order:
            r, s = self.readers[pos], self.source(pos)
            if r.header.member_index != d and not self.relaxed:
                continue
            ways = ([lambda: r.index(s.footer)] if s.footer is not None else []) + \
                [lambda: r.walk(verify=False, past_bad_index=True)]     # an index that fails: the records
            for entries in ways:
                try:
                    for e in entries():
                        if e.chunk_id == chunk_id and e.offset + e.length <= r.size:
                            rec = r.read_record(IndexEntry(*e))
                            h, _, _ = read_chunk(rec, r.where, self.block_bytes, r.dump_id, self.page_size,
                                                 self.chunk_limit)
                            if h.chunk_id != chunk_id:
                                continue
                            return rec
                except (MemberError, VerifyError):
                    continue
        return None

    def missing_chunks(self, seen: bytearray) -> list[int]:
        """Chunk ids not marked in ``seen``; the scan skips full bytes in C, so a
        whole dump costs little and a dump missing most of its chunks costs one
        id per missing chunk."""
        n = self.plan.n_chunks
        out = []
        for m in re.finditer(rb"[^\xff]", bytes(seen[:-(-n // 8)])):
            byte = m.start()
            v = seen[byte]
            out.extend(c for c in range(byte * 8, min(byte * 8 + 8, n)) if not v & (1 << (c & 7)))
        return out

    def describe_absent(self, absent: list[int]) -> str:
        """The chunks no member holds, with the member each belongs to (the first five)."""
        descs = ", ".join(f"member {self.member_name(placement(c, self.count))}: "
                          f"{self.plan.chunk(c).describe(self.page_size)}" for c in absent[:5])
        more = f" and {len(absent) - 5} more" if len(absent) > 5 else ""
        return f"{len(absent)} chunk(s) missing from the members: {descs}{more}"

    def missing_ranges(self, chunk_ids) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Merged PFN ranges and source file ranges [start, end) of these chunks."""
        pfns, files = [], []
        for c in chunk_ids:
            ch = self.plan.chunk(c)
            (pfns if ch.kind == KIND_PAGES else files).append((ch.start, ch.start + ch.count))
        return merge_ranges(pfns), merge_ranges(files)

    def member_report(self) -> list[dict]:
        """Per member: how its chunks were found and how many, for join/verify/info output."""
        out = []
        for pos, r in enumerate(self.readers):
            s = self.source(pos)
            f = s.footer
            state = STATE_NAMES.get(f.state if f is not None else r.header.state, "unknown")
            if f is None and s.problem and r.header.footer_offset:
                state = "footer unreadable"
            d = {"index": r.header.member_index, "path": r.path, "state": state,
                 "found_by": "walk" if s.walked else "index", "chunks": s.used}
            if s.walked:
                d["walk"] = s.walk.describe()
            damage = list(r.damage) + ([s.repair] if s.repair else [])
            if damage:
                d["damage"] = damage
            if s.skipped:
                d["skipped_records"] = s.skipped
            if s.notes:
                d["notes"] = s.notes[:5]
            out.append(d)
        for i in self.absent:
            path, why = self.unusable.get(i, (None, None))
            out.append({"index": i, "path": path, "state": f"unusable ({why})" if why else "not given",
                        "found_by": None, "chunks": 0})
        out.sort(key=lambda d: d["index"])
        for p in self.unwritten:
            out.append({"index": None, "path": p, "state": "no member header (never written)",
                        "found_by": None, "chunks": 0})
        for p, why in self.unreached:
            out.append({"index": None, "path": p, "state": f"not read ({why})", "found_by": None, "chunks": 0})
        return out

    # -- what a join would recover, member by member (info, verify, join) -----

    def share(self, d: int) -> tuple[int, int]:
        """(chunks, source bytes) the plan places on member ``d``: chunk i on member i % members.

        Counted per range in O(ranges), not per chunk (two million chunks
        for 2 TiB): every chunk of a range is full but its first and last.
        """
        plan, n, ps = self.plan, self.count, self.page_size
        chunks = nbytes = 0
        first = 0
        for pages, ranges, unit, full in ((True, plan.pfn_ranges, ps, plan.chunk_pages),
                                          (False, plan.residue, 1, plan.chunk_bytes)):
            for a, b in ranges:
                k = (b - 1) // full - a // full + 1 if pages else -(-(b - a) // full)
                mine = _count_congruent(first, first + k, d, n)
                chunks += mine
                nbytes += mine * full * unit
                for c in {first, first + k - 1}:        # the partial chunks at the ends
                    if c % n == d:
                        nbytes -= full * unit - plan.chunk(c).raw_bytes(ps)
                first += k
        return chunks, nbytes


def _count_congruent(lo: int, hi: int, d: int, n: int) -> int:
    """How many integers in [lo, hi) are congruent to d modulo n."""
    return max(0, (hi - 1 - d) // n - (lo - 1 - d) // n) if hi > lo else 0


def _never_written(path: str) -> bool:
    """A file the dump stopped before writing a member header to: empty, or zeros where it goes."""
    if is_remote(path):          # a stream cut before the head reached the host
        try:
            f = open_remote(path, head=False)
            try:
                head = f.pread(0, min(HEADER_BLOCK, f.size))
            finally:
                f.close()
        except MemberError:
            return False
        return not head.strip(b"\0")
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_BLOCK)
    except OSError:
        return False
    return not head.strip(b"\0")


def _cut_walk(r: MemberReader, s: MemberSource) -> MemberError:
    """A finished member whose footer or index is damaged, and whose walk stopped short of the footer."""
    return MemberError(f"{r.where}: {s.repair}, and walking its records stopped at offset {s.walk.stopped_at} "
                       f"({s.walk.reason}), before its footer at {s.end}: the chunks between are lost; "
                       f"{INCOMPLETE_HINT}")


def _clause(e: MemberError) -> str:
    """The first clause of a member error, without the member: what is wrong, not what to do."""
    return str(e).split(": ", 1)[-1].split("; ")[0]


def _finished(r: MemberReader) -> bool:
    """The member says its dump finished: its header, or for a streamed member (whose header is
    never rewritten, FEATURE_STREAMED) its trailer."""
    if r.header.state == STATE_COMPLETE:
        return True
    t = r.trailer()
    return t is not None and t.state == STATE_COMPLETE
