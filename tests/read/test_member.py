"""Chunk records: encode, decode, and pages the source cannot give."""

import struct

import pytest

from stripedump.format.codecs import CodecSpec
from stripedump.errors import SourceError, VerifyError
from stripedump.format.structs import (BLOCK_KIND_SHIFT, BLOCK_LEN_MASK, BLOCK_RAW, BLOCK_UNREADABLE, CHUNK_HEADER_SIZE,
                               CHUNK_UNREADABLE, ChunkHeader)
from stripedump.format.blocktable import unreadable_ranges
from stripedump.format.decode import decode_chunk, read_chunk
from stripedump.format.encode import encode_chunk
from stripedump.format.plan import Plan
from stripedump.source.vmcore import Source


@pytest.mark.parametrize("block", [4096, 16384])
def test_failing_reads_become_unreadable_blocks(vmcore, block):
    b = vmcore("kernel")
    with Source(b.path, use_mmap=False) as src:
        plan = Plan(src.pfn_ranges, [], 4096, 64)
        chunk = next(c for c in plan if c.start <= 0x1010 < c.start + c.count)
        good = bytes(src.phys_window(chunk.start, chunk.count).view())
        bad_off = src.owners[-1].offset + 0x1011 * 4096 - src.owners[-1].start
        real = src._pread
        calls = []

        def pread(offset, length):
            calls.append(offset)
            if offset <= bad_off < offset + length:
                raise SourceError("read error: Input/output error")
            return real(offset, length)
        src._pread = pread
        out = bytearray(1 << 20)
        length, csum, nbad = encode_chunk(src, CodecSpec("zstd").make(), chunk, block, out, bytes(block))
    assert nbad == 1
    assert calls.count(bad_off) == 2                 # retried once, page by page
    rec = bytes(out[:length])
    h, data, runs = decode_chunk(rec, "test", block, {})
    assert h.flags & CHUNK_UNREADABLE
    a = (0x1011 - chunk.start) * 4096
    lo = a - a % block
    assert unreadable_ranges(h, memoryview(rec)[CHUNK_HEADER_SIZE:], block) == [(lo, lo + block)]
    expect = bytearray(good)
    expect[lo:lo + block] = bytes(block)
    assert bytes(data) == bytes(expect)


def test_unreadable_block_with_a_length_is_corrupt(vmcore):
    b = vmcore("kernel")
    import struct
    with Source(b.path) as src:
        plan = Plan(src.pfn_ranges, [], 4096, 16)
        out = bytearray(1 << 20)
        for c in plan:       # a chunk whose first block is stored raw
            length, _, _ = encode_chunk(src, CodecSpec("none").make(), c, 4096, out, bytes(4096))
            if length > CHUNK_HEADER_SIZE and \
                    struct.unpack_from("<I", out, CHUNK_HEADER_SIZE)[0] >> BLOCK_KIND_SHIFT == BLOCK_RAW:
                break
    rec = bytearray(out[:length])
    # turn block 0 (raw, 4096 bytes) into "unreadable" without dropping its length
    e = struct.unpack_from("<I", rec, CHUNK_HEADER_SIZE)[0]
    struct.pack_into("<I", rec, CHUNK_HEADER_SIZE, (BLOCK_UNREADABLE << BLOCK_KIND_SHIFT) | (e & BLOCK_LEN_MASK))
    import xxhash
    h = ChunkHeader.unpack(rec, "test")
    h._replace(payload_checksum=xxhash.xxh3_64_intdigest(rec[CHUNK_HEADER_SIZE:])).pack_into(rec)
    with pytest.raises(VerifyError, match="no data but a length"):
        read_chunk(bytes(rec), "test", 4096)


# -- format v2: the trailer, and the dump id in every record ---------------------

import os  # noqa: E402
import shutil  # noqa: E402

from stripedump.tools import synth  # noqa: E402
from stripedump.dump.config import DumpConfig  # noqa: E402
from stripedump.read.config import JoinConfig  # noqa: E402
from stripedump.errors import IncompleteDump  # noqa: E402
from stripedump.format.structs import TRAILER_SIZE, ChunkHeaderV1, V1_BLOCK_KIND_SHIFT, V1_CHUNK_MAGIC  # noqa: E402
from stripedump.read.join import join  # noqa: E402
from stripedump.read.member import MemberReader, WalkReport  # noqa: E402
from stripedump.dump.coordinator import dump  # noqa: E402


