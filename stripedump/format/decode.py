"""Decoding a chunk record: its header and checksum checked, its blocks expanded.

Why a module of its own: this is what readers run (join's and verify's
workers, the random-access reader, kdump output, the mount), never the dump.
``read_chunk`` checks a record's header, checksum and block table
(blocktable.py) without decompressing; ``decode_into`` expands a checked
record into a caller's buffer, checking every block's length on the way;
``decode_chunk`` does both.  Nothing read from a record sizes an allocation
before it has been checked: the largest chunk a record may claim is a
parameter, ``max_raw``, that the reader holds (``DumpSet.chunk_limit``: the
plan's chunk size once the manifest is read), not a setting of the process.
"""

from __future__ import annotations

from . import codecs as codecs_mod
from ..errors import MemberError, VerifyError
from .blocktable import check_table
from .structs import BLOCK_RAW, CHUNK_ALL_ZERO, CHUNK_FLAGS_KNOWN, MAX_CHUNK_BYTES, ChunkHeader, checksum


def read_chunk(rec, where: str, block_bytes: int, dump_id: bytes | None = None,
               page_size: int | None = None, max_raw: int = MAX_CHUNK_BYTES) -> tuple[ChunkHeader, memoryview, list]:
    """Check one record's header, checksum and block table, without decompressing.

    Returns (header, body, blocks): ``body`` is the payload and ``blocks``
    lists, for every block that is not all zero, ``(how, a, b, pos, ln)``:
    chunk bytes ``[a, b)`` stored as ``how`` (BLOCK_RAW or BLOCK_COMPRESSED)
    in ``body[pos:pos + ln]``.  Empty for an all-zero chunk.  Every length
    is checked (against ``max_raw``, the block size and the record) before
    anything is sized from it.  ``dump_id``: the record must belong to that
    dump (version 2 records).
    """
    h = ChunkHeader.unpack(rec, where)
    if dump_id is not None and h.version >= 2 and h.dump_id != dump_id:
        raise VerifyError(f"{where}: the chunk record belongs to another dump")
    if h.record_length > len(rec):
        raise VerifyError(f"{where}: chunk record is cut off")
    if h.raw_length > max_raw or h.raw_length == 0 or h.flags & ~CHUNK_FLAGS_KNOWN:
        raise VerifyError(f"{where}: implausible chunk header (length {h.raw_length}, flags {h.flags:#x})")
    body = memoryview(rec)[h.header_size:h.record_length]
    if checksum(body) != h.payload_checksum:
        raise VerifyError(f"{where}: checksum mismatch (the member is corrupt)")
    if h.flags & CHUNK_ALL_ZERO:
        if h.nblocks or h.payload_length:
            raise VerifyError(f"{where}: an all-zero chunk with a block table")
        return h, body, []
    return h, body, check_table(h, body, block_bytes, where, page_size)


def chunk_codec(h: ChunkHeader, where: str, codec_cache: dict):
    """The codec instance for a record's ``codec_id`` (one per id and process)."""
    codec = codec_cache.get(h.codec_id)
    if codec is None:
        if h.codec_id not in codecs_mod.BY_ID:
            raise MemberError(f"{where}: unknown codec id {h.codec_id}")
        codec = codec_cache[h.codec_id] = codecs_mod.BY_ID[h.codec_id]()
    return codec


def decompress_block(codec, block, size: int, where: str, i) -> bytes:
    """One block through ``codec.decompress``: exactly ``size`` bytes, or VerifyError naming block ``i``."""
    try:
        out = codec.decompress(block, size)
    except Exception as e:   # every codec library has its own error type
        raise VerifyError(f"{where}: block {i} does not decompress ({codec.name}: {e})") from None
    if len(out) != size:
        raise VerifyError(f"{where}: block {i} decompresses to {len(out)} bytes, expected {size}")
    return out


