"""Every on-disk structure of a stripedump member, and nothing else.

Why one module: the layout is the contract between a dump taken in a capture
kernel today and a join run years later on another machine.  Each record has
a magic, and the member header has a version; readers refuse a newer major
version instead of misreading it.  ``docs/format.md`` draws the same layout
byte by byte; a test checks the two agree on sizes.

A member is (all integers little-endian):

    0        MemberHeader, padded to HEADER_BLOCK (4 KiB); rewritten last
    4096     manifest record + zlib(JSON manifest), identical in every member
    ...      chunk record + block table + payload, in the order written
             index record + entries, after every INDEX_EVERY chunks
    footer   footer record + offsets of the index records
             trailer (fixed size, found from the end of the member)

Every record describes itself (magic, lengths, checksums) so a member whose
footer never reached the disk can still be walked record by record.

Version 2 (this writer) binds every record to its dump: each record head
carries the 16-byte dump id, covered by the record's check (the chunk
header's CRC; the seeded xxh3 of the other records), so a record left on a
reused device by an earlier dump is never taken for one of this dump.  It
also carries what issues 10-13 need, so that the format changes once:
feature flags with "mandatory" semantics, an "excluded" block kind and a
per-chunk kept-page count (dump levels), per-codec totals in the footer
(mixed codecs), and a trailer readers find from the end (streamed members,
whose offset 0 cannot be rewritten).  Version 1 members are still read:
their structures are kept here as ``*V1`` and normalized into the version 2
tuples, so the rest of the code sees one shape.
"""

from __future__ import annotations

import json
import struct
import zlib

import xxhash

from ..errors import DamagedHeader, MemberError, VerifyError
from ..runtime.plain import Record

VERSION = 2
HEADER_BLOCK = 4096
HEADER_COPY_OFFSET = 2048   # a second copy of the member header, in the same write (issue 24)
INDEX_EVERY = 1024
RECORD_ALIGN = 4096     # the first chunk record starts at the manifest's end rounded up to this
MAX_CHUNK_BYTES = 256 << 20     # largest chunk a dump writes (config.MAX_CHUNK)
MAX_CHUNKS = 1 << 28            # most chunks in one dump: readers keep a bitmap of n_chunks bits
MAX_MANIFEST = 128 << 20        # readers read and inflate at most this much manifest (notes: at most 86 MiB of base64)
MAX_FOOTER = 64 << 20           # readers refuse a longer footer record
MAX_SEGMENTS = 1 << 16          # program headers a manifest may list (real machines: hundreds)

MEMBER_MAGIC = b"STRIPEDM"
MANIFEST_MAGIC = b"SDM2"
CHUNK_MAGIC = b"SDC2"
INDEX_MAGIC = b"SDI2"
FOOTER_MAGIC = b"SDF2"
TRAILER_MAGIC = b"SDT2"
DEGRADED_TAG = b"DGRD"        # footer extension: members dropped by --on-disk-error continue
CLASSES_TAG = b"XCLS"         # footer extension: pages a dump level left out, per class, over the dump
RECORD_MAGICS = (CHUNK_MAGIC, INDEX_MAGIC, FOOTER_MAGIC)   # what may follow the manifest

# version 1 (stripedump 0.1.0) record magics, read only
V1_MANIFEST_MAGIC = b"SDMF"
V1_CHUNK_MAGIC = b"SDCK"
V1_INDEX_MAGIC = b"SDIX"
V1_FOOTER_MAGIC = b"SDFT"
V1_RECORD_MAGICS = (V1_CHUNK_MAGIC, V1_INDEX_MAGIC, V1_FOOTER_MAGIC)

# member states (MemberHeader.state)
STATE_WRITING, STATE_COMPLETE, STATE_INCOMPLETE = 0, 1, 2
STATE_NAMES = {STATE_WRITING: "writing (never finalized)", STATE_COMPLETE: "complete",
               STATE_INCOMPLETE: "incomplete"}

