"""Targets: nothing is overwritten that was not meant to be (real files and loop devices)."""

import filecmp
import os
import shutil
import subprocess

import pytest

from stripedump.codecs import CodecSpec
from stripedump.config import DumpConfig, JoinConfig
from stripedump.errors import TargetIOError, TargetRefused
from stripedump.join import join
from stripedump.pipeline import dump
from stripedump.targets import SIGNATURES, probe_signature


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
