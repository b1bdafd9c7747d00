"""Targets: nothing is overwritten that was not meant to be (real files and loop devices)."""

import filecmp
import os
import shutil
import subprocess

import pytest

from stripedump.format.codecs import CodecSpec
from stripedump.dump.config import DumpConfig
from stripedump.read.config import JoinConfig
from stripedump.errors import TargetIOError, TargetRefused
from stripedump.read.join import join
from stripedump.dump.coordinator import dump
from stripedump.dump.targets import SIGNATURES, probe_signature


def _dump(src, targets, **kw):
    return dump(DumpConfig(src, tuple(map(str, targets)), CodecSpec("lz4"), 1, 65536, **kw))


def test_non_empty_file_needs_force(tmp_path, vmcore):
    b = vmcore("simple")
    t = tmp_path / "t"
    t.write_bytes(b"precious data")
    with pytest.raises(TargetRefused, match=r"non-empty file .*use --force"):
        _dump(b.path, [t])
    assert t.read_bytes() == b"precious data"
    _dump(b.path, [t], force=True)
    join(JoinConfig((str(t),), str(tmp_path / "o")))
    assert filecmp.cmp(b.path, tmp_path / "o", shallow=False)


def test_empty_existing_file_is_fine(tmp_path, vmcore):
    b = vmcore("simple")
    t = tmp_path / "t"
    t.write_bytes(b"")
    _dump(b.path, [t])
    assert t.stat().st_size > 0


def test_same_target_twice_even_through_another_name(tmp_path, vmcore):
    b = vmcore("simple")
    with pytest.raises(TargetRefused, match="given twice"):
        _dump(b.path, [tmp_path / "a", tmp_path / "a"])
    (tmp_path / "x").write_bytes(b"")
    os.link(tmp_path / "x", tmp_path / "y")
    with pytest.raises(TargetRefused, match="given twice"):
        _dump(b.path, [tmp_path / "x", tmp_path / "y"], force=True)


@pytest.mark.parametrize("exists", [False, True], ids=["new", "existing"])
def test_same_target_through_a_symlink_is_given_twice(tmp_path, vmcore, cli, exists):
    """Issue 24, item 5: a symlink to the target file, or to its directory, is the same target:
    exit 4 "given twice" (not "in use: another process holds a lock"), and nothing is created."""
    from conftest import assert_one_line_error
    b = vmcore("simple")
    ty = tmp_path / "ty"
    ty.mkdir()
    if exists:
        (ty / "m0").write_bytes(b"")
    os.symlink("ty/m0", tmp_path / "lnk")            # relative, as `ln -s ty/m0 lnk` makes it
    os.symlink(ty, tmp_path / "tyl")
    for other in ("lnk", "tyl/m0", "./ty//m0"):
        r = cli("dump", "-q", "--disks", f"ty/m0,{other}", b.path, cwd=tmp_path)
        assert_one_line_error(r, 4, f"target {other} is given twice (also as ty/m0)")
        assert os.listdir(ty) == (["m0"] if exists else []), other
        if exists:
            assert (ty / "m0").stat().st_size == 0


def test_source_is_never_a_target(tmp_path, vmcore):
    b = vmcore("simple")
    before = open(b.path, "rb").read()
    with pytest.raises(TargetRefused, match="source itself"):
        _dump(b.path, [tmp_path / "a", b.path], force=True)
    assert open(b.path, "rb").read() == before
    assert not (tmp_path / "a").exists() or (tmp_path / "a").stat().st_size == 0


def test_directory_and_missing_parent(tmp_path, vmcore):
    b = vmcore("simple")
    with pytest.raises(TargetRefused, match="directory"):
        _dump(b.path, [tmp_path])
    with pytest.raises(TargetIOError, match="does not exist"):
        _dump(b.path, [tmp_path / "no" / "such"])


def test_previous_member_is_named(tmp_path, vmcore):
    b = vmcore("simple")
    _dump(b.path, [tmp_path / "m"])
    with pytest.raises(TargetRefused, match="stripedump member"):
        _dump(b.path, [tmp_path / "m"])


