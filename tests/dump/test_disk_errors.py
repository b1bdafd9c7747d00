"""A target that fills up or fails mid-dump: real file systems and devices, no mocks.

* a small tmpfs that fills (ENOSPC);
* a FUSE file system whose files fail writes with EIO past a byte offset
  (tests/helpers/failing_target_fs.py: a disk going bad);
* a loop device smaller than the member (a block device's end: ENOSPC, also
  under O_DIRECT).

Default (``--on-disk-error stop``): one line naming the target, exit 8, every
member finalized or walkable, and join --allow-incomplete recovers exactly
what reached the disks (the soak's oracle: tests/helpers/oracle.py).
``--on-disk-error continue``: the dump drops the target, finishes on the
others, and join gives back the source byte for byte without any flag; the
chunks the failed target acknowledged since its last successful sync (a
failed write, a failed fdatasync, an O_DIRECT stage that never reached it)
are encoded again for the survivors, so the survivors alone hold every
chunk, or the dump exits 8 naming the chunks that may be lost.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from stripedump.tools import synth
from stripedump.format.plan import degraded_placement

from conftest import assert_one_line_error, need_fuse, start_fuse

from oracle import Oracle, check_run

CODEC, CHUNK = "zlib", "64K"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs or a loop device needs root")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    src = str(tmp_path_factory.mktemp("diskerr") / "vm")
    synth.build(src, synth.demo_loads(12 << 20))
    return src, Oracle(src, CODEC, 64 << 10)


@pytest.fixture
def failing_fs(tmp_path):
    """A FUSE directory whose files fail writes with EIO from byte ``limit`` on; yields (mnt, backing).

    ``fail_sync_from`` N > 0: its Nth fsync/fdatasync and every later one fail with EIO."""
    need_fuse()
    procs = []

    def start(limit: int, fail_sync_from: int = 0):
        mnt, backing = tmp_path / f"fuse{len(procs)}", tmp_path / f"backing{len(procs)}"
        mnt.mkdir()
        backing.mkdir()
        procs.append((start_fuse("failing_target_fs.py", [backing, mnt, limit, fail_sync_from], mnt), mnt))
        return str(mnt), str(backing)
    yield start
    for p, mnt in procs:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        p.kill()
        p.wait(10)





def _dump(cli, src, members, *extra):
    return cli("dump", "-q", "--codec", CODEC, "--workers", "2", "--chunk-size", CHUNK,
               "--disks", ",".join(members), *extra, src)


def _space_warned(r, *targets):
    """The warning that each of ``targets`` will probably fill up (dump/space.py, issue 24, item 8),
    and none for the others, taken out of ``r``'s stderr; the rest of it as it was."""
    warned = [ln for ln in r.err.splitlines() if "less than its expected share of the dump" in ln]
    assert len(warned) == len(targets) and all(f"target {t}: " in w for t, w in zip(targets, warned)), r.err
    r.err = "".join(ln + "\n" for ln in r.err.splitlines() if ln not in warned)
    return r


def _recovered(cli, oracle, members, out):
    """join --allow-incomplete gives back exactly what reached the disks, every byte right."""
    ok, msg, n = check_run(oracle, members, out)
    assert ok, msg
    return n


def _byte_identical(cli, src, members, out):
    r = cli("join", *members, "-o", out)
    assert r.rc == 0, r
    assert open(out, "rb").read() == open(src, "rb").read()
    v = cli("verify", *members)
    assert v.rc == 0, v


@needs_root
def test_full_filesystem_stops_cleanly(source, tmp_path, small_fs, cli):
    src, oracle = source
    full = small_fs(1 << 20)
    members = [str(tmp_path / "m0"), os.path.join(full, "m1")]
    r = _dump(cli, src, members)
    assert_one_line_error(_space_warned(r, members[1]), 8, members[1], "No space left on device", "dump incomplete")
    info = json.loads(cli("info", "--json", *members).out)["members"]
    assert all(m["state"] in ("incomplete", "writing (never finalized)") for m in info), info
    assert_one_line_error(cli("join", *members, "-o", tmp_path / "o"), 8, "--allow-incomplete")
    assert cli("verify", *members).rc == 8
    n = _recovered(cli, oracle, members, str(tmp_path / "out"))
    assert 0 < n < len(oracle.records)


