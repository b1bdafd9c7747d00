"""Micro-benchmarks of the hot paths (pytest-benchmark); run on demand, not in CI:

    .venv/bin/python -m pytest bench/test_micro.py --benchmark-columns=mean,ops

They time: the zero test of a chunk (as the dump's workers run it), encoding one 1 MiB chunk per codec (zero test,
compression, raw fallback, checksum), the codec library alone over the same
non-zero pages (encode minus this is the per-page Python overhead, issue 12),
checking a record's block table, decoding it again, and the plan's chunk
lookup and placement.  Results feed docs/benchmarks.md; bench/perpage.py
compares these paths with those of an older commit in one run.
"""

import os

import pytest

from stripedump.tools import synth
from stripedump.format.codecs import NAMES, CodecSpec
from stripedump.format.decode import decode_chunk, read_chunk
from stripedump.format.encode import encode_chunk
from stripedump.format.plan import Plan, placement
from stripedump.dump.stages import ZERO_COMPARE_BYTES
from stripedump.source.vmcore import Source

pytestmark = pytest.mark.slow      # benchmarks (pyproject.toml's markers)
PAGE = 4096


@pytest.fixture(scope="module")
def mixed_source(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("micro") / "mixed.vmcore")
    synth.build(path, [synth.Load(0, 64 << 20)])
    with Source(path) as s:
        yield s


@pytest.mark.parametrize("kind", ["zero", "random", "half"])
def test_zero_test_of_a_chunk(benchmark, kind):
    """The encode loop's zero test of one 1 MiB chunk (encode._nonzero_blocks, with a worker's
    1 MiB of zeros): all zero is one compare; otherwise one search per page."""
    import mmap
    from stripedump.format.encode import _nonzero_blocks
    data = mmap.mmap(-1, 2 << 20)          # the chunk is the first MiB: never up to the mapping's end
    if kind != "zero":
        data[:1 << 20] = os.urandom(1 << 20)
    if kind == "half":
        data[:1 << 19] = bytes(1 << 19)
    zero = bytes(ZERO_COMPARE_BYTES)
    nonzero = benchmark(_nonzero_blocks, data, 0, 1 << 20, PAGE, zero)
    assert len(nonzero) == {"zero": 0, "random": 256, "half": 128}[kind]


@pytest.mark.parametrize("codec", NAMES)
def test_encode_chunk(benchmark, mixed_source, codec):
    c = CodecSpec(codec).make()
    plan = Plan(mixed_source.pfn_ranges, [], PAGE, 256)
    chunk = plan.chunk(7)
    out = bytearray(2 << 20)
    zero = bytes(ZERO_COMPARE_BYTES)       # what a dump worker compares with (stages.worker_main)
    length, _, _ = benchmark(encode_chunk, mixed_source, c, chunk, PAGE, out, zero)
    assert 0 < length <= len(out)


@pytest.mark.parametrize("codec", NAMES)
def test_decode_chunk(benchmark, mixed_source, codec):
    c = CodecSpec(codec).make()
    plan = Plan(mixed_source.pfn_ranges, [], PAGE, 256)
    out = bytearray(2 << 20)
    length, _, _ = encode_chunk(mixed_source, c, plan.chunk(7), PAGE, out, bytes(PAGE))
    rec = bytes(out[:length])
    h, data, runs = benchmark(decode_chunk, rec, "bench", PAGE, {})
    assert len(data) == 1 << 20


@pytest.mark.parametrize("codec", [n for n in NAMES if n != "none"])
def test_pure_codec_same_pages(benchmark, mixed_source, codec):
    """The library's compress over the chunk's non-zero pages: test_encode_chunk minus this is
    what encode.encode_chunk adds around the codec (divide by 256 for per page)."""
    c = CodecSpec(codec).make()
    plan = Plan(mixed_source.pfn_ranges, [], PAGE, 256)
    chunk = plan.chunk(7)
    with mixed_source.phys_window(chunk.start, chunk.count) as w:
        data = bytes(w.view())
    pages = [data[a:a + PAGE] for a in range(0, len(data), PAGE) if data.count(0, a, a + PAGE) != PAGE]
    views = pages if c.wants_bytes else [memoryview(p) for p in pages]
    comp = c.compress
    benchmark(lambda: [comp(v) for v in views])


@pytest.mark.parametrize("codec", ["none", "lz4"])
def test_read_chunk_table_check(benchmark, mixed_source, codec):
    c = CodecSpec(codec).make()
    plan = Plan(mixed_source.pfn_ranges, [], PAGE, 256)
    out = bytearray(2 << 20)
    length, _, _ = encode_chunk(mixed_source, c, plan.chunk(7), PAGE, out, bytes(PAGE))
    rec = bytes(out[:length])
    h, body, blocks = benchmark(read_chunk, rec, "bench", PAGE)
    assert blocks


def test_plan_lookup_and_placement(benchmark):
    plan = Plan([(i * 300_000, i * 300_000 + 262_144) for i in range(1000)], [(0, 8192)], PAGE, 256)

    def lookups():
        return sum(placement(plan.chunk(cid).id, 4) for cid in range(0, plan.n_chunks, 97))
    assert benchmark(lookups) > 0