CHECKSUM_XXH3_64 = 1

# feature flags (MemberHeader.features_required / features_optional).  A reader
# refuses a member that requires a feature it does not know; optional ones it
# may ignore.
FEATURE_EXCLUDED = 0x1        # required: blocks may be BLOCK_EXCLUDED (pages left out by a dump level)
FEATURE_STREAMED = 0x1        # optional: written append-only; header never rewritten, the trailer is
FEATURES_REQUIRED_KNOWN = {FEATURE_EXCLUDED: "excluded pages (dump levels)"}
FEATURES_OPTIONAL_KNOWN = {FEATURE_STREAMED: "streamed member (trailer only)"}

# chunk kinds
KIND_PAGES, KIND_FILE = 0, 1
# chunk flags
CHUNK_ALL_ZERO = 0x1          # every block is zero: no block table, no payload
CHUNK_UNREADABLE = 0x2        # some blocks could not be read from the source (BLOCK_UNREADABLE)
CHUNK_EXCLUDED = 0x4          # some blocks were left out by a dump level (BLOCK_EXCLUDED)
CHUNK_FLAGS_KNOWN = CHUNK_ALL_ZERO | CHUNK_UNREADABLE | CHUNK_EXCLUDED

# block table entry, version 2: top 3 bits = how stored, low 29 bits = stored length
# (version 1: top 2 bits, low 30 bits; kinds 0-3 are the same)
BLOCK_COMPRESSED, BLOCK_RAW, BLOCK_ZERO, BLOCK_UNREADABLE, BLOCK_EXCLUDED = 0, 1, 2, 3, 4
BLOCK_KIND_SHIFT = 29
BLOCK_LEN_MASK = (1 << 29) - 1
V1_BLOCK_KIND_SHIFT = 30
V1_BLOCK_LEN_MASK = (1 << 30) - 1
MAX_BLOCK = BLOCK_LEN_MASK


def checksum(data, seed: int = 0) -> int:
    return xxhash.xxh3_64_intdigest(data, seed)


def dump_seed(dump_id: bytes) -> int:
    """The xxh3 seed of a dump's record checksums: its id folded to 64 bits."""
    return int.from_bytes(dump_id[:8], "little") ^ int.from_bytes(dump_id[8:16], "little")


