"""Any subset of members is usable (issue 9, cases 5 and 6).

A member lost (its disk died) must still leave: an ELF output that ELF
readers open, identical to the source wherever it holds data (its header
region rebuilt from the manifest copy that every member carries), zeros
exactly where join says data is missing; a kdump output that libkdumpfile
reads; and ``info`` (exit 0) and ``verify`` (exit 8) that say, per member and
in total, what a join would recover.  Expected bytes and ranges come from
the soak's oracle (tests/helpers/oracle.py), which finds the header region
in the source with its own parsing and shares nothing with the reader.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess

import pytest

from stripedump.tools import synth
from stripedump.source.elfhead import manifest_pieces

from conftest import FIXTURES, assert_one_line_error

from oracle import Oracle, merge_ranges

CODEC, CHUNK = "zlib", 16 << 10
V1 = os.path.join(FIXTURES, "v1")


@pytest.fixture(scope="module", params=["kernel", "elf32", "pn_xnum", "elf32-pn_xnum"])
def source(request, tmp_path_factory):
    d = tmp_path_factory.mktemp("subset")
    b = synth.build(str(d / "vmcore"), **synth.layouts()[request.param])
    return b.path, Oracle(b.path, CODEC, CHUNK)


def _dump(cli, src, tmp_path, n):
    m = [str(tmp_path / f"m{i}") for i in range(n)]
    r = cli("dump", "-q", "--codec", CODEC, "--chunk-size", str(CHUNK), "--disks", ",".join(m), src)
    assert r.rc == 0, r
    return m


def _explain(oracle, given, res) -> str:
    """For a failed comparison: the present chunks join called missing, and what the members hold of them."""
    said = {p for a, b in res["missing"] for p in range(a, b)}
    cids = {c.id for c in oracle.plan if c.kind == 0 and c.id in oracle.on_disk(given) and c.start in said}
    return f"present chunks join missed: {sorted(cids)[:16]}\n" + oracle.explain(given, cids)


def _header_chunk(oracle) -> int:
    """The id of the residue chunk that holds file offset 0 (the ELF header)."""
    return next(c.id for c in oracle.plan if c.kind != 0 and c.start == 0)


def _elf_readers_open(path: str, src: str) -> None:
    """readelf and pyelftools read the same headers from OUT as from the source."""
    from elftools.elf.elffile import ELFFile
    outs = []
    for p in (path, src):
        r = subprocess.run(["readelf", "-W", "-h", "-l", p], capture_output=True, text=True)
        assert r.returncode == 0 and "Warning" not in r.stderr and "Error" not in r.stderr, r.stderr
        outs.append([ln for ln in r.stdout.splitlines() if "Flags:" not in ln])
    assert outs[0] == outs[1]
    segs = []
    for p in (path, src):
        with open(p, "rb") as f:
            elf = ELFFile(f)
            segs.append([(s["p_type"], s["p_offset"], s["p_paddr"], s["p_filesz"]) for s in elf.iter_segments()])
            notes = [n["n_name"] for s in elf.iter_segments() if s["p_type"] == "PT_NOTE" for n in s.iter_notes()]
            assert "VMCOREINFO" in notes
    assert segs[0] == segs[1] and segs[0]


@pytest.mark.parametrize("n", [2, 3])
def test_join_without_each_member_gives_an_elf_file(source, tmp_path, cli, n):
    """Each member missing in turn: equal where present, zeros where declared missing, an ELF file."""
    src, oracle = source
    m = _dump(cli, src, tmp_path, n)
    header = _header_chunk(oracle)
    rebuilt_seen = False
    for lost in range(n):
        given = [p for i, p in enumerate(m) if i != lost]
        out = str(tmp_path / f"out{lost}")
        present = oracle.on_disk(given)
        expected = {c for c in oracle.records if c % n != lost}
        assert present == expected, oracle.explain(given, expected - present)
        r = cli("join", "--allow-incomplete", "--json", *given, "-o", out)
        assert r.rc == 0, r
        res = json.loads(r.out)
        pfns, files = oracle.missing_ranges(present)
        assert (res["missing"], res["missing_file_ranges"]) == (pfns, files), (r.err, _explain(oracle, given, res))
        assert res["chunks"] == len(present) and not res["complete"]
        data = open(out, "rb").read()
        assert data == oracle.expected_output(present)
        flags_at = 48 if data[4] == 2 else 36
        assert data[flags_at] & 1                                   # DUMP_ELF_INCOMPLETE
        _elf_readers_open(out, src)
        if header % n == lost:                                      # the header chunk was on the lost member
            rebuilt_seen = True
            assert res["rebuilt_file_ranges"] and res["rebuilt_file_ranges"][0][0] == 0
            assert "rebuilt from the manifest" in r.err
            for a, b in oracle.header:                              # byte for byte but e_flags
                want = bytearray(oracle.source[a:b])
                if a == 0:
                    want[flags_at] |= 1
                assert data[a:b] == want
        os.unlink(out)
    assert rebuilt_seen


def test_old_manifest_without_header_copy_keeps_zeros(tmp_path, cli):
    """A v1 member set (no source.header_pieces): the header chunk's bytes stay zeros, as before."""
    out = tmp_path / "o"
    r = cli("join", "--allow-incomplete", "--json", os.path.join(V1, "member0.sd"), "-o", out)
    assert r.rc == 0, r
    res = json.loads(r.out)
    assert res["rebuilt_file_ranges"] == [] and res["missing_file_ranges"][0][0] == 0
    assert out.read_bytes()[:4096] == bytes(4096)


