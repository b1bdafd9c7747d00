"""Dump levels (issue 11), the dump side: what ``dump -d N`` writes.

- ``encode.encode_chunk(..., excluded=)``: pages a level leaves out become
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
  core is that of a 192 MiB one;
- reads that fail (data pages, struct pages) keep the dump going and leave
  out nothing the whole view would keep; a malformed manifest ``dump_level``
  is refused.
"""

import json
import os
import random
import shutil
import subprocess
import sys
import time
from contextlib import closing

import numpy as np
import pytest

from stripedump.tools import synth
from stripedump.format.codecs import CodecSpec
from stripedump.format.structs import (BLOCK_EXCLUDED, BLOCK_KIND_SHIFT, CHUNK_ALL_ZERO, CHUNK_EXCLUDED,
                               CHUNK_HEADER_SIZE, KIND_PAGES)
from stripedump.format.plan import Plan
from stripedump.format.blocktable import excluded_ranges, unreadable_ranges
from stripedump.format.decode import decode_chunk, read_chunk
from stripedump.format.encode import encode_chunk
from stripedump.format.structs import record_bound
from stripedump.source.vmcore import Source
from stripedump.source.vmcoreinfo import VmcoreInfo
from stripedump.dump import coordinator as pipeline
from stripedump.dump.config import DumpConfig
from stripedump.format.structs import FEATURE_EXCLUDED, ChunkHeader
from stripedump.read.join import verify
from stripedump.read.member import MemberReader

from conftest import REAL_DIR, ROOT, run_cli
from levels.test_pageclass import LEVELS, judge, needs_makedumpfile

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