@pytest.fixture(scope="module")
def two_dumps(tmp_path_factory):
    d = tmp_path_factory.mktemp("trailer")
    b = synth.build(str(d / "vm"), **synth.layouts()["kernel"])
    out = []
    for name in ("a", "b"):
        t = (str(d / f"{name}0"), str(d / f"{name}1"))
        dump(DumpConfig(b.path, t, CodecSpec("lz4"), 1, 256 << 10))
        out.append(t)
    return b.path, out


def _header_not_rewritten(path):
    """As a member stopped after its trailer but before the header rewrite (or a streamed one) is."""
    r = MemberReader(path)
    h = r.header._replace(state=0, footer_offset=0, footer_length=0)
    r.close()
    with open(path, "r+b") as f:
        f.write(h.pack())


def test_footer_is_found_through_the_trailer(two_dumps, tmp_path):
    src, (a, _) = two_dumps
    ms = [str(shutil.copy(m, tmp_path / os.path.basename(m))) for m in a]
    _header_not_rewritten(ms[1])
    r = MemberReader(ms[1])
    assert r.header.footer_offset == 0 and r.trailer() is not None and r.footer().state == 1
    r.close()
    join(JoinConfig(tuple(ms), str(tmp_path / "o")))           # complete: no --allow-incomplete needed
    with open(tmp_path / "o", "rb") as f, open(src, "rb") as g:
        assert f.read() == g.read()


def test_trailer_of_another_dump_is_not_taken(two_dumps, tmp_path):
    src, (a, b) = two_dumps
    ms = [str(shutil.copy(m, tmp_path / os.path.basename(m))) for m in a]
    _header_not_rewritten(ms[1])
    with open(b[1], "rb") as f:
        f.seek(-TRAILER_SIZE, os.SEEK_END)
        foreign = f.read()
    with open(ms[1], "r+b") as f:
        f.seek(-TRAILER_SIZE, os.SEEK_END)
        f.write(foreign)
    r = MemberReader(ms[1])
    assert r.trailer() is None and r.footer() is None
    r.close()
    with pytest.raises(IncompleteDump, match="never finalized"):
        join(JoinConfig(tuple(ms), str(tmp_path / "o")))