def test_info_and_verify_with_a_member_missing(source, tmp_path, cli):
    """info exits 0, verify 8, both say per member and in total what a join recovers."""
    src, oracle = source
    m = _dump(cli, src, tmp_path, 3)
    given = [m[2], m[0]]
    present = oracle.on_disk(given)
    pfns, files = oracle.missing_ranges(present)
    r = cli("info", "--json", *given)
    assert r.rc == 0, r
    d = json.loads(r.out)
    rec = d["recovery"]
    assert rec["recoverable_chunks"] == len(present) and rec["missing_chunks"] == len(oracle.records) - len(present)
    assert (rec["missing"], rec["missing_file_ranges"]) == (pfns, files)
    assert rec["missing_pages"] == sum(b - a for a, b in pfns)
    assert rec["recoverable_bytes"] + rec["missing_bytes"] == oracle.plan.input_bytes
    assert rec["recoverable_bytes"] == sum(oracle.plan.chunk(c).raw_bytes(oracle.page_size) for c in present)
    members = d["members"]
    assert [x["index"] for x in members] == [0, 1, 2]
    assert [x["state"] for x in members] == ["complete", "not given", "complete"]
    assert members[1]["path"] is None and members[1]["recoverable_chunks"] == 0
    for x in members:
        mine = [c for c in oracle.records if c % 3 == x["index"]]
        assert x["share_chunks"] == len(mine)
        assert x["share_bytes"] == sum(oracle.plan.chunk(c).raw_bytes(oracle.page_size) for c in mine)
        assert x["missing_chunks"] == (len(mine) if x["index"] == 1 else 0)
    lost = merge_ranges([(c.start, c.start + c.count) for c in oracle.plan if c.kind == 0 and c.id % 3 == 1])
    assert members[1]["missing"] == lost and members[1]["missing_pages"] == rec["missing_pages"]
    r = cli("info", *given)
    assert r.rc == 0, r
    assert "[1] not given" in r.out and "0 of" in r.out and f"a join recovers {len(present)} of" in r.out
    assert "missing:" in r.out and "PFN" in r.out

    r = cli("verify", "--json", *given)
    assert r.rc == 8, r
    v = json.loads(r.out)
    assert v["chunks"] == len(present) and v["errors"] == []
    for k in ("missing", "missing_file_ranges", "rebuilt_file_ranges", "recoverable_chunks", "recoverable_bytes",
              "missing_pages", "missing_chunks"):
        assert v[k] == rec[k], k
    assert [x.get("recoverable_chunks") for x in v["members"]] == [x["recoverable_chunks"] for x in members]
    assert "member 1: not given" in r.err and "missing PFN ranges" in r.err
    assert r.err.strip().splitlines()[-1].startswith("stripedump: error: the dump is incomplete")
    r = cli("verify", *given)
    assert r.rc == 8 and "Traceback" not in r.err, r


