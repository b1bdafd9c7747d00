"""O_DIRECT wherever a target takes it, buffered where it is refused, --buffered to choose (issue 25, item 2).

Real file systems on real devices: ext4 on a loop device, the loop block
device itself, and ramfs, which refuses O_DIRECT (tmpfs takes it on the
kernels of 6.6 and later).  What the dump chose is read back from the
descriptor (``fcntl F_GETFL``, as /proc/PID/fdinfo shows it) into
``--json``'s ``write_modes``; the bytes are checked by a join against the
source.
"""

import json
import os
import subprocess

import pytest

from conftest import assert_one_line_error
from stripedump.dump import directio
from stripedump.tools import synth

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting file systems and loop devices needs root")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return synth.build(str(tmp_path_factory.mktemp("src") / "core"), [synth.Load(0, 24 << 20)]).path


def _mount(tmp_path, *args) -> str:
    d = tmp_path / f"mnt{len(list(tmp_path.glob('mnt*')))}"
    d.mkdir()
    r = subprocess.run(["mount", *args, str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount here: {r.stderr.strip()}")
    return str(d)


@pytest.fixture
def mounts():
    done = []
    yield done
    for d in reversed(done):
        subprocess.run(["umount", "-l", d], capture_output=True)


@pytest.fixture
def ext4(tmp_path, loop_device, mounts):
    dev = loop_device(64 << 20)
    r = subprocess.run(["mkfs.ext4", "-q", "-F", dev], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"no mkfs.ext4 here: {r.stderr.strip()}")
    mounts.append(_mount(tmp_path, dev))
    return mounts[-1]


@pytest.fixture
def ramfs(tmp_path, mounts):
    mounts.append(_mount(tmp_path, "-t", "ramfs", "ramfs"))
    return mounts[-1]


def _dump(cli, src, members, *opts):
    r = cli("dump", "--json", "-v", "--codec", "lz4", "--workers", "2", *opts, "--disks", ",".join(members), src)
    assert r.rc == 0, r
    return json.loads(r.out), r.err


def _joins_to_source(cli, src, members, out):
    r = cli("join", "-q", *members, "-o", out)
    assert r.rc == 0, r
    with open(src, "rb") as a, open(out, "rb") as b:
        assert a.read() == b.read()


def test_probe_is_what_the_kernel_says(ext4, ramfs):
    for where, takes in ((ext4, True), (ramfs, False)):
        fd = os.open(os.path.join(where, "probe"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            assert directio.try_direct(fd) is takes
            assert directio.is_direct(fd) is takes
            with open(f"/proc/self/fdinfo/{fd}") as f:       # the kernel's own word for it
                flags = int(next(ln for ln in f if ln.startswith("flags:")).split()[1], 8)
            assert bool(flags & os.O_DIRECT) is takes
        finally:
            os.close(fd)


def test_ext4_files_are_written_with_o_direct_and_join_to_the_source(cli, source, ext4, tmp_path):
    members = [os.path.join(ext4, "m0"), os.path.join(ext4, "m1")]
    res, err = _dump(cli, source, members)
    assert res["write_modes"] == ["direct", "direct"]
    assert f"writes: {members[0]} direct, {members[1]} direct" in err
    # no padding: each member file ends with its trailer, as a buffered member does
    assert [os.path.getsize(m) for m in members] == [m["bytes"] for m in res["members"]]
    _joins_to_source(cli, source, members, str(tmp_path / "out"))


def test_a_block_device_is_written_with_o_direct(cli, source, loop_device, tmp_path):
    members = [loop_device(32 << 20), loop_device(32 << 20)]
    res, _ = _dump(cli, source, members, "--force")
    assert res["write_modes"] == ["direct", "direct"]
    _joins_to_source(cli, source, members, str(tmp_path / "out"))


def test_a_target_that_refuses_o_direct_is_written_buffered(cli, source, ext4, ramfs, tmp_path):
    """ramfs refuses O_DIRECT (EINVAL): that target alone is written buffered, said in -v and --json."""
    members = [os.path.join(ext4, "m0"), os.path.join(ramfs, "m1")]
    res, err = _dump(cli, source, members)
    assert res["write_modes"] == ["direct", "buffered"]
    assert f"writes: {members[0]} direct, {members[1]} buffered" in err
    _joins_to_source(cli, source, members, str(tmp_path / "out"))


def test_buffered_chooses_the_page_cache(cli, source, ext4, tmp_path):
    members = [os.path.join(ext4, "m0"), os.path.join(ext4, "m1")]
    res, _ = _dump(cli, source, members, "--buffered")
    assert res["write_modes"] == ["buffered", "buffered"]
    _joins_to_source(cli, source, members, str(tmp_path / "out"))


def test_direct_io_requires_it(cli, source, ext4, ramfs):
    r = cli("dump", "--direct-io", "--disks", f"{ext4}/m0,{ramfs}/m1", source)
    assert_one_line_error(r, 5, f"{ramfs}/m1", "does not support O_DIRECT")
    r = cli("dump", "--direct-io", "--buffered", "--disks", f"{ext4}/m2", source)
    assert r.rc == 2 and "not allowed with" in r.err, r