@needs_root
def test_full_filesystem_continue_degraded(source, tmp_path, small_fs, cli):
    src, oracle = source
    full = small_fs(1 << 20)
    members = [str(tmp_path / "m0"), os.path.join(full, "m1"), str(tmp_path / "m2")]
    r = cli("dump", "--json", "--codec", CODEC, "--workers", "2", "--chunk-size", CHUNK,
            "--on-disk-error", "continue", "--disks", ",".join(members), src)
    assert r.rc == 0, r
    assert "No space left on device" in r.err and "dropped that target" in r.err and members[1] in r.err
    (deg,) = json.loads(r.out)["degraded"]
    assert deg["member"] == 1 and deg["moved"] > 0 and deg["kept"] == 0
    # nothing was synced on m1 before it failed (a sync every 256 MiB): the warning says the truth,
    # the survivors alone are enough (issue 24, item 3: it said "join needs every member")
    assert f"nothing is on it alone: join needs only {members[0]}, {members[2]} ({members[1]} may be given too)" \
        in r.err, r.err
    _survivors_hold_everything(cli, src, [members[0], members[2]], str(tmp_path / "out0"))
    _byte_identical(cli, src, members, str(tmp_path / "out"))
    info = json.loads(cli("info", "--json", *members).out)
    assert info["degraded"] == [[1, deg["moved"]]]
    assert sum(n for m in info["members"] for _, n in m.get("took_over", [])) == deg["moved"]


@needs_root
def test_degraded_warning_names_the_members_a_join_needs(source, tmp_path, small_fs, cli, monkeypatch):
    """Issue 24, item 3: a target that synced chunks before it failed holds them alone; the warning
    says a join needs it, and how many chunks it alone holds is what the survivors alone lack."""
    src, oracle = source
    monkeypatch.setenv("STRIPEDUMP_SYNC_EVERY", str(128 << 10))     # the writers sync every 128 KiB
    full = small_fs(1 << 20)
    members = [str(tmp_path / "m0"), os.path.join(full, "m1"), str(tmp_path / "m2")]
    r = cli("dump", "--json", "--codec", CODEC, "--workers", "2", "--chunk-size", CHUNK,
            "--on-disk-error", "continue", "--disks", ",".join(members), src)
    assert r.rc == 0, r
    (deg,) = json.loads(r.out)["degraded"]
    assert deg["kept"] > 0, deg
    assert (f"{deg['kept']} chunk(s) synced on it before it failed are on it alone: join needs "
            f"{', '.join(members)} ({members[1]} included)") in r.err, r.err
    _byte_identical(cli, src, members, str(tmp_path / "out"))
    alone = cli("join", "--json", "-q", "--allow-incomplete", members[0], members[2], "-o", tmp_path / "o2")
    assert alone.rc == 0 and json.loads(alone.out)["missing_chunks"] == deg["kept"], alone
    assert cli("join", "-q", members[0], members[2], "-o", tmp_path / "o3").rc == 8


@pytest.mark.parametrize("policy", ["stop", "continue"])
def test_target_failing_with_eio(source, tmp_path, failing_fs, cli, policy):
    src, oracle = source
    mnt, backing = failing_fs(1 << 20)
    members = [str(tmp_path / "m0"), os.path.join(mnt, "m1")]
    r = _dump(cli, src, members, "--on-disk-error", policy)
    on_disk = [members[0], os.path.join(backing, "m1")]       # read back past the failing layer
    if policy == "stop":
        assert_one_line_error(r, 8, members[1], "Input/output error")
        _recovered(cli, oracle, on_disk, str(tmp_path / "out"))
    else:
        assert r.rc == 0 and "Input/output error" in r.err, r
        _byte_identical(cli, src, on_disk, str(tmp_path / "out"))
        # what m1 took before the failure was never synced there: it was sent to m0 again
        _survivors_hold_everything(cli, src, members[:1], str(tmp_path / "out2"))