def test_info_of_a_whole_dump_says_complete(tmp_path, cli, vmcore):
    b = vmcore("kernel")
    m = _dump(cli, b.path, tmp_path, 2)
    d = json.loads(cli("info", "--json", *m).out)
    assert d["recovery"]["complete"] and d["recovery"]["missing"] == [] and d["recovery"]["missing_bytes"] == 0
    assert all(x["recoverable_chunks"] == x["share_chunks"] for x in d["members"])
    r = cli("info", *m)
    assert "the dump is complete" in r.out
    assert cli("verify", "-q", *m).rc == 0


def test_exit_6_keeps_its_meaning_with_members_missing(tmp_path, cli, vmcore):
    """Members of different dumps, or a file that is no member: 6, even when members are missing."""
    b = vmcore("kernel")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = _dump(cli, b.path, tmp_path / "a", 3)
    other = _dump(cli, b.path, tmp_path / "b", 3)
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a member" * 1000)
    for cmd in ("info", "verify"):
        assert_one_line_error(cli(cmd, a[0], other[1]), 6, "different dumps")
        assert_one_line_error(cli(cmd, a[0], str(junk)), 6, str(junk))
        assert_one_line_error(cli(cmd, a[0], a[0]), 6)


def test_kdump_output_without_each_member(tmp_path, cli):
    """kdump: the header comes from the manifest; libkdumpfile reads every present page, none missing."""
    from kdump.test_join import _has_libkdumpfile, libkdumpfile_read, source_digests
    b = synth.build(str(tmp_path / "vm"), **synth.layouts()["kernel"])
    oracle = Oracle(b.path, CODEC, CHUNK)
    m = _dump(cli, b.path, tmp_path, 2)
    want = source_digests(b.path, oracle.plan.pfn_ranges) if _has_libkdumpfile() else None
    for lost in range(2):
        given = [m[1 - lost]]
        out = tmp_path / f"k{lost}"
        r = cli("join", "--allow-incomplete", "--format", "kdump", "--json", *given, "-o", out)
        assert r.rc == 0, r
        present = oracle.on_disk(given)
        res = json.loads(r.out)
        assert res["missing"] == oracle.missing_ranges(present)[0], (r.err, _explain(oracle, given, res))
        data = out.read_bytes()
        assert data[:8] == b"KDUMP   "
        assert struct.unpack_from("<I", data, 424)[0] & 0x8               # DUMP_DH_COMPRESSED_INCOMPLETE
        if want is None:
            continue
        got = libkdumpfile_read(str(out), 4096, oracle.plan.pfn_ranges)
        assert got["attrs"]["linux.uts.release"] == "6.1.0-synthetic"
        gone = {p for a, z in res["missing"] for p in range(a, z)}
        assert gone and all(got["pages"][p].startswith("error") for p in gone)
        assert all(got["pages"][p] == want[p] for p in want if p not in gone)


def test_manifest_pieces_are_checked():
    """A hostile header copy is refused before anything is written or allocated for it."""
    notes = b"\0" * 24
    segs = [{"type": 4, "offset": 4096, "filesz": 24}]
    ok = {"header_pieces": [[0, "f0VMRg=="]]}
    assert manifest_pieces(ok, notes, segs, 8192) == [(0, b"\x7fELF"), (4096, notes)]
    assert manifest_pieces({}, notes, segs, 8192) is None
    for bad in ([[8190, "f0VMRg=="]], [[-1, "AA=="]], [["0", "AA=="]], [[0, "!!"]], [[0]], "x",
                [[0, "AA=="]] * 17):
        with pytest.raises(ValueError):
            manifest_pieces({"header_pieces": bad}, notes, segs, 8192)
    with pytest.raises(ValueError):
        manifest_pieces(ok, notes + b"x", segs, 8192)            # notes do not match PT_NOTE sizes
