"""Issue 12's fast paths (format/encode, decode, blocktable, codecs) give the same records and verdicts.

- compress_into (cramjam, straight into the slot) writes blocks that the
  libraries' ordinary decompressors expand (lz4.block, python-snappy), the
  same bytes as python-snappy for snappy (what makedumpfile's readers get
  when join copies a one-page block), and records that decode to the source
  through both decode paths (decompress_into and decompress);
- the slot-end fallback (no room for the library's bound) and the general
  loop (short last block) still round trip;
- the block-table checks without a loop (``_check_table_fast``, in C
  through bytes and itertools; numpy's for large tables) accept exactly
  what the loop accepts, with the same blocks, and leave every rejection to
  the loop (same message); a process without numpy never runs the loop on a
  sound table.
"""

import importlib
import os
import random
import struct
import subprocess
import sys

import pytest

from stripedump.tools import synth
from stripedump.format.codecs import NAMES, CodecSpec
from stripedump.errors import VerifyError
from stripedump.format.structs import (BLOCK_COMPRESSED, BLOCK_EXCLUDED, BLOCK_KIND_SHIFT, BLOCK_RAW, BLOCK_UNREADABLE,
                               BLOCK_ZERO, CHUNK_HEADER_SIZE, ChunkHeader, checksum)
from stripedump.format import blocktable, encode
from stripedump.format.decode import decode_chunk, read_chunk
from stripedump.format.encode import encode_chunk
from stripedump.format.structs import record_bound
from stripedump.format.plan import Plan
from stripedump.source.vmcore import Source

from conftest import ROOT, run_python

importlib.import_module("numpy")   # loaded: read_chunk checks large tables with it (blocktable._vectorize)

PAGE = 4096


