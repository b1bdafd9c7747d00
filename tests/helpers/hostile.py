"""Hostile members for the size-field tests: fields set to extremes, checks resealed.

A field changed at random usually just fails its record's CRC or checksum;
to test that every length, count and offset is checked before it sizes an
allocation or a loop, these helpers change a field and then recompute the
check that covers it, so the reader has to reject the value itself.  Also: a
runner that starts a stripedump command under a memory limit (RLIMIT_AS) and
reports its peak RSS.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import subprocess
import sys
import zlib

from stripedump.format import structs as fmt
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (name, where, offset in that structure, struct code)
HEADER_FIELDS = [("member_index", 28, "I"), ("member_count", 32, "I"), ("page_size", 40, "I"),
                 ("chunk_pages", 44, "I"), ("block_pages", 48, "I"), ("manifest_offset", 60, "Q"),
                 ("manifest_length", 68, "Q"), ("footer_offset", 76, "Q"), ("footer_length", 84, "Q"),
                 ("features_required", 92, "Q")]
CHUNK_FIELDS = [("chunk_id", 24, "Q"), ("start", 32, "Q"), ("raw_length", 40, "Q"), ("nblocks", 48, "I"),
                ("payload_length", 52, "I"), ("payload_checksum", 56, "Q"), ("kept_pages", 64, "I"),
                ("flags", 6, "B")]
FOOTER_FIELDS = [("state", 0, "I"), ("member_index", 4, "I"), ("chunks", 8, "Q"), ("bytes_in", 16, "Q"),
                 ("index_count", 32, "I")]
INDEX_FIELDS = [("chunk_id", 0, "Q"), ("offset", 8, "Q"), ("length", 16, "I")]
EXTREMES = [0, 1, 0xFF, 0xFFFF, 1 << 30, (1 << 31) + 7, (1 << 32) - 1, 1 << 40, 1 << 52, (1 << 64) - 1]

MANIFEST_FIELDS = {
    "n_chunks": lambda m, v: m["plan"].__setitem__("n_chunks", v),
    "pfn_range_end": lambda m, v: m["plan"]["pfn_ranges"][-1].__setitem__(1, v),
    "chunk_pages": lambda m, v: m["plan"].__setitem__("chunk_pages", v),
    "residue_end": lambda m, v: m["plan"]["residue"][-1].__setitem__(1, v),
    "source_size": lambda m, v: m["source"].__setitem__("size", v),
    "segment_filesz": lambda m, v: m["source"]["segments"][-1].__setitem__("filesz", v),
    "segment_memsz": lambda m, v: m["source"]["segments"][-1].__setitem__("memsz", v),
    "segment_offset": lambda m, v: m["source"]["segments"][-1].__setitem__("offset", v),
    "block_bytes": lambda m, v: m.__setitem__("block_bytes", v),
    "members": lambda m, v: m.__setitem__("members", v),
    "segments_count": lambda m, v: m["source"].__setitem__("segments", m["source"]["segments"] * min(v, 50000)),
    "segments_flood": lambda m, v: m["source"].__setitem__("segments", [{}] * min(v, 1 << 20)),
}


def _fit(code: str, v: int) -> int:
    return v & ((1 << (8 * struct.calcsize(code))) - 1)


def _read_header(path):
    with open(path, "rb") as f:
        data = f.read(fmt.HEADER_BLOCK)
    return fmt.MemberHeader(*fmt.MemberHeader.STRUCT.unpack_from(data))


def set_header_field(path: str, name: str, value: int) -> None:
    off, code = next((o, c) for n, o, c in HEADER_FIELDS if n == name)
    with open(path, "r+b") as f:
        b = bytearray(f.read(fmt.MemberHeader.STRUCT.size))
        struct.pack_into("<" + code, b, off, _fit(code, value))
        struct.pack_into("<I", b, 108, zlib.crc32(b[:108]))
        f.seek(0)
        f.write(b)


def first_chunk_offset(path: str) -> int:
    h = _read_header(path)
    return fmt.first_record_offset(h.manifest_offset, h.manifest_length)


def set_chunk_field(path: str, name: str, value: int) -> None:
    """Change a field of the member's first chunk record and reseal its header CRC."""
    off, code = next((o, c) for n, o, c in CHUNK_FIELDS if n == name)
    at = first_chunk_offset(path)
    with open(path, "r+b") as f:
        f.seek(at)
        b = bytearray(f.read(fmt.CHUNK_HEADER_SIZE))
        struct.pack_into("<" + code, b, off, _fit(code, value))
        fmt.seal_chunk_header(b)
        f.seek(at)
        f.write(b)


