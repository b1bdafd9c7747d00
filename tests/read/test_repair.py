"""What the readers rebuild from a member's other parts (read/repair.py, issue 24 items 1 and 2).

The whole-program rule (verify agrees with join and mount, region by region) is
tests/test_damage.py; here, the parts: the header copy as written, a member without one, a
copy of another dump, a header rebuilt on a block device, and info's account.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from stripedump.format.structs import HEADER_BLOCK, HEADER_COPY_OFFSET, MemberHeader
from stripedump.read.member import MemberReader

from conftest import ROOT, run_cli
from test_damage import flip

HSIZE = MemberHeader.STRUCT.size


def head(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(HEADER_BLOCK)


def test_the_header_copy_is_written_with_the_header_and_rewritten_with_it(lz4_dump, tmp_path):
    source, m = lz4_dump
    src = str(tmp_path / "vmcore")           # where lz4_dump's vmcore fixture built it
    for p in m:                        # finalized: the copy says what the rewritten header says
        h = head(p)
        assert h[HEADER_COPY_OFFSET:HEADER_COPY_OFFSET + HSIZE] == h[:HSIZE]
        assert MemberHeader.unpack(h, p).state == 1
        assert not h[HSIZE:HEADER_COPY_OFFSET].strip(b"\0") and not h[HEADER_COPY_OFFSET + HSIZE:].strip(b"\0")
    streamed = tmp_path / "s0"
    with open(streamed, "wb") as f:    # streamed: written once, state 0, like its header
        p = subprocess.run([sys.executable, "-m", "stripedump", "dump", "-q", "--disks", f"-,{tmp_path / 's1'}",
                            "--codec", "lz4", src], stdout=f, stderr=subprocess.PIPE,
                           env=dict(os.environ, PYTHONPATH=ROOT))
    assert p.returncode == 0, p.stderr
    h = head(str(streamed))
    assert h[HEADER_COPY_OFFSET:HEADER_COPY_OFFSET + HSIZE] == h[:HSIZE]
    assert MemberHeader.unpack(h, "s0").state == 0


def test_a_member_without_a_copy_reads_as_before(lz4_dump, tmp_path):
    """Members written before the copy existed have zeros there: read as they always were."""
    source, m = lz4_dump
    with open(m[1], "r+b") as f:
        f.seek(HEADER_COPY_OFFSET)
        f.write(bytes(HSIZE))
    r = MemberReader(m[1])
    assert r.damage == [] and r.header.state == 1
    r.close()
    v = run_cli("verify", *m)
    assert v.rc == 0 and not v.err.count("damaged"), v


def test_a_copy_of_another_dump_is_never_taken(lz4_dump, tmp_path):
    """A reused device may hold an earlier dump's header copy where this dump's header was lost:
    it names another dump, so the header is rebuilt from the other members instead."""
    source, m = lz4_dump
    other = MemberHeader.unpack(head(m[1]), m[1])._replace(dump_id=bytes(range(16)))
    with open(m[1], "r+b") as f:
        f.seek(HEADER_COPY_OFFSET)
        f.write(other.pack())
    flip(m[1], 40)
    with pytest.raises(Exception, match="its copy is of another dump"):
        MemberReader(m[1])
    j = run_cli("join", *m, "-o", tmp_path / "out")
    assert j.rc == 0 and "rebuilt from the header of" in j.err, j
    assert open(tmp_path / "out", "rb").read() == source


def test_a_header_block_lost_on_a_block_device_is_rebuilt(tmp_path, vmcore, loop_device):
    """On a device the trailer is not at the device's end: the member's footer, found by walking
    its records, says which member it is and that it finished; join needs no option."""
    b = vmcore("kernel")
    devs = [loop_device(8 << 20) for _ in range(3)]
    res = run_cli("dump", "-q", "--disks", ",".join(devs), "--codec", "lz4", b.path)
    assert res.rc == 0, res
    with open(devs[0], "r+b") as f:      # the whole 4 KiB header block gone (zeros)
        f.write(bytes(HEADER_BLOCK))
        f.flush()
        os.fsync(f.fileno())
    j = run_cli("join", *devs, "-o", tmp_path / "out")
    assert j.rc == 0, j
    assert "its magic is gone" in j.err and "its footer, found by walking its records" in j.err
    assert open(tmp_path / "out", "rb").read() == open(b.path, "rb").read()
    assert run_cli("verify", *devs).rc == 12


def test_info_tells_the_damage_and_what_join_does(lz4_dump, tmp_path):
    source, m = lz4_dump
    flip(m[0], 100)
    flip(m[1], 4096 + 60)              # m1's manifest: the identical one of another member is used
    d = json.loads(run_cli("info", "--json", *m).out)
    assert len(d["repaired"]) == 2 and d["join_refuses"] == []
    by = {x["index"]: x for x in d["members"]}
    assert "its copy at offset 2048 was used" in by[0]["damage"][0]
    assert "the identical copy in" in by[1]["damage"][0]
    text = run_cli("info", *m).out
    assert text.count("damaged:") == 2 and "the dump is complete (join and mount work around" in text
    # the manifest record of the only member given cannot stand in: refused as before
    shutil.copy(m[1], tmp_path / "alone")
    assert run_cli("info", tmp_path / "alone").rc == 6


def test_a_streamed_member_with_its_trailer_and_index_damaged(lz4_dump, tmp_path):
    """A streamed member's trailer damaged (its footer is found where the trailer begins) and its
    index too (its records are walked): join gives the source, each damage told once."""
    source, m = lz4_dump
    s0, s1 = tmp_path / "s0", tmp_path / "s1"
    with open(s0, "wb") as f:
        p = subprocess.run([sys.executable, "-m", "stripedump", "dump", "-q", "--disks", f"-,{s1}",
                            "--codec", "lz4", str(tmp_path / "vmcore")], stdout=f, stderr=subprocess.PIPE,
                           env=dict(os.environ, PYTHONPATH=ROOT))
    assert p.returncode == 0, p.stderr
    r = MemberReader(str(s0))
    index_at = r.footer().index_offsets[0]
    r.close()
    flip(str(s0), os.path.getsize(s0) - 20, index_at + 40)
    j = run_cli("join", s0, s1, "-o", tmp_path / "out")
    assert j.rc == 0, j
    assert open(tmp_path / "out", "rb").read() == source
    warnings = [ln for ln in j.err.splitlines() if "warning" in ln]
    assert len(warnings) == 2, j.err
    assert "its trailer is damaged" in warnings[0] and "an index record" in warnings[1], j.err
