"""verify, join and mount agree about a damaged member (issue 24, items 1 and 2).

The rule: ``verify`` exits 0 if and only if a plain ``join`` and ``mount`` (no option) succeed
without a warning and give the source's bytes.  It exits 12 exactly when they succeed and give
the source's bytes but warn about damage they worked around (a header read from its copy or
rebuilt, a manifest taken from another member, a footer or index rebuilt by walking the
records of a member that finished, a trailer); with any other exit code a plain join fails.

Checked by flipping one byte in each region of a member of a real dump (real CLI processes, a
real FUSE mount read by this process), for a regular member and for a streamed one (``--disks
-``: its header is never rewritten, its trailer is authoritative).  Then the two cases issue 24
reported, each as the user met it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from stripedump.format.structs import HEADER_COPY_OFFSET, TRAILER_SIZE
from stripedump.read.member import MemberReader

from conftest import ROOT, run_cli
from mount.test_mount import need_mount
from waiting import wait_until

# byte to flip -> the verdict verify must give (0: nothing it can see; 12: repaired; 7: a chunk)
EXPECTED = {"header": 12, "header magic": 12, "header padding": 0, "header copy": 12,
            "manifest head": 12, "manifest body": 12, "chunk header": 7, "chunk payload": 7,
            "index body": 12, "index head": 12, "footer body": 12, "footer head": 12, "trailer": 12,
            "index and footer": 12}


def regions(path: str) -> dict[str, tuple[int, ...]]:
    """Region name -> the member offsets to flip (one byte each) in that member."""
    r = MemberReader(path)
    try:
        f = r.footer()
        foff, flen = r.footer_place()
        first = min(r.index(f), key=lambda e: e.offset)
        ix = f.index_offsets[-1]
    finally:
        r.close()
    return {"header": (40,), "header magic": (0,), "header padding": (500,),
            "header copy": (HEADER_COPY_OFFSET + 40,), "manifest head": (4096 + 12,),
            "manifest body": (4096 + 60,), "chunk header": (first.offset + 20,),
            "chunk payload": (first.offset + first.length - 3,), "index body": (ix + 40,),
            "index head": (ix + 1,), "footer body": (foff + flen - 10,), "footer head": (foff + 1,),
            "trailer": (r.size - TRAILER_SIZE + 30,), "index and footer": (ix + 40, foff + flen - 10)}


def flip(path: str, *offsets: int) -> None:
    with open(path, "r+b") as f:
        for at in offsets:
            f.seek(at)
            b = f.read(1)
            f.seek(at)
            f.write(bytes([b[0] ^ 0x5A]))


def mount_read(members, mnt) -> tuple[int, str, bytes | None]:
    """(exit code of a plain mount, its stderr, the bytes of vmcore read through it or None)."""
    os.makedirs(mnt, exist_ok=True)
    res = run_cli("mount", *members, mnt, timeout=60)
    data = None
    if res.rc == 0:
        try:
            try:
                with open(os.path.join(mnt, "vmcore"), "rb") as f:
                    data = f.read()
            except OSError:       # a damaged chunk reads as EIO, never as zeros
                data = None
        finally:
            u = run_cli("umount", mnt, timeout=60)
            if u.rc != 0:
                subprocess.run(["fusermount3", "-uz", mnt], capture_output=True)
                subprocess.run(["umount", "-l", mnt], capture_output=True)
            wait_until(lambda: not os.path.ismount(mnt), "the mount to go", 10)
    return res.rc, res.err, data


def verdicts(members, out, mnt) -> dict:
    v = run_cli("verify", "-q", *members)
    j = run_cli("join", "-q", *members, "-o", out)
    m_rc, m_err, m_data = mount_read(members, mnt)
    return {"verify": v, "join": j, "mount": (m_rc, m_err, m_data)}


def assert_rule(r: dict, source: bytes, out: str) -> None:
    """verify 0 <=> join and mount clean and whole; 12 <=> whole with a warning; else join fails."""
    v, j, (m_rc, m_err, m_data) = r["verify"], r["join"], r["mount"]
    assert "Traceback" not in v.err + j.err + m_err, r
    joined = j.rc == 0 and open(out, "rb").read() == source
    mounted = m_rc == 0 and m_data == source
    warned = "warning: member" in j.err and "warning: member" in m_err
    if v.rc == 0:
        assert joined and mounted and not j.err and not m_err, r
    elif v.rc == 12:
        assert joined and mounted and warned, r
        assert "damaged:" in v.err, v
    else:
        assert j.rc != 0 and not os.path.exists(out), r
        assert not mounted, r


@pytest.fixture(scope="module")
def dumped(tmp_path_factory):
    """A 3-member lz4 dump: m0 streamed to standard output (``--disks -``), m1 and m2 files."""
    from stripedump.tools import synth
    d = tmp_path_factory.mktemp("damage")
    args = dict(synth.layouts()["kernel"])
    b = synth.build(str(d / "vmcore"), **args)
    members = [str(d / f"m{i}") for i in range(3)]
    with open(members[0], "wb") as f:
        p = subprocess.run([sys.executable, "-m", "stripedump", "dump", "-q", "--disks",
                            f"-,{members[1]},{members[2]}", "--codec", "lz4", "--chunk-size", "64K", b.path],
                           stdout=f, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert p.returncode == 0, p.stderr
    with open(b.path, "rb") as f:
        return f.read(), members


@pytest.mark.parametrize("region", sorted(EXPECTED))
@pytest.mark.parametrize("which", [0, 1], ids=["streamed", "regular"])
def test_verify_agrees_with_join_and_mount(dumped, tmp_path, which, region):
    need_mount()
    source, orig = dumped
    members = [shutil.copy(m, tmp_path / os.path.basename(m)) for m in orig]
    members = [str(m) for m in members]
    flip(members[which], *regions(members[which])[region])
    out = str(tmp_path / "out")
    r = verdicts(members, out, str(tmp_path / "mnt"))
    assert r["verify"].rc == EXPECTED[region], r
    assert_rule(r, source, out)


def test_member_never_finalized_verify_says_what_join_says(dumped, tmp_path):
    """Every chunk there (walked), but the member never finished: join refuses, so verify does."""
    source, orig = dumped
    members = [str(shutil.copy(m, tmp_path / os.path.basename(m))) for m in orig]
    r = MemberReader(members[1])
    h, foff = r.header._replace(state=0, footer_offset=0, footer_length=0), r.header.footer_offset
    r.close()
    with open(members[1], "r+b") as f:
        f.write(h.pack_block())
        f.truncate(foff)              # no footer, no trailer: as a killed dump leaves it
    v = run_cli("verify", *members)
    j = run_cli("join", *members, "-o", tmp_path / "out")
    assert v.rc == 8 and j.rc == 8, (v, j)
    assert "every chunk is there and good, but join refuses" in v.err
    assert run_cli("join", "--allow-incomplete", *members, "-o", tmp_path / "out").rc == 0
    assert open(tmp_path / "out", "rb").read() == source


# -- the two cases as issue 24 reported them -------------------------------------

# (lz4_dump: conftest.py)

def test_footer_flipped_100_bytes_from_the_end(lz4_dump, tmp_path):
    """Item 1: verify said "all checksums good" and info "complete", but join and mount exited 6."""
    need_mount()
    source, m = lz4_dump
    flip(m[1], os.path.getsize(m[1]) - 100)
    v = run_cli("verify", *m)
    assert v.rc == 12, v
    assert f"damaged: member {m[1]}: the member's footer" in v.err and "walking its records" in v.err
    info = run_cli("info", *m)
    assert info.rc == 0 and "damaged: the member's footer" in info.out, info
    assert "the dump is complete (join and mount work around the damage above" in info.out
    out = str(tmp_path / "out")
    r = verdicts(m, out, str(tmp_path / "mnt"))
    assert_rule(r, source, out)
    assert r["join"].rc == 0 and r["mount"][0] == 0
    assert f"join: warning: member {m[1]}: the member's footer" in r["join"].err
    assert f"mount: warning: member {m[1]}: the member's footer" in r["mount"][1]


def test_header_byte_100_of_member_0(lz4_dump, tmp_path):
    """Item 2: every command exited 6 advising --allow-incomplete, which failed the same way.

    Now the header is read from its copy; with the copy damaged too (or on a member written
    before the copy existed) it is rebuilt from the other members' headers and its trailer.
    """
    need_mount()
    source, m = lz4_dump
    out = str(tmp_path / "out")
    for at in (100, HEADER_COPY_OFFSET + 100):
        flip(m[0], at)
        r = verdicts(m, out, str(tmp_path / "mnt"))
        assert r["verify"].rc == 12, r
        assert_rule(r, source, out)
        os.unlink(out)
    assert "rebuilt from the header of" in r["join"].err
    alone = run_cli("join", m[0], "-o", out)          # nothing to rebuild it from: says what works
    assert alone.rc == 6 and "give the dump's other members too" in alone.err, alone
    assert "--allow-incomplete" not in alone.err      # it would not help: no other member is given


def test_header_of_an_unfinished_member(lz4_dump, tmp_path):
    """Item 2: an unfinished member whose header and copy are damaged: join says to add
    --allow-incomplete, and that works with the member still on the command line."""
    source, m = lz4_dump
    r = MemberReader(m[0])
    h, foff = r.header._replace(state=0, footer_offset=0, footer_length=0), r.header.footer_offset
    r.close()
    with open(m[0], "r+b") as f:
        f.write(h.pack_block())
        f.truncate(foff)                 # never finalized: no footer, no trailer
    flip(m[0], 100, HEADER_COPY_OFFSET + 100)
    j = run_cli("join", *m, "-o", tmp_path / "out")
    assert j.rc == 8 and "its header is damaged" in j.err and "--allow-incomplete" in j.err, j
    v = run_cli("verify", *m)
    assert v.rc == 8, v
    j = run_cli("join", "--allow-incomplete", *m, "-o", tmp_path / "out")
    assert j.rc == 0, j
    assert open(tmp_path / "out", "rb").read() == source          # every chunk had reached it
    assert "it never finished" in j.err


def test_header_beyond_repair_says_what_works(lz4_dump, tmp_path):
    """Header, copy and manifest record of m0 damaged: nothing says which dump it is; the error
    says that the same command with --allow-incomplete goes on without it, and it does."""
    source, m = lz4_dump
    flip(m[0], 100, HEADER_COPY_OFFSET + 100, 4096 + 12)
    j = run_cli("join", *m, "-o", tmp_path / "out")
    assert j.rc == 6 and "run the same command with --allow-incomplete" in j.err, j
    assert "(it may stay on the command line)" in j.err
    j = run_cli("join", "--allow-incomplete", *m, "-o", tmp_path / "out")
    assert j.rc == 0, j
    assert f"{m[0]}: not read (the member header is damaged" in j.err
    v = run_cli("verify", *m)
    assert v.rc == 8, v


def test_a_damaged_footer_whose_walk_stops_short(lz4_dump, tmp_path):
    """Footer and a chunk header damaged: the walk cannot reach the footer, so the member is not
    whole: join refuses naming where the walk stopped, verify says what is missing."""
    source, m = lz4_dump
    r = MemberReader(m[2])
    first = min(r.index(r.footer()), key=lambda e: e.offset)
    foff, flen = r.footer_place()
    r.close()
    flip(m[2], foff + flen - 10, first.offset + 20)
    j = run_cli("join", *m, "-o", tmp_path / "out")
    assert j.rc == 6 and "walking its records stopped at offset" in j.err, j
    assert not (tmp_path / "out").exists()
    v = run_cli("verify", *m)
    assert v.rc == 8 and "missing" in v.err, v