@pytest.mark.parametrize("off,magic,what", SIGNATURES)
def test_every_signature_is_detected(off, magic, what):
    head = bytearray(0x10100)
    head[off:off + len(magic)] = magic
    assert probe_signature(bytes(head)) == what
    assert probe_signature(bytes(0x10100)) is None


# -- block devices, on real loop devices --------------------------------------

@pytest.fixture
def loopdev(tmp_path):
    made = []

    def make(size, init=None):
        img = tmp_path / f"disk{len(made)}.img"
        with open(img, "wb") as f:
            f.truncate(size)
            if init:
                init(f)
        try:
            dev = subprocess.run(["losetup", "-f", "--show", str(img)], capture_output=True, text=True,
                                 check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError) as e:
            pytest.skip(f"loop devices unavailable here: {e}")
        made.append(dev)
        return dev
    yield make
    for d in made:
        subprocess.run(["umount", d], capture_output=True)
        subprocess.run(["losetup", "-d", d], capture_output=True)


def _ext4_magic(f):
    f.seek(0x438)
    f.write(b"\x53\xef")


def test_block_devices_round_trip(tmp_path, vmcore, loopdev):
    b = vmcore("kernel")
    devs = [loopdev(8 << 20), loopdev(8 << 20)]
    _dump(b.path, devs)
    join(JoinConfig(tuple(reversed(devs)), str(tmp_path / "o")))
    assert filecmp.cmp(b.path, tmp_path / "o", shallow=False)


def test_device_with_filesystem_needs_force(tmp_path, vmcore, loopdev):
    b = vmcore("simple")
    dev = loopdev(8 << 20, _ext4_magic)
    with pytest.raises(TargetRefused, match=f"{dev} holds an ext2/3/4 filesystem.*--force"):
        _dump(b.path, [dev])
    with open(dev, "rb") as f:
        f.seek(0x438)
        assert f.read(2) == b"\x53\xef"          # untouched
    _dump(b.path, [dev], force=True)


def test_device_too_small(tmp_path, vmcore, loopdev):
    b = vmcore("simple")
    dev = loopdev(4096)
    with pytest.raises(TargetRefused, match="too small"):
        _dump(b.path, [dev])


def test_device_that_fills_up_is_an_error_not_a_hang(tmp_path, vmcore, loopdev):
    from stripedump.errors import IncompleteDump
    b = vmcore("simple")
    dev = loopdev(256 << 10)
    with pytest.raises(IncompleteDump, match=dev):
        dump(DumpConfig(b.path, (dev,), CodecSpec("none"), 1, 65536))


def test_mounted_device_is_refused_even_with_force(tmp_path, vmcore, loopdev):
    if not shutil.which("mkfs.ext4"):
        pytest.skip("mkfs.ext4 not installed")
    b = vmcore("simple")
    dev = loopdev(8 << 20)
    subprocess.run(["mkfs.ext4", "-q", dev], check=True, capture_output=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", dev, str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount here")
    try:
        with pytest.raises(TargetRefused, match="mounted"):
            _dump(b.path, [dev], force=True)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


# -- exclusive targets: two dumps at once, real processes ---------------------

import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from stripedump.tools import synth  # noqa: E402

from conftest import ROOT  # noqa: E402
from waiting import wait_until  # noqa: E402


def _head(path) -> bytes:
    with open(path, "rb") as f:
        return f.read(8)


@pytest.fixture(scope="module")
def slow_source(tmp_path_factory):
    """A source whose dump (zlib:9, one worker) takes about a second: long enough to overlap."""
    path = str(tmp_path_factory.mktemp("exclusive") / "vmcore")
    synth.build(path, synth.demo_loads(32 << 20))
    yield path
    os.unlink(path)


def _start(src, targets, *extra):
    env = dict(os.environ, PYTHONPATH=ROOT)
    disks = ",".join(map(str, targets))
    return subprocess.Popen([sys.executable, "-m", "stripedump", "dump", "--disks", disks,
                             "--codec", "zlib:9", "--workers", "1", "--chunk-size", "256K", "-q", *extra,
                             src], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            stdin=subprocess.DEVNULL, start_new_session=True)


class _Paused:
    """The first dump, stopped (SIGSTOP to its process group) while it holds its targets."""

    def __init__(self, proc):
        self.proc = proc

    def __enter__(self):
        os.killpg(self.proc.pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc):
        os.killpg(self.proc.pid, signal.SIGCONT)


