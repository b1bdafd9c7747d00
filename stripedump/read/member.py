"""Reading one member: header, manifest, footer (or trailer), index, and walking its records.

Why: join, verify and info start from a file that claims to be a member;
``MemberReader`` never trusts a field before it has been bounds-checked
against the member's size, and ``walk`` finds the records of a member whose
footer never reached the disk (a killed dump, power loss), stopping at the
first record of another dump or a torn write.
"""

from __future__ import annotations

import os
import stat
import struct
import zlib

from ..errors import DamagedHeader, MemberError, VerifyError
from ..format.structs import (CHUNK_HEADER_SIZE, FEATURE_STREAMED, FOOTER_MAGIC, HEADER_BLOCK, HEADER_COPY_OFFSET,
                     INDEX_EVERY, MANIFEST_MAGIC, MAX_FOOTER, MAX_MANIFEST, MEMBER_MAGIC, STATE_COMPLETE,
                     TRAILER_SIZE, V1_RECORD_MAGICS, VERSION, ChunkHeader, Footer, IndexEntry, MemberHeader, RecordHead,
                     Trailer, checksum, first_record_offset, head_size, magic_of, parse_head, record_bound,
                     unpack_index, unpack_index_body, unpack_manifest, unpack_record)
from ..runtime.fileio import pread_exact

MAX_MANIFEST_RECORD = MAX_MANIFEST   # a compressed manifest is never longer than the JSON it holds
# Why a member is never a stream (standard input, a pipe, a FIFO): it is read at random, and by more
# than one process (issue 24 item 16, and what to do instead)
NOT_A_STREAM = ("a member is read at random (its header, the index at its end, its records by several "
                "processes), which a pipe cannot give: save the stream first (ssh HOST cat PATH > m0), or "
                "give the member where it is as ssh://HOST/PATH or s3://BUCKET/KEY (read in place)")


REMOTE_SCHEMES = {"ssh://": "stripedump.remote.sshread", "s3://": "stripedump.remote.s3read"}


def is_remote(path) -> bool:
    """An ``ssh://`` or ``s3://`` member: read through remote/ (sshread.py, s3read.py)."""
    return isinstance(path, str) and path.startswith(tuple(REMOTE_SCHEMES))


def open_remote(url: str, head: bool = True):
    """The reader object of a remote member (``size``, ``pread``, ``prefetch``, ``close``); its
    module and library (paramiko, botocore) are imported only now.  ``head``: keep its head and
    tail bytes (a read pool worker, which reads records only, asks for none)."""
    if url.startswith("s3://"):
        from ..remote.s3read import open_member as s3_open
        return s3_open(url, head)
    from ..remote.sshread import open_member as ssh_open
    return ssh_open(url, head)


def remote_before_fork() -> None:
    """Before a fork: every loaded remote kind drops this process's connections (each process opens
    its own)."""
    import sys
    for name in REMOTE_SCHEMES.values():
        mod = sys.modules.get(name)
        if mod is not None:
            mod.before_fork()


