"""Chunk records: encode, decode, and pages the source cannot give."""

import pytest

from stripedump.codecs import CodecSpec
from stripedump.errors import SourceError, VerifyError
from stripedump.format import (BLOCK_KIND_SHIFT, BLOCK_LEN_MASK, BLOCK_RAW, BLOCK_UNREADABLE, CHUNK_HEADER_SIZE,
                               CHUNK_UNREADABLE, ChunkHeader)
from stripedump.member import decode_chunk, encode_chunk, read_chunk, unreadable_ranges
from stripedump.plan import Plan
from stripedump.vmcore import Source


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