def _race(src, a, b, *extra):
    """Start `--disks a` and `--disks b` together; return [(rc, stderr, targets)] of both."""
    procs = [(_start(src, a, *extra), a), (_start(src, b, *extra), b)]
    out = []
    for p, t in procs:
        _, err = p.communicate(timeout=120)
        out.append((p.returncode, err, t))
    return out


def _one_winner(src, results, tmp_path):
    rcs = sorted(r[0] for r in results)
    assert rcs == [0, 4], results
    (win,) = [r for r in results if r[0] == 0]
    (lose,) = [r for r in results if r[0] == 4]
    lines = [ln for ln in lose[1].splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("stripedump: error: target "), lose[1]
    assert "Traceback" not in lose[1]
    out = tmp_path / "joined"
    join(JoinConfig(tuple(map(str, win[2])), str(out), force=True))
    assert filecmp.cmp(src, out, shallow=False)
    out.unlink()
    return lose[1]


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_two_dumps_at_once_on_the_same_files(tmp_path, slow_source, force):
    """Issue 9 case 2: a kdump service and a manual run on the same targets.

    With --force both pass the emptiness check, so only the lock keeps them
    apart (before locks, both exited 0 here); reversed --disks orders must not
    make both fail.  Without --force the emptiness check may refuse the second
    when the first has already written (the race of the issue needs both to
    check at once): one reversed round only.
    """
    a, b = tmp_path / "m0", tmp_path / "m1"
    for order in ([a, b], [b, a]) if force else ([b, a],):
        for t in (a, b):
            t.write_bytes(b"")
        err = _one_winner(slow_source, _race(slow_source, [a, b], order,
                                             *(["--force"] if force else [])), tmp_path)
        if force:
            assert "is in use: another process holds a lock on it (pid " in err, err
    a.unlink()
    b.unlink()


def test_two_dumps_at_once_on_new_files_leave_the_winners_members(tmp_path, slow_source):
    """The loser removes only the files it created and holds (issue 24, item 6): racing to create
    the same new files, it never removes one the winner writes."""
    a, b = tmp_path / "m0", tmp_path / "m1"
    for order in ([a, b], [b, a]):
        _one_winner(slow_source, _race(slow_source, [a, b], order), tmp_path)
        assert sorted(os.listdir(tmp_path)) == ["m0", "m1"]
        a.unlink()
        b.unlink()


def test_second_dump_on_a_held_file_is_refused_at_once_naming_the_holder(tmp_path, slow_source):
    a, b = tmp_path / "m0", tmp_path / "m1"
    first = _start(slow_source, [a, b])
    wait_until(lambda: b.exists() and b.stat().st_size > 0, "the first dump writing", proc=first)
    with _Paused(first):          # it holds its targets for as long as it takes
        t0 = time.monotonic()
        second = _start(slow_source, [tmp_path / "other", b], "--force")
        _, err = second.communicate(timeout=60)
        assert second.returncode == 4, err
        assert f"target {b} is in use: another process holds a lock on it (pid {first.pid}: " in err, err
        assert time.monotonic() - t0 < 15          # at once: no waiting for the lock
    assert first.wait(timeout=120) == 0, first.stderr.read()
    # the refused dump wrote nothing anywhere, and the file it created is gone (issue 24, item 6)
    assert not (tmp_path / "other").exists()
    join(JoinConfig((str(a), str(b)), str(tmp_path / "o")))
    assert filecmp.cmp(slow_source, tmp_path / "o", shallow=False)
    for f in (a, b, tmp_path / "o"):
        f.unlink()


def test_two_dumps_at_once_on_the_same_block_devices(tmp_path, slow_source, loopdev):
    a, b = loopdev(32 << 20), loopdev(32 << 20)
    zero = bytes(1 << 20)
    for order in ([a, b], [b, a]):
        for d in (a, b):
            with open(d, "r+b") as f:      # no signature left from the previous round
                f.write(zero)
        err = _one_winner(slow_source, _race(slow_source, [a, b], order, "--force"), tmp_path)
        assert "is in use: another process holds a lock on it (pid " in err, err


def test_block_device_held_by_another_dump_names_it(tmp_path, slow_source, loopdev):
    a, b = loopdev(32 << 20), loopdev(32 << 20)
    first = _start(slow_source, [a, b])
    wait_until(lambda: _head(b) == b"STRIPEDM", "the first dump's header on the device", proc=first)
    with _Paused(first):
        second = _start(slow_source, [b], "--force")
        _, err = second.communicate(timeout=60)
        assert second.returncode == 4, err
        assert f"target {b} is in use: another process holds a lock on it (pid {first.pid}: " in err, err
    assert first.wait(timeout=120) == 0, first.stderr.read()
    join(JoinConfig((a, b), str(tmp_path / "o")))
    assert filecmp.cmp(slow_source, tmp_path / "o", shallow=False)


def test_block_device_held_exclusively_is_refused(tmp_path, vmcore, loopdev):
    """O_EXCL: a device another process claimed (as a mount or md/dm would) is never written."""
    b = vmcore("simple")
    dev = loopdev(8 << 20)
    holder = os.open(dev, os.O_RDONLY | os.O_EXCL)
    try:
        with pytest.raises(TargetRefused, match=f"target {dev} is in use: another process holds it open "
                                                "exclusively"):
            _dump(b.path, [tmp_path / "m0", dev], force=True)
    finally:
        os.close(holder)
    assert not (tmp_path / "m0").exists()        # the file it created is removed (issue 24, item 6)
    _dump(b.path, [tmp_path / "m0", dev], force=True)


def test_file_replaced_after_the_check_is_not_truncated(tmp_path, vmcore):
    """The checks are made again under the lock: a target that a finished dump filled is refused."""
    from stripedump.dump.targets import check_targets, open_targets
    b = vmcore("simple")
    t = tmp_path / "m"
    targets = check_targets([str(t)], os.stat(b.path), False)    # checked while it did not exist
    t.write_bytes(b"a member written meanwhile")
    with pytest.raises(TargetRefused, match="non-empty file"):
        open_targets(targets, 8192)
    assert t.read_bytes() == b"a member written meanwhile"
    assert targets[0].fd == -1


def test_a_dump_that_fails_before_writing_removes_the_files_it_created(tmp_path, vmcore, cli, loopdev):
    """Issue 24, item 6: refused or failed before its first chunk, a dump removes the member files
    it created, and only those: a file that existed before stays, and so does a device."""
    from conftest import assert_one_line_error
    b = vmcore("simple")
    ty = tmp_path / "ty"
    ty.mkdir()
    (ty / "old").write_bytes(b"")
    # a target that cannot be written (its head's write fails): exit 5
    r = cli("dump", "-q", "--disks", "ty/m0,/proc/self/status", b.path, cwd=tmp_path)
    assert_one_line_error(r, 5, "/proc/self/status")
    assert os.listdir(ty) == ["old"]
    r = cli("dump", "-q", "--disks", "ty/m0,ty/old,/proc/self/status", b.path, cwd=tmp_path)
    assert_one_line_error(r, 5, "/proc/self/status")
    assert os.listdir(ty) == ["old"]                 # existed before: kept (its head says incomplete)
    dev = loopdev(8 << 20)
    r = cli("dump", "-q", "--disks", f"ty/m0,{dev},/proc/self/status", b.path, cwd=tmp_path)
    assert_one_line_error(r, 5, "/proc/self/status")
    assert os.listdir(ty) == ["old"] and os.path.exists(dev)
    # refused after the heads are written (--manifest is one of the targets): exit 2
    r = cli("dump", "-q", "--manifest", "ty/m1", "--disks", "ty/m0,ty/m1", b.path, cwd=tmp_path)
    assert_one_line_error(r, 2, "one of the targets")
    assert os.listdir(ty) == ["old"]
    # refused for safety, a new file given before the refused one: exit 4
    (ty / "full").write_bytes(b"precious")
    r = cli("dump", "-q", "--disks", "ty/m0,ty/full", b.path, cwd=tmp_path)
    assert_one_line_error(r, 4, "ty/full", "non-empty")
    assert sorted(os.listdir(ty)) == ["full", "old"] and (ty / "full").read_bytes() == b"precious"
