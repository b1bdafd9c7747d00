"""docs/format.md must agree with stripedump/format/structs.py.

The doc is the authoritative description of the member layout; these tests
parse the parts of it that state numbers (the "Sizes" lines, the struct
tables marked ``<!-- struct: NAME -->``, the ``<!-- constants -->`` and
``<!-- codecs -->`` tables, the version line) and compare them with the code,
so a change to a struct cannot silently leave the doc behind.
"""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import pytest
import xxhash

from stripedump.format import codecs

from stripedump.format import structs as fmt
from stripedump.errors import MemberError
from stripedump.format.structs import record_bound

from conftest import ROOT

DOC = Path(ROOT) / "docs" / "format.md"

TYPE_NAMES = {"B": "u8", "b": "i8", "H": "u16", "h": "i16", "I": "u32", "i": "i32",
              "Q": "u64", "q": "i64", "x": "pad"}

# struct name in the doc -> (struct.Struct, field names in order)
STRUCTS = {
    "MemberHeader": (fmt.MemberHeader.STRUCT, fmt.MemberHeader._fields),
    "RecordHead": (fmt.RecordHead.STRUCT, fmt.RecordHead._fields),
    "ChunkHeader": (fmt.ChunkHeader.STRUCT, fmt.ChunkHeader._fields),
    "IndexEntry": (fmt.IndexEntry.STRUCT, fmt.IndexEntry._fields),
    "Footer.HEAD": (fmt.Footer.HEAD, ("state", "member_index", "chunks", "bytes_in", "excluded_pages",
                                      "index_count")),
    "CodecTotal": (fmt.CodecTotal.STRUCT, fmt.CodecTotal._fields),
    "Trailer": (fmt.Trailer.STRUCT, fmt.Trailer._fields),
    # version 1, read only
    "MemberHeaderV1": (fmt.MemberHeaderV1.STRUCT,
                       tuple(f for f in fmt.MemberHeader._fields
                             if f not in ("features_required", "features_optional"))),
    "RecordHeadV1": (fmt.RecordHeadV1.STRUCT, fmt.RecordHeadV1._fields),
    "ChunkHeaderV1": (fmt.ChunkHeaderV1.STRUCT,
                      tuple(f for f in fmt.ChunkHeader._fields if f not in ("dump_id", "kept_pages"))),
    "Footer.HEAD_V1": (fmt.Footer.HEAD_V1, ("state", "chunks", "bytes_in", "index_count")),
}


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text()


def layout(st: struct.Struct, names) -> list[tuple[int, int, str, str]]:
    """(offset, size, type, field) for every item of a little-endian struct format."""
    f = st.format
    assert f[0] == "<", f"{f}: the format must be little-endian, unaligned"
    rows, off, names = [], 0, list(names)
    for count, code in re.findall(r"(\d*)([a-zA-Z?])", f[1:]):
        n = int(count) if count else 1
        if code == "s":
            rows.append((off, n, f"bytes[{n}]", names.pop(0)))
            off += n
            continue
        for _ in range(n):
            size = struct.calcsize("<" + code)
            rows.append((off, size, TYPE_NAMES[code], "(pad)" if code == "x" else names.pop(0)))
            off += size
    assert off == st.size
    assert not names, f"{f}: fields left over: {names}"
    return rows


def table_after(doc: str, marker: str) -> list[list[str]]:
    """Body rows of the first Markdown table after ``<!-- marker -->``."""
    tag = f"<!-- {marker} -->"
    assert tag in doc, f"docs/format.md has no {tag}"
    lines = doc.split(tag, 1)[1].lstrip("\n").splitlines()
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([c.strip().strip("`") for c in line.strip().strip("|").split("|")])
    assert len(rows) > 2, f"no table after {tag}"
    return rows[2:]        # drop the heading and the |---| line


def stated_sizes(doc: str) -> dict[str, int]:
    sizes = {}
    for m in re.finditer(r"^([A-Za-z][\w .]*?): (\d+) bytes\b", doc, re.M):
        name, n = m.group(1), int(m.group(2))
        assert sizes.get(name, n) == n, f"docs/format.md states two sizes for {name}"
        sizes[name] = n
    return sizes


def test_stated_sizes_match_code(doc):
    expected = {
        "Header block": fmt.HEADER_BLOCK,
        "MemberHeader": fmt.MemberHeader.STRUCT.size,
        "RecordHead": fmt.RecordHead.STRUCT.size,
        "ChunkHeader": fmt.ChunkHeader.STRUCT.size,
        "Block table entry": record_bound(4096, 4096) - fmt.CHUNK_HEADER_SIZE - 4096,
        "IndexEntry": fmt.IndexEntry.STRUCT.size,
        "Footer head": fmt.Footer.HEAD.size,
        "CodecTotal": fmt.CodecTotal.STRUCT.size,
        "Trailer": fmt.TRAILER_SIZE,
        "MemberHeaderV1": fmt.MemberHeaderV1.STRUCT.size,
        "RecordHeadV1": fmt.RecordHeadV1.STRUCT.size,
        "ChunkHeaderV1": fmt.ChunkHeaderV1.STRUCT.size,
        "Footer head V1": fmt.Footer.HEAD_V1.size,
    }
    assert stated_sizes(doc) == expected


