"""Issue 9, case 1: a reused kdump disk never lends the old crash's pages to the new one.

A core is dumped onto two loop devices; then a slightly different core of the
same geometry (every non-zero page differs) is dumped onto the same devices
with --force and killed with SIGKILL part-way, as a second panic or a power
cut would.  ``join --allow-incomplete`` must name what is missing and give,
for every page, either the new core's bytes or a declared-missing range:
never a page of the older dump.  With format version 1 the walk stepped from
the torn tail into the old dump's records (valid checksums, same geometry)
and reported a complete join.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from stripedump.tools import synth
from stripedump.read.member import MemberReader
from stripedump.source.vmcore import Source

from conftest import ROOT, assert_one_line_error, run_cli, unfinalize

from oracle import Oracle, check_run, group_gone, start_dump
from waiting import next_second

CODEC, CHUNK = "zlib:9", "256K"
SIZE = 24 << 20


def _other_content(pfn: int, ps: int) -> bytes:
    """The second crash: the same machine, every non-zero page changed."""
    p = synth.page_content(pfn, ps)
    return bytes([p[0] ^ 0xA5]) + p[1:] if p.strip(b"\0") else p





def _dump_id(dev: str) -> bytes:
    with open(dev, "rb") as f:
        return f.read(28)[12:28]


def _pages_are_new_or_missing(src: str, out: str, res: dict) -> int:
    """Every page of the output is the new source's, or lies in a range join declared missing."""
    missing = [tuple(r) for r in res["missing"]]
    files = [tuple(r) for r in res["missing_file_ranges"]]
    with open(src, "rb") as f:
        want = f.read()
    with open(out, "rb") as f:
        got = f.read()
    assert len(got) == len(want)
    if not res["complete"] and got[:4] == b"\x7fELF":    # join marks the ELF header incomplete (e_flags bit 0)
        want = want[:48] + bytes([want[48] | 1]) + want[49:]
    checked = 0
    with Source(src) as s:
        ps = s.page_size
        spans = []
        for ld in s.info.loads:
            spans.append((ld.offset, ld.offset + ld.filesz))
            for k in range(0, ld.filesz, ps):
                off, n = ld.offset + k, min(ps, ld.filesz - k)
                if got[off:off + n] != want[off:off + n]:
                    pfn = (ld.paddr + k) // ps
                    assert any(a <= pfn < b for a, b in missing), \
                        f"PFN {pfn:#x} holds bytes that are neither this dump's nor declared missing"
                checked += 1
    pos = 0
    for a, b in sorted(spans) + [(len(want), len(want))]:   # headers, notes, padding between loads
        for off in range(pos, a):
            if got[off] != want[off]:
                assert any(x <= off < y for x, y in files), f"file byte {off:#x} is wrong, not declared missing"
        pos = max(pos, b)
    return checked


def test_killed_dump_over_an_older_dump_never_mixes_them(tmp_path, loop_device):
    old, new = str(tmp_path / "old"), str(tmp_path / "new")
    synth.build(old, synth.demo_loads(SIZE))
    synth.build(new, synth.demo_loads(SIZE), content=_other_content)
    devs = [loop_device(SIZE + (8 << 20)), loop_device(SIZE + (8 << 20))]
    oracle = Oracle(new, CODEC, 256 << 10)

    t0 = time.monotonic()
    p = start_dump(old, devs, CODEC, 2, CHUNK, extra=("--force",))
    assert p.wait(300) == 0, p.stderr.read()
    whole = time.monotonic() - t0
    old_ids = {_dump_id(d) for d in devs}

    # the new dump, killed part-way: retry the delay until the kill lands mid-dump
    for attempt, frac in enumerate((0.5, 0.65, 0.35, 0.8, 0.25, 0.9, 0.6, 0.7)):
        p = start_dump(new, devs, CODEC, 2, CHUNK, extra=("--force",))
        time.sleep(whole * frac)       # the behaviour: a kill part-way through the dump
        finished = p.poll() is not None
        if not finished:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        assert group_gone(p.pid, 60)
        present = oracle.on_disk(devs)
        started = all(_dump_id(d) not in old_ids for d in devs)    # its headers replaced the old ones
        if not finished and started and 0 < len(present) < len(oracle.records):
            break
    else:
        pytest.skip("could not kill the dump part-way on this machine")

    out = str(tmp_path / "out")
    r = run_cli("join", "--allow-incomplete", "--json", "-q", *devs, "-o", out, timeout=300)
    assert r.rc == 0, r
    res = json.loads(r.out)
    assert not res["complete"] and res["missing"], ("join must name the missing ranges", res["members"])
    assert res["chunks"] == len(present)          # exactly this dump's records that reached the disks
    assert _pages_are_new_or_missing(new, out, res) > 1000
    os.unlink(out)
    ok, msg, _ = check_run(oracle, devs, out)   # and every recovered byte is right (an oracle of its own)
    assert ok, msg
    os.unlink(out)