def _survivors_hold_everything(cli, src, survivors, out):
    """The failed member left out, the survivors alone give back the source, byte for byte.

    Without --allow-incomplete: the survivors' footers name the dropped member, and exit 0
    of the dump promised every chunk is on them."""
    r = cli("join", "--json", "-q", *survivors, "-o", out)
    assert r.rc == 0, r
    res = json.loads(r.out)
    assert res["complete"] is True and res["missing_chunks"] == 0, res
    assert open(out, "rb").read() == open(src, "rb").read()


def test_failed_sync_chunks_are_sent_again(source, tmp_path, failing_fs, cli):
    """Case 8: a target whose fdatasync fails under continue: its unsynced chunks go to the others."""
    src, oracle = source
    mnt, backing = failing_fs(1 << 40, fail_sync_from=1)
    members = [str(tmp_path / "m0"), os.path.join(mnt, "m1"), str(tmp_path / "m2")]
    r = cli("dump", "--json", "--codec", CODEC, "--workers", "2", "--chunk-size", CHUNK,
            "--on-disk-error", "continue", "--disks", ",".join(members), src)
    assert r.rc == 0, r
    assert "sync failed: Input/output error" in r.err and members[1] in r.err, r
    (deg,) = json.loads(r.out)["degraded"]
    # every chunk m1 acknowledged was unsynced (its first sync failed): all encoded again
    assert deg["member"] == 1 and deg["resent"] == sum(c % 3 == 1 for c in oracle.records), deg
    _survivors_hold_everything(cli, src, [members[0], members[2]], str(tmp_path / "out"))
    info = json.loads(cli("info", "--json", members[0], members[2], os.path.join(backing, "m1")).out)
    states = [m["state"] for m in info["members"]]
    # m1's own sync fails at its finish too: its header is never rewritten, though its footer and
    # trailer (format v2) may have reached the file unsynced; never "complete" (the survivors need it not)
    assert states[0] == states[2] == "complete" and states[1] in ("writing (never finalized)", "incomplete"), \
        states


def test_failed_sync_stop(source, tmp_path, failing_fs, cli):
    src, oracle = source
    mnt, backing = failing_fs(1 << 40, fail_sync_from=1)
    members = [str(tmp_path / "m0"), os.path.join(mnt, "m1")]
    r = _dump(cli, src, members)
    assert_one_line_error(r, 8, members[1], "sync failed: Input/output error")
    _recovered(cli, oracle, [members[0], os.path.join(backing, "m1")], str(tmp_path / "out"))


def test_failed_sync_on_every_target_names_the_lost_chunks(source, tmp_path, failing_fs, cli):
    """No survivor to send them to: exit 8, naming the chunks that may be on no disk."""
    src, oracle = source
    mnt, backing = failing_fs(1 << 40, fail_sync_from=1)
    members = [os.path.join(mnt, "m0"), os.path.join(mnt, "m1")]
    r = _dump(cli, src, members, "--on-disk-error", "continue")
    assert_one_line_error(r, 8, "every target failed", "may be lost: chunk ")


@needs_root
def test_block_device_end_continue_degraded(source, tmp_path, loop_device, cli):
    src, oracle = source
    dev = loop_device(1 << 20)
    members = [str(tmp_path / "m0"), dev]
    r = _dump(cli, src, members, "--on-disk-error", "continue")
    assert r.rc == 0 and dev in r.err, r
    _byte_identical(cli, src, members, str(tmp_path / "out"))


@needs_root
def test_direct_io_failed_targets_stage_is_sent_again(source, tmp_path, loop_device, cli):
    """O_DIRECT: chunks staged for the failed device never reached it: they go to the others again.

    (Here the whole member fits the 4 MiB stage, so the device fails at the
    coordinator's sync barrier, after the last chunk was handed out: the
    staged chunks are encoded again for the survivor.)"""
    src, oracle = source
    dev = loop_device(1 << 20)
    members = [str(tmp_path / "m0"), dev]
    r = _dump(cli, src, members, "--on-disk-error", "continue", "--direct-io")
    assert r.rc == 0 and dev in r.err and "No space left on device" in r.err, r
    _survivors_hold_everything(cli, src, members[:1], str(tmp_path / "out"))