def make_zero_chunk(path: str, raw_length: int) -> None:
    """Turn the first chunk record into a sound all-zero record that claims ``raw_length`` bytes.

    72 bytes that a reader which trusts ``raw_length`` expands into that
    many zeros (issue 9 case 7: a 52-byte record cost 512 MiB per worker).
    """
    set_chunk_field(path, "flags", fmt.CHUNK_ALL_ZERO)
    set_chunk_field(path, "nblocks", 0)
    set_chunk_field(path, "payload_length", 0)
    set_chunk_field(path, "payload_checksum", fmt.checksum(b""))
    set_chunk_field(path, "raw_length", raw_length)


def _reseal_record(f, at: int, mutate) -> None:
    f.seek(at)
    head = f.read(fmt.RecordHead.STRUCT.size)
    magic, length, did, _ = fmt.RecordHead.STRUCT.unpack(head)
    body = bytearray(f.read(length))
    mutate(body)
    f.seek(at)
    f.write(fmt.pack_record(magic, bytes(body), did))


def set_footer_field(path: str, name: str, value: int) -> None:
    off, code = next((o, c) for n, o, c in FOOTER_FIELDS if n == name)
    h = _read_header(path)
    with open(path, "r+b") as f:
        _reseal_record(f, h.footer_offset,
                       lambda body: struct.pack_into("<" + code, body, off, _fit(code, value)))


def set_index_field(path: str, name: str, value: int) -> None:
    """Change a field of the first entry of the member's first index record."""
    off, code = next((o, c) for n, o, c in INDEX_FIELDS if n == name)
    h = _read_header(path)
    with open(path, "r+b") as f:
        f.seek(h.footer_offset + fmt.RecordHead.STRUCT.size + 36)
        (first_index,) = struct.unpack("<Q", f.read(8))
        _reseal_record(f, first_index, lambda body: struct.pack_into("<" + code, body, off, _fit(code, value)))


def set_manifest_field(paths, name: str, value: int) -> None:
    """Rewrite the manifest of every member with one field changed, checksums and headers resealed."""
    for p in paths:
        h = _read_header(p)
        with open(p, "r+b") as f:
            f.seek(h.manifest_offset)
            rec = f.read(h.manifest_length)
            m = fmt.unpack_manifest(rec, p, h.dump_id)
            MANIFEST_FIELDS[name](m, value)
            new = fmt.pack_manifest(m, h.dump_id)
            f.seek(h.manifest_offset)
            f.write(new)
        set_header_field(p, "manifest_length", len(new))


_WRAPPER = """
import resource, subprocess, sys
limit, report = int(sys.argv[1]), sys.argv[2]
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
rc = subprocess.call(sys.argv[3:])
with open(report, "w") as f:
    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024))
sys.exit(rc)
"""


def run_limited(args, limit: int, tmp, timeout: float = 120) -> tuple[int, str, str, int]:
    """``python -m stripedump ARGS`` under RLIMIT_AS ``limit``: (exit, stdout, stderr, peak RSS in bytes).

    A small wrapper sets the limit (inherited by every process of the
    command) and reports the largest RSS of the command and its children
    (``getrusage(RUSAGE_CHILDREN)`` after waiting for it).
    """
    report = os.path.join(str(tmp), "maxrss")
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-c", _WRAPPER, str(limit), report, sys.executable, "-m", "stripedump",
                        *map(str, args)], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL,
                       timeout=timeout)
    with open(report) as f:
        rss = int(f.read())
    os.unlink(report)
    return p.returncode, p.stdout, p.stderr, rss


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def dumps(obj) -> str:
    return json.dumps(obj)