def first_record_offset(manifest_offset: int, manifest_length: int) -> int:
    """Member offset of the first chunk record: page-aligned, so O_DIRECT can write from there."""
    return -(-(manifest_offset + manifest_length) // RECORD_ALIGN) * RECORD_ALIGN


def _feature_names(bits: int, known: dict) -> list[str]:
    return [known.get(1 << i, f"bit {i}") for i in range(64) if bits >> i & 1]


class MemberHeader(Record, fields=(
        "magic", "version", "state", "dump_id", "member_index", "member_count", "codec_id", "codec_level",
        "checksum_algo", "page_size", "chunk_pages", "block_pages", "created", "manifest_offset",
        "manifest_length", "footer_offset", "footer_length", "features_required", "features_optional", "crc"),
        defaults=(0, 0, 0)):
    __slots__ = ()

    STRUCT = struct.Struct("<8sHH16sIIBbBxIIIQQQQQQQI")

    def pack(self) -> bytes:
        body = self.STRUCT.pack(*self[:-1], 0)[:-4]
        return body + struct.pack("<I", zlib.crc32(body))

    def pack_block(self) -> bytes:
        """The header block's meaningful bytes: the header at 0 and its copy at HEADER_COPY_OFFSET
        (zeros between), written and rewritten together; readers take the copy when the header fails."""
        h = self.pack()
        return h + bytes(HEADER_COPY_OFFSET - len(h)) + h

    @classmethod
    def unpack(cls, data: bytes, where: str) -> "MemberHeader":
        """A version 1 or 2 header, as a version 2 tuple; refuses what it cannot read."""
        if len(data) < 10 or data[:8] != MEMBER_MAGIC:
            raise MemberError(f"{where}: not a stripedump member (no member header at its start)")
        (version,) = struct.unpack_from("<H", data, 8)
        if version < 1:
            raise MemberError(f"{where}: member format version {version} is not valid")
        if version > VERSION:
            raise MemberError(f"{where}: member format version {version} is newer than this "
                              f"stripedump understands ({VERSION}); upgrade stripedump")
        st = cls.STRUCT if version >= 2 else MemberHeaderV1.STRUCT
        if len(data) < st.size:
            raise MemberError(f"{where}: the member header is cut off (the file is truncated)")
        if zlib.crc32(data[:st.size - 4]) != struct.unpack_from("<I", data, st.size - 4)[0]:
            raise DamagedHeader(f"{where}: the member header is damaged (checksum mismatch)")
        if version >= 2:
            h = cls(*st.unpack_from(data))
        else:
            v = st.unpack_from(data)
            h = cls(*v[:-1], 0, 0, v[-1])
        if h.checksum_algo != CHECKSUM_XXH3_64:
            raise MemberError(f"{where}: unknown checksum algorithm {h.checksum_algo}")
        if h.member_count == 0 or h.member_index >= h.member_count or h.page_size < 512 \
                or h.page_size > (1 << 20) or h.page_size & (h.page_size - 1) or h.chunk_pages == 0 \
                or h.block_pages == 0 or h.block_pages > h.chunk_pages \
                or h.chunk_pages * h.page_size > MAX_CHUNK_BYTES:
            raise MemberError(f"{where}: member header has impossible geometry")
        unknown = h.features_required & ~sum(FEATURES_REQUIRED_KNOWN)
        if unknown:
            raise MemberError(f"{where}: the member needs feature(s) this stripedump does not know "
                              f"({', '.join(_feature_names(unknown, {}))} of features_required); "
                              "upgrade stripedump to read it")
        return h


class MemberHeaderV1:
    """Version 1 member header (96 bytes), read only."""
    STRUCT = struct.Struct("<8sHH16sIIBbBxIIIQQQQQI")


class RecordHead(Record, fields=(
        "magic",
        "length",  # bytes after this head
        "dump_id",  # the dump the record belongs to
        "checksum",  # xxh3_64, seeded with dump_seed(dump_id), of head bytes 0..23 and the body
        )):
    """Common head of manifest, index and footer records."""
    __slots__ = ()

    STRUCT = struct.Struct("<4sI16sQ")


class RecordHeadV1(Record, fields=(
        "magic", "length",
        "checksum")):   # xxh3_64 (seed 0) of the body
    __slots__ = ()

    STRUCT = struct.Struct("<4sIQ")


def record_checksum(head24, body, dump_id: bytes) -> int:
    x = xxhash.xxh3_64(seed=dump_seed(dump_id))
    x.update(head24)
    x.update(body)
    return x.intdigest()


def pack_record(magic: bytes, body, dump_id: bytes) -> bytes:
    head24 = RecordHead.STRUCT.pack(magic, len(body), dump_id, 0)[:24]
    return head24 + struct.pack("<Q", record_checksum(head24, body, dump_id)) + bytes(body)


# what each record is to a user, and what to do when it is damaged
_RECORD_WORDS = {
    MANIFEST_MAGIC: ("the member's manifest (the description of the dump)",
                     "the dump stopped before writing it, or the file was cut short; join the other "
                     "members with --allow-incomplete"),
    INDEX_MAGIC: ("an index record (the list of where its chunks are)",
                  "join --allow-incomplete finds the chunks by reading the member record by record"),
    FOOTER_MAGIC: ("the member's footer (written when the dump finished)",
                   "join --allow-incomplete finds the chunks by reading the member record by record"),
}


def record_words(magic: bytes) -> tuple[str, str]:
    m = {V1_MANIFEST_MAGIC: MANIFEST_MAGIC, V1_INDEX_MAGIC: INDEX_MAGIC,
         V1_FOOTER_MAGIC: FOOTER_MAGIC}.get(magic, magic)
    return _RECORD_WORDS.get(m, (f"a {magic.decode(errors='replace')} record", "run stripedump verify"))


def head_size(version: int) -> int:
    return RecordHead.STRUCT.size if version >= 2 else RecordHeadV1.STRUCT.size


def magic_of(kind: str, version: int) -> bytes:
    """The magic of a record kind ("manifest", "chunk", "index", "footer") in a format version."""
    v2 = {"manifest": MANIFEST_MAGIC, "chunk": CHUNK_MAGIC, "index": INDEX_MAGIC, "footer": FOOTER_MAGIC}
    v1 = {"manifest": V1_MANIFEST_MAGIC, "chunk": V1_CHUNK_MAGIC, "index": V1_INDEX_MAGIC,
          "footer": V1_FOOTER_MAGIC}
    return (v2 if version >= 2 else v1)[kind]


def parse_head(data, version: int) -> tuple[bytes, int, bytes | None, int]:
    """(magic, length, dump id or None for version 1, checksum) of a record head."""
    if version >= 2:
        return RecordHead.STRUCT.unpack_from(data)
    m, ln, cs = RecordHeadV1.STRUCT.unpack_from(data)
    return m, ln, None, cs


def unpack_record(data, magic: bytes, where: str, dump_id: bytes, version: int = VERSION) -> bytes:
    """The body of a record read whole (head included): checks magic, dump and checksum."""
    what, todo = record_words(magic)
    hs = head_size(version)
    if len(data) < hs:
        raise MemberError(f"{where}: {what} is cut off; {todo}")
    m, length, rid, csum = parse_head(data, version)
    if m != magic:
        raise MemberError(f"{where}: {what} is not where the member says (found other bytes); "
                          f"the member is damaged; {todo}")
    if rid is not None and rid != dump_id:
        raise MemberError(f"{where}: {what} belongs to another dump (left on the device by an earlier "
                          f"dump?); {todo}")
    body = bytes(data[hs:hs + length])
    if len(body) != length:
        raise MemberError(f"{where}: {what} is cut off; {todo}")
    ok = record_checksum(bytes(data[:24]), body, dump_id) == csum if rid is not None \
        else checksum(body) == csum
    if not ok:
        raise MemberError(f"{where}: {what} is damaged (checksum mismatch); {todo}")
    return body


def pack_manifest(manifest: dict, dump_id: bytes) -> bytes:
    return pack_record(MANIFEST_MAGIC, zlib.compress(json.dumps(manifest, sort_keys=True).encode(), 6),
                       dump_id)


def unpack_manifest(data: bytes, where: str, dump_id: bytes, version: int = VERSION) -> dict:
    """The manifest's JSON object; its contents are checked by manifest.py."""
    body = unpack_record(data, magic_of("manifest", version), where, dump_id, version)
    try:
        text = _inflate_manifest(body)
        m = json.loads(text)
    except (zlib.error, ValueError, RecursionError) as e:
        raise MemberError(f"{where}: the member's manifest cannot be decoded ({e}); the member is "
                          "damaged; join the other members with --allow-incomplete") from None
    if not isinstance(m, dict):
        raise MemberError(f"{where}: the member's manifest is not a JSON object; the member is damaged")
    return m


def _inflate_manifest(body: bytes) -> bytearray:
    """The manifest's JSON text, inflated a MiB at a time and refused as soon as it is implausible.

    Bounds what parsing it can build, before it is parsed: at most
    MAX_MANIFEST bytes, and no more objects and lists than a real machine's
    manifest has (one object per program header, a few lists per range).
    """
    d = zlib.decompressobj()
    text = bytearray()
    objects = lists = 0
    while True:
        before = len(body)
        piece = d.decompress(body, 1 << 20)
        body = d.unconsumed_tail
        if not piece and (not body or len(body) == before):     # the end, or no progress
            return text
        objects += piece.count(b"{")
        lists += piece.count(b"[")
        if len(text) + len(piece) > MAX_MANIFEST:
            raise ValueError(f"more than {MAX_MANIFEST >> 20} MiB of JSON")
        if objects > MAX_SEGMENTS + 64 or lists > 8 * MAX_SEGMENTS + 1024:
            raise ValueError("more objects or lists than a manifest of a real machine has")
        text += piece


class ChunkHeader(Record, fields=(
        "magic", "kind", "codec_id", "flags",
        "dump_id",  # the dump the record belongs to (version 1: zeros)
        "chunk_id",
        "start",  # first PFN (KIND_PAGES) or file offset (KIND_FILE)
        "raw_length",  # bytes of source data the chunk stands for
        "nblocks",  # entries in the block table (0 when CHUNK_ALL_ZERO)
        "payload_length",  # block table + compressed blocks
        "payload_checksum",  # xxh3_64 (seed 0) of block table + compressed blocks
        "kept_pages",  # pages whose contents the record gives (not excluded); 0 for file chunks
        "crc",
        ), defaults=(0,)):
    __slots__ = ()

    STRUCT = struct.Struct("<4sBBBx16sQQQIIQII")

    def pack_into(self, buf, offset: int = 0) -> None:
        self.STRUCT.pack_into(buf, offset, *self[:-1], 0)
        seal_chunk_header(buf, offset)

    @classmethod
    def unpack(cls, data, where: str) -> "ChunkHeader":
        """A version 2 or 1 chunk header (told apart by the magic), as a version 2 tuple."""
        if len(data) >= 4 and bytes(data[:4]) == V1_CHUNK_MAGIC:
            return ChunkHeaderV1.unpack(data, where)
        if len(data) < cls.STRUCT.size:
            raise VerifyError(f"{where}: chunk record is cut off")
        h = cls(*cls.STRUCT.unpack_from(data))
        if h.magic != CHUNK_MAGIC:
            raise VerifyError(f"{where}: no chunk record here")
        if zlib.crc32(memoryview(data)[:cls.STRUCT.size - 4]) != h.crc:
            raise VerifyError(f"{where}: chunk header is damaged (checksum mismatch)")
        return h

    @property
    def header_size(self) -> int:
        return ChunkHeaderV1.STRUCT.size if self.magic == V1_CHUNK_MAGIC else self.STRUCT.size

    @property
    def version(self) -> int:
        return 1 if self.magic == V1_CHUNK_MAGIC else 2

    @property
    def record_length(self) -> int:
        return self.header_size + self.payload_length


CHUNK_HEADER_SIZE = ChunkHeader.STRUCT.size


def record_bound(chunk_bytes: int, block_bytes: int) -> int:
    """Largest record a chunk can need: blocks are stored raw when they do not shrink."""
    return CHUNK_HEADER_SIZE + 4 * -(-chunk_bytes // block_bytes) + chunk_bytes


def seal_chunk_header(buf, offset: int = 0, dump_id: bytes | None = None) -> None:
    """Set a packed chunk header's dump id (if given) and recompute its CRC, in place."""
    if dump_id is not None:
        buf[offset + 8:offset + 24] = dump_id
    crc = zlib.crc32(memoryview(buf)[offset:offset + CHUNK_HEADER_SIZE - 4])
    struct.pack_into("<I", buf, offset + CHUNK_HEADER_SIZE - 4, crc)


class ChunkHeaderV1:
    """Version 1 chunk header (52 bytes, no dump id), read only."""
    STRUCT = struct.Struct("<4sBBBxQQQIIQI")

    @classmethod
    def unpack(cls, data, where: str) -> ChunkHeader:
        st = cls.STRUCT
        if len(data) < st.size:
            raise VerifyError(f"{where}: chunk record is cut off")
        m, kind, codec, flags, cid, start, raw, nb, pl, pc, crc = st.unpack_from(data)
        if zlib.crc32(memoryview(data)[:st.size - 4]) != crc:
            raise VerifyError(f"{where}: chunk header is damaged (checksum mismatch)")
        return ChunkHeader(m, kind, codec, flags, bytes(16), cid, start, raw, nb, pl, pc, 0, crc)


class IndexEntry(Record, fields=(
        "chunk_id",
        "offset",  # of the chunk record in the member
        "length",  # whole record
        "checksum",  # the record's payload checksum, repeated
        )):
    __slots__ = ()

    STRUCT = struct.Struct("<QQIQ")


def unpack_index(data: bytes, where: str, dump_id: bytes, version: int = VERSION) -> list[IndexEntry]:
    return unpack_index_body(unpack_record(data, magic_of("index", version), where, dump_id, version), where)


def unpack_index_body(body: bytes, where: str) -> list[IndexEntry]:
    """The entries of a checked index record's body."""
    if len(body) % IndexEntry.STRUCT.size or len(body) > INDEX_EVERY * IndexEntry.STRUCT.size:
        raise MemberError(f"{where}: an index record has a partial entry; the member is damaged")
    return [IndexEntry(*t) for t in IndexEntry.STRUCT.iter_unpack(body)]


class CodecTotal(Record, fields=(
        "codec_id",
        "chunks",
        "raw_bytes",  # source bytes those chunks stand for
        "stored_bytes",  # bytes of their records
        )):
    """Per codec id, over one member's chunk records (footer, version 2)."""
    __slots__ = ()

    STRUCT = struct.Struct("<B3xQQQ")


class Footer(Record, fields=(
        "state",
        "chunks",          # chunk records in this member
        "bytes_in",  # source bytes those chunks stand for
        "index_offsets",  # offsets of the index records, in order
        "note",  # why the member is incomplete, if it is
        # --on-disk-error continue: ((failed member index, its chunks stored here), ...)
        # for every member the dump dropped; () when none was (the DGRD extension)
        "degraded",
        "member_index",
        "excluded_pages",  # pages left out by a dump level, over this member's chunks
        "codec_totals",  # CodecTotal, by codec id
        # dump -d N: ((class name, pages), ...) the whole dump left out per class (the XCLS extension)
        "excluded_classes",
        ), defaults=((), 0, 0, (), ())):
    __slots__ = ()

    HEAD = struct.Struct("<IIQQQI")
    HEAD_V1 = struct.Struct("<IQQI")
    EXT = struct.Struct("<4sI")          # extension after the note: tag, body length
    DEGRADED = struct.Struct("<IQ")      # one DGRD entry: member index, chunks taken over
    CLASS = struct.Struct("<16sQ")       # one XCLS entry: class name (ASCII, NUL-padded), pages

    def pack(self, dump_id: bytes) -> bytes:
        note = self.note.encode()[:4096]
        body = self.HEAD.pack(self.state, self.member_index, self.chunks, self.bytes_in,
                              self.excluded_pages, len(self.index_offsets))
        body += struct.pack(f"<{len(self.index_offsets)}Q", *self.index_offsets)
        body += struct.pack("<H", len(note)) + note
        body += struct.pack("<H", len(self.codec_totals))
        body += b"".join(CodecTotal.STRUCT.pack(*t) for t in self.codec_totals)
        if self.degraded:
            ext = struct.pack("<I", len(self.degraded)) + b"".join(
                self.DEGRADED.pack(m, n) for m, n in self.degraded)
            body += self.EXT.pack(DEGRADED_TAG, len(ext)) + ext
        if self.excluded_classes:
            ext = struct.pack("<I", len(self.excluded_classes)) + b"".join(
                self.CLASS.pack(name.encode(), n) for name, n in self.excluded_classes)
            body += self.EXT.pack(CLASSES_TAG, len(ext)) + ext
        return pack_record(FOOTER_MAGIC, body, dump_id)

    @classmethod
    def unpack(cls, data: bytes, where: str, dump_id: bytes, version: int = VERSION) -> "Footer":
        body = unpack_record(data, magic_of("footer", version), where, dump_id, version)
        degraded: tuple = ()
        totals: tuple = ()
        classes: tuple = ()
        member_index = excluded = 0
        try:
            if version >= 2:
                state, member_index, chunks, bytes_in, excluded, n = cls.HEAD.unpack_from(body)
                pos = cls.HEAD.size
            else:
                state, chunks, bytes_in, n = cls.HEAD_V1.unpack_from(body)
                pos = cls.HEAD_V1.size
            if 8 * n > len(body) - pos:          # checked before it sizes anything
                raise struct.error
            offs = struct.unpack_from(f"<{n}Q", body, pos)
            pos += 8 * n
            (nl,) = struct.unpack_from("<H", body, pos)
            note = body[pos + 2:pos + 2 + nl].decode("utf-8", "replace")
            pos += 2 + nl
            if version >= 2:
                (nc,) = struct.unpack_from("<H", body, pos)
                pos += 2
                if nc * CodecTotal.STRUCT.size > len(body) - pos:
                    raise struct.error
                totals = tuple(CodecTotal(*CodecTotal.STRUCT.unpack_from(body, pos + i * CodecTotal.STRUCT.size))
                               for i in range(nc))
                pos += nc * CodecTotal.STRUCT.size
            while pos < len(body):       # extensions; readers skip tags they do not know
                tag, ln = cls.EXT.unpack_from(body, pos)
                ext = body[pos + cls.EXT.size:pos + cls.EXT.size + ln]
                if len(ext) != ln:
                    raise struct.error
                if tag == DEGRADED_TAG:
                    (k,) = struct.unpack_from("<I", ext)
                    if 4 + k * cls.DEGRADED.size != ln:
                        raise struct.error
                    degraded = tuple(cls.DEGRADED.iter_unpack(ext[4:]))
                elif tag == CLASSES_TAG:
                    (k,) = struct.unpack_from("<I", ext)
                    if 4 + k * cls.CLASS.size != ln:
                        raise struct.error
                    classes = tuple((name.rstrip(b"\0").decode("ascii", "replace"), n)
                                    for name, n in cls.CLASS.iter_unpack(ext[4:]))
                pos += cls.EXT.size + ln
        except struct.error:
            raise MemberError(f"{where}: the member's footer is malformed; the member is damaged; "
                              "join --allow-incomplete finds its chunks by reading it record by record") from None
        return cls(state, chunks, bytes_in, offs, note, degraded, member_index, excluded, totals, classes)


class Trailer(Record, fields=(
        "magic", "version", "state", "dump_id", "member_index", "member_count", "footer_offset",
        "footer_length", "member_length",
        "checksum"),    # xxh3_64 seeded with dump_seed(dump_id) of bytes 0..55
        defaults=(0,)):
    """The last TRAILER_SIZE bytes of a finalized member (version 2): found from the end.

    A streamed member cannot rewrite its header at offset 0; readers whose
    header says "never finalized" look here.  ``member_length`` is the
    member's length, trailer included (its own end), so a trailer of another
    length (an earlier, longer member on the same device) is not taken.
    """
    __slots__ = ()

    STRUCT = struct.Struct("<4sHH16sIIQQQQ")

    def pack(self) -> bytes:
        b = self.STRUCT.pack(*self[:-1], 0)[:-8]
        return b + struct.pack("<Q", checksum(b, dump_seed(self.dump_id)))

    @classmethod
    def unpack(cls, data: bytes, dump_id: bytes) -> "Trailer | None":
        """The trailer in ``data`` if it is one of dump ``dump_id``, sound; else None."""
        if len(data) != cls.STRUCT.size or data[:4] != TRAILER_MAGIC:
            return None
        t = cls(*cls.STRUCT.unpack(data))
        if t.dump_id != dump_id or checksum(data[:-8], dump_seed(dump_id)) != t.checksum:
            return None
        return t


TRAILER_SIZE = Trailer.STRUCT.size
