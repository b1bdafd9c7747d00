"""A dump that did not finish is recovered: every chunk that reached disk, zeros for the rest.

Members are left as a stopped dump leaves them: killed with SIGKILL at a
random moment (the whole process group, the coordinator, one child), cut
short (truncated mid-record, at a record boundary, inside an index record),
damaged, or missing.  What ``join --allow-incomplete`` must give back is
decided by the soak's oracle (tests/helpers/oracle.py), which shares
nothing with the reader: it encodes every chunk itself and looks for each
whole record in the member files, then zeroes the bytes of the chunks it did
not find in a copy of the source.
"""

from __future__ import annotations

import json
import os
import random
import struct
import sys
import time

import pytest

from stripedump.tools import synth
from stripedump.format.codecs import CodecSpec
from stripedump.dump.config import DumpConfig
from stripedump.read.config import JoinConfig
from stripedump.errors import IncompleteDump
from stripedump.format.structs import HEADER_BLOCK, KIND_PAGES
from stripedump.read.join import join
from stripedump.read.member import MemberReader, WalkReport
from stripedump.dump.coordinator import dump

from conftest import ROOT, assert_one_line_error, unfinalize

from oracle import KILL_MODES, Oracle, check_run, group_gone, kill_dump, start_dump
from waiting import wait_until

CODEC, CHUNK = "zlib", 16 << 10


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    d = tmp_path_factory.mktemp("recovery")
    b = synth.build(str(d / "vmcore"), **synth.layouts()["kernel"])
    return b.path, Oracle(b.path, CODEC, CHUNK)


def _dump(src, tmp_path, n=2, name="m", **kw):
    targets = tuple(str(tmp_path / f"{name}{i}") for i in range(n))
    dump(DumpConfig(src, targets, CodecSpec.parse(CODEC), 2, CHUNK, **kw))
    return list(targets)


def _entries(path: str):
    r = MemberReader(path)
    try:
        return list(r.index(r.footer())), r.footer().index_offsets
    finally:
        r.close()


def _walk(path: str, verify=True):
    rep = WalkReport()
    r = MemberReader(path)
    try:
        return list(r.walk(verify, rep)), rep
    finally:
        r.close()


def _join_and_check(oracle, members, out, cli, *extra):
    """join --allow-incomplete --json equals the oracle: chunk count, missing ranges, every byte."""
    present = oracle.on_disk(members)
    r = cli("join", "--allow-incomplete", "--json", *members, "-o", out, *extra)
    assert r.rc == 0, r
    res = json.loads(r.out)
    pfns, files = oracle.missing_ranges(present)
    assert res["chunks"] == len(present)
    assert (res["missing"], res["missing_file_ranges"]) == (pfns, files)
    assert res["complete"] == (not pfns and not files)
    assert open(out, "rb").read() == oracle.expected_output(present)
    return present, res, r


# -- the walk --------------------------------------------------------------------

def test_walk_finds_what_the_index_lists(tmp_path):
    """Over index records too: one member with more than INDEX_EVERY chunks."""
    b = synth.build(str(tmp_path / "vm"), **synth.layouts()["kernel"])
    t = tmp_path / "m0"
    dump(DumpConfig(b.path, (str(t),), CodecSpec("lz4"), 2, 4096))
    entries, index_offsets = _entries(str(t))
    assert len(index_offsets) >= 2                      # an index record mid-member
    walked, rep = _walk(str(t))
    assert walked == entries and rep.reason == "the footer" and not rep.damaged
    unfinalize(str(t))
    assert _walk(str(t))[0] == entries


@pytest.mark.parametrize("cut", ["chunk header", "payload", "record boundary", "index record"])
def test_walk_stops_at_a_torn_tail(tmp_path, cut, cli):
    b = synth.build(str(tmp_path / "vm"), **synth.layouts()["kernel"])
    oracle = Oracle(b.path, "lz4", 4096)
    t = str(tmp_path / "m0")
    dump(DumpConfig(b.path, (t,), CodecSpec("lz4"), 2, 4096))
    entries, index_offsets = _entries(t)
    e = entries[700]
    at = {"chunk header": e.offset + 20, "payload": e.offset + e.length - 1,
          "record boundary": e.offset, "index record": index_offsets[0] + 100}[cut]
    unfinalize(t)
    os.truncate(t, at)
    walked, rep = _walk(t)
    assert walked == [x for x in entries if x.offset + x.length <= at]
    assert rep.stopped_at <= at
    _join_and_check(oracle, [t], str(tmp_path / "out"), cli)


