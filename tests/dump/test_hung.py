"""A target that hangs (stops answering) or is merely slow: issue 9, case 10.

The hung disk is real: a loop device over a file on a FUSE file system
(tests/helpers/hanging_target_fs.py) that never answers a write past a byte
offset.  The dump's writer then blocks in the block layer, in D state
(SIGKILL does not end it), exactly as on a disk whose path died.  Each test
releases it afterwards through /sys/fs/fuse/connections/N/abort, so nothing
stays blocked, then detaches the loop device and unmounts.

* ``stop``: exit 8 within io-timeout + 30 s while the writer is still in D
  state; the other member finalized incomplete, its note naming the hung
  target; join --allow-incomplete gives back correct or declared-missing
  pages (the soak's oracle: tests/helpers/oracle.py);
* ``continue``: the dump goes on without it and exits 0; the survivor plus
  what reached the hung disk join back byte for byte;
* a slow disk (every write 0.5 s) whose final sync lasts longer than
  io-timeout is not hung: progress, not call length.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from stripedump.tools import synth
from stripedump.format.structs import STATE_COMPLETE, STATE_INCOMPLETE
from stripedump.read.member import MemberReader

from conftest import ROOT, need_fuse, start_fuse

from oracle import Oracle, check_run
from waiting import wait_until

CODEC, CHUNK, TIMEOUT = "zlib", "64K", 3
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="loop devices and FUSE aborts need root")


# How the disk hangs: in the sync before the members are finalized (--buffered: the writes of a
# small dump all land in the page cache), or mid-dump (--direct-io, uncompressed: the writer's
# first 4 MiB staging flush never returns while the feed goes on).
WAYS = {"at-final-sync": (CODEC, ("--buffered",)), "mid-dump": ("none", ("--direct-io",))}
# ... or the target is a file on the FUSE file system itself, as on NFS: its writer hangs in
# write(), and any process that closed a descriptor of it would hang in the flush too
FILE_WAY = "file-on-fuse"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    src = str(tmp_path_factory.mktemp("hung") / "vm")
    synth.build(src, synth.demo_loads(12 << 20))
    oracles = {}

    def oracle(codec):
        if codec not in oracles:
            oracles[codec] = Oracle(src, codec, 64 << 10)
        return oracles[codec]
    return src, oracle


@pytest.fixture
def fuse_disk(tmp_path):
    """disk(hang_at, delay) -> (loop device, its image as the FUSE daemon stores it, abort()).

    With ``loop=False`` the target is a file on the FUSE file system itself (as on NFS): no
    block device, so no device statistics."""
    need_fuse()
    made = []
    ctl = "/sys/fs/fuse/connections"
    mounted_ctl = False
    if os.path.isdir(ctl) and not os.path.ismount(ctl):    # fusectl: where a connection is aborted
        r = subprocess.run(["mount", "-t", "fusectl", "none", ctl], capture_output=True, text=True)
        mounted_ctl = r.returncode == 0
    if not os.path.ismount(ctl):
        pytest.skip("fusectl is not mounted and cannot be: a hung FUSE disk could not be released")

    def disk(hang_at: int, delay: float = 0.0, size: int = 64 << 20, loop: bool = True):
        i = len(made)
        mnt, backing = tmp_path / f"fuse{i}", tmp_path / f"backing{i}"
        mnt.mkdir()
        backing.mkdir()
        with open(backing / "disk.img", "wb") as f:
            f.truncate(size if loop else 0)
        proc = start_fuse("hanging_target_fs.py", [backing, mnt, hang_at, delay], mnt)
        conn = f"/sys/fs/fuse/connections/{os.minor(os.stat(mnt).st_dev)}/abort"
        entry = {"proc": proc, "mnt": mnt, "conn": conn, "loop": None}
        made.append(entry)

        def abort():
            if os.path.exists(conn):
                with open(conn, "w") as f:
                    f.write("1")
        if not loop:
            return str(mnt / "disk.img"), str(backing / "disk.img"), abort
        r = subprocess.run(["losetup", "-f", "--show", str(mnt / "disk.img")], capture_output=True,
                           text=True, timeout=30)
        if r.returncode != 0:
            pytest.skip(f"no loop device over a FUSE file here: {r.stderr.strip()}")
        entry["loop"] = r.stdout.strip()
        # requests of at most one FUSE write (128 KiB), so a slow disk completes one every DELAY s
        # (the default, 1280 KiB, would make 10 writes of the slow disk one request)
        with open(f"/sys/block/{os.path.basename(entry['loop'])}/queue/max_sectors_kb", "w") as f:
            f.write("128")
        return entry["loop"], str(backing / "disk.img"), abort
    yield disk
    for e in made:          # release whatever is blocked on it first, then take it apart
        try:
            if os.path.exists(e["conn"]):
                with open(e["conn"], "w") as f:
                    f.write("1")
        finally:
            if e["loop"]:
                subprocess.run(["losetup", "-d", e["loop"]], capture_output=True, timeout=30)
            subprocess.run(["umount", "-l", str(e["mnt"])], capture_output=True, timeout=30)
            e["proc"].kill()
            e["proc"].wait(10)
    if mounted_ctl:
        subprocess.run(["umount", ctl], capture_output=True, timeout=30)


def _dump(src, members, *extra, codec=CODEC, timeout=120):
    env = dict(os.environ, PYTHONPATH=ROOT)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "stripedump", "dump", "-vv", "--codec", codec, "--workers",
                        "2", "--chunk-size", CHUNK, "--io-timeout", str(TIMEOUT), "--disks",
                        ",".join(members), *extra, src], capture_output=True, text=True, timeout=timeout,
                       env=env, stdin=subprocess.DEVNULL)
    return r, time.monotonic() - t0


def _writer_pid(stderr: str, d: int) -> int:
    return int(re.search(rf"started stripedump-writer-{d} \(pid (\d+)\)", stderr).group(1))


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


@needs_root
@pytest.mark.parametrize("way", [*WAYS, FILE_WAY])
def test_hung_target_stops_the_dump_in_bounded_time(source, tmp_path, fuse_disk, way):
    src, oracles = source
    codec, extra = WAYS.get(way, ("none", ()))
    oracle = oracles(codec)
    dev, image, abort = fuse_disk(hang_at=1 << 20, loop=way != FILE_WAY)
    members = [str(tmp_path / "m0"), dev]
    r, took = _dump(src, members, *extra, codec=codec)
    pid = _writer_pid(r.stderr, 1)
    state = _state(pid)            # before the abort: the hung writer is still blocked
    abort()
    assert r.returncode == 8, r.stderr
    assert took < TIMEOUT + 30, took
    assert state == "D", f"the writer was not blocked in the kernel ({state}): the test hung nothing"
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("stripedump: error: dump incomplete: ") and dev in last, last
    assert "hung: no write reached" in last, last
    assert "Traceback" not in r.stderr
    r0 = MemberReader(members[0])
    try:
        foot = r0.footer()
        assert r0.header.state == STATE_INCOMPLETE and foot is not None, r0.header
        assert dev in foot.note and "hung: no write reached" in foot.note, foot.note
    finally:
        r0.close()
    # what the healthy member holds, alone and with what reached the hung disk: right or declared missing
    ok, msg, n = check_run(oracle, [members[0]], str(tmp_path / "out0"))
    assert ok and n > 0, msg
    ok, msg, _ = check_run(oracle, [members[0], image], str(tmp_path / "out1"))
    assert ok, msg
    # released by the abort, the writer dies of its pending SIGKILL
    wait_until(lambda: _state(pid) in (None, "Z"), "the released writer to die", timeout=10)


@needs_root
@pytest.mark.parametrize("way", WAYS)
def test_hung_target_dropped_under_continue(source, tmp_path, fuse_disk, way):
    src, oracles = source
    codec, extra = WAYS[way]
    oracle = oracles(codec)
    dev, image, abort = fuse_disk(hang_at=1 << 20)
    members = [str(tmp_path / "m0"), dev, str(tmp_path / "m2")][:3 if way == "at-final-sync" else 2]
    r, took = _dump(src, members, "--on-disk-error", "continue", "--json", *extra, codec=codec)
    abort()
    assert r.returncode == 0, r.stderr
    assert took < TIMEOUT + 30, took
    assert "hung: no write reached" in r.stderr and dev in r.stderr
    (deg,) = json.loads(r.stdout)["degraded"]
    assert deg["member"] == 1 and "hung: no write reached" in deg["error"] and deg["moved"] > 0, deg
    survivors = [m for m in members if m != dev]
    for m in survivors:
        rd = MemberReader(m)
        assert rd.header.state == STATE_COMPLETE and rd.footer().note.startswith("degraded: "), m
        rd.close()
    # the survivors hold every chunk; with what reached the hung disk, join needs no flag
    on_disk = [image if m == dev else m for m in members]
    out = str(tmp_path / "out")
    env = dict(os.environ, PYTHONPATH=ROOT)
    j = subprocess.run([sys.executable, "-m", "stripedump", "join", *on_disk, "-o", out],
                       capture_output=True, text=True, env=env, timeout=120)
    assert j.returncode == 0, j.stderr
    with open(out, "rb") as f, open(src, "rb") as g:
        assert f.read() == g.read()
    os.unlink(out)
    ok, msg, n = check_run(oracle, survivors, out)
    assert ok and n == len(oracle.records), msg


@needs_root
def test_slow_target_is_not_hung(source, tmp_path, fuse_disk):
    """Every write takes 0.5 s: the member's sync lasts well over --io-timeout, yet progresses."""
    src, oracles = source
    oracle = oracles(CODEC)
    dev, image, abort = fuse_disk(hang_at=0, delay=0.5)
    members = [str(tmp_path / "m0"), dev]
    r, took = _dump(src, members)
    assert r.returncode == 0, r.stderr
    assert took > 3 * TIMEOUT, f"the slow disk was not slow ({took:.1f} s): the test proves nothing"
    assert "no write reached" not in r.stderr, r.stderr
    ok, msg, n = check_run(oracle, members, str(tmp_path / "out"))
    assert ok and n == len(oracle.records), msg


