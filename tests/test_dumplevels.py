"""Dump levels (issue 11), the dump side: what ``dump -d N`` writes.

- ``records.encode_chunk(..., excluded=)``: pages a level leaves out become
  BLOCK_EXCLUDED blocks, read back by ``read_chunk`` / ``decode_chunk`` /
  ``excluded_ranges`` exactly where the mask said, the kept pages decode to
  the source's bytes, ``kept_pages`` counts them, and a mask that excludes
  nothing gives today's record byte for byte;
- ``dump -d N`` on the real-kernel fixtures (the plain guest and the
  WORKLOAD=1 one, in /proc/vmcore's layout), read back record by record (not
  through join): for N in 1, 2, 4, 8, 16, 31 the excluded PFNs never include
  a page makedumpfile -d N keeps and cover at least 99.9% of those it drops;
  every kept page decodes to the source's bytes; the members say the level
  (manifest, FEATURE_EXCLUDED, footers' per-class counts) and ``info`` and
  ``verify`` read it;
- ``-d 0`` writes the members a dump without ``-d`` writes, byte for byte;
- a VMCOREINFO entry missing (the note edited in a copy of the fixture, or a
  synthetic core with no note): the dump goes on at the level that can be
  applied, says so in one line naming the entries, exit 0, and info shows
  asked and applied;
- bad levels are usage errors; a larger --block-size is lowered with a warning;
- a worker's memory stays flat: the peak RSS of a -d 31 dump of a 1.5 GiB
  core is that of a 192 MiB one.
"""

import json
import os
import random
import resource
import shutil
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from stripedump import synth
from stripedump.codecs import CodecSpec
from stripedump.format import (BLOCK_EXCLUDED, BLOCK_KIND_SHIFT, CHUNK_ALL_ZERO, CHUNK_EXCLUDED,
                               CHUNK_HEADER_SIZE, KIND_PAGES)
from stripedump.plan import Plan
from stripedump.records import decode_chunk, encode_chunk, excluded_ranges, read_chunk, record_bound
from stripedump.vmcore import Source
from stripedump import pipeline
from stripedump.config import DumpConfig
from stripedump.errors import VerifyError
from stripedump.format import FEATURE_EXCLUDED, ChunkHeader, MemberHeader
from stripedump.join import verify
from stripedump.member import MemberReader

from conftest import REAL_DIR, run_cli
from test_pageclass import LEVELS, judge, needs_makedumpfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILLED = "/var/tmp/stripedump-bench/real-m1536-f1024/vmcore"

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


# -- dump -d N on real kernels, judged by makedumpfile -------------------------------------------

def read_back(members, src):
    """(excluded per PFN, per-class counts of the footers, manifest, headers) of a dump's members, read
    record by record; asserts that every kept page of every chunk decodes to the source's bytes."""
    excluded = np.zeros(src.pfn_ranges[-1][1], bool)
    classes, headers, manifest, left_out = None, [], None, 0
    for path in members:
        r = MemberReader(path)
        try:
            f = r.footer()
            headers.append(r.header)
            manifest = r.manifest()
            classes = classes or dict(f.excluded_classes)
            left_out += f.excluded_pages
            block = manifest["block_bytes"]
            for e in r.index(f):
                rec = r.read_record(e)
                h, body, _ = read_chunk(rec, "t", block, page_size=PAGE)
                if h.kind != KIND_PAGES:
                    continue
                gone = np.zeros(h.raw_length // PAGE, bool)
                for a, b in excluded_ranges(h, body, block):
                    gone[a // PAGE:b // PAGE] = True
                assert h.kept_pages == len(gone) - gone.sum()
                excluded[h.start:h.start + len(gone)] = gone
                _, data, _ = decode_chunk(rec, "t", block, {})
                with src.phys_window(h.start, len(gone)) as w:
                    want = np.frombuffer(w.view(), np.uint8).reshape(len(gone), PAGE)
                    got = np.frombuffer(data, np.uint8).reshape(len(gone), PAGE)
                    assert (got[~gone] == want[~gone]).all(), f"chunk {h.chunk_id}: a kept page differs"
                    del want
        finally:
            r.close()
    assert left_out == excluded.sum()
    return excluded, classes, manifest, headers


def dump_members(tmp_path, source, level, workers=2, codec="lz4", **kw):
    members = (str(tmp_path / "m0"), str(tmp_path / "m1"))
    for m in members:
        if os.path.exists(m):
            os.unlink(m)
    res = pipeline.dump(DumpConfig(source, members, CodecSpec(codec), workers=workers, dump_level=level,
                                   force=True, **kw))
    return members, res


@pytest.fixture(scope="module")
def judged_plain(real_vmcore, tmp_path_factory):
    norm, out, d = judge(real_vmcore[0], tmp_path_factory)
    yield norm, out
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def judged_load(tmp_path_factory):
    path = REAL_DIR + "-workload/vmcore"
    if not os.path.exists(path):
        pytest.skip("the WORKLOAD=1 fixture is not built (tests/fixtures/make-real-vmcore.sh; test_pageclass.py "
                    "builds it)")
    norm, out, d = judge(path, tmp_path_factory)
    yield norm, out
    shutil.rmtree(d, ignore_errors=True)


def check_dump_level(judged, level, tmp_path):
    norm, ref = judged
    b1, mdf = ref[level]
    members, res = dump_members(tmp_path, norm, level)
    with Source(norm) as src:
        ours, classes, manifest, headers = read_back(members, src)
    ours = ours[:len(b1)] & b1
    wrong, dropped, found = int((ours & ~mdf).sum()), int(mdf.sum()), int((ours & mdf).sum())
    print(f"level {level}: makedumpfile drops {dropped}, the dump drops {found} of them and {wrong} others")
    assert dropped > 0 and wrong == 0, np.nonzero(ours & ~mdf)[0][:10]
    assert found >= 0.999 * dropped
    assert manifest["dump_level"] == {"asked": level, "applied": level, "missing": [], "weaker": []}
    assert all(h.features_required == FEATURE_EXCLUDED and h.block_pages == 1 for h in headers)
    lv = res.extra["dump_level"]
    assert lv["excluded_pages"] == sum(v for k, v in classes.items() if k != "struct_unread") > 0
    assert lv["excluded"] == {k: v for k, v in classes.items() if k != "struct_unread"}
    assert f"dump level {level}: {lv['excluded_pages']} pages left out" in res.summary()
    return members, classes


@needs_makedumpfile
@pytest.mark.parametrize("level", LEVELS)
def test_dump_level_agrees_with_makedumpfile(judged_plain, level, tmp_path):
    members, classes = check_dump_level(judged_plain, level, tmp_path)
    if level == 31:     # info and verify read the filtered dump
        d = json.loads(run_cli("info", "--json", *members).out)
        assert d["dump_level"]["asked"] == d["dump_level"]["applied"] == 31
        assert d["dump_level"]["excluded"]["free"] == classes["free"] > 0
        text = run_cli("info", *members).out
        assert "dump level: 31 applied (31 asked); " in text and " free " in text
        res = verify(list(members), 2)
        assert not res.errors and res.extra.get("complete", True)
        r = run_cli("verify", *members)
        assert r.rc == 0, r.err


@needs_makedumpfile
@pytest.mark.parametrize("level", LEVELS)
def test_dump_level_agrees_with_makedumpfile_under_a_workload(judged_load, level, tmp_path):
    _, classes = check_dump_level(judged_load, level, tmp_path)
    if level == 31:
        assert all(classes[k] > 0 for k in ("zero", "cache", "cache_private", "user", "free")), classes
