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
from stripedump.dump.autocodec import EXPLORE, MARGIN, Controller
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


# -- the room (issue 24, item 9) --------------------------------------------------

def roomy(names, disk_rate, room, total, cost=None, parallel=2):
    """``fed``, with ``room`` bytes for a dump of ``total`` raw bytes (and a size ``cost``)."""
    c = fed(names, disk_rate, parallel)
    c.room, c.total = room, total
    if cost is not None:
        c.cost = cost
    c.done_stored, c.seen_raw = 0.0, [0.0] * c.n     # the 32 MiB of each codec fed were a warm-up
    return c


def test_room_keeps_auto_to_the_codecs_that_fit():
    """On a fast disk none is fastest; with a small target, the fastest codec whose output fits."""
    ladder, fast = list(DEFAULT_LADDER), 3000 * MB
    assert choice(roomy(ladder, fast, 1000 * MB, 100 * MB)) == "none"      # room to spare: as before
    assert choice(roomy(ladder, fast, 50 * MB, 100 * MB)) == "lz4"        # none (1.0) no, lz4 (0.45) fits
    assert choice(roomy(ladder, fast, 33 * MB, 100 * MB)) == "zstd:9"     # only 0.28 fits 33 - 5 %
    assert choice(roomy(ladder, fast, 20 * MB, 100 * MB)) == "zstd:9"     # none fits: the smallest output
    assert choice(roomy(ladder, fast, None, 100 * MB)) == "none"          # room unknown (a stream)


def _simulate(c, total, lag=8, chunk=1 << 20):
    """A dump of ``total`` bytes in ``chunk`` pieces: each chosen, and reported ``lag`` chunks later
    (the slots in flight) at RATES' ratio and CPU rate; returns (stored bytes, picks)."""
    pending, stored, picks = [], 0.0, []
    for _ in range(int(total // chunk)):
        i = c.choose(chunk)
        picks.append(c.names[i])
        pending.append(i)
        if len(pending) > lag:
            j = pending.pop(0)
            cpu, ratio = RATES[c.names[j]]
            c.observe_encode(j, chunk, chunk * ratio, chunk / cpu)
            stored += chunk * ratio
    for j in pending:
        stored += chunk * RATES[c.names[j]][1]
    return stored, picks


@pytest.mark.parametrize("room_share", [0.3, 0.5, 0.7, 0.9])
def test_a_whole_dump_fits_its_room(room_share):
    """Chunk by chunk, with chunks in flight: the members never outgrow the room, and the room
    left over is spent on the faster codec (none), not kept."""
    total = 512 * MB
    c = roomy(list(DEFAULT_LADDER), 3000 * MB, room_share * total, total)
    stored, picks = _simulate(c, total)
    assert stored <= room_share * total, (stored / total, {p: picks.count(p) for p in set(picks)})
    # the share of none (1.0) beside lz4 (0.45) that the room less MARGIN allows, nearly all taken
    most = (room_share * (1 - MARGIN) - 0.45) / 0.55
    if most > 0:
        assert picks.count("none") >= 0.8 * most * len(picks), (picks.count("none"), most * len(picks))


def test_codecs_that_do_not_fit_are_not_explored():
    c = roomy(list(DEFAULT_LADDER), 3000 * MB, 50 * MB, 100 * MB)     # none (1.0) does not fit, lz4 does
    c.tried = [True] * c.n
    picks = [c.names[c.choose()] for _ in range(EXPLORE * 64)]
    assert "none" not in picks and {"zstd:1", "zstd:3"} <= set(picks), set(picks)    # explored: they fit


def test_cost_takes_a_slower_codec_for_smaller_output():
    """A disk where none is 25 % faster than lz4: the default takes none; auto/cost=30% takes lz4."""
    ladder = ["none", "lz4"]
    assert choice(roomy(ladder, 1500 * MB, None, 0)) == "none"
    assert choice(roomy(ladder, 1500 * MB, None, 0, cost=0.30)) == "lz4"
    assert choice(roomy(ladder, 1500 * MB, None, 0, cost=0.20)) == "none"


def test_size_preferences_are_parsed_after_either_ladder():
    s = parse_codec("auto/cost=25%")
    assert (s.cost, s.max_ratio, str(s), str(s.resolve())) == (0.25, None, "auto/cost=25%", "auto/cost=25%")
    s = parse_codec("AUTO:lz4,zstd:3/ratio=0.4/cost=10")
    assert (s.cost, s.max_ratio, [str(c) for c in s.ladder]) == (0.10, 0.4, ["lz4", "zstd:3"])
    assert str(s) == "auto:lz4+zstd:3/cost=10%/ratio=0.4"
    from stripedump.tools.bench import parse_codecs          # bench's own list: auto:none+lz4
    (b,) = parse_codecs("auto:none+lz4/cost=50%")
    assert [str(c) for c in b.ladder] == ["none", "lz4"] and b.cost == 0.5
    for bad in ("auto/cost", "auto/x=1", "auto/ratio=0", "auto/ratio=1.5", "auto/cost=-1%", "auto/",
                "auto/cost=1/cost=2", "auto/cost=nan"):
        with pytest.raises(UsageError):
            parse_codec(bad)


def test_auto_fits_a_small_target_where_none_does_not(tmp_path, small_fs):
    """A 30 MiB tmpfs, a 64 MiB source (none would store 40 MB, lz4 about 19): none fills it, exit 8;
    auto completes within it, byte for byte; auto/ratio=0.35 keeps to 35 % anywhere."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    src = str(tmp_path / "vm")
    synth.build(src, synth.demo_loads(64 << 20))
    fs = small_fs(30 << 20)
    m0 = os.path.join(fs, "m0")
    r = run_cli("dump", "-q", "--codec", "none", "--disks", m0, src)
    assert r.rc == 8 and "No space left on device" in r.err, r
    os.unlink(m0)
    r = run_cli("dump", "-q", "--json", "--disks", m0, src)
    assert r.rc == 0, r
    res = json.loads(r.out)
    assert res["auto_model"]["room_mb"] <= 30 << 20 and res["output_bytes"] < 30 << 20, res
    assert run_cli("join", m0, "-o", tmp_path / "out").rc == 0
    assert filecmp.cmp(tmp_path / "out", src, shallow=False)
    members, res = _dump(tmp_path, src, "auto/ratio=0.35", chunk="1M")
    assert res["output_bytes"] <= 0.35 * res["input_bytes"], res
    assert res["codec"] == "auto/ratio=0.35"


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
                                         ("auto:", "auto: needs a list of codecs"),
                                         ("auto/cost=x", "cost must be a percentage"),
                                         ("auto:lz4/size=1", "after auto, /cost=N% or /ratio=R")])
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
