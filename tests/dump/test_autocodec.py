"""``--codec auto`` (issue 12): the controller's decisions, and mixed-codec dumps read back by real readers.

The controller is fed synthetic observations (encode rates and ratios per
codec, the rate bytes reach the disks) and must pick what the model
max(encode time, write time) says; the dumps are real CLI runs whose chunks
mix codecs, joined to ELF (byte-identical), to kdump (read page by page by
libkdumpfile, drgn and crash), and mounted.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import subprocess

import pytest

from stripedump.tools import synth
from stripedump.dump.autocodec import EXPLORE, Controller
from stripedump.format.codecs import DEFAULT_LADDER, AutoSpec, parse_codec
from stripedump.dump.config import DumpConfig
from stripedump.runtime.units import parse_size
from stripedump.errors import UsageError
from stripedump.dump.coordinator import dump
from stripedump.source.vmcore import Source

from conftest import assert_one_line_error, run_cli
from kdump.test_join import (FLAGS, assert_every_page_reads_back, kdump_join, needs_crash, needs_libkdumpfile,
                        parse_kdump, source_digests)
from mount.test_readers import DRGN_VMCOREINFO, mounted

MB = 1e6
# per codec: raw bytes per CPU-second, stored/raw (about what this machine measures on memory-like data)
RATES = {"none": (2500 * MB, 1.0), "lz4": (600 * MB, 0.45), "zstd:1": (300 * MB, 0.35),
         "zstd:3": (150 * MB, 0.32), "zstd:9": (30 * MB, 0.28)}


def fed(names, disk_rate, parallel=2, rates=RATES):
    """A controller that has seen 32 MiB of each codec and of the disks at the given rates."""
    c = Controller(names, parallel, start=names.index("lz4") if "lz4" in names else 0)
    for i, n in enumerate(names):
        cpu, ratio = rates[n]
        c.observe_encode(i, 32 << 20, (32 << 20) * ratio, (32 << 20) / cpu)
    c.observe_disk(32 << 20, (32 << 20) / disk_rate)
    return c


def choice(c) -> str:
    return c.names[c.best()]


# -- the controller ----------------------------------------------------------------

def test_fast_disks_take_the_lightest_codec():
    assert choice(fed(list(DEFAULT_LADDER), 3000 * MB)) == "none"        # a tmpfs: CPUs are the limit
    assert choice(fed(["lz4", "zstd:3", "zstd:9"], 3000 * MB)) == "lz4"  # restricted: none not allowed


def test_slower_disks_take_heavier_codecs():
    ladder = list(DEFAULT_LADDER)
    picks = [choice(fed(ladder, r * MB)) for r in (3000, 1000, 200, 20, 5)]
    assert picks == ["none", "lz4", "zstd:1", "zstd:3", "zstd:9"], picks
    # heavier with every step down: the ladder's order is the order of the picks
    assert [ladder.index(p) for p in picks] == sorted(ladder.index(p) for p in picks)


def test_cpu_bound_goes_lighter_down_to_none():
    ladder = list(DEFAULT_LADDER)
    assert choice(fed(ladder, 20 * MB, parallel=8)) == "zstd:9"      # 8 CPUs keep zstd:9 ahead of the disk
    assert choice(fed(ladder, 20 * MB, parallel=1)) == "zstd:3"      # one CPU: a lighter one
    assert choice(fed(ladder, 200 * MB, parallel=1)) == "lz4"        # (2 CPUs: zstd:1)
    slow_cpu = {n: (cpu / 20, r) for n, (cpu, r) in RATES.items()}   # CPUs 20x slower
    assert choice(fed(ladder, 200 * MB, parallel=1, rates=slow_cpu)) == "none"


def test_contention_is_seen_in_wall_time():
    """Workers that get half a CPU each (writers, other load) encode at half their CPU rate: the
    model goes by wall seconds, so lighter codecs win where CPU-seconds alone would pick heavier."""
    ladder = ["none", "lz4", "zstd:3"]
    c = Controller(ladder, 2, start=1)
    for i, n in enumerate(ladder):
        cpu, ratio = RATES[n]
        c.observe_encode(i, 32 << 20, (32 << 20) * ratio, (32 << 20) / cpu, 4 * (32 << 20) / cpu)
    c.observe_disk(32 << 20, (32 << 20) / (60 * MB))
    assert c.names[c.best()] == "lz4"
    assert choice(fed(ladder, 60 * MB)) == "zstd:3"     # the same CPUs, each worker on its own


def test_restricted_list_is_honoured():
    for names in (["zstd:3", "zstd:9"], ["none", "lz4"], ["zstd:1"]):
        c = fed(names, 20 * MB)
        picks = {c.names[c.choose()] for _ in range(500)}
        assert picks <= set(names)
    assert choice(fed(["none", "lz4"], 5 * MB)) == "lz4"


def test_starts_on_lz4_and_explores_each_codec_then_about_one_in_32():
    ladder = list(DEFAULT_LADDER)
    c = Controller(ladder, 2, start=1)
    first = [ladder[c.choose()] for _ in range(20)]
    assert first[0] == "lz4" and first.count("lz4") >= 15
    assert set(first) == set(ladder)          # every codec tried once early on
    c = fed(ladder, 200 * MB)
    c.tried = [True] * len(ladder)
    n = EXPLORE * 64
    picks = [c.names[c.choose()] for _ in range(n)]
    explored = n - picks.count("zstd:1")
    assert set(picks) == set(ladder)          # the others are measured again, every one of them
    assert n / EXPLORE / 4 <= explored <= n / EXPLORE + len(ladder), explored
    # the time spent on them: about 1/EXPLORE of the time, however slow zstd:9 is
    t = {x: c.predicted(i) for i, x in enumerate(ladder)}
    extra = sum(t[p] - t["zstd:1"] for p in picks if p != "zstd:1")
    assert extra <= 1.5 * n * t["zstd:1"] / EXPLORE, extra / (n * t["zstd:1"])


def test_estimates_follow_the_data():
    """A disk that slows down mid-dump: the choice moves to a heavier codec."""
    c = fed(list(DEFAULT_LADDER), 3000 * MB)
    assert choice(c) == "none"
    for _ in range(20):
        c.observe_disk(8 << 20, (8 << 20) / (20 * MB))
    assert choice(c) == "zstd:3"


def test_specs():
    assert str(parse_codec("auto")) == "auto"
    assert [str(s) for s in AutoSpec.parse("auto").ladder] == list(DEFAULT_LADDER)
    s = parse_codec("auto:zstd:3+lz4+zstd:3")
    assert str(s) == "auto:zstd:3+lz4" and s.start == 1 and s.codec_id == 4
    assert parse_codec("auto:zstd:3,lz4") == s           # the older form, taken as the same
    for bad in ("auto:", "auto:bogus", "auto:lz4,", "auto:lz4+", "auto:+lz4", "auto:zstd:99"):
        with pytest.raises(UsageError):
            parse_codec(bad)


@pytest.mark.parametrize("spec,needle", [("auto:bogus", "unknown codec 'bogus'"),
                                         ("auto:", "auto: needs a list of codecs")])
def test_bad_specs_are_usage_errors(tmp_path, vmcore, spec, needle):
    b = vmcore("kernel")
    r = run_cli("dump", "--codec", spec, "--disks", str(tmp_path / "m0"), b.path)
    assert_one_line_error(r, 2, needle)
    assert not os.path.exists(tmp_path / "m0")


def test_one_auto_list_syntax_for_dump_and_bench(tmp_path, vmcore):
    """Issue 24 item 10: bench took auto:none+lz4, dump auto:lz4,zstd:3, and dump --codec auto:lz4+zstd
    exited 2.  Now C+C is the syntax of both (bench's --codecs list is split at commas); dump also
    takes the older comma form; what the dump, info and bench print is what one types."""
    from stripedump.tools.bench import parse_codecs
    b = vmcore("kernel")
    for i, given in enumerate(("auto:lz4+zstd:3", "auto:lz4,zstd:3")):
        members = [str(tmp_path / f"{i}m{k}") for k in range(2)]
        r = run_cli("dump", "--codec", given, "--chunk-size", "64K", "--disks", ",".join(members), b.path)
        assert r.rc == 0, r
        assert ", auto:lz4+zstd:3, ratio " in r.out, r.out
        info = run_cli("info", *members)
        assert "codec:      auto:lz4+zstd:3," in info.out, info.out
    assert [str(s) for s in parse_codecs("auto:none+lz4,lz4,auto")] == ["auto:none+lz4", "lz4", "auto"]
    assert parse_codecs("auto:lz4+zstd:3")[0] == parse_codec("auto:lz4,zstd:3")


# -- real dumps ------------------------------------------------------------------

def _dump(tmp_path, src, codec, n=2, chunk="64K"):
    members = [str(tmp_path / f"m{i}") for i in range(n)]
    r = run_cli("dump", "-q", "--json", "--codec", codec, "--chunk-size", chunk, "--disks", ",".join(members),
                src)
    assert r.rc == 0, r
    return members, json.loads(r.out)


def test_auto_round_trip_is_byte_identical(tmp_path, vmcore):
    b = vmcore("kernel")
    members, res = _dump(tmp_path, b.path, "auto")
    assert res["codec"] == "auto" and sum(res["auto_chunks"].values()) == res["chunks"]
    assert run_cli("join", *members, "-o", tmp_path / "out").rc == 0
    assert filecmp.cmp(tmp_path / "out", b.path, shallow=False)
    r = run_cli("verify", *members)
    assert r.rc == 0, r


MIX = "auto:lz4+zstd:3+none"     # the warm-up gives zstd:3 and none one chunk each: a mixed dump


def _mixed(tmp_path, vmcore, **kw):
    b = vmcore("kernel", **kw)
    members, res = _dump(tmp_path, b.path, MIX)
    assert set(res["auto_chunks"]) == {"lz4", "zstd:3", "none"}, res
    return b, members, res


def test_info_shows_chunks_and_bytes_per_codec(tmp_path, vmcore):
    b, members, res = _mixed(tmp_path, vmcore)
    r = run_cli("info", "--json", *members)
    assert r.rc == 0, r
    d = json.loads(r.out)
    assert d["codec"] == MIX
    per = d["codecs"]
    assert set(per) == {"lz4", "zstd", "none"}
    assert sum(c["chunks"] for c in per.values()) == res["chunks"]
    assert sum(c["stored_bytes"] for c in per.values()) < sum(m["bytes"] for m in res["members"])
    assert per["zstd"]["chunks"] == res["auto_chunks"]["zstd:3"]
    text = run_cli("info", *members).out
    line = next(ln for ln in text.splitlines() if ln.startswith("by codec:"))
    assert "lz4 " in line and "zstd " in line and "none " in line, line


@needs_libkdumpfile
@pytest.mark.parametrize("join_codec,copied", [("zstd", "zstd"), ("lzo", None), (None, None), ("none", None)])
def test_mixed_dump_joined_to_kdump_reads_back_page_by_page(tmp_path, vmcore, join_codec, copied):
    b, members, res = _mixed(tmp_path, vmcore)
    notices = []
    out = tmp_path / "o.kdump"
    r = kdump_join(members, out, codec=join_codec, notices=notices)
    assert r.extra["pages"] == ("uncompressed" if join_codec == "none" else "transcoded")
    if copied:
        assert "chunks stored in zstd are copied" in notices[0], notices
    with Source(b.path) as src:
        ranges = src.pfn_ranges
    assert_every_page_reads_back(str(out), b.path, ranges, outside=[ranges[0][0] - 1])
    assert parse_kdump(str(out))["status"] == (0 if join_codec == "none" else FLAGS[join_codec or "lzo"])


def test_mixed_dump_copies_the_chunks_already_in_the_asked_codec(tmp_path, vmcore):
    """Joined to zstd, a mixed dump's zstd pages are the dump's own bytes: the kdump file holds them."""
    b, members, res = _mixed(tmp_path, vmcore)
    out = tmp_path / "o.kdump"
    kdump_join(members, out, codec="zstd:19")     # another level: transcoded pages would differ
    from stripedump.read.member import MemberReader
    from stripedump.format.structs import BLOCK_COMPRESSED
    from stripedump.format.decode import read_chunk
    blob = out.read_bytes()
    found = 0
    for m in members:
        r = MemberReader(m)
        try:
            for e in r.index(r.footer()):
                h, body, blocks = read_chunk(r.read_record(e), m, r.header.block_pages * r.header.page_size)
                if h.codec_id == 5:
                    for how, a, b_, pos, ln in blocks:
                        if how == BLOCK_COMPRESSED:
                            assert bytes(body[pos:pos + ln]) in blob
                            found += 1
        finally:
            r.close()
    assert found


def test_drgn_and_crash_read_a_mixed_dump(tmp_path, vmcore):
    drgn = pytest.importorskip("drgn", reason="drgn is not installed")
    b, members, res = _mixed(tmp_path, vmcore,
                             notes=synth.notes_blob(vmcoreinfo=synth.vmcoreinfo_text(extra=DRGN_VMCOREINFO)))
    out = tmp_path / "o.kdump"
    kdump_join(members, out, codec="zstd")
    prog = drgn.Program()
    prog.set_core_dump(str(out))
    with Source(b.path) as src:
        ranges = src.pfn_ranges
    want = source_digests(b.path, ranges)
    bad = [p for p, h in want.items() if hashlib.sha1(prog.read(p * 4096, 4096, True)).hexdigest() != h]
    assert not bad, (len(bad), hex(bad[0]))
    if needs_crash.args[0]:
        return
    p = subprocess.run(["crash", "--osrelease", str(out)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "6.1.0-synthetic", p


@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse")
@needs_libkdumpfile
def test_mounted_mixed_dump_is_served_uncompressed(tmp_path, vmcore):
    """The view cannot know a chunk's codec from the index: an auto dump is served in none mode,
    equal to join --format kdump --codec none, every page readable by libkdumpfile."""
    b, members, res = _mixed(tmp_path, vmcore)
    kd = str(tmp_path / "joined.kdump")
    assert run_cli("join", "--format", "kdump", "--codec", "none", *members, "-o", kd).rc == 0
    with Source(b.path) as src:
        ranges = src.pfn_ranges
    with mounted(members, tmp_path / "mnt") as mnt:
        assert filecmp.cmp(os.path.join(mnt, "vmcore.kdump"), kd, shallow=False)
        assert filecmp.cmp(os.path.join(mnt, "vmcore"), b.path, shallow=False)
        assert_every_page_reads_back(os.path.join(mnt, "vmcore.kdump"), b.path, ranges)


def test_auto_in_process_with_a_slow_sync_interval(tmp_path, vmcore):
    """The API: an AutoSpec in DumpConfig; the writers publish their timed syncs (several per member)."""
    b = vmcore("kernel")
    targets = (str(tmp_path / "a"), str(tmp_path / "b"))
    res = dump(DumpConfig(b.path, targets, parse_codec("auto:lz4+zstd:1"), 2, parse_size("64K")))
    assert res.codec == "auto:lz4+zstd:1"
    assert set(res.extra["auto_chunks"]) == {"lz4", "zstd:1"}