def test_walk_stops_at_a_record_of_another_dump(two_dumps, tmp_path):
    """Member 1 of dump A, its second half replaced by the same bytes of dump B's member 1."""
    src, (a, b) = two_dumps
    m = str(shutil.copy(a[1], tmp_path / "m"))
    _header_not_rewritten(m)
    r = MemberReader(m)
    entries = list(r.walk())
    r.close()
    cut = entries[len(entries) // 2].offset
    with open(b[1], "rb") as f:
        f.seek(cut)
        tail = f.read()
    with open(m, "r+b") as f:
        f.seek(cut)
        f.write(tail)
        f.truncate()
    rep = WalkReport()
    r = MemberReader(m)
    got = list(r.walk(report=rep))
    r.close()
    assert got == entries[:len(entries) // 2]
    assert rep.stopped_at == cut and "another dump" in rep.reason


def test_version_1_record_sliced_at_the_version_2_size_still_gives_its_ranges(vmcore):
    """join and kdump slice a record's body at CHUNK_HEADER_SIZE (72); a version 1 record's is 52."""
    b = vmcore("kernel")
    with Source(b.path, use_mmap=False) as src:
        plan = Plan(src.pfn_ranges, [], 4096, 16)
        chunk = next(c for c in plan if c.start <= 0x1010 < c.start + c.count)
        real = src._pread
        bad = src.owners[-1].offset + 0x1011 * 4096 - src.owners[-1].start

        def pread(offset, length):
            if offset <= bad < offset + length:
                raise SourceError("read error: Input/output error")
            return real(offset, length)
        src._pread = pread
        out = bytearray(1 << 20)
        n, _, _ = encode_chunk(src, CodecSpec("zlib").make(), chunk, 4096, out, bytes(4096))
    h = ChunkHeader.unpack(out, "t")
    body = bytearray(out[CHUNK_HEADER_SIZE:n])
    for i in range(h.nblocks):            # the table in version 1's encoding
        e = struct.unpack_from("<I", body, 4 * i)[0]
        struct.pack_into("<I", body, 4 * i, (e >> BLOCK_KIND_SHIFT) << V1_BLOCK_KIND_SHIFT | (e & BLOCK_LEN_MASK))
    import xxhash
    import zlib
    v1 = bytearray(ChunkHeaderV1.STRUCT.pack(V1_CHUNK_MAGIC, h.kind, h.codec_id, h.flags, h.chunk_id, h.start,
                                             h.raw_length, h.nblocks, len(body), xxhash.xxh3_64_intdigest(body), 0))
    struct.pack_into("<I", v1, 48, zlib.crc32(v1[:48]))
    rec = bytes(v1 + body)
    h1, data, _ = decode_chunk(rec, "t", 4096, {})
    assert h1.version == 1 and h1.header_size == 52
    want = [(0x1011 * 4096 - chunk.start * 4096, 0x1012 * 4096 - chunk.start * 4096)]
    assert unreadable_ranges(h1, memoryview(rec)[CHUNK_HEADER_SIZE:h1.record_length], 4096) == want
    assert unreadable_ranges(h1, memoryview(rec)[52:], 4096) == want


def test_excluded_blocks_and_kept_pages(vmcore):
    """A block marked excluded (dump levels, issue 11) stores nothing, is not data, and kept_pages says so."""
    from stripedump.format.structs import BLOCK_EXCLUDED, CHUNK_EXCLUDED
    from stripedump.format.blocktable import excluded_ranges
    import xxhash
    b = vmcore("kernel")
    with Source(b.path) as src:
        plan = Plan(src.pfn_ranges, [], 4096, 16)
        out = bytearray(1 << 20)
        for c in plan:        # a chunk of 16 pages whose first block holds data
            n, _, _ = encode_chunk(src, CodecSpec("zstd").make(), c, 4096, out, bytes(4096))
            h = ChunkHeader.unpack(out, "t")
            if c.count == 16 and n > CHUNK_HEADER_SIZE and \
                    struct.unpack_from("<I", out, CHUNK_HEADER_SIZE)[0] >> BLOCK_KIND_SHIFT in (0, 1):
                break
    assert h.kept_pages == 16
    e = struct.unpack_from("<I", out, CHUNK_HEADER_SIZE)[0]
    body = bytearray(out[CHUNK_HEADER_SIZE:n])
    struct.pack_into("<I", body, 0, BLOCK_EXCLUDED << BLOCK_KIND_SHIFT)
    body = body[:4 * h.nblocks] + body[4 * h.nblocks + (e & BLOCK_LEN_MASK):]     # its stored bytes go
    rec = bytearray(CHUNK_HEADER_SIZE) + body
    h._replace(flags=h.flags | CHUNK_EXCLUDED, payload_length=len(body), kept_pages=15,
               payload_checksum=xxhash.xxh3_64_intdigest(bytes(body))).pack_into(rec)
    h2, data, runs = decode_chunk(bytes(rec), "t", 4096, {})
    assert excluded_ranges(h2, memoryview(rec)[CHUNK_HEADER_SIZE:], 4096) == [(0, 4096)]
    assert all(a >= 4096 for a, _ in runs) and bytes(data[:4096]) == bytes(4096)
    read_chunk(bytes(rec), "t", 4096, page_size=4096)
    bad = bytearray(rec)
    h._replace(flags=h.flags | CHUNK_EXCLUDED, payload_length=len(body), kept_pages=16,
               payload_checksum=xxhash.xxh3_64_intdigest(bytes(body))).pack_into(bad)
    with pytest.raises(VerifyError, match="kept-page count"):
        read_chunk(bytes(bad), "t", 4096, page_size=4096)
    h._replace(payload_length=len(body), kept_pages=15,           # no CHUNK_EXCLUDED flag: refused
               payload_checksum=xxhash.xxh3_64_intdigest(bytes(body))).pack_into(bad)
    with pytest.raises(VerifyError, match="excluded"):
        read_chunk(bytes(bad), "t", 4096)


def test_unknown_optional_feature_is_ignored(two_dumps, tmp_path):
    src, (a, _) = two_dumps
    ms = [str(shutil.copy(m, tmp_path / os.path.basename(m))) for m in a]
    for m in ms:
        r = MemberReader(m)
        h = r.header._replace(features_optional=1 << 9)
        r.close()
        with open(m, "r+b") as f:
            f.write(h.pack())
    join(JoinConfig(tuple(ms), str(tmp_path / "o")))
    with open(tmp_path / "o", "rb") as f, open(src, "rb") as g:
        assert f.read() == g.read()