def read_back(members, src, unreadable=frozenset()):
    """(left out per PFN, per-class counts of the footers, manifest, headers) of a dump's members, read
    record by record; asserts that every kept page of every chunk decodes to the source's bytes, but
    those of the PFNs ``unreadable``, which must be recorded so.  Left out: BLOCK_EXCLUDED pages, and
    with level bit 1 the zero pages too, which are stored as zero blocks (as makedumpfile's kdump
    file keeps them in its bitmap, sharing one zero page); never excluded themselves."""
    excluded = np.zeros(src.pfn_ranges[-1][1], bool)
    zeros = np.zeros(len(excluded), bool)
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
                lost = np.zeros(len(gone), bool)
                for a, b in unreadable_ranges(h, body, block):
                    lost[a // PAGE:b // PAGE] = True
                assert set(np.flatnonzero(lost) + h.start) == {p for p in unreadable
                                                               if h.start <= p < h.start + len(gone)}
                assert h.kept_pages == len(gone) - gone.sum()
                excluded[h.start:h.start + len(gone)] = gone
                _, data, _ = decode_chunk(rec, "t", block, {})
                with src.phys_window(h.start, len(gone)) as w:
                    want = np.frombuffer(w.view(), np.uint8).reshape(len(gone), PAGE)
                    got = np.frombuffer(data, np.uint8).reshape(len(gone), PAGE)
                    assert (got[~gone & ~lost] == want[~gone & ~lost]).all(), f"chunk {h.chunk_id}: a kept page differs"
                    zeros[h.start:h.start + len(gone)] = ~gone & ~lost & ~got.any(axis=1)
                    del want
        finally:
            r.close()
    assert left_out == excluded.sum()
    level = manifest.get("dump_level") or {"applied": 0}
    if level["applied"] & 1:
        assert not (excluded & zeros).any()
        # the zero class counts the zero pages kept as zero blocks; pages that could not be read reach
        # the classifier as zeros and are counted there too, while their blocks say unreadable
        assert 0 <= classes["zero"] - zeros.sum() <= len(unreadable), (classes["zero"], zeros.sum())
        excluded = excluded | zeros
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
def judged_load(workload_vmcore, tmp_path_factory):
    """The WORKLOAD=1 guest (built once by test_pageclass's fixture and cached), judged by makedumpfile."""
    norm, out, d = judge(workload_vmcore, tmp_path_factory)
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
    # issue 24 item 4: left out = BLOCK_EXCLUDED, the sum of the classes but zero, which are kept
    assert lv["excluded_pages"] == sum(v for k, v in classes.items() if k not in ("struct_unread", "zero")) > 0 \
        or (level == 1 and lv["excluded_pages"] == 0)
    assert lv["excluded"] == {k: v for k, v in classes.items() if k not in ("struct_unread", "zero")}
    assert lv["zero_pages"] == classes["zero"]
    assert f"dump level {level}: {lv['excluded_pages']} page(s) left out" in res.summary()
    return members, classes, lv


@needs_makedumpfile
@pytest.mark.parametrize("level", LEVELS)
def test_dump_level_agrees_with_makedumpfile(judged_plain, level, tmp_path):
    from stripedump.levels.pagebits import left_out_text
    members, classes, lv = check_dump_level(judged_plain, level, tmp_path)
    if level == 31:     # info and verify read the filtered dump
        d = json.loads(run_cli("info", "--json", *members).out)
        assert d["dump_level"]["asked"] == d["dump_level"]["applied"] == 31
        assert d["dump_level"]["excluded"]["free"] == classes["free"] > 0
        assert d["dump_level"] == {k: v for k, v in lv.items() if k != "unclassified_chunks"}  # one count
        text = run_cli("info", *members).out
        assert f"dump level: 31 applied (31 asked); {left_out_text(lv)}" in text and " free " in text
        j = json.loads(run_cli("join", "--json", *members, "-o", tmp_path / "out").out)
        assert j["excluded_pages"] == lv["excluded_pages"] > 0
        res = verify(list(members), 2)
        assert not res.errors and res.extra.get("complete", True)
        r = run_cli("verify", *members)
        assert r.rc == 0, r.err


@needs_makedumpfile
@pytest.mark.parametrize("level", LEVELS)
def test_dump_level_agrees_with_makedumpfile_under_a_workload(judged_load, level, tmp_path):
    _, classes, _ = check_dump_level(judged_load, level, tmp_path)
    if level == 31:
        assert all(classes[k] > 0 for k in ("zero", "cache", "cache_private", "user", "free")), classes


# -- level 0, missing entries, the command line ---------------------------------------------------

def test_level_zero_writes_the_members_a_dump_without_it_writes(vmcore, tmp_path, monkeypatch):
    """Same dump id and clock: -d 0 and no -d give the same bytes (no manifest key, no feature, same records)."""
    b = vmcore("kernel")
    monkeypatch.setattr(pipeline.DumpId, "new", classmethod(lambda cls: cls(bytes(range(16)))))
    monkeypatch.setattr(time, "time", lambda: 1795643817.0)
    got = []
    for level in (None, 0):
        d = tmp_path / f"d{level}"
        d.mkdir()
        members = (str(d / "m0"), str(d / "m1"))
        kw = {} if level is None else {"dump_level": level}
        pipeline.dump(DumpConfig(b.path, members, CodecSpec("lz4"), workers=1, **kw))
        got.append([open(m, "rb").read() for m in members])
        with closing(MemberReader(members[0])) as r:
            assert "dump_level" not in r.manifest() and r.header.features_required == 0
    assert got[0] == got[1]


def edited_core(tmp_path, *keys) -> str:
    """A copy of the real-kernel fixture whose VMCOREINFO lacks ``keys`` (each renamed, same length)."""
    path = str(tmp_path / "vmcore")
    with open(os.path.join(REAL_DIR, "vmcore"), "rb") as f:
        data = bytearray(f.read())
    note_end = data.index(b"\nCRASHTIME=") if b"\nCRASHTIME=" in data else len(data)
    for k in keys:
        at = data.index(b"\n" + k.encode() + b"=", 0, note_end + 200)
        data[at + 1:at + 1 + len(k)] = k.lower().encode()
    with open(path, "wb") as f:
        f.write(data)
    return path


@pytest.mark.parametrize("keys,applied", [
    (("NUMBER(PG_lru)",), 31 & ~6),
    (("OFFSET(page._mapcount)", "NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)"), 31 & ~16),
    (("SYMBOL(mem_section)",), 1),
])
def test_a_missing_vmcoreinfo_entry_lowers_the_level_and_the_dump_goes_on(real_vmcore, tmp_path, keys,
                                                                          applied):
    src = edited_core(tmp_path, *keys)
    members = f"{tmp_path / 'm0'},{tmp_path / 'm1'}"
    r = run_cli("dump", "-d", "31", "--codec", "lz4", "--disks", members, src)
    assert r.rc == 0, r.err
    warn = [ln for ln in r.err.splitlines() if "warning" in ln]
    assert len(warn) == 1, r.err
    assert warn[0].startswith(f"stripedump: warning: dump level 31 lowered to {applied}: VMCOREINFO lacks ")
    assert all(k in warn[0] for k in keys)
    assert f"dump level {applied} (asked 31): " in r.out
    os.unlink(src)
    d = json.loads(run_cli("info", "--json", *members.split(",")).out)["dump_level"]
    assert (d["asked"], d["applied"]) == (31, applied) and all(k in d["missing"] for k in keys)
    if not applied & 2:
        assert d["excluded"]["cache"] == d["excluded"]["cache_private"] == 0
    text = run_cli("info", *members.split(",")).out
    assert f"dump level: {applied} applied (31 asked)" in text and "not applied for lack of VMCOREINFO" in text
    assert run_cli("verify", *members.split(",")).rc == 0


def test_a_core_without_struct_pages_to_read_gets_the_zero_level_only(vmcore, tmp_path):
    """A synthetic core (no page tables, no mem_section): bit 1 needs nothing, the rest is not applied."""
    b = vmcore("kernel")
    members = (str(tmp_path / "m0"), str(tmp_path / "m1"))
    r = run_cli("dump", "-d", "17", "--json", "--disks", ",".join(members), b.path)
    assert r.rc == 0, r.err
    assert "stripedump: warning: dump level 17 lowered to 1: VMCOREINFO lacks " in r.err
    lv = json.loads(r.out)["dump_level"]
    assert (lv["asked"], lv["applied"]) == (17, 1) and lv["missing"]
    with Source(b.path) as src:
        ours, classes, manifest, headers = read_back(members, src)
        zero = 0
        for a, e in src.pfn_ranges:
            with src.phys_window(a, e - a) as w:
                pages = np.frombuffer(w.view(), np.uint8).reshape(e - a, PAGE)
                z = ~pages.any(axis=1)
                del pages
            assert (ours[a:e] == z).all()       # exactly the zero pages
            zero += int(z.sum())
    assert classes["zero"] == zero == lv["zero_pages"] > 0 and lv["excluded_pages"] == 0
    # asked without bit 1 and nothing else applicable: level 0 applied, a full dump, no feature bit
    r = run_cli("dump", "-d", "16", "--force", "--disks", ",".join(members), b.path)
    assert r.rc == 0 and "lowered to 0" in r.err
    with Source(b.path) as src:
        ours, _, manifest, headers = read_back(members, src)
    assert not ours.any() and headers[0].features_required == 0
    assert manifest["dump_level"]["applied"] == 0 and headers[0].block_pages == 1


def test_left_out_pages_are_counted_one_way_everywhere(vmcore, tmp_path):
    """Issue 24 item 4: after -d 31 the dump said "577 pages left out (zero 577)", info "0 page(s) left
    out: zero 577", --json excluded_pages 0 beside excluded.zero 577.  Zero pages are kept (zero
    blocks): the summary, dump --json, info, info --json and join count left out and zero alike."""
    b = vmcore("kernel")
    members = [str(tmp_path / "m0"), str(tmp_path / "m1")]
    r = run_cli("dump", "-d", "31", "--json", "--disks", ",".join(members), b.path)
    assert r.rc == 0, r.err
    lv = json.loads(r.out)["dump_level"]
    assert lv["excluded_pages"] == 0 and lv["zero_pages"] > 0 and "zero" not in lv["excluded"], lv
    d = json.loads(run_cli("info", "--json", *members).out)["dump_level"]
    assert d == {k: v for k, v in lv.items() if k != "unclassified_chunks"}
    words = f"0 page(s) left out, {lv['zero_pages']} zero page(s) kept as zero blocks"
    assert f"dump level: 1 applied (31 asked); {words}\n" in run_cli("info", *members).out
    r = run_cli("dump", "-d", "31", "--force", "--disks", ",".join(members), b.path)
    assert r.out.rstrip().endswith(f"; dump level 1 (asked 31): {words}"), r.out
    for fmt in ("elf", "kdump"):
        j = run_cli("join", "--json", "--format", fmt, *members, "-o", tmp_path / fmt)
        assert json.loads(j.out)["excluded_pages"] == 0 and "left out" not in j.err, j


@pytest.mark.parametrize("arg", ["32", "-1", "x", "1.5"])
def test_a_bad_level_is_a_usage_error(vmcore, tmp_path, arg):
    b = vmcore("kernel")
    r = run_cli("dump", f"--dump-level={arg}", "--disks", str(tmp_path / "m0"), b.path)
    assert r.rc == 2 and len(r.err.strip().splitlines()) == 1 and "--dump-level" in r.err, r
    assert not os.path.exists(tmp_path / "m0")


def test_a_larger_block_size_is_lowered_with_a_warning(vmcore, tmp_path):
    b = vmcore("kernel")
    members = (str(tmp_path / "m0"),)
    r = run_cli("dump", "-d", "1", "-q", "--block-size", "64K", "--disks", members[0], b.path)
    assert r.rc == 0
    assert r.err.strip() == ("stripedump: warning: --block-size 65536 lowered to one page (4096): with "
                             "--dump-level each page is kept or left out on its own")
    with closing(MemberReader(members[0])) as m:
        assert m.header.block_pages == 1 and m.manifest()["block_bytes"] == PAGE


def test_verify_checks_kept_pages(real_vmcore, tmp_path):
    """A filtered chunk whose kept-page count does not match its table (header CRC resealed) is damaged."""
    members, _ = dump_members(tmp_path, real_vmcore[0], 31, workers=1)
    with closing(MemberReader(members[1])) as r:
        for e in r.index(r.footer()):
            h = ChunkHeader.unpack(r.read_record(e), "t")
            if h.flags & CHUNK_EXCLUDED and h.kept_pages:
                break
    buf = bytearray(CHUNK_HEADER_SIZE)
    h._replace(kept_pages=h.kept_pages - 1).pack_into(buf, 0)
    with open(members[1], "r+b") as f:
        f.seek(e.offset)
        f.write(buf)
    res = verify(list(members), 1)
    assert any("kept-page count" in x for x in res.errors), res.errors


def test_level_zero_imports_no_numpy(vmcore, tmp_path):
    from conftest import run_python
    b = vmcore("kernel")
    members = f"{tmp_path / 'm0'},{tmp_path / 'm1'}"
    p = run_python("import sys\nfrom stripedump.cli import main\n"
                   f"rc = main(['dump', '-q', '-d', '0', '--disks', {members!r}, {b.path!r}])\n"
                   "print(rc, sorted(m for m in sys.modules if m.startswith(('numpy', 'stripedump.levels.pageclass', "
                   "'stripedump.source.kvmem'))))\n")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "0 []"


def test_small_machine_is_walked_without_numpy(real_vmcore, tmp_path):
    """-d 31 of the 192 MiB guest: the coordinator resolves the level without numpy, and the workers walk
    (pageclass's engine for machines of at most WALK_MAX_PAGES pages); the dump still leaves pages out."""
    from conftest import run_python
    members = f"{tmp_path / 'm0'},{tmp_path / 'm1'}"
    p = run_python("import json, sys\nfrom stripedump.cli import main\n"
                   f"rc = main(['dump', '-q', '-d', '31', '--json', '--disks', {members!r}, {real_vmcore[0]!r}])\n"
                   "print(rc, sorted(m for m in sys.modules if m.startswith(('numpy', 'stripedump.levels.pagevec'))))\n")
    assert p.returncode == 0, p.stderr
    *report, last = p.stdout.strip().splitlines()
    assert last == "0 []"
    res = json.loads("\n".join(report))
    assert res["dump_level"]["applied"] == 31 and res["dump_level"]["excluded"]["free"] > 10000, res["dump_level"]
    with Source(real_vmcore[0]) as src:
        from stripedump.levels import pageclass
        info = VmcoreInfo.from_source(src)
        assert pageclass.PageClassifier(src, info, 31).engine_name == "walk"
        pages = sum(b - a for a, b in src.pfn_ranges)
        saved = pageclass.WALK_MAX_PAGES
        try:
            pageclass.WALK_MAX_PAGES = pages - 1
            assert pageclass.PageClassifier(src, info, 31).engine_name == "vector"
        finally:
            pageclass.WALK_MAX_PAGES = saved


@pytest.mark.skipif(not os.path.exists(FILLED), reason=f"{FILLED} is not built (bench/compare.py builds it)")
@pytest.mark.parametrize("engine", ["walk", "vector"])
def test_memory_stays_flat_with_dump_level_31(real_vmcore, tmp_path, engine):
    """Peak RSS of the processes of a -d 31 dump (2 workers, 1 MiB chunks): the 1.5 GiB filled guest's
    within 8 MiB of the 192 MiB guest's, with either classifier engine (forced for both guests through
    pageclass.WALK_MAX_PAGES; the workers are forked): no per-page state that grows with the machine."""
    peaks = []
    limit = 1 << 40 if engine == "walk" else 0
    for core in (real_vmcore[0], FILLED):
        members = f"{tmp_path / 'm0'},{tmp_path / 'm1'}"
        code = ("import resource, sys\nfrom stripedump.levels import pageclass\nfrom stripedump.cli import main\n"
                f"pageclass.WALK_MAX_PAGES = {limit}\n"
                f"rc = main(['dump', '-q', '-d', '31', '--force', '--workers', '2', '--codec', 'lz4', "
                f"'--disks', {members!r}, {core!r}])\n"
                "print(rc, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
                "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                           env=dict(os.environ, PYTHONPATH=ROOT))
        rc, own, children = map(int, p.stdout.split())
        assert rc == 0, p.stderr
        peaks.append((own, children))
        for m in members.split(","):
            os.unlink(m)
    print("peak RSS KiB (coordinator, largest child):", peaks)
    assert peaks[1][0] <= peaks[0][0] + 8192 and peaks[1][1] <= peaks[0][1] + 8192, peaks


def test_unreadable_pages_and_struct_pages_keep_the_dump_going(real_vmcore, tmp_path):
    """The real-kernel fixture behind a FUSE file that fails reads with EIO (tests/helpers/faulty_fs.py)
    at a kept page and at a page of struct pages: -d 31 --no-mmap still dumps (exit 0); the pages the
    faults touch are recorded unreadable, not excluded; the pages whose struct pages are lost are
    counted and none is left out that the whole view would keep; every other page is left out or kept
    exactly as in a dump without the faults."""
    from conftest import need_fuse, start_fuse
    from stripedump.levels.pageclass import PageClassifier
    need_fuse()
    path = real_vmcore[0]
    with Source(path) as src:
        info = VmcoreInfo.from_source(src)
        pc = PageClassifier(src, info, 31)
        r = pc.classify(0x1000, 0x1000)
        kept_pfn = 0x1000 + r.excluded.index(0)     # a page kept at level 31
        r = pc.classify(0x4000, 0x4000)
        # 64 PFNs sharing one 4 KiB page of struct pages, some of them left out at level 31
        lost = 0x4000 + 64 * next(i for i in range(0x100) if any(r.excluded[64 * i:64 * i + 64]))
        va = pc.memmap.vaddr(lost)
        pa = pc.memmap.kmem.translate(va)[0]
        def file_offset(paddr):
            o = next(o for o in src.owners if o.start <= paddr < o.end)
            return o.offset + paddr - o.start
        bad = [(file_offset(kept_pfn * PAGE), file_offset(kept_pfn * PAGE) + PAGE),
               (file_offset(pa) & ~(PAGE - 1), (file_offset(pa) & ~(PAGE - 1)) + PAGE)]
        # the PFNs whose bytes the faults take: FUSE reads whole pages of the file, and the core's loads
        # need not be page-aligned in it
        hit = set()
        for a, b in bad:
            a, b = a & ~(PAGE - 1), -(-b // PAGE) * PAGE
            for o in src.owners:
                lo, hi = max(a, o.offset), min(b, o.offset + o.end - o.start)
                if lo < hi:
                    hit.update(range((o.start + lo - o.offset) // PAGE, -(-(o.start + hi - o.offset) // PAGE)))
        # the PFNs whose struct pages lie in those pages, and what the whole view says of them
        blind = [p for p in range(lost - 256, lost + 256)
                 if pc.memmap.kmem.translate(pc.memmap.vaddr(p))[0] // PAGE in hit]
        assert set(range(lost, lost + 64)) <= set(blind)
        full = np.frombuffer(pc.classify(blind[0], blind[-1] + 1 - blind[0]).excluded, np.uint8).astype(bool)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = start_fuse("faulty_fs.py", [path, mnt] + [f"{a}:{b}" for a, b in bad], mnt)
    try:
        members = (str(tmp_path / "m0"), str(tmp_path / "m1"))
        r = run_cli("dump", "-d", "31", "--no-mmap", "--json", "--codec", "lz4", "--disks", ",".join(members),
                    str(mnt / "vmcore"))
        assert r.rc == 0, r.err
        res = json.loads(r.out)
        assert res["unreadable_blocks"] == len(hit) and kept_pfn in hit
        assert res["dump_level"]["struct_unreadable_pages"] >= 64
        with Source(path) as src:       # the members against the file itself, without faults
            ours, _, _, _ = read_back(members, src, unreadable=hit)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        proc.kill()
        proc.wait(10)
    b0, b1 = blind[0], blind[-1] + 1
    assert not (ours[b0:b1] & ~full).any()      # nothing the whole view would keep
    assert not ours[sorted(hit)].any()          # unreadable, not excluded
    clean_dir = tmp_path / "clean"
    clean_dir.mkdir()
    clean, _ = dump_members(clean_dir, path, 31)
    with Source(path) as src:
        want, _, _, _ = read_back(clean, src)
    ours[b0:b1] = want[b0:b1]
    ours[sorted(hit)] = want[sorted(hit)]
    assert (ours == want).all()


@pytest.mark.parametrize("bad", [{"asked": 31, "applied": 32, "missing": [], "weaker": []},
                                 {"asked": 16, "applied": 17, "missing": [], "weaker": []},
                                 {"asked": 31, "applied": 31, "missing": "NUMBER(PG_lru)", "weaker": []},
                                 {"asked": 31, "applied": 31, "missing": [3], "weaker": []},
                                 {"asked": 31, "applied": 31, "weaker": []},
                                 [31]])
def test_a_manifest_with_a_malformed_dump_level_is_refused(vmcore, tmp_path, bad):
    from stripedump.format import structs as fmt
    import hostile
    b = vmcore("kernel")
    members, _ = dump_members(tmp_path, b.path, 1)
    for p in members:
        h = hostile._read_header(p)
        with open(p, "r+b") as f:
            f.seek(h.manifest_offset)
            m = fmt.unpack_manifest(f.read(h.manifest_length), p, h.dump_id)
            m["dump_level"] = bad
            new = fmt.pack_manifest(m, h.dump_id)
            f.seek(h.manifest_offset)
            f.write(new)
        hostile.set_header_field(p, "manifest_length", len(new))
    r = run_cli("info", *members)
    assert r.rc != 0 and len(r.err.strip().splitlines()) == 1 and "manifest is malformed" in r.err, r