def test_version_line(doc):
    m = re.search(r"^Format version: (\d+)$", doc, re.M)
    assert m, "docs/format.md has no 'Format version: N' line"
    assert int(m.group(1)) == fmt.VERSION


@pytest.mark.parametrize("name", sorted(STRUCTS))
def test_struct_table_matches_code(doc, name):
    st, names = STRUCTS[name]
    want = layout(st, names)
    rows = table_after(doc, f"struct: {name}")
    got = [(int(r[0]), int(r[1]), r[2], r[3]) for r in rows[:len(want)]]
    assert got == want
    assert f"`{st.format}`" in doc, f"docs/format.md does not quote {name}'s format {st.format}"


def test_header_crc_covers_what_the_doc_says():
    h = fmt.MemberHeader(fmt.MEMBER_MAGIC, fmt.VERSION, 0, bytes(16), 0, 1, 0, 0, 1, 4096, 256, 1,
                         0, fmt.HEADER_BLOCK, 16, 0, 0, 0, 0)
    b = h.pack()
    assert len(b) == 112
    assert struct.unpack_from("<I", b, 108)[0] == zlib.crc32(b[:108])


def test_record_checks_cover_the_dump_id():
    """What the doc says each check covers: the dump id is inside every one."""
    did, other = bytes(range(16)), bytes(range(1, 17))
    rec = fmt.pack_record(fmt.INDEX_MAGIC, b"x" * 28, did)
    seed = int.from_bytes(did[:8], "little") ^ int.from_bytes(did[8:], "little")
    assert struct.unpack_from("<Q", rec, 24)[0] == xxhash.xxh3_64_intdigest(rec[:24] + rec[32:], seed)
    forged = rec[:8] + other + rec[24:]
    with pytest.raises(MemberError, match="another dump"):
        fmt.unpack_record(forged, fmt.INDEX_MAGIC, "m", did)
    buf = bytearray(fmt.CHUNK_HEADER_SIZE)
    fmt.ChunkHeader(fmt.CHUNK_MAGIC, 0, 0, 1, did, 0, 0, 4096, 0, 0, 0, 1).pack_into(buf)
    assert struct.unpack_from("<I", buf, 68)[0] == zlib.crc32(buf[:68])
    assert buf[8:24] == did
    t = fmt.Trailer(fmt.TRAILER_MAGIC, 2, 1, did, 0, 1, 8192, 100, 8356).pack()
    assert struct.unpack_from("<Q", t, 56)[0] == xxhash.xxh3_64_intdigest(t[:56], seed)
    assert fmt.Trailer.unpack(t, did) is not None and fmt.Trailer.unpack(t, other) is None


def test_constants_table_matches_code(doc):
    rows = table_after(doc, "constants")
    assert rows
    for name, value, *_ in rows:
        actual = getattr(fmt, name)
        if isinstance(actual, bytes):
            assert value.encode() == actual, name
        else:
            assert int(value, 0) == actual, name
    for name in ("VERSION", "HEADER_BLOCK", "INDEX_EVERY", "MEMBER_MAGIC", "MANIFEST_MAGIC",
                 "CHUNK_MAGIC", "INDEX_MAGIC", "FOOTER_MAGIC", "TRAILER_MAGIC", "CHUNK_ALL_ZERO",
                 "CHUNK_EXCLUDED", "BLOCK_EXCLUDED", "BLOCK_KIND_SHIFT", "BLOCK_LEN_MASK",
                 "FEATURE_EXCLUDED", "FEATURE_STREAMED", "MAX_CHUNKS", "V1_CHUNK_MAGIC"):
        assert name in {r[0] for r in rows}, f"constant {name} missing from docs/format.md"


def test_codec_table_matches_code(doc):
    rows = table_after(doc, "codecs")
    assert {r[0]: int(r[1]) for r in rows} == {n: c.ID for n, c in codecs.BY_NAME.items()}


def test_footer_extensions_are_laid_out_as_documented(doc):
    """DGRD and XCLS after the codec totals: tag, u32 length, then u32 k and k entries (<IQ, <16sQ);
    an unknown tag is skipped."""
    assert "`XCLS` (`CLASSES_TAG`)" in doc and "format of an entry: `<16sQ`" in doc
    did = bytes(range(16))
    f = fmt.Footer(1, 2, 3, (), "", ((1, 4),), 0, 7, (), (("zero", 5), ("free", 2)))
    rec = f.pack(did)
    body = rec[32:]
    pos = fmt.Footer.HEAD.size + 2 + 2       # no index offsets, an empty note, no codec totals
    assert body[pos:pos + 8] == b"DGRD" + struct.pack("<I", 4 + 12)
    pos += 8 + 16
    assert body[pos:pos + 8] == b"XCLS" + struct.pack("<I", 4 + 2 * 24)
    assert body[pos + 8:] == struct.pack("<I", 2) + struct.pack("<16sQ", b"zero", 5) + struct.pack("<16sQ", b"free", 2)
    assert fmt.Footer.unpack(rec, "t", did) == f
    odd = body + b"ZZZZ" + struct.pack("<I", 3) + b"abc"
    assert fmt.Footer.unpack(fmt.pack_record(fmt.FOOTER_MAGIC, odd, did), "t", did) == f