def random_pages(pfn, page_size=4096):
    return random.Random(pfn).randbytes(page_size)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A memory-like source (zero, text-like, sparse and random pages) and its 256-page chunks."""
    path = str(tmp_path_factory.mktemp("fast") / "mixed.vmcore")
    synth.build(path, [synth.Load(0, 8 << 20)])
    with Source(path) as src:
        yield src, Plan(src.pfn_ranges, [], PAGE, 256)


def chunk_bytes(src, chunk):
    with src.phys_window(chunk.start, chunk.count) as w:
        return bytes(w.view())


def test_compress_into_blocks_decode_with_the_libraries(mixed):
    import lz4.block
    import snappy
    src, plan = mixed
    data = b"".join(chunk_bytes(src, c) for c in plan)
    out = bytearray(8192)
    n_pages = n_snappy_same = 0
    for name in ("lz4", "snappy"):
        codec = CodecSpec(name).make()
        assert codec.compress_into is not None and codec.decompress_into is not None
        for a in range(0, len(data), PAGE):
            page = data[a:a + PAGE]
            room = codec.into_bound(PAGE)
            cl = codec.compress_into(memoryview(page), memoryview(out)[:room])
            blk = bytes(out[:cl])
            if name == "lz4":
                assert lz4.block.decompress(blk, uncompressed_size=PAGE) == page
            else:
                assert snappy.uncompress(blk) == page
                n_snappy_same += blk == snappy.compress(page)
                n_pages += 1
            assert codec.decompress(blk, PAGE) == page
            back = bytearray(PAGE)
            assert codec.decompress_into(blk, memoryview(back)) == PAGE and back == page
    assert n_snappy_same == n_pages


@pytest.mark.parametrize("name", ["lz4", "snappy"])
def test_decompress_into_refuses_a_block_longer_than_its_place(name):
    codec = CodecSpec(name).make()
    page = bytes(range(256)) * 16
    blk = codec.compress(page)
    with pytest.raises(Exception):
        codec.decompress_into(blk, memoryview(bytearray(PAGE - 1)))


@pytest.mark.parametrize("name", NAMES)
def test_records_round_trip_through_both_decode_paths(mixed, name):
    src, plan = mixed
    codec = CodecSpec(name).make()
    for chunk in plan:
        out = bytearray(record_bound(chunk.raw_bytes(PAGE), PAGE))     # exactly a slot's size
        n, csum, bad = encode_chunk(src, codec, chunk, PAGE, out, bytes(PAGE))
        rec = bytes(out[:n])
        expect = chunk_bytes(src, chunk)
        h, data, runs = decode_chunk(rec, "t", PAGE, {})
        assert data == expect and not bad and h.payload_checksum == csum
        plain = CodecSpec(name).make()
        plain.decompress_into = None       # the path of codecs without an into API
        assert decode_chunk(rec, "t", PAGE, {h.codec_id: plain})[1] == expect


@pytest.mark.parametrize("name", ["lz4", "snappy", "zstd", "none"])
def test_incompressible_chunk_fills_its_slot_exactly(tmp_path, name):
    """Random pages: every block is stored raw, the last ones where the slot has no room for the bound."""
    path = str(tmp_path / "random.vmcore")
    synth.build(path, [synth.Load(0, 1 << 20)], content=random_pages)
    with Source(path) as src:
        plan = Plan(src.pfn_ranges, [], PAGE, 256)
        chunk = plan.chunk(0)
        out = bytearray(record_bound(chunk.raw_bytes(PAGE), PAGE))
        n, _, _ = encode_chunk(src, CodecSpec(name).make(), chunk, PAGE, out, bytes(PAGE))
        assert n == len(out)
        h, data, runs = decode_chunk(bytes(out), "t", PAGE, {})
        assert data == chunk_bytes(src, chunk) and runs == [[0, 1 << 20]]


@pytest.mark.parametrize("name", ["lz4", "zlib", "none"])
def test_short_last_block_takes_the_general_loop(mixed, name):
    src, plan = mixed
    block = 3 * PAGE                  # 256 pages: 85 blocks of 3 pages and one of 1
    chunk = plan.chunk(3)
    out = bytearray(record_bound(chunk.raw_bytes(PAGE), block))
    n, _, _ = encode_chunk(src, CodecSpec(name).make(), chunk, block, out, bytes(block))
    assert decode_chunk(bytes(out[:n]), "t", block, {})[1] == chunk_bytes(src, chunk)


# -- the block-table check ---------------------------------------------------------

def reseal(rec: bytearray) -> bytes:
    h = ChunkHeader.unpack(rec, "t")
    h._replace(payload_checksum=checksum(memoryview(rec)[CHUNK_HEADER_SIZE:h.record_length])).pack_into(rec)
    return bytes(rec)


def verdict(rec, block):
    try:
        return read_chunk(rec, "t", block, page_size=PAGE)[2]
    except VerifyError as e:
        return str(e)


def _run_fresh(code: str) -> str:
    """Run ``code`` in a new interpreter with this tree's stripedump; its stdout (it must exit 0)."""
    p = run_python(code, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_numpy_is_never_imported_to_check_tables(tmp_path):
    """A process without numpy checks every table with the loop (a small join's workers never pay
    the import); only a process that has numpy already uses it."""
    code = ("import sys\nfrom stripedump.format import blocktable\n"
            "flags = [blocktable._vectorize() for _ in range(5000)]\n"
            "assert 'numpy' not in sys.modules\n"
            "import numpy\n"
            "print(flags.count(True), blocktable._vectorize())\n")
    assert _run_fresh(code).split() == ["0", "True"]


def test_a_process_without_numpy_checks_tables_without_the_loop(tmp_path):
    """A join worker has no numpy (the reader of a small dump never imports it): its tables are
    checked by _check_table_fast; the per-entry loop runs only for a table that needs its words."""
    path = str(tmp_path / "m.vmcore")
    synth.build(path, [synth.Load(0, 4 << 20)])
    code = ("import sys\nfrom stripedump.format import blocktable, codecs, decode, encode, structs\n"
            "from stripedump.format.plan import Plan\nfrom stripedump.source.vmcore import Source\n"
            "looped = []\nloop = blocktable._check_table\n"
            "blocktable._check_table = lambda *a: looped.append(1) or loop(*a)\n"
            f"src = Source({path!r}).__enter__()\n"
            "plan = Plan(src.pfn_ranges, [], 4096, 256)\nchecked = 0\n"
            "for c in plan:\n"
            "    out = bytearray(structs.record_bound(c.raw_bytes(4096), 4096))\n"
            "    n = encode.encode_chunk(src, codecs.CodecSpec('lz4').make(), c, 4096, out, bytes(4096))[0]\n"
            "    h, body, blocks = decode.read_chunk(bytes(out[:n]), 't', 4096, page_size=4096)\n"
            "    checked += bool(blocks)\n"
            "print(checked, len(looped), 'numpy' in sys.modules)\n")
    checked, looped, numpy = _run_fresh(code).split()
    assert int(checked) >= 3 and looped == "0" and numpy == "False"


def test_numpy_is_not_imported_where_openblas_would_abort_the_process():
    """Under a tight address-space limit importing numpy kills the process (OpenBLAS: "Memory
    allocation still failed"); the reader's fast paths then go without it, and the dump still opens."""
    code = ("import os, resource, sys\n"
            "from stripedump.runtime.machine import numpy_if_safe\n"
            "vsz = int(open('/proc/self/statm').read().split()[0]) * os.sysconf('SC_PAGE_SIZE')\n"
            "resource.setrlimit(resource.RLIMIT_AS, (vsz + (48 << 20), resource.RLIM_INFINITY))\n"
            "print(numpy_if_safe() is None, 'numpy' in sys.modules)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["True", "False"]
    p = subprocess.run([sys.executable, "-c", "from stripedump.runtime.machine import numpy_if_safe\n"
                        "import os\nprint(numpy_if_safe().__name__, os.environ.get('OPENBLAS_NUM_THREADS'))"],
                       capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in dict(os.environ, PYTHONPATH=ROOT).items() if k != "OPENBLAS_NUM_THREADS"})
    assert p.returncode == 0 and p.stdout.split() == ["numpy", "None"], p

def loop_verdict(rec, block):
    saved = blocktable.VECTOR_MIN_BLOCKS
    blocktable.VECTOR_MIN_BLOCKS = 1 << 30
    try:
        return verdict(rec, block)
    finally:
        blocktable.VECTOR_MIN_BLOCKS = saved


ENTRY_KINDS = (BLOCK_ZERO, BLOCK_RAW, BLOCK_COMPRESSED, BLOCK_UNREADABLE, BLOCK_EXCLUDED, 5, 7)


def mutate(rec: bytes, rnd: random.Random, nblocks: int, block: int) -> bytes:
    """A sealed record with one to three table entries (and maybe the payload length) changed."""
    b = bytearray(rec)
    for _ in range(rnd.randint(1, 3)):
        i = rnd.randrange(nblocks)
        off = CHUNK_HEADER_SIZE + 4 * i
        (e,) = struct.unpack_from("<I", b, off)
        kind = rnd.choice(ENTRY_KINDS)
        ln = rnd.choice((0, 1, block - 1, block, block + 1, e & ((1 << BLOCK_KIND_SHIFT) - 1),
                         rnd.randrange(1 << BLOCK_KIND_SHIFT)))
        struct.pack_into("<I", b, off, (kind << BLOCK_KIND_SHIFT) | ln)
    h = ChunkHeader.unpack(b, "t")
    if rnd.random() < 0.2:             # the payload one byte shorter or longer
        d = rnd.choice((-1, 1))
        if d < 0:
            del b[h.record_length - 1]
        else:
            b[h.record_length:h.record_length] = b"\0"
        h = h._replace(payload_length=h.payload_length + d)
        h.pack_into(b)
    if rnd.random() < 0.1:
        h._replace(kept_pages=h.kept_pages + rnd.choice((-1, 1))).pack_into(b)
    return reseal(b)


@pytest.mark.parametrize("name", ["lz4", "none"])
def test_vectorized_table_check_agrees_with_the_loop(mixed, name):
    src, plan = mixed
    rnd = random.Random(12)
    agreed_ok = agreed_bad = fast_ok = 0
    for cid in range(plan.n_chunks):
        chunk = plan.chunk(cid)
        out = bytearray(record_bound(chunk.raw_bytes(PAGE), PAGE))
        n, _, _ = encode_chunk(src, CodecSpec(name).make(), chunk, PAGE, out, bytes(PAGE))
        rec = bytes(out[:n])
        h = ChunkHeader.unpack(rec, "t")
        if not h.nblocks:
            continue
        assert h.nblocks >= blocktable.VECTOR_MIN_BLOCKS
        assert verdict(rec, PAGE) == loop_verdict(rec, PAGE)
        body = memoryview(rec)[CHUNK_HEADER_SIZE:h.record_length]
        assert blocktable._check_table_vectorized(h, body, PAGE, h.nblocks, PAGE) == verdict(rec, PAGE)
        assert blocktable._check_table_fast(h, body, PAGE, h.nblocks, PAGE) == verdict(rec, PAGE)
        for _ in range(150):
            bad = mutate(rec, rnd, h.nblocks, PAGE)
            v, lv = verdict(bad, PAGE), loop_verdict(bad, PAGE)
            assert v == lv
            bh = ChunkHeader.unpack(bad, "t")
            bbody = memoryview(bad)[CHUNK_HEADER_SIZE:bh.record_length]
            for check in (blocktable._check_table_fast, blocktable._check_table_vectorized):
                got = check(bh, bbody, PAGE, h.nblocks, PAGE) if len(bbody) >= 4 * h.nblocks else None
                assert got is None or got == lv     # accepts only what the loop accepts, with its blocks
                fast_ok += got is not None and check is blocktable._check_table_fast
            if isinstance(v, str):
                agreed_bad += 1
            else:
                agreed_ok += 1
    assert agreed_bad > 500 and agreed_ok > 10     # both outcomes were exercised
    assert fast_ok == agreed_ok       # the fast check takes every table the loop accepts (none left to it)


def test_vectorized_check_of_a_short_last_block(mixed):
    src, plan = mixed
    block = 3 * PAGE
    chunk = plan.chunk(5)
    out = bytearray(record_bound(chunk.raw_bytes(PAGE), block))
    n, _, _ = encode_chunk(src, CodecSpec("none").make(), chunk, block, out, bytes(block))
    rec = bytes(out[:n])
    assert verdict(rec, block) == loop_verdict(rec, block)
    # the last block (one page) claimed raw at the full block length: both refuse it
    b = bytearray(rec)
    off = CHUNK_HEADER_SIZE + 4 * (ChunkHeader.unpack(b, "t").nblocks - 1)
    (e,) = struct.unpack_from("<I", b, off)
    if e >> BLOCK_KIND_SHIFT == BLOCK_RAW:
        struct.pack_into("<I", b, off, (BLOCK_RAW << BLOCK_KIND_SHIFT) | block)
        bad = reseal(b)
        assert verdict(bad, block) == loop_verdict(bad, block)
        assert isinstance(verdict(bad, block), str)        # refused


def test_zero_tests_never_search_up_to_the_end_of_a_mapping():
    """CPython 3.11.0-3.11.4's mmap.find reads one byte past the searched range (gh-105235): at the
    end of a mapping that byte may be unmapped, and a worker died of SIGSEGV on a fresh Debian 12
    (Python 3.11.2).  No zero test may search a range that ends where the mapping ends."""
    import mmap
    ends = []

    class Recording(mmap.mmap):
        def find(self, sub, start=None, end=None):
            ends.append(end)
            return super().find(sub, start, end)

    ps = 4096
    m = Recording(-1, 4 * ps)
    m[ps + 5:ps + 6] = b"\x01"              # block 1 is not zero
    want = [True, False, True, True]
    assert encode._zero_flags(m, 0, 4 * ps, ps, bytes(ps)) == want
    assert encode._zero_flags(m, ps, 3 * ps, ps, bytes(ps)) == want[1:]
    out = bytearray(record_bound(4 * ps, ps))
    codec = CodecSpec.parse("lz4").make()
    table, pos, zeros, bad = encode._encode_blocks_any(codec, m, 0, memoryview(m), 4 * ps - 100, ps, out,
                                                         CHUNK_HEADER_SIZE, bytes(ps), [])
    assert zeros == 3 and bad == 0
    table, pos, zeros, bad = encode._encode_blocks_any(codec, m, 0, memoryview(m), 4 * ps, ps, out,
                                                         CHUNK_HEADER_SIZE, bytes(ps), [(ps, 2 * ps)])
    assert zeros == 3 and bad == 1
    assert ends and all(e < len(m) for e in ends), ends


# -- the zero test of the encode path (issue 12: one test per chunk) --------------------------

def reference_nonzero(data: bytes, bb: int) -> list[int]:
    return [i for i in range(len(data) // bb) if any(data[i * bb:(i + 1) * bb])]


def zero_test_windows(rnd: random.Random, bb: int, nblocks: int):
    """Windows of ``nblocks`` blocks: all zero, all random, and mixes whose non-zero blocks hold a
    single byte at the block's first, last, last-word or a random place."""
    n = bb * nblocks
    yield bytes(n)
    yield rnd.randbytes(n)
    for _ in range(12):
        b = bytearray(n)
        for i in range(nblocks):
            r = rnd.random()
            if r < 0.4:
                continue
            where = rnd.choice((0, bb - 1, bb - 8, bb - 5, rnd.randrange(bb)))
            b[i * bb + where] = rnd.randrange(1, 256)
        yield bytes(b)


@pytest.mark.parametrize("bb", [PAGE, 2 * PAGE, 512])
def test_zero_test_of_a_chunk_finds_the_non_zero_blocks(bb):
    """The zero test of the encode path (a compare per piece of ``zero``, then one per block) finds
    the same non-zero blocks as a plain Python scan, whatever the length of ``zero``, on bytes and on
    mappings that end exactly where the window ends (SAFE_FIND_END: no search there may reach the
    mapping's end), with data after the window that is not its own."""
    import mmap

    ends = []

    class Recording(mmap.mmap):
        def find(self, sub, start=None, end=None):
            ends.append(end)
            return super().find(sub, start, end)

    rnd = random.Random(1212)
    nblocks = 32
    n = bb * nblocks
    seen_all_zero = seen_mixed = 0
    for data in zero_test_windows(rnd, bb, nblocks):
        want = reference_nonzero(data, bb)
        seen_all_zero += not want
        seen_mixed += 0 < len(want) < nblocks
        for lead, tail in ((0, 0), (3 * bb, 0), (bb, 2 * bb)):
            m = Recording(-1, lead + n + tail)
            m[lead:lead + n] = data
            m[lead + n:] = b"\x01" * tail
            before = len(ends)
            for obj in (m, bytes(lead) + data + m[lead + n:], bytearray(m)):
                for zero in (bytes(bb), bytes(n), bytes(n + bb), bytes(5 * bb), bytes(5 * bb + 8)):
                    assert encode._nonzero_blocks(obj, lead, n, bb, zero) == want
            assert all(e < len(m) for e in ends[before:] if e is not None), ends
            m.close()
    assert seen_all_zero and seen_mixed and ends


def zero_rich_content(pfn: int, page_size: int = 4096) -> bytes:
    """Chunks (256 pages) all zero, all data, or zero but for their first or last page."""
    kind = (pfn // 256) % 4
    if kind == 0 or (kind == 2 and pfn % 256 != 0) or (kind == 3 and pfn % 256 != 255):
        return bytes(page_size)
    return synth.page_content(pfn, page_size) if kind == 1 else random_pages(pfn, page_size)


@pytest.mark.parametrize("name", NAMES)
def test_zero_chunks_on_disk_become_bare_headers(tmp_path, name):
    """Chunks all zero on disk (not holes) become a bare CHUNK_ALL_ZERO header, whether the worker's
    ``zero`` is one block or a whole piece long (the same bytes either way); the others decode to
    the source."""
    path = str(tmp_path / "zeros.vmcore")
    synth.build(path, [synth.Load(0, 8 << 20)], content=zero_rich_content, sparse=False)
    codec = CodecSpec(name).make()
    with Source(path) as src:
        plan = Plan(src.pfn_ranges, [], PAGE, 256)
        all_zero = 0
        for chunk in plan:
            assert not src.phys_is_hole(chunk.start, chunk.count)
            out = bytearray(record_bound(chunk.raw_bytes(PAGE), PAGE))
            recs = []
            for zero in (bytes(PAGE), bytes(64 * PAGE), bytes(256 * PAGE)):
                n, csum, bad = encode_chunk(src, codec, chunk, PAGE, out, zero)
                recs.append(bytes(out[:n]))
            assert recs[0] == recs[1] == recs[2]
            h, data, runs = decode_chunk(recs[0], "t", PAGE, {})
            assert data == chunk_bytes(src, chunk)
            if not any(data):
                all_zero += 1
                assert h.flags == encode.CHUNK_ALL_ZERO and h.nblocks == 0 and len(recs[0]) == CHUNK_HEADER_SIZE
            else:
                assert h.nblocks == 256
        assert all_zero == 2 and plan.n_chunks == 8