class MemberReader:
    """One member opened for reading; every field bounds-checked before use.

    Reads format versions 1 and 2 (``self.version``); records of version 2
    must carry this member's dump id, so nothing of another dump is taken.
    """

    def __init__(self, path: str, damaged_ok: bool = False):
        """``damaged_ok``: a header whose checksum fails, with no sound copy, leaves ``header`` None
        and the error in ``header_error`` (``repair.rebuild_header`` may rebuild it) instead of
        raising ``DamagedHeader``."""
        self.path = path
        self.remote = None        # an ssh:// or s3:// member: open_remote's object
        self.fd = -1
        self.damage: list[str] = []     # what was damaged and worked around (repair.py words it)
        self.header_error: DamagedHeader | None = None
        self.manifest_from: str | None = None     # another member's path, when this one's was damaged
        if is_remote(path):
            self.remote = open_remote(path)
        else:
            try:
                self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError as e:
                raise MemberError(f"member {path}: cannot open: {e.strerror}") from None
            if stat.S_ISFIFO(os.fstat(self.fd).st_mode) or stat.S_ISSOCK(os.fstat(self.fd).st_mode):
                self.close()
                raise MemberError(f"member {path} is a pipe; {NOT_A_STREAM}")
        try:
            self.size = self.remote.size if self.remote is not None else os.lseek(self.fd, 0, os.SEEK_END)
            if self.size < MemberHeader.STRUCT.size and self.size >= 8:
                head = self.pread(0, self.size)
                if head[:8] == MEMBER_MAGIC:
                    raise MemberError(f"member {path}: the member header is cut off ({self.size} bytes): "
                                      "the file was truncated")
            try:
                header = self._read_header(self.pread(0, min(HEADER_BLOCK, self.size)))
            except DamagedHeader as e:
                if not damaged_ok:
                    raise
                header, self.header_error = None, e
        except BaseException:
            self.close()
            raise
        self.use_header(header)

    def use_header(self, header: MemberHeader | None) -> None:
        """Read the member with this header (its own, its copy's, or one rebuilt: repair.py)."""
        self.header = header
        self.version = header.version if header is not None else 0
        self.dump_id = header.dump_id if header is not None else None
        self._manifest = None
        self._trailer: Trailer | None | bool = False
        self._footer: Footer | MemberError | None | bool = False
        self._tail_footer: tuple[int, int] | None | bool = False

    def _read_header(self, block: bytes) -> MemberHeader:
        """The member header, or its copy at HEADER_COPY_OFFSET when the header fails its checks.

        The copy is taken only if it is sound, of format version 2 or later, and of the dump
        whose manifest record follows (a copy a reused device kept from an earlier dump is not).
        A header that fails with no copy to replace it is a ``DamagedHeader`` when its checksum
        fails, or when its magic is gone but a sound manifest record follows it.
        """
        copy_raw = block[HEADER_COPY_OFFSET:HEADER_COPY_OFFSET + MemberHeader.STRUCT.size]
        try:
            h = MemberHeader.unpack(block, self.where)
        except MemberError as e:
            if not _damaged(block, e):
                raise            # a sound header that says something this reader refuses: so would its copy
            copy = self._copy(copy_raw)
            if copy is not None and self._same_dump_follows(copy):
                why = "checksum mismatch" if isinstance(e, DamagedHeader) else str(e).split(": ", 1)[-1]
                self.damage.append(f"its header is damaged ({why}); its copy at offset {HEADER_COPY_OFFSET} "
                                   "was used")
                return copy
            if isinstance(e, DamagedHeader) or (block[:8] != MEMBER_MAGIC and self.manifest_id() is not None):
                has = "and it has no copy (written by a stripedump that kept none)" if not copy_raw.strip(b"\0") \
                    else "and so is its copy" if copy is None else \
                    "and its copy is of another dump (what the device held before)"
                raise DamagedHeader(f"{self.where}: the member header is damaged "
                                    f"({'checksum mismatch' if isinstance(e, DamagedHeader) else 'its magic is gone'}) "
                                    f"{has}") from None
            raise
        if h.version >= 2 and copy_raw.strip(b"\0") and self._copy(copy_raw) is None:
            self.damage.append(f"its header copy at offset {HEADER_COPY_OFFSET} is damaged (the header is "
                               "sound: nothing is lost, but the copy no longer stands in for it)")
        return h

    def _copy(self, raw: bytes) -> MemberHeader | None:
        """The header copy, if it is a sound header of format version 2 or later."""
        if len(raw) < MemberHeader.STRUCT.size or not raw.strip(b"\0"):
            return None
        try:
            c = MemberHeader.unpack(raw, self.where)
        except MemberError:
            return None
        return c if c.version >= 2 else None

    def _same_dump_follows(self, h: MemberHeader) -> bool:
        """The manifest record after the header block names ``h``'s dump (not an earlier one's)."""
        if HEADER_BLOCK + RecordHead.STRUCT.size > self.size:
            return False
        head = self.pread(HEADER_BLOCK, RecordHead.STRUCT.size)
        return head[:4] == MANIFEST_MAGIC and head[8:24] == h.dump_id

    def manifest_id(self) -> bytes | None:
        """The dump id of a sound version 2 manifest record at HEADER_BLOCK (its head names it and
        its seeded checksum proves it), read without the member header; None if there is none."""
        hs = RecordHead.STRUCT.size
        if HEADER_BLOCK + hs > self.size:
            return None
        magic, length, did, _ = RecordHead.STRUCT.unpack(self.pread(HEADER_BLOCK, hs))
        if magic != MANIFEST_MAGIC or length > MAX_MANIFEST or HEADER_BLOCK + hs + length > self.size:
            return None
        try:
            unpack_record(self.pread(HEADER_BLOCK, hs + length), MANIFEST_MAGIC, self.where, did)
        except MemberError:
            return None
        return did

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.remote is not None:
            self.remote.close()

    def pread(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise MemberError(f"member {self.path}: reference to bytes {offset}+{length} past its end "
                              f"({self.size} bytes): the member is truncated or damaged")
        if self.remote is not None:
            data = self.remote.pread(offset, length)
            if len(data) != length:
                raise MemberError(f"member {self.path}: ends early at offset {offset + len(data):#x} "
                                  "(truncated?)")
            return data
        return pread_exact(self.fd, offset, length, MemberError, f"member {self.path}")

    @property
    def where(self) -> str:
        return f"member {self.path}"

    def manifest(self) -> dict:
        """The manifest JSON object (its contents are checked by manifest.Manifest)."""
        if self._manifest is None:
            h = self.header
            if h.manifest_offset != HEADER_BLOCK or h.manifest_length > MAX_MANIFEST_RECORD \
                    or h.manifest_length < head_size(self.version):
                raise MemberError(f"{self.where}: the member header gives an impossible place for the "
                                  f"manifest ({h.manifest_length} bytes at {h.manifest_offset}); the "
                                  "member is damaged")
            if h.manifest_offset + h.manifest_length > self.size:
                raise MemberError(f"{self.where}: the member's manifest is cut off (the member is "
                                  f"{self.size} bytes): the dump stopped before writing it, or the file "
                                  "was truncated; join the other members with --allow-incomplete")
            self._manifest = unpack_manifest(self.pread(h.manifest_offset, h.manifest_length), self.where,
                                             self.dump_id, self.version)
        return self._manifest

    def own_place(self, count: int):
        """(header, how) for a member read with a provisional header (its own was lost:
        repair.rebuild_header): its number, state and footer from a sound trailer of this dump at
        its end, or from its footer found by walking its records (a finished member on a
        device), or else the member most of its chunk records belong to (it never finished,
        state 0); a string saying why not when nothing tells."""
        if self.size >= TRAILER_SIZE:
            t = Trailer.unpack(self.pread(self.size - TRAILER_SIZE, TRAILER_SIZE), self.dump_id)
            if t is not None and t.member_length == self.size and t.member_count == count \
                    and t.member_index < count and t.footer_offset + t.footer_length + TRAILER_SIZE == self.size:
                return (self.header._replace(member_index=t.member_index, state=t.state,
                                             footer_offset=t.footer_offset, footer_length=t.footer_length),
                        "its trailer (its number and state)")
        rep = WalkReport()
        owners: dict[int, int] = {}
        for e in self.walk(verify=False, report=rep):
            owners[e.chunk_id % count] = owners.get(e.chunk_id % count, 0) + 1
        if rep.reason == "the footer":
            hs = head_size(self.version)
            _, length, _, _ = parse_head(self.pread(rep.stopped_at, hs), self.version)
            f = Footer.unpack(self.pread(rep.stopped_at, hs + length), self.where, self.dump_id, self.version)
            if f.member_index < count:
                return (self.header._replace(member_index=f.member_index, state=f.state,
                                             footer_offset=rep.stopped_at, footer_length=hs + length),
                        "its footer, found by walking its records")
        if not owners:
            return "it holds no chunk record that says which member it is"
        index = max(owners, key=owners.get)
        return (self.header._replace(member_index=index),
                f"its chunk records (it never finished: {owners[index]} of them are member {index}'s)")

    def adopt_manifest(self, other: "MemberReader") -> None:
        """Read this member with ``other``'s manifest (the record is the same in every member of a
        dump; this one's is damaged: repair.pick_manifest)."""
        self._manifest = other.manifest()
        self.manifest_from = other.path

    def trailer(self) -> Trailer | None:
        """This dump's trailer at the end of the member, if there is a sound one."""
        if self._trailer is False:
            t = None
            if self.version >= 2 and self.size >= TRAILER_SIZE + HEADER_BLOCK:
                t = Trailer.unpack(self.pread(self.size - TRAILER_SIZE, TRAILER_SIZE), self.dump_id)
                h = self.header
                if t is not None and (t.member_length != self.size or t.member_index != h.member_index
                                      or t.member_count != h.member_count
                                      or t.footer_offset + t.footer_length + TRAILER_SIZE != self.size):
                    t = None
            self._trailer = t
        return self._trailer

    def footer_place(self) -> tuple[int, int] | None:
        """(offset, length) of the footer: from the header when it was finalized, else the trailer;
        for a streamed member whose trailer is damaged, the footer record that ends where the
        trailer begins (``_footer_before_end``)."""
        h = self.header
        if h.footer_offset:
            return h.footer_offset, h.footer_length
        t = self.trailer()
        if t is not None:
            return t.footer_offset, t.footer_length
        if self.version >= 2 and h.features_optional & FEATURE_STREAMED:
            if self._tail_footer is False:         # looked for once, and told once
                self._tail_footer = self._footer_before_end()
                if self._tail_footer is not None:
                    self.damage.append("its trailer is damaged; its footer was found where the trailer begins")
            return self._tail_footer
        return None

    FOOTER_SEARCH = 1 << 20     # how far from its end a streamed member's footer is looked for

    def _footer_before_end(self) -> tuple[int, int] | None:
        """A sound footer record of this dump that ends TRAILER_SIZE bytes before the member's end.

        A streamed member is written once, in order: its file ends with the footer and the
        trailer, so a footer found there (its dump id and seeded checksum checked) is its own.
        Looked for in the last FOOTER_SEARCH bytes (a footer holds 8 bytes per 1024 chunks).
        """
        hs = RecordHead.STRUCT.size
        end = self.size - TRAILER_SIZE
        start = max(self.first_record(), end - self.FOOTER_SEARCH)
        if end - start < hs:
            return None
        tail = self.pread(start, end - start)
        i = len(tail)
        while (i := tail.rfind(FOOTER_MAGIC, 0, i)) >= 0:
            if i + hs <= len(tail):
                _, length, rid, _ = RecordHead.STRUCT.unpack_from(tail, i)
                if rid == self.dump_id and start + i + hs + length == end:
                    try:
                        Footer.unpack(tail[i:], self.where, self.dump_id, self.version)
                        return start + i, hs + length
                    except MemberError:
                        pass
        return None

    def footer(self) -> Footer | None:
        """The footer (None: the member was never finalized); MemberError when it cannot be read.
        Read once: the outcome, an error included, is kept."""
        if self._footer is False:
            try:
                self._footer = self._read_footer()
            except MemberError as e:
                self._footer = e
        if isinstance(self._footer, MemberError):
            raise self._footer
        return self._footer

    def _read_footer(self) -> Footer | None:
        place = self.footer_place()
        if place is None:
            return None
        off, length = place
        start = first_record_offset(self.header.manifest_offset, self.header.manifest_length) \
            if self.version >= 2 else self.header.manifest_offset + self.header.manifest_length
        if length > MAX_FOOTER or length < head_size(self.version) or off < start:
            raise MemberError(f"{self.where}: the member header gives an impossible place for the footer "
                              f"({length} bytes at {off}); the member is damaged")
        # the trailer follows the footer: read with it (one read) when the header gave the place
        with_trailer = self.version >= 2 and self.header.footer_offset and \
            off + length + TRAILER_SIZE <= self.size
        data = self.pread(off, length + (TRAILER_SIZE if with_trailer else 0))
        f = Footer.unpack(data[:length], self.where, self.dump_id, self.version)
        hs = head_size(self.version)
        if len(f.index_offsets) != -(-f.chunks // INDEX_EVERY) \
                or any(not start <= o <= off - hs for o in f.index_offsets) \
                or f.chunks * (CHUNK_HEADER_SIZE if self.version >= 2 else 52) > off \
                or (self.version >= 2 and f.member_index != self.header.member_index):
            raise MemberError(f"{self.where}: the member's footer contradicts the member (chunk count, "
                              "index places or member number); the member is damaged; join "
                              "--allow-incomplete finds its chunks by reading it record by record")
        if self.version >= 2 and self.header.footer_offset:
            self._check_trailer(data[length:], off, length)
        return f

    def _check_trailer(self, raw: bytes, off: int, length: int) -> None:
        """A finalized member's trailer, after its footer: sound and saying what the header says,
        else noted as damage (the header found the footer: nothing is lost)."""
        h = self.header
        t = Trailer.unpack(raw, self.dump_id) if len(raw) == TRAILER_SIZE else None
        if t is None or (t.member_index, t.member_count, t.footer_offset, t.footer_length, t.member_length,
                         t.state) != (h.member_index, h.member_count, off, length, off + length + TRAILER_SIZE,
                                      h.state):
            self.damage.append("its trailer is damaged or cut off (the header says where the footer is: "
                               "nothing is lost)")

    def index(self, footer: Footer):
        """Index entries in the order written (a generator: memory stays bounded)."""
        for where, body in self.index_bodies(footer):
            yield from unpack_index_body(body, where)

    def index_bodies(self, footer: Footer):
        """(where, body) of each index record, checked (magic, dump id, checksum): packed IndexEntry rows."""
        hs = head_size(self.version)
        magic = magic_of("index", self.version)
        offs = footer.index_offsets
        for i, off in enumerate(offs):
            if self.remote is not None and i % self.remote.PREFETCH_GROUP == 0:    # few round trips
                self.remote.prefetch([(o, hs + INDEX_EVERY * IndexEntry.STRUCT.size)
                                      for o in offs[i:i + self.remote.PREFETCH_GROUP]])
            m, length, rid, _ = parse_head(self.pread(off, hs), self.version)
            if m != magic or length > INDEX_EVERY * IndexEntry.STRUCT.size or \
                    (rid is not None and rid != self.dump_id):
                raise MemberError(f"{self.where}: the index record at offset {off} is damaged or of "
                                  "another dump; join --allow-incomplete finds the chunks by reading "
                                  "the member record by record")
            where = f"{self.where} index at {off}"
            yield where, unpack_record(self.pread(off, hs + length), magic, where, self.dump_id, self.version)

    def index_places(self, footer: Footer) -> dict:
        """{member offset: record length} of the index records a sound footer lists (each holds
        INDEX_EVERY entries, the last the rest): what a walk steps over unread."""
        hs = head_size(self.version)
        return {o: hs + min(INDEX_EVERY, footer.chunks - i * INDEX_EVERY) * IndexEntry.STRUCT.size
                for i, o in enumerate(footer.index_offsets)}

    def read_record(self, entry: IndexEntry) -> bytes:
        if entry.length < 52 or entry.length > self.record_limit():
            raise MemberError(f"{self.where}: index entry for chunk {entry.chunk_id} has bad length")
        return self.pread(entry.offset, entry.length)

    def record_limit(self) -> int:
        h = self.header
        return record_bound(h.chunk_pages * h.page_size, h.block_pages * h.page_size)

    def first_record(self) -> int:
        """Member offset of the first record after the manifest.

        Chunk records start at the manifest's end rounded up to RECORD_ALIGN
        (zeros in between); a writer that did not align them (version 1
        before 0.1.0) put the first record right after the manifest, and a
        record magic there says so.
        """
        h = self.header
        end = h.manifest_offset + h.manifest_length
        aligned = first_record_offset(h.manifest_offset, h.manifest_length)
        if self.version == 1 and aligned != end and end + 4 <= self.size \
                and self.pread(end, 4) in V1_RECORD_MAGICS:
            return end
        return aligned

    def walk(self, verify: bool = True, report: "WalkReport | None" = None, past_bad_index: bool = False,
             index_at: dict | None = None):
        """The chunk records found by reading the member record by record (IndexEntry each).

        For a member whose footer never reached the disk (a killed dump, power
        loss, a full disk) or cannot be read (truncated).  From the first
        record, a chunk record is its header + payload_length bytes and an
        index or footer record its head + length, each with its own CRC or
        checksum.  The walk stops at the first record that fails its
        structural checks: bytes that are no record (the end of what was
        written), a record of another dump (an earlier dump on a reused
        device: version 2 records carry their dump's id), a chunk header whose
        CRC fails, a record longer than the geometry allows or running past
        the end of the member (a torn write); and at the footer, which ends a
        member.  A chunk record whose header is sound but whose payload
        checksum fails is stepped over (its length can be trusted) and listed
        in ``report.damaged``.  With ``verify`` False payloads are not read:
        the caller checks the records it uses.  ``past_bad_index`` (the walk of
        a finished member whose index is damaged): an index record of this dump
        whose checksum fails is stepped over by its length, as a chunk record
        whose payload fails (listed in ``report.bad_index``); ``index_at``
        ({member offset: record length}, from a sound footer) names the index
        records to step over unread, whatever their bytes.  Memory stays
        bounded: one record.
        """
        rep = report if report is not None else WalkReport()
        v2 = self.version >= 2
        limit = self.record_limit()
        hs = head_size(self.version)
        chs = CHUNK_HEADER_SIZE if v2 else 52
        cmagic, imagic, fmagic = (magic_of(k, self.version) for k in ("chunk", "index", "footer"))
        pos = self.first_record()
        while True:
            if index_at and pos in index_at:
                pos += index_at[pos]
                continue
            if pos + min(hs, chs) > self.size:
                return rep.stop(pos, "end of the member")
            head = self.pread(pos, min(max(hs, chs), self.size - pos))
            magic = head[:4]
            if magic == cmagic:
                try:
                    h = ChunkHeader.unpack(head, self.where)
                except VerifyError:
                    return rep.stop(pos, "a damaged or torn chunk header")
                if v2 and h.dump_id != self.dump_id:
                    return rep.stop(pos, "a record of another dump (what the device held before)")
                end = pos + h.record_length
                if h.record_length > limit:
                    return rep.stop(pos, f"an implausible record length for chunk {h.chunk_id}")
                if end > self.size:
                    return rep.stop(pos, f"chunk {h.chunk_id}'s record, cut off (torn write)")
                if verify and checksum(self.pread(pos + chs, h.payload_length)) != h.payload_checksum:
                    rep.damaged.append((pos, h.chunk_id))
                else:
                    rep.chunks += 1
                    yield IndexEntry(h.chunk_id, pos, h.record_length, h.payload_checksum)
                pos = end
            elif magic in (imagic, fmagic) and len(head) >= hs:
                _, length, rid, _ = parse_head(head, self.version)
                if rid is not None and rid != self.dump_id:
                    return rep.stop(pos, "a record of another dump (what the device held before)")
                big = INDEX_EVERY * IndexEntry.STRUCT.size if magic == imagic else MAX_FOOTER
                if length > big or pos + hs + length > self.size:
                    return rep.stop(pos, f"a cut-off {'index' if magic == imagic else 'footer'} record "
                                         "(torn write)")
                try:
                    if magic == imagic:
                        unpack_index(self.pread(pos, hs + length), self.where, self.dump_id, self.version)
                    else:
                        Footer.unpack(self.pread(pos, hs + length), self.where, self.dump_id, self.version)
                except MemberError:
                    if magic == imagic and past_bad_index and length % IndexEntry.STRUCT.size == 0:
                        rep.bad_index.append(pos)
                        pos += hs + length
                        continue
                    return rep.stop(pos, f"a damaged {'index' if magic == imagic else 'footer'} record")
                if magic == fmagic:
                    return rep.stop(pos, "the footer")
                pos += hs + length
            else:
                return rep.stop(pos, "the end of the records written")


class WalkReport:
    """What ``MemberReader.walk`` found besides the chunks: where and why it stopped."""

    def __init__(self):
        self.chunks = 0
        self.damaged: list[tuple[int, int]] = []   # (member offset, chunk id): payload checksum failed
        self.bad_index: list[int] = []             # member offsets of damaged index records stepped over
        self.stopped_at: int | None = None
        self.reason = ""

    def stop(self, pos: int, reason: str) -> None:
        self.stopped_at, self.reason = pos, reason

    def describe(self) -> str:
        s = f"{self.chunks} chunk record(s), then at offset {self.stopped_at} {self.reason}"
        if self.damaged:
            s += f"; {len(self.damaged)} record(s) with a bad checksum skipped (chunk " \
                 f"{', '.join(str(c) for _, c in self.damaged[:5])}{' ...' if len(self.damaged) > 5 else ''})"
        return s


def _damaged(block: bytes, e: MemberError) -> bool:
    """The header failed as a flipped byte makes it fail: its checksum, its magic, or a version
    field that is no version while the version 2 checksum fails too.  (A header whose checksum
    holds but whose geometry, features or version this reader refuses is as its writer wrote it.)"""
    if isinstance(e, DamagedHeader) or block[:8] != MEMBER_MAGIC:
        return True
    st = MemberHeader.STRUCT
    (version,) = struct.unpack_from("<H", block, 8) if len(block) >= 10 else (0,)
    return not 1 <= version <= VERSION and len(block) >= st.size and \
        zlib.crc32(block[:st.size - 4]) != struct.unpack_from("<I", block, st.size - 4)[0]


def is_complete(footer: Footer | None) -> bool:
    return footer is not None and footer.state == STATE_COMPLETE
