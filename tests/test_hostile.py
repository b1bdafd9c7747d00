"""Issue 9, case 7: sizes are checked before they are trusted, under a real memory limit.

Each test sets one length, count or offset of a member or a manifest to an
extreme value and reseals the record's check, so only the reader's own
validation stands between the value and an allocation or a loop.  join,
verify and info then run as real processes under RLIMIT_AS (384 MiB: a
stripedump join needs about 20 MiB of RSS here), so an allocation sized from
an unchecked field fails the test with a MemoryError (exit 1) instead of
passing unnoticed.  Every run must end with a documented exit code and one
line of error, never a traceback.
"""

from __future__ import annotations

import os
import shutil

import pytest

import hostile
from stripedump.tools import synth
from stripedump.format.codecs import CodecSpec
from stripedump.dump.config import DumpConfig
from stripedump.dump.coordinator import dump
from stripedump.format.plan import Plan

LIMIT = 384 << 20
PEAK = 100 << 20          # the most RSS join, verify or info may use on these members


@pytest.fixture(scope="module")
def dumped(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    b = synth.build(str(d / "vm"), **synth.layouts()["kernel"])
    targets = (str(d / "m0"), str(d / "m1"))
    dump(DumpConfig(b.path, targets, CodecSpec("zstd"), 1, 256 << 10))
    return targets


@pytest.fixture
def members(dumped, tmp_path):
    return [shutil.copy(m, tmp_path / os.path.basename(m)) for m in dumped]


def _run_all(members, tmp_path, allowed=(0, 6, 7, 8, 12)) -> dict:
    """join (strict and --allow-incomplete), verify and info under the memory limit: exit codes."""
    out = {}
    for name, args in (("join", ["join", *members, "-o", tmp_path / "o1"]),
                       ("join-incomplete", ["join", "--allow-incomplete", *members, "-o", tmp_path / "o2"]),
                       ("verify", ["verify", *members]), ("info", ["info", *members])):
        rc, so, se, rss = hostile.run_limited(args, LIMIT, tmp_path)
        assert rc in allowed, (name, rc, se[-2000:])
        assert "Traceback" not in se and "MemoryError" not in se, (name, se[-2000:])
        errs = [ln for ln in se.splitlines() if ln.startswith("stripedump: error:")]
        assert rc == 0 or len(errs) == 1, (name, se)
        assert rss < PEAK, (name, rss)
        out[name] = (rc, errs[0] if errs else "")
    for p in (tmp_path / "o1", tmp_path / "o2"):
        if p.exists():
            p.unlink()
    return out


def test_chunk_raw_length_is_not_allocated(members, tmp_path):
    """A record claiming 1 GiB of data (a 72-byte all-zero record can): refused, not allocated."""
    hostile.make_zero_chunk(members[0], 1 << 30)
    r = _run_all(members, tmp_path)
    assert r["join"][0] == 7 and "implausible chunk" in r["join"][1]
    assert r["verify"][0] == 7
    assert r["join-incomplete"][0] == 0


def test_manifest_with_2_to_the_52_chunks(members, tmp_path):
    """A plan whose ranges really describe 2^52 pages (n_chunks consistent): refused, not a bitmap of 2^49 bytes."""
    def huge(m, v):
        m["plan"]["pfn_ranges"][-1][1] = v
        m["plan"]["n_chunks"] = _count(m["plan"])
    hostile.MANIFEST_FIELDS["huge_plan"] = huge
    hostile.set_manifest_field(members, "huge_plan", 1 << 52)
    r = _run_all(members, tmp_path)
    for name, (rc, err) in r.items():
        assert rc == 6 and "manifest is malformed" in err, (name, err)


def _count(plan: dict) -> int:
    p = Plan(plan["pfn_ranges"], plan["residue"], plan["page_size"], plan["chunk_pages"])
    return p.n_chunks


@pytest.mark.parametrize("field,value", [("segment_offset", 1 << 40), ("segment_filesz", 1 << 62),
                                         ("residue_end", 1 << 50), ("source_size", 1 << 62),
                                         ("segment_memsz", 1 << 56), ("segments_count", 1 << 20),
                                         ("segments_flood", 1 << 20),
                                         ("block_bytes", 1 << 40), ("members", 1 << 31)])
def test_manifest_sizes_are_bounded_by_the_source(members, tmp_path, field, value):
    hostile.set_manifest_field(members, field, value)
    r = _run_all(members, tmp_path)
    if field == "segment_memsz":     # memory past the file data: harmless, the plan (checked) says what is read
        return
    for name, (rc, err) in r.items():
        assert rc == 6, (name, err)


@pytest.mark.parametrize("field,value", [("index_count", (1 << 32) - 1), ("chunks", 1 << 60),
                                         ("index_count", 0), ("member_index", 5)])
def test_footer_counts_are_checked(members, tmp_path, field, value):
    hostile.set_footer_field(members[1], field, value)
    r = _run_all(members, tmp_path)
    # the member says it finished: its records are walked instead, with or without the option
    # (issue 24 item 1); verify says the footer is damaged (12)
    assert r["join"][0] == 0 and r["join-incomplete"][0] == 0
    assert r["verify"][0] == 12 and "repaired" in r["verify"][1]


@pytest.mark.parametrize("field,value", [("length", (1 << 32) - 1), ("offset", 1 << 62),
                                         ("chunk_id", 1 << 52)])
def test_index_entries_are_checked(members, tmp_path, field, value):
    hostile.set_index_field(members[0], field, value)
    _run_all(members, tmp_path)


@pytest.mark.parametrize("field,value", [("chunk_pages", 1 << 31), ("block_pages", (1 << 32) - 1),
                                         ("manifest_length", 1 << 40), ("footer_length", 1 << 40),
                                         ("footer_offset", 1 << 62), ("page_size", 1 << 30),
                                         ("features_required", 1 << 7)])
def test_header_sizes_are_checked(members, tmp_path, field, value):
    hostile.set_header_field(members[1], field, value)
    r = _run_all(members, tmp_path)
    if field == "features_required":
        assert r["info"][0] == 6 and "feature" in r["info"][1] and "bit 7" in r["info"][1]
