"""Every on-disk structure of a stripedump member, and nothing else.

Why one module: the layout is the contract between a dump taken in a capture
kernel today and a join run years later on another machine.  Each record has
a magic, and the member header has a version; readers refuse a newer major
version instead of misreading it.  ``docs/format.md`` draws the same layout
byte by byte; a test checks the two agree on sizes.

A member is (all integers little-endian):

    0        MemberHeader, padded to HEADER_BLOCK (4 KiB); rewritten last
    4096     ManifestRecord + zlib(JSON manifest), identical in every member
    ...      ChunkRecord + block table + payload, in the order written
             IndexRecord + entries, after every INDEX_EVERY chunks
    footer   FooterRecord + offsets of the IndexRecords (written last)

Every record describes itself (magic, lengths, checksums) so a member whose
footer never reached the disk can still be walked record by record.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import NamedTuple

import xxhash

from .errors import MemberError, VerifyError

VERSION = 1
HEADER_BLOCK = 4096
INDEX_EVERY = 1024
RECORD_ALIGN = 4096     # the first chunk record starts at the manifest's end rounded up to this

MEMBER_MAGIC = b"STRIPEDM"
MANIFEST_MAGIC = b"SDMF"
CHUNK_MAGIC = b"SDCK"
INDEX_MAGIC = b"SDIX"
FOOTER_MAGIC = b"SDFT"
DEGRADED_TAG = b"DGRD"        # footer extension: members dropped by --on-disk-error continue
RECORD_MAGICS = (CHUNK_MAGIC, INDEX_MAGIC, FOOTER_MAGIC)   # what may follow the manifest

# member states (MemberHeader.state)
STATE_WRITING, STATE_COMPLETE, STATE_INCOMPLETE = 0, 1, 2
STATE_NAMES = {STATE_WRITING: "writing (never finalized)", STATE_COMPLETE: "complete",
               STATE_INCOMPLETE: "incomplete"}

CHECKSUM_XXH3_64 = 1

# chunk kinds
KIND_PAGES, KIND_FILE = 0, 1
# chunk flags
CHUNK_ALL_ZERO = 0x1          # every block is zero: no block table, no payload
CHUNK_UNREADABLE = 0x2        # some blocks could not be read from the source (BLOCK_UNREADABLE)

# block table entry: top 2 bits = how stored, low 30 bits = stored length
BLOCK_COMPRESSED, BLOCK_RAW, BLOCK_ZERO, BLOCK_UNREADABLE = 0, 1, 2, 3
BLOCK_LEN_MASK = (1 << 30) - 1
MAX_BLOCK = BLOCK_LEN_MASK


def checksum(data) -> int:
    return xxhash.xxh3_64_intdigest(data)


def first_record_offset(manifest_offset: int, manifest_length: int) -> int:
    """Member offset of the first chunk record: page-aligned, so O_DIRECT can write from there."""
    return -(-(manifest_offset + manifest_length) // RECORD_ALIGN) * RECORD_ALIGN


class MemberHeader(NamedTuple):
    magic: bytes
    version: int
    state: int
    dump_id: bytes
    member_index: int
    member_count: int
    codec_id: int
    codec_level: int
    checksum_algo: int
    page_size: int
    chunk_pages: int
    block_pages: int
    created: int
    manifest_offset: int
    manifest_length: int
    footer_offset: int
    footer_length: int
    crc: int = 0

    STRUCT = struct.Struct("<8sHH16sIIBbBxIIIQQQQQI")

    def pack(self) -> bytes:
        body = self.STRUCT.pack(*self[:-1], 0)[:-4]
        return body + struct.pack("<I", zlib.crc32(body))

    @classmethod
    def unpack(cls, data: bytes, where: str) -> "MemberHeader":
        if len(data) < cls.STRUCT.size or data[:8] != MEMBER_MAGIC:
            raise MemberError(f"{where}: not a stripedump member (no member header)")
        h = cls(*cls.STRUCT.unpack_from(data))
        if h.version < 1:
            raise MemberError(f"{where}: member format version {h.version} is not valid")
        if h.version > VERSION:
            raise MemberError(f"{where}: member format version {h.version} is newer than this "
                              f"stripedump understands ({VERSION}); upgrade stripedump")
        if zlib.crc32(data[:cls.STRUCT.size - 4]) != h.crc:
            raise MemberError(f"{where}: member header is corrupt (checksum mismatch)")
        if h.checksum_algo != CHECKSUM_XXH3_64:
            raise MemberError(f"{where}: unknown checksum algorithm {h.checksum_algo}")
        if h.member_count == 0 or h.member_index >= h.member_count or h.page_size < 512 \
                or h.page_size & (h.page_size - 1) or h.chunk_pages == 0 or h.block_pages == 0:
            raise MemberError(f"{where}: member header has impossible geometry")
        return h


class RecordHead(NamedTuple):
    """Common head of manifest, index and footer records: magic, length, checksum."""
    magic: bytes
    length: int        # bytes after this head
    checksum: int      # xxh3_64 of those bytes

    STRUCT = struct.Struct("<4sIQ")


def pack_record(magic: bytes, body: bytes) -> bytes:
    return RecordHead.STRUCT.pack(magic, len(body), checksum(body)) + body


def unpack_record(data: bytes, magic: bytes, where: str) -> bytes:
    """The body of a record read whole (head included); checks magic and checksum."""
    if len(data) < RecordHead.STRUCT.size:
        raise MemberError(f"{where}: truncated record")
    m, length, csum = RecordHead.STRUCT.unpack_from(data)
    if m != magic:
        raise MemberError(f"{where}: expected a {magic.decode()} record, found {m!r}")
    body = data[RecordHead.STRUCT.size:RecordHead.STRUCT.size + length]
    if len(body) != length:
        raise MemberError(f"{where}: {magic.decode()} record is truncated")
    if checksum(body) != csum:
        raise MemberError(f"{where}: {magic.decode()} record is corrupt (checksum mismatch)")
    return body


def pack_manifest(manifest: dict) -> bytes:
    return pack_record(MANIFEST_MAGIC, zlib.compress(json.dumps(manifest, sort_keys=True).encode(), 6))


MAX_MANIFEST = 256 << 20


def unpack_manifest(data: bytes, where: str) -> dict:
    body = unpack_record(data, MANIFEST_MAGIC, where)
    try:
        d = zlib.decompressobj()
        text = d.decompress(body, MAX_MANIFEST)
        m = json.loads(text)
    except (zlib.error, ValueError) as e:
        raise MemberError(f"{where}: manifest cannot be decoded: {e}") from None
    if not isinstance(m, dict):
        raise MemberError(f"{where}: manifest is not an object")
    return m


class ChunkHeader(NamedTuple):
    magic: bytes
    kind: int
    codec_id: int
    flags: int
    chunk_id: int
    start: int          # first PFN (KIND_PAGES) or file offset (KIND_FILE)
    raw_length: int     # bytes of source data the chunk stands for
    nblocks: int        # entries in the block table (0 when CHUNK_ALL_ZERO)
    payload_length: int  # block table + compressed blocks
    payload_checksum: int  # xxh3_64 of block table + compressed blocks
    crc: int = 0

    STRUCT = struct.Struct("<4sBBBxQQQIIQI")

    def pack_into(self, buf, offset: int = 0) -> None:
        self.STRUCT.pack_into(buf, offset, *self[:-1], 0)
        crc = zlib.crc32(memoryview(buf)[offset:offset + self.STRUCT.size - 4])
        struct.pack_into("<I", buf, offset + self.STRUCT.size - 4, crc)

    @classmethod
    def unpack(cls, data, where: str) -> "ChunkHeader":
        if len(data) < cls.STRUCT.size:
            raise VerifyError(f"{where}: chunk record is truncated")
        h = cls(*cls.STRUCT.unpack_from(data))
        if h.magic != CHUNK_MAGIC:
            raise VerifyError(f"{where}: no chunk record here")
        if zlib.crc32(memoryview(data)[:cls.STRUCT.size - 4]) != h.crc:
            raise VerifyError(f"{where}: chunk header is corrupt (checksum mismatch)")
        return h

    @property
    def record_length(self) -> int:
        return self.STRUCT.size + self.payload_length


CHUNK_HEADER_SIZE = ChunkHeader.STRUCT.size


class IndexEntry(NamedTuple):
    chunk_id: int
    offset: int          # of the ChunkRecord in the member
    length: int          # whole record
    checksum: int        # the record's payload checksum, repeated

    STRUCT = struct.Struct("<QQIQ")


def unpack_index(data: bytes, where: str) -> list[IndexEntry]:
    body = unpack_record(data, INDEX_MAGIC, where)
    if len(body) % IndexEntry.STRUCT.size:
        raise MemberError(f"{where}: index record has a partial entry")
    return [IndexEntry(*t) for t in IndexEntry.STRUCT.iter_unpack(body)]


class Footer(NamedTuple):
    state: int
    chunks: int          # chunk records in this member
    bytes_in: int        # source bytes those chunks stand for
    index_offsets: tuple  # offsets of the IndexRecords, in order
    note: str            # why the member is incomplete, if it is
    # --on-disk-error continue: ((failed member index, its chunks stored here), ...)
    # for every member the dump dropped; () when none was (the DGRD extension)
    degraded: tuple = ()

    HEAD = struct.Struct("<IQQI")
    EXT = struct.Struct("<4sI")          # extension after the note: tag, body length
    DEGRADED = struct.Struct("<IQ")      # one DGRD entry: member index, chunks taken over

    def pack(self) -> bytes:
        note = self.note.encode()[:4096]
        body = self.HEAD.pack(self.state, self.chunks, self.bytes_in, len(self.index_offsets))
        body += struct.pack(f"<{len(self.index_offsets)}Q", *self.index_offsets)
        body += struct.pack("<H", len(note)) + note
        if self.degraded:
            ext = struct.pack("<I", len(self.degraded)) + b"".join(
                self.DEGRADED.pack(m, n) for m, n in self.degraded)
            body += self.EXT.pack(DEGRADED_TAG, len(ext)) + ext
        return pack_record(FOOTER_MAGIC, body)

    @classmethod
    def unpack(cls, data: bytes, where: str) -> "Footer":
        body = unpack_record(data, FOOTER_MAGIC, where)
        degraded: tuple = ()
        try:
            state, chunks, bytes_in, n = cls.HEAD.unpack_from(body)
            offs = struct.unpack_from(f"<{n}Q", body, cls.HEAD.size)
            pos = cls.HEAD.size + 8 * n
            (nl,) = struct.unpack_from("<H", body, pos)
            note = body[pos + 2:pos + 2 + nl].decode("utf-8", "replace")
            pos += 2 + nl
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
                pos += cls.EXT.size + ln
        except struct.error:
            raise MemberError(f"{where}: footer record is malformed") from None
        return cls(state, chunks, bytes_in, offs, note, degraded)