def test_walk_steps_over_a_damaged_payload(tmp_path):
    b = synth.build(str(tmp_path / "vm"), **synth.layouts()["kernel"])
    t = str(tmp_path / "m0")
    dump(DumpConfig(b.path, (t,), CodecSpec("lz4"), 1, 4096))
    entries, _ = _entries(t)
    e = next(x for x in entries[100:] if x.length > 200)
    unfinalize(t)
    with open(t, "r+b") as f:
        f.seek(e.offset + e.length - 10)
        f.write(b"\xff" * 4)
    walked, rep = _walk(t)
    assert [x.chunk_id for x in walked] == [x.chunk_id for x in entries if x != e]
    assert rep.damaged == [(e.offset, e.chunk_id)]


# -- killed dumps ----------------------------------------------------------------

@pytest.fixture(scope="module")
def slow_source(tmp_path_factory):
    # 48 MiB: about 8 MiB of zlib:9 records per member, so an O_DIRECT writer (records staged and
    # written 4 MiB at a time) puts its first records on disk well before the end of the dump
    src = str(tmp_path_factory.mktemp("killed") / "vm")
    synth.build(src, synth.demo_loads(48 << 20))
    return src, Oracle(src, "zlib:9", 128 << 10)


@pytest.mark.parametrize("io", ["default", "buffered"])
@pytest.mark.parametrize("mode", KILL_MODES)
def test_killed_dump_recovers_exactly_what_reached_disk(tmp_path, slow_source, mode, io):
    """SIGKILL mid-dump (real processes), then join --allow-incomplete: every byte checked; with
    the default writes (O_DIRECT where the file system takes it) and through the page cache."""
    src, oracle = slow_source
    members = [str(tmp_path / f"m{i}") for i in range(2)]
    p = start_dump(src, members, "zlib:9", 2, "128K", extra=("--buffered",) if io == "buffered" else ())
    # more than the head: records on member 1 (an O_DIRECT writer's first 4 MiB)
    wait_until(lambda: os.path.exists(members[1]) and os.path.getsize(members[1]) > 64 << 10,
               "64 KiB on member 1, before the kill", timeout=60, proc=p, interval=0.005)
    time.sleep(random.Random(mode).uniform(0, 0.1))     # the behaviour: a kill at a random moment
    assert p.poll() is None
    kill_dump(p, mode, random.Random(1))
    p.wait()
    assert group_gone(p.pid, 30), "a process of the dump outlived the kill by 30 s"
    ok, msg, n = check_run(oracle, members, str(tmp_path / "out"))
    assert ok, msg
    # usually part of the dump; on a loaded machine the kill can land after the last chunk
    # was written, while the members were being finalized: then every chunk is there
    assert 0 < n <= len(oracle.records)


# -- what join, verify and info say ------------------------------------------------

def test_incomplete_dump_is_refused_without_the_flag(source, tmp_path, cli):
    src, oracle = source
    m = _dump(src, tmp_path)
    unfinalize(m[1])
    for fmt in ("elf", "kdump"):
        r = cli("join", *m, "-o", tmp_path / f"o-{fmt}", "--format", fmt)
        assert_one_line_error(r, 8, m[1], "never finalized", "--allow-incomplete")
        assert not (tmp_path / f"o-{fmt}").exists()
    with pytest.raises(IncompleteDump, match="--allow-incomplete"):
        join(JoinConfig(tuple(m), str(tmp_path / "o")))