@needs_root
def test_direct_io_stage_lost_mid_dump_is_sent_again(source, tmp_path, loop_device, cli):
    """Uncompressed, the stage fills and fails mid-dump: its chunks go to the survivor, exit 0."""
    src, _ = source
    dev = loop_device(2 << 20)
    members = [str(tmp_path / "m0"), dev]
    r = cli("dump", "--json", "--codec", "none", "--chunk-size", CHUNK, "--direct-io", "--on-disk-error",
            "continue", "--disks", ",".join(members), src)
    assert r.rc == 0 and dev in r.err, r
    (deg,) = json.loads(r.out)["degraded"]
    assert deg["resent"] > 0, deg
    _survivors_hold_everything(cli, src, members[:1], str(tmp_path / "out"))


@needs_root
def test_every_target_failing(source, tmp_path, small_fs, cli):
    src, oracle = source
    full = small_fs(2 << 20)
    members = [os.path.join(full, "m0"), os.path.join(full, "m1")]
    r = _dump(cli, src, members, "--on-disk-error", "continue")
    assert_one_line_error(_space_warned(r, *members), 8, "every target failed")
    _recovered(cli, oracle, members, str(tmp_path / "out"))


def test_degraded_placement_spreads_a_failed_members_chunks():
    assert [degraded_placement(c, 3, [1, 1, 1]) for c in range(6)] == [0, 1, 2, 0, 1, 2]
    # member 1 failed: its chunks 1, 4, 7, 10 go to 0, 2, 0, 2; the others stay
    assert [degraded_placement(c, 3, [1, 0, 1]) for c in range(12)] == [0, 0, 2, 0, 2, 2, 0, 0, 2, 0, 2, 2]
    assert degraded_placement(5, 2, [0, 0]) is None


@pytest.mark.parametrize("direct_io, resent", [(False, 15), (None, 16)], ids=["buffered", "direct"])
def test_only_chunks_since_the_last_good_sync_are_sent_again(source, tmp_path, failing_fs, cli, monkeypatch,
                                                             direct_io, resent):
    """The coordinator keeps, per writer, the chunks since its last successful sync, no more.

    Syncs every 16 chunks (lowered for the test; children inherit it at
    fork); m1's first sync succeeds and its second fails: the 15 chunks
    acknowledged in between are encoded again, the one being written is
    forwarded, and the 16 synced before stay on m1 alone.  With O_DIRECT
    (the default where the target takes it) the last of those 16 ends in a
    partial page still staged at the first sync (Written.durable says 1):
    it is encoded again too, and 15 stay on m1 alone."""
    from stripedump.dump import writer
    from stripedump.format.codecs import CodecSpec
    from stripedump.dump.config import DumpConfig
    from stripedump.dump.coordinator import dump
    src, oracle = source
    monkeypatch.setattr(writer, "SYNC_CHUNKS", 16)
    mnt, backing = failing_fs(1 << 40, fail_sync_from=2)
    members = [str(tmp_path / "m0"), os.path.join(mnt, "m1"), str(tmp_path / "m2")]
    res = dump(DumpConfig(src, tuple(members), CodecSpec("zlib"), 2, 64 << 10, on_disk_error="continue",
                          direct_io=direct_io))
    assert res.extra["write_modes"][1] == ("buffered" if direct_io is False else "direct")
    (deg,) = res.extra["degraded"]
    assert deg["member"] == 1 and deg["resent"] == resent, deg
    r = cli("join", "--allow-incomplete", "--json", "-q", members[0], members[2], "-o", tmp_path / "o1")
    assert r.rc == 0 and json.loads(r.out)["missing_chunks"] == 31 - resent, r
    _byte_identical(cli, src, [members[0], os.path.join(backing, "m1"), members[2]], str(tmp_path / "o2"))