def decompress_block_into(into, codec, block, out, where: str, i) -> None:
    """``decompress_block`` into ``out`` (exactly the block's size) with ``codec.decompress_into``."""
    try:
        got = into(block, out)
    except Exception as e:   # every codec library has its own error type
        raise VerifyError(f"{where}: block {i} does not decompress ({codec.name}: {e})") from None
    if got != len(out):
        raise VerifyError(f"{where}: block {i} decompresses to {got} bytes, expected {len(out)}")


def decode_chunk(rec, where: str, block_bytes: int, codec_cache: dict,
                 max_raw: int = MAX_CHUNK_BYTES) -> tuple[ChunkHeader, bytearray, list]:
    """Check (``read_chunk``) and expand one record.

    Returns (header, data, runs): ``data`` holds ``raw_length`` bytes and
    ``runs`` the (start, end) byte ranges that are not all zero.
    """
    h, body, blocks = read_chunk(rec, where, block_bytes, max_raw=max_raw)
    return (h, *decode_checked(h, body, blocks, where, block_bytes, codec_cache))


def decode_checked(h: ChunkHeader, body, blocks: list, where: str, block_bytes: int,
                   codec_cache: dict) -> tuple[bytearray, list]:
    """(data, runs) of a record already checked by ``read_chunk`` (its ``(h, body, blocks)``):
    ``decode_chunk`` without checking it again."""
    data = bytearray(h.raw_length)
    return data, decode_into(h, body, blocks, where, block_bytes, codec_cache, data)


def decode_into(h: ChunkHeader, body, blocks: list, where: str, block_bytes: int, codec_cache: dict,
                out) -> list:
    """Expand a record checked by ``read_chunk`` (its ``(h, body, blocks)``) into ``out``.

    ``out`` (a writable buffer of at least ``raw_length`` bytes) may be
    reused from chunk to chunk (issue 12: no allocation, no page faults per
    chunk): only the bytes of the returned runs, the [start, end) ranges
    that are not all zero, are written; the rest of ``out`` keeps what it
    held.  Adjacent raw blocks are copied with one slice; blocks the codec
    can decompress in place (``Codec.decompress_into``) go straight into
    ``out``.  A block that does not decompress to its size is a VerifyError
    naming it (the careful loop below, rerun on any failure of the fast one).
    """
    runs: list[list[int]] = []
    if not blocks:
        return runs
    codec = chunk_codec(h, where, codec_cache)
    into = codec.decompress_into
    with memoryview(out) as dmv:
        if into is not None:
            try:
                _decode_fast(into, body, blocks, dmv, runs)
                return runs
            except Exception:
                runs.clear()       # the careful loop names the block and the reason
        ra = rb = rp = 0       # pending raw copy: out[ra:rb] = body[rp:rp + rb - ra] (neighbours: one copy)
        for how, a, b, pos, ln in blocks:
            if how == BLOCK_RAW:
                if not (a == rb and pos == rp + (rb - ra)):
                    if rb:
                        dmv[ra:rb] = body[rp:rp + (rb - ra)]
                    ra, rp = a, pos
                rb = b
            elif into is not None:       # straight into place: no bytes object, no copy
                decompress_block_into(into, codec, body[pos:pos + ln], dmv[a:b], where, a // block_bytes)
            else:
                dmv[a:b] = decompress_block(codec, body[pos:pos + ln], b - a, where, a // block_bytes)
            if runs and runs[-1][1] == a:
                runs[-1][1] = b
            else:
                runs.append([a, b])
        if rb:
            dmv[ra:rb] = body[rp:rp + (rb - ra)]
    return runs


class _Short(Exception):
    pass


def _decode_fast(into, body, blocks: list, dmv, runs: list) -> None:
    """``decode_into``'s loop for a codec with ``decompress_into``: no per-block call but the codec's.

    Raises on any failure (the caller reruns the careful loop for its message).
    """
    append = runs.append
    ra = rb = -1
    for how, a, b, pos, ln in blocks:
        if how == BLOCK_RAW:
            dmv[a:b] = body[pos:pos + ln]
        elif into(body[pos:pos + ln], dmv[a:b]) != b - a:
            raise _Short
        if a != rb:
            if rb >= 0:
                append([ra, rb])
            ra = a
        rb = b
    append([ra, rb])