def test_verify_and_info_report_a_killed_member(source, tmp_path, cli):
    src, oracle = source
    m = _dump(src, tmp_path)
    unfinalize(m[0])
    os.truncate(m[0], os.path.getsize(m[0]) * 2 // 3)
    present = oracle.on_disk(m)
    r = cli("verify", "--json", *m)
    assert r.rc == 8 and "the dump is incomplete" in r.err and "missing PFN ranges" in r.err, r
    v = json.loads(r.out)
    assert v["chunks"] == len(present) and v["errors"] == []
    assert v["missing"] == oracle.missing_ranges(present)[0]
    r = cli("info", "--json", *m)
    assert r.rc == 0, r
    info = json.loads(r.out)["members"]
    assert info[0]["state"] == "writing (never finalized)"
    assert info[0]["recovered_chunks"] == len(present) - info[1]["chunks"]
    r = cli("info", *m)
    assert "found by walking its records" in r.out and "torn write" in r.out


def test_missing_member_with_allow_incomplete(source, tmp_path, cli):
    src, oracle = source
    m = _dump(src, tmp_path, n=3)
    assert_one_line_error(cli("join", m[0], m[2], "-o", tmp_path / "o"), 6, "missing member(s) 1",
                          "--allow-incomplete")
    present, res, r = _join_and_check(oracle, [m[2], m[0]], str(tmp_path / "out"), cli)
    assert present == {c for c in oracle.records if c % 3 != 1}
    assert "member 1: not given" in r.err and "missing PFN ranges" in r.err
    assert [x["state"] for x in res["members"]] == ["complete", "not given", "complete"]


def test_output_is_marked_incomplete(source, tmp_path, cli):
    """ELF: e_flags bit 0 (DUMP_ELF_INCOMPLETE, as makedumpfile -E writes and crash reads)."""
    src, oracle = source
    m = _dump(src, tmp_path, n=2)
    os.truncate(m[1], os.path.getsize(m[1]) - 30000)         # the footer, index and last records
    assert_one_line_error(cli("join", *m, "-o", tmp_path / "o"), 6, m[1], "--allow-incomplete")
    _join_and_check(oracle, m, str(tmp_path / "out"), cli)
    flags = struct.unpack_from("<I", open(tmp_path / "out", "rb").read(64), 48)[0]
    assert flags & 1


def test_swapped_members_are_refused_even_with_allow_incomplete(source, tmp_path, cli):
    src, oracle = source
    a = _dump(src, tmp_path, name="a")
    b = _dump(src, tmp_path, name="b")
    r = cli("join", "--allow-incomplete", a[0], b[1], "-o", tmp_path / "o")
    assert_one_line_error(r, 6, "different dumps")


def test_damaged_chunk_is_left_out_with_allow_incomplete(source, tmp_path, cli):
    src, oracle = source
    m = _dump(src, tmp_path)
    entries, _ = _entries(m[1])
    # a page chunk with a payload (the index lists chunks in the order they were written, which
    # varies from run to run: its 4th entry was sometimes a residue chunk, reported as file bytes)
    e = next(x for x in entries if oracle.plan.chunk(x.chunk_id).kind == KIND_PAGES and x.length > 200)
    with open(m[1], "r+b") as f:
        f.seek(e.offset + e.length - 3)
        f.write(b"\x00\xff\x00")
    assert cli("verify", *m).rc == 7
    r = cli("join", "--allow-incomplete", "--json", *m, "-o", tmp_path / "out")
    assert r.rc == 0 and f"chunk {e.chunk_id}" in r.err and "checksum" in r.err, r
    res = json.loads(r.out)
    c = oracle.plan.chunk(e.chunk_id)
    present = set(oracle.records) - {e.chunk_id}
    assert res["missing"] == oracle.missing_ranges(present)[0] == [[c.start, c.start + c.count]]
    assert open(tmp_path / "out", "rb").read() == oracle.expected_output(present)


def test_a_member_never_written_is_allowed(source, tmp_path, cli):
    """Killed before it wrote a header to one target: that file is empty, the rest recovered."""
    src, oracle = source
    m = _dump(src, tmp_path)
    with open(m[1], "r+b") as f:
        f.write(bytes(HEADER_BLOCK))
    os.truncate(m[1], HEADER_BLOCK)
    present, res, r = _join_and_check(oracle, m, str(tmp_path / "out"), cli)
    assert present == {c for c in oracle.records if c % 2 == 0}
    assert "no member header" in r.err


# -- kdump output of an incomplete dump ----------------------------------------------

def _kdump_header(path):
    data = open(path, "rb").read()
    status, block, sub_hdr, bitmap_blocks = struct.unpack_from("<IiiI", data, 424)
    return data, status, (1 + sub_hdr + bitmap_blocks) * block


def test_kdump_output_marks_missing_pages(source, tmp_path, cli):
    """As makedumpfile writes an incomplete dump: header status bit 0x8, descriptors at offset 0."""
    from kdump.test_join import _has_libkdumpfile, libkdumpfile_read, source_digests
    src, oracle = source
    m = _dump(src, tmp_path)
    unfinalize(m[1])
    os.truncate(m[1], os.path.getsize(m[1]) // 2)
    out = tmp_path / "k.kdump"
    r = cli("join", "--allow-incomplete", "--format", "kdump", "--json", *m, "-o", out)
    assert r.rc == 0, r
    present = oracle.on_disk(m)
    missing = oracle.missing_ranges(present)[0]
    assert json.loads(r.out)["missing"] == missing
    data, status, table = _kdump_header(out)
    assert status & 0x8 and status & 0x1                 # INCOMPLETE, zlib
    ranges = oracle.plan.pfn_ranges
    rank = {}
    n = 0
    for a, b in ranges:
        for p in range(a, b):
            rank[p] = n
            n += 1
    gone = [p for a, b in missing for p in range(a, b)]
    assert gone and all(struct.unpack_from("<qIIQ", data, table + 24 * rank[p]) == (0, 0, 0, 0) for p in gone)
    if _has_libkdumpfile():
        here = [(a, b) for a, b in ranges]
        got = libkdumpfile_read(str(out), 4096, here)["pages"]
        want = source_digests(src, here)
        gone = set(gone)
        assert all(got[p].startswith("error") for p in gone)
        assert all(got[p] == want[p] for p in want if p not in gone)


@pytest.mark.slow          # the QEMU guest's vmcore, read without the real_vmcore fixture
def test_real_kernel_incomplete_kdump_in_crash(tmp_path, cli):
    """crash says the dump is incomplete, refuses missing pages, and with --zero_excluded runs a session."""
    import shutil
    import subprocess
    from kdump.test_join import REAL_DIR
    vmcore, vmlinux = os.path.join(REAL_DIR, "vmcore"), os.path.join(REAL_DIR, "vmlinux")
    if shutil.which("crash") is None or not (os.path.exists(vmcore) and os.path.exists(vmlinux)):
        pytest.skip("needs crash and the real-kernel fixture with vmlinux (tests/fixtures/make-real-vmcore.sh)")
    m = [str(tmp_path / "r0"), str(tmp_path / "r1")]
    assert cli("dump", "-q", "--codec", "lzo", "--chunk-size", "1M", "--disks", ",".join(m), vmcore).rc == 0
    unfinalize(m[1])
    os.truncate(m[1], os.path.getsize(m[1]) * 19 // 20)
    out = tmp_path / "k.kdump"
    r = cli("join", "--allow-incomplete", "--format", "kdump", *m, "-o", out)
    assert r.rc == 0 and "missing PFN ranges" in r.err, r
    cmds = tmp_path / "cmds"
    cmds.write_text("sys\nquit\n")
    p = subprocess.run(["crash", "--zero_excluded", "-s", vmlinux, str(out), "-i", str(cmds)],
                       capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert "This dumpfile is incomplete" in p.stdout + p.stderr, p.stdout[-2000:] + p.stderr
    assert p.returncode == 0 and "RELEASE:" in p.stdout, p.stdout[-2000:] + p.stderr


def test_flat_output_of_incomplete_dump_replays_to_the_kdump_file(source, tmp_path, cli):
    import shutil
    import subprocess
    if shutil.which("makedumpfile") is None:
        pytest.skip("makedumpfile is not installed")
    src, oracle = source
    m = _dump(src, tmp_path)
    unfinalize(m[0])
    os.truncate(m[0], os.path.getsize(m[0]) // 3)
    k = tmp_path / "k.kdump"
    assert cli("join", "-q", "--workers", "1", "--allow-incomplete", "--format", "kdump", *m, "-o", k).rc == 0
    r = subprocess.run([sys.executable, "-m", "stripedump", "join", "-q", "--workers", "1",
                        "--allow-incomplete", "--format", "flat", *m, "-o", "-"], capture_output=True,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stderr
    p = subprocess.run(["makedumpfile", "-R", str(tmp_path / "r.kdump")], input=r.stdout, capture_output=True)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "r.kdump").read_bytes() == k.read_bytes()
    assert _kdump_header(k)[1] & 0x8
