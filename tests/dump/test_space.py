"""Room on the targets (dump/space.py): a warning at once for a target that will probably fill up.

Issue 24, item 8: a 1 MiB tmpfs and a 20 MiB loop device filled up at 1 % and
27 % of the dump with no word before; ssh:// targets had one.  Real file
systems and a real loop device, the real CLI.
"""

from __future__ import annotations

import json
import os
import re

import pytest

from stripedump.dump import space
from stripedump.format.codecs import BY_NAME, parse_codec
from stripedump.tools import synth

from conftest import ROOT

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs or a loop device needs root")
SHARE = "less than its expected share of the dump"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("space") / "vm")
    synth.build(path, synth.demo_loads(48 << 20))
    return path


def _warnings(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("stripedump: warning: ")]


@needs_root
def test_small_file_system_is_named_at_once(source, tmp_path, small_fs, cli):
    small = small_fs(1 << 20)
    members = [str(tmp_path / "m0"), os.path.join(small, "m1")]
    r = cli("dump", "-q", "--codec", "lz4", "--disks", ",".join(members), source)
    assert r.rc == 8 and "No space left on device" in r.err, r        # it does fill up
    (w,) = _warnings(r.err)          # named before the error, and only it (m0 has room)
    assert r.err.index(w) < r.err.index("stripedump: error: ")
    assert w.startswith(f"stripedump: warning: target {members[1]}: 1.0 MB free on its file system, {SHARE}, "), w
    share, source_mb = map(float, re.search(r"(\S+) MB \((\S+) MB of source x 0.41, its typical ratio "
                                            r"\(codec lz4\), / 2 target\(s\)\)", w).groups())
    assert abs(share - source_mb * 0.41 / 2) < 0.1, w


@needs_root
def test_targets_sharing_one_file_system_share_its_room(source, small_fs, cli):
    """Two members on one 8 MiB tmpfs: each has half of it; auto's smallest ratio counts (zstd's)."""
    fs = small_fs(8 << 20)
    members = [os.path.join(fs, "a"), os.path.join(fs, "b")]
    r = cli("dump", "-q", "--disks", ",".join(members), source)
    ws = _warnings(r.err)
    assert len(ws) == 2 and all(f"target {m}: " in w for m, w in zip(members, ws)), r.err
    assert all("shared by 2 targets" in w and "the smallest typical ratio of its ladder (codec auto)" in w
               for w in ws), ws


@needs_root
def test_small_block_device_is_named_at_once(source, loop_device, cli):
    dev = loop_device(12 << 20)
    r = cli("dump", "-q", "--codec", "none", "--disks", dev, source)
    assert r.rc == 8 and "No space left on device" in r.err, r
    (w,) = _warnings(r.err)
    assert w.startswith(f"stripedump: warning: target {dev}: 12.6 MB on the device, {SHARE}"), w


def test_no_warning_where_there_is_room(source, tmp_path, cli):
    r = cli("dump", "-q", "--json", "--disks", f"{tmp_path / 'm0'},{tmp_path / 'm1'}", source)
    assert r.rc == 0 and r.err == "", r
    assert json.loads(r.out)["output_bytes"] > 0


def test_room_and_share(tmp_path):
    """The arithmetic: a file's room is its file system's free space less the member head, shared;
    the dump's room is the targets' count times the least room."""
    from stripedump.dump.targets import Target
    a, b = Target(str(tmp_path / "a"), False, False), Target(str(tmp_path / "b"), False, False)
    vfs = os.statvfs(tmp_path)
    free = vfs.f_bavail * vfs.f_frsize
    ra, rb = space.rooms([a, b], 4096)
    assert abs(ra - (free // 2 - 4096)) < 1 << 20 and ra == rb        # free space moves a little meanwhile
    assert space.dump_room([ra, None, 10]) == 30
    assert space.dump_room([None]) is None
    assert space.expected_share(1000, 0.5, 2) == 250


def test_typical_ratios_are_the_documented_ones():
    """README and man page list each codec's typical ratio as the code has it."""
    readme = " ".join(open(os.path.join(ROOT, "README.md")).read().split())
    man = " ".join(open(os.path.join(ROOT, "docs", "stripedump.1")).read().split())
    for text in (readme, man):
        said = dict(re.findall(r"\b(none|lz4|snappy|lzo|zlib|zstd) (0\.\d\d)\b",
                               text.split("typical ratio", 1)[1][:600].replace("lz4 and snappy", "lz4 0.41, snappy")))
        assert {k: float(v) for k, v in said.items()} == {n: c.typical_ratio for n, c in BY_NAME.items()}
    assert parse_codec("auto").typical_ratio == BY_NAME["zstd"].typical_ratio
    assert parse_codec("auto:none,lz4").typical_ratio == BY_NAME["lz4"].typical_ratio
