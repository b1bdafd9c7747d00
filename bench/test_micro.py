"""Micro-benchmarks of the hot paths (pytest-benchmark); run on demand, not in CI:

    .venv/bin/python -m pytest bench/test_micro.py --benchmark-columns=mean,ops

They time: the zero-page test, encoding one 1 MiB chunk per codec (zero test,
compression, raw fallback, checksum), decoding it again, and the plan's
chunk lookup and placement.  Results feed docs/benchmarks.md.
"""

import os

import pytest

from stripedump import synth
from stripedump.codecs import NAMES, CodecSpec
from stripedump.records import decode_chunk, encode_chunk
from stripedump.plan import Plan, placement
from stripedump.vmcore import Source

PAGE = 4096


@pytest.fixture(scope="module")
def mixed_source(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("micro") / "mixed.vmcore")
    synth.build(path, [synth.Load(0, 64 << 20)])
    with Source(path) as s:
        yield s


@pytest.mark.parametrize("kind", ["zero", "random"])
def test_zero_test_per_page(benchmark, kind):
    import mmap
    data = mmap.mmap(-1, 1 << 20)
    if kind == "random":
        data[:] = os.urandom(1 << 20)
    zero = bytes(PAGE)

    def scan():
        return sum(data.find(zero, a, a + PAGE) == a for a in range(0, len(data), PAGE))
    n = benchmark(scan)
    assert n == (256 if kind == "zero" else 0)


@pytest.mark.parametrize("codec", NAMES)
def test_encode_chunk(benchmark, mixed_source, codec):
    c = CodecSpec(codec).make()
    plan = Plan(mixed_source.pfn_ranges, [], PAGE, 256)
    chunk = plan.chunk(7)
    out = bytearray(2 << 20)
    zero = bytes(PAGE)
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


def test_plan_lookup_and_placement(benchmark):
    plan = Plan([(i * 300_000, i * 300_000 + 262_144) for i in range(1000)], [(0, 8192)], PAGE, 256)

    def lookups():
        return sum(placement(plan.chunk(cid).id, 4) for cid in range(0, plan.n_chunks, 97))
    assert benchmark(lookups) > 0
