"""Format version 1 members (stripedump 0.1.0) are still read: join, verify and info.

tests/fixtures/v1 holds a committed member set written before format
version 2 (see its README.md): joining it must give the synthetic source
byte for byte, and the reader must take it for what it is.
"""

from __future__ import annotations

import hashlib
import json
import os

from stripedump.tools import synth
from stripedump.read.member import MemberReader

from conftest import FIXTURES, run_cli

FIXTURE = os.path.join(FIXTURES, "v1")
MEMBERS = [os.path.join(FIXTURE, f"member{i}.sd") for i in range(2)]
SHA256 = "8faeb9c459367b8e5d9f929fb9b19a9311da4fcdf2739cde90c8ea787b46a724"


def test_v1_members_are_read_as_version_1():
    for i, p in enumerate(MEMBERS):
        r = MemberReader(p)
        try:
            assert r.version == 1 and r.header.member_index == i and r.header.features_required == 0
            f = r.footer()
            assert f.state == 1 and f.chunks == len(list(r.index(f))) == 5
            assert sorted(e.chunk_id for e in r.walk()) == sorted(e.chunk_id for e in r.index(f))
        finally:
            r.close()


def test_v1_join_gives_the_source_byte_for_byte(tmp_path):
    out = tmp_path / "vmcore"
    r = run_cli("join", *MEMBERS, "-o", out)
    assert r.rc == 0, r
    assert hashlib.sha256(out.read_bytes()).hexdigest() == SHA256
    src = tmp_path / "src"
    synth.main([str(src), "--size", "2M"])                  # the source, rebuilt: the same bytes
    assert src.read_bytes() == out.read_bytes()


def test_v1_verify_info_and_kdump(tmp_path):
    r = run_cli("verify", *MEMBERS)
    assert r.rc == 0, r
    r = run_cli("info", "--json", *MEMBERS)
    assert r.rc == 0, r
    d = json.loads(r.out)
    assert [m["state"] for m in d["members"]] == ["complete", "complete"] and d["chunks"] == 10
    r = run_cli("join", "--format", "kdump", *MEMBERS, "-o", tmp_path / "k")
    assert r.rc == 0, r


def test_v1_member_without_its_footer_is_walked(tmp_path):
    """A version 1 member never finalized: its records are found by the version 1 walk."""
    import shutil
    from stripedump.format.structs import MemberHeaderV1
    import struct
    import zlib
    ms = [shutil.copy(p, tmp_path / os.path.basename(p)) for p in MEMBERS]
    with open(ms[1], "r+b") as f:
        b = bytearray(f.read(MemberHeaderV1.STRUCT.size))
        struct.pack_into("<H", b, 10, 0)              # state: writing
        struct.pack_into("<QQ", b, 76, 0, 0)          # no footer
        struct.pack_into("<I", b, 92, zlib.crc32(b[:92]))
        f.seek(0)
        f.write(b)
    out = tmp_path / "o"
    r = run_cli("join", "--allow-incomplete", "--json", *ms, "-o", out)
    assert r.rc == 0, r
    res = json.loads(r.out)
    assert res["complete"] and res["chunks"] == 10
    assert hashlib.sha256(out.read_bytes()).hexdigest() == SHA256
