"""Errors about damaged members say which member, what it means and what to do: no format jargon.

Before, a member cut off in its manifest gave "SDMF record is truncated".
"""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest

from stripedump.tools import synth
from stripedump.format.codecs import CodecSpec
from stripedump.dump.config import DumpConfig
from stripedump.read.member import MemberReader
from stripedump.dump.coordinator import dump

from conftest import assert_one_line_error, run_cli

JARGON = re.compile(r"SD[A-Z0-9]{2}\b|record is truncated")


@pytest.fixture(scope="module")
def dumped(tmp_path_factory):
    d = tmp_path_factory.mktemp("msg")
    b = synth.build(str(d / "vm"), **synth.layouts()["kernel"])
    targets = (str(d / "m0"), str(d / "m1"))
    dump(DumpConfig(b.path, targets, CodecSpec("lz4"), 1, 256 << 10))
    return b.path, targets


@pytest.fixture
def members(dumped, tmp_path):
    return [str(shutil.copy(m, tmp_path / os.path.basename(m))) for m in dumped[1]]


def test_member_cut_off_in_its_manifest(members, tmp_path):
    os.truncate(members[0], 4096 + 100)
    r = run_cli("join", *members, "-o", tmp_path / "o")
    assert_one_line_error(r, 6, members[0], "manifest", "cut off", "--allow-incomplete")
    assert not JARGON.search(r.err), r.err
    # info reports what can still be recovered (exit 0), verify calls the dump incomplete (8);
    # both name the unusable member and why, without jargon
    r = run_cli("info", *members)
    assert r.rc == 0, r
    line = next(x for x in r.out.splitlines() if x.strip().startswith("[0]"))
    assert members[0] in line and "unusable" in line and "manifest" in line and "cut off" in line, r.out
    assert not JARGON.search(r.out), r.out
    r = run_cli("verify", *members)
    assert r.rc == 8, r
    assert members[0] in r.err and "cut off" in r.err and not JARGON.search(r.err), r.err
    # and what the message advises works: the other member's chunks are recovered
    r = run_cli("join", "--allow-incomplete", "--json", *members, "-o", tmp_path / "o")
    assert r.rc == 0, r
    res = json.loads(r.out)
    assert not res["complete"] and res["chunks"] > 0
    m0 = next(m for m in res["members"] if m["index"] == 0)
    assert m0["path"] == members[0] and "cut off" in m0["state"]


def test_damaged_footer(members, tmp_path):
    r = MemberReader(members[1])
    off = r.header.footer_offset
    r.close()
    with open(members[1], "r+b") as f:
        f.seek(off + 40)
        f.write(b"\xff\xff")
    # the member finished: every chunk is found by walking it instead, with no option (issue 24
    # item 1), and one warning says so, naming the member and the damage, without jargon
    r = run_cli("join", *members, "-o", tmp_path / "o")
    assert r.rc == 0, r
    lines = [ln for ln in r.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("stripedump: join: warning: "), r.err
    assert all(w in lines[0] for w in (members[1], "footer", "damaged", "walking its records")), r.err
    assert not JARGON.search(r.err), r.err


def test_unknown_required_feature_is_named(members):
    r = MemberReader(members[0])
    h = r.header._replace(features_required=1 << 5)
    r.close()
    with open(members[0], "r+b") as f:
        f.write(h.pack())
    r = run_cli("info", *members)
    assert_one_line_error(r, 6, members[0], "bit 5 of features_required", "upgrade stripedump")
