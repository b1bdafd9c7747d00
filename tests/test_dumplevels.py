"""Dump levels (issue 11), the dump side: what ``dump -d N`` writes.

- ``records.encode_chunk(..., excluded=)``: pages a level leaves out become
  BLOCK_EXCLUDED blocks, read back by ``read_chunk`` / ``decode_chunk`` /
  ``excluded_ranges`` exactly where the mask said, the kept pages decode to
  the source's bytes, ``kept_pages`` counts them, and a mask that excludes
  nothing gives today's record byte for byte;
"""

import random

import pytest

from stripedump import synth
from stripedump.codecs import CodecSpec
from stripedump.format import (BLOCK_EXCLUDED, BLOCK_KIND_SHIFT, CHUNK_ALL_ZERO, CHUNK_EXCLUDED,
                               CHUNK_HEADER_SIZE, KIND_PAGES)
from stripedump.plan import Plan
from stripedump.records import decode_chunk, encode_chunk, excluded_ranges, read_chunk, record_bound
from stripedump.vmcore import Source

PAGE = 4096


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A memory-like synthetic source (zero, text-like, sparse and random pages) in 64-page chunks."""
    path = str(tmp_path_factory.mktemp("dl") / "mixed.vmcore")
    synth.build(path, [synth.Load(0, 4 << 20)])
    with Source(path) as src:
        yield src, Plan(src.pfn_ranges, [], PAGE, 64)


def source_pages(src, chunk) -> bytes:
    with src.phys_window(chunk.start, chunk.count) as w:
        return bytes(w.view())


def runs_of(mask) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for i, m in enumerate(mask):
        if m:
            if out and out[-1][1] == i * PAGE:
                out[-1] = (out[-1][0], (i + 1) * PAGE)
            else:
                out.append((i * PAGE, (i + 1) * PAGE))
    return out


def encode(src, chunk, codec="lz4", **kw) -> bytearray:
    out = bytearray(record_bound(chunk.count * PAGE, PAGE))
    n, _, _ = encode_chunk(src, CodecSpec(codec).make(), chunk, PAGE, out, bytes(1 << 20), **kw)
    return out[:n]


@pytest.mark.parametrize("codec", ["lz4", "none", "zstd"])
def test_excluded_pages_round_trip(mixed, codec):
    import numpy as np
    src, plan = mixed
    rng = random.Random(11)
    seen_excluded = seen_kept = 0
    for chunk in plan:
        if chunk.kind != KIND_PAGES:
            continue
        mask = np.array([rng.random() < 0.4 for _ in range(chunk.count)], bool)
        rec = encode(src, chunk, codec, excluded=mask)
        h, body, _ = read_chunk(rec, "t", PAGE, page_size=PAGE)
        assert h.kept_pages == chunk.count - int(mask.sum())
        assert bool(h.flags & CHUNK_EXCLUDED) == bool(mask.any())
        assert not h.flags & CHUNK_ALL_ZERO
        assert excluded_ranges(h, body, PAGE) == runs_of(mask)
        h2, data, _ = decode_chunk(rec, "t", PAGE, {})
        want = source_pages(src, chunk)
        for i in range(chunk.count):
            if mask[i]:
                assert data[i * PAGE:(i + 1) * PAGE] == bytes(PAGE)    # nothing stored for it
                seen_excluded += 1
            else:
                assert data[i * PAGE:(i + 1) * PAGE] == want[i * PAGE:(i + 1) * PAGE]
                seen_kept += 1
    assert seen_excluded and seen_kept


@pytest.mark.parametrize("form", ["numpy", "bytes", "callable"])
def test_a_mask_that_excludes_nothing_changes_no_byte(mixed, form):
    import numpy as np
    src, plan = mixed
    got_data = []
    for chunk in plan:
        mask = {"numpy": np.zeros(chunk.count, bool), "bytes": bytes(chunk.count),
                "callable": lambda data, n=chunk.count: (got_data.append(bytes(data)), bytes(n))[1]}[form]
        assert encode(src, chunk, excluded=mask) == encode(src, chunk)
    if form == "callable":      # the callable is given the chunk's bytes as read
        assert got_data == [source_pages(src, c) for c in plan]


def test_all_excluded_and_zero_plus_excluded_chunks_keep_their_table(mixed):
    src, plan = mixed
    chunk = next(iter(plan))
    rec = encode(src, chunk, excluded=b"\x01" * chunk.count)
    h, body, blocks = read_chunk(rec, "t", PAGE, page_size=PAGE)
    assert (h.flags, h.kept_pages, h.nblocks, blocks) == (CHUNK_EXCLUDED, 0, chunk.count, [])
    assert len(rec) == CHUNK_HEADER_SIZE + 4 * chunk.count      # the table, nothing stored
    assert all(e >> BLOCK_KIND_SHIFT == BLOCK_EXCLUDED for e in memoryview(body).cast("I"))
    assert excluded_ranges(h, body, PAGE) == [(0, chunk.count * PAGE)]
    # a chunk whose pages are zero where they are not excluded: still no CHUNK_ALL_ZERO
    data = source_pages(src, chunk)
    mask = bytes(0 if data[i * PAGE:(i + 1) * PAGE] == bytes(PAGE) else 1 for i in range(chunk.count))
    assert 0 < mask.count(1) < chunk.count, "the synthetic source's first chunk mixes zero and data pages"
    h, body, blocks = read_chunk(encode(src, chunk, excluded=mask), "t", PAGE, page_size=PAGE)
    assert h.flags == CHUNK_EXCLUDED and not blocks and h.kept_pages == mask.count(0)
    assert excluded_ranges(h, body, PAGE) == runs_of(mask)


def test_careful_reads_give_the_same_filtered_record(mixed):
    src, plan = mixed
    rng = random.Random(5)
    for chunk in plan:
        mask = bytes(rng.random() < 0.5 for _ in range(chunk.count))
        assert encode(src, chunk, excluded=mask, careful=True) == encode(src, chunk, excluded=mask)


def test_exclusion_needs_one_page_blocks_and_a_mask_of_the_chunk(mixed):
    src, plan = mixed
    chunk = next(iter(plan))
    out = bytearray(record_bound(chunk.count * PAGE, 2 * PAGE))
    with pytest.raises(ValueError):
        encode_chunk(src, CodecSpec("lz4").make(), chunk, 2 * PAGE, out, bytes(1 << 20),
                     excluded=bytes(chunk.count))
    with pytest.raises(ValueError):
        encode(src, chunk, excluded=bytes(chunk.count - 1))