class _Pipe:
    """A target without device statistics (a pipe: pipefs has no block device)."""

    def __init__(self, name):
        self.path = name
        self.fd, self._w = os.pipe()

    def close(self):
        os.close(self.fd)
        os.close(self._w)


def _sleep_in_a_call(watch, d, seconds):
    with watch.call(d, 5, 3):
        time.sleep(seconds)          # the behaviour: a writer stuck in one call


def test_a_writer_stuck_in_one_call_is_hung_and_abandoned():
    """The module alone: a real child stuck in a call is declared hung after the timeout, never
    an idle one; abandoning it kills it and takes it out of multiprocessing's children."""
    import multiprocessing
    from stripedump.dump.iowatch import IOWatch
    targets = [_Pipe("t0"), _Pipe("t1")]
    try:
        w = IOWatch(targets, 1.0)
        assert w.stats == [None, None]
        p = multiprocessing.get_context("fork").Process(target=_sleep_in_a_call, args=(w, 0, 60))
        p.start()
        t0 = time.monotonic()
        hung = wait_until(w.check, "the stuck writer declared hung", timeout=10, interval=0.05)
        took = time.monotonic() - t0
        assert hung == [0] and 0.9 < took < 3, (hung, took)
        assert "t0 hung" in w.hung[0] and 1 not in w.hung
        assert w.current(0) == (5, 3)
        stand_in = w.abandon(p)
        assert p not in multiprocessing.active_children()
        assert not stand_in.is_alive() and stand_in.exitcode is None
        os.waitpid(p.pid, 0)           # SIGKILL ended it (it was not in D state)
    finally:
        for t in targets:
            t.close()