def test_member_still_holding_an_older_dump_counts_as_missing(tmp_path):
    """Power lost before the new dump's head reached member 1: it still shows the older dump.

    join --allow-incomplete reads the newest dump and reports member 1 (its
    path and why) as missing; without the option the set is refused, exit 6.
    """
    old = synth.build(str(tmp_path / "old"), **synth.layouts()["kernel"])
    new = synth.build(str(tmp_path / "new"), **synth.layouts()["kernel"], content=_other_content)
    m = [str(tmp_path / "m0"), str(tmp_path / "m1")]
    assert run_cli("dump", "-q", "--codec", "lz4", "--disks", ",".join(m), old.path).rc == 0
    os.rename(m[1], str(tmp_path / "m1.old"))
    next_second()             # headers carry seconds: the new dump must be the newer one
    assert run_cli("dump", "-q", "--force", "--codec", "lz4", "--disks", ",".join(m), new.path).rc == 0
    unfinalize(m[0])          # the new dump was killed: only member 0's head reached the disk
    os.replace(str(tmp_path / "m1.old"), m[1])
    r = run_cli("join", *m, "-o", tmp_path / "plain")
    assert r.rc == 6 and "different dumps" in r.err, r
    out = tmp_path / "vmcore"
    r = run_cli("join", "--allow-incomplete", "--json", *m, "-o", out)
    assert r.rc == 0, r
    res = json.loads(r.out)
    m1 = next(x for x in res["members"] if x["index"] == 1)
    assert m1["path"] == m[1] and "older dump" in m1["state"], m1
    assert not res["complete"] and res["missing"]
    # every page is the new core's or inside a declared-missing range; never the old core's
    missing = [range(a, b) for a, b in res["missing"]]
    src_new, got = Source(new.path), Source(str(out))
    try:
        ps = src_new.page_size
        checked = 0
        for a, b in src_new.pfn_ranges:
            for pfn in range(a, b):
                if any(pfn in r_ for r_ in missing):
                    continue
                with got.phys_window(pfn, 1) as w1, src_new.phys_window(pfn, 1) as w2:
                    assert bytes(w1.view()[:ps]) == bytes(w2.view()[:ps]), pfn
                checked += 1
        assert checked > 0
    finally:
        src_new.close()
        got.close()


def test_finished_streamed_members_of_two_dumps_are_refused(tmp_path, vmcore):
    """Member 0 of each dump streamed to standard output (its header never rewritten: the trailer
    says it finished), member 1 a file: the newest dump's streamed member with the other dump's
    file is a mix-up by hand, refused, never taken as an older dump's leftover to drop."""
    src = vmcore("kernel").path
    parts = []
    for n in range(2):
        a, b = tmp_path / f"d{n}-m0", tmp_path / f"d{n}-m1"
        with open(a, "wb") as f:
            p = subprocess.run([sys.executable, "-m", "stripedump", "dump", "-q", "--disks", f"-,{b}", src],
                               stdout=f, stderr=subprocess.PIPE, timeout=120,
                               env=dict(os.environ, PYTHONPATH=ROOT))
        assert p.returncode == 0, p.stderr
        parts.append((a, b))
        next_second()              # member headers carry the creation second
    assert MemberReader(str(parts[1][0])).header.state == 0          # streamed: never rewritten
    r = run_cli("join", "--allow-incomplete", parts[1][0], parts[0][1], "-o", tmp_path / "out")
    assert_one_line_error(r, 6, "different dumps")
    assert not (tmp_path / "out").exists()
