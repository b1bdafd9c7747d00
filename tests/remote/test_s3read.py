"""join, info, verify, mount and stripedump.open() reading ``s3://`` members where they are
(stripedump/remote/s3read.py), against the real SeaweedFS store of tests/helpers/seaweed.py.

What a reader fetched is counted on the wire, outside stripedump: the readers are pointed at a
counting relay (tests/helpers/countproxy.py) in front of the S3 gateway.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from stripedump.remote.s3url import MIB
from stripedump.tools import synth

from conftest import ROOT, assert_one_line_error
from countproxy import CountingProxy
from remote.test_s3target import core, same, sd

MEMBERS = ["s3://sd-a/dump/m0", "s3://sd-b/dump/m1"]


@pytest.fixture
def dumped(s3_store, tmp_path, vmcore):
    """A 64 MiB synthetic vmcore dumped by the CLI into two buckets in 256 KiB chunks (several
    index records per member), and a relay that counts what the readers fetch."""
    src = core(vmcore, 64 * MIB)
    res = sd(s3_store, "dump", "--disks", ",".join(MEMBERS), "--s3-endpoint", s3_store.endpoint,
             "--chunk-size", "64K", "--codec", "lz4", "-q", src.path)
    assert res.rc == 0, res
    host, port = s3_store.endpoint.rsplit("/", 1)[1].split(":")
    proxy = CountingProxy(host, int(port))
    yield s3_store, src.path, proxy
    proxy.close()


def sizes(st) -> list[int]:
    return [st.keys(u.split("/")[2])[u.split("/", 3)[3]] for u in MEMBERS]


def test_info_reads_only_heads_footers_and_indexes(dumped):
    st, src, proxy = dumped
    total = sum(sizes(st))
    res = sd(st, "info", "--json", *MEMBERS, "--s3-endpoint", proxy.endpoint)
    assert res.rc == 0, res
    d = json.loads(res.out)
    assert d["recovery"]["complete"] and min(m["chunks"] for m in d["members"]) > 256
    # per member: the first 256 KiB (header, manifest) and the last 64 KiB (trailer, footer,
    # last index record), and the index records before them: a few hundred KiB of ~20 MB
    assert proxy.down < 2 * (320 << 10) + 2 * (64 << 10), (proxy.down, total)
    assert proxy.down < total / 20


def test_join_and_verify_read_the_objects(dumped, tmp_path):
    st, src, proxy = dumped
    out = tmp_path / "joined"
    j = sd(st, "join", MEMBERS[1], MEMBERS[0], "-o", out, "--s3-endpoint", proxy.endpoint)
    assert j.rc == 0 and same(out, src), j
    fetched = proxy.down
    # each record fetched about once: a reader keeps only its last prefetch span, so under load
    # (readers' spans replaced before they are used up) some are fetched twice: 1.54x was seen on a
    # loaded machine, 1.1x on a quiet one; whole members downloaded per reader would be 2x and more
    assert fetched < sum(sizes(st)) * 1.75 + (4 << 20), fetched
    v = sd(st, "verify", *MEMBERS, "--s3-endpoint", st.endpoint)
    assert v.rc == 0, v


def test_stripedump_open_reads_pages_with_the_standard_environment(dumped):
    """The library API, its endpoint from AWS_ENDPOINT_URL_S3 (no option): a read of one page fetches
    the heads, the indexes and one record, not the members."""
    st, src, proxy = dumped
    code = f"""
import json, stripedump
from stripedump.remote import s3read
d = stripedump.open({MEMBERS!r})
before = s3read.STATS["bytes"]
page = d.read_phys(0x2005000, 4096)
print(json.dumps({{"page": page.hex(), "open": before, "read": s3read.STATS["bytes"] - before}}))
"""
    env = dict(st.env, AWS_ENDPOINT_URL_S3=proxy.endpoint, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert bytes.fromhex(got["page"]) == synth.page_content(0x2005)
    assert got["read"] <= (1 << 20) + (64 << 10), got           # one read-ahead at most
    assert proxy.down < 2 << 20, proxy.down


def test_a_missing_object_is_absent(dumped, tmp_path):
    st, src, proxy = dumped
    st.client().delete_object(Bucket="sd-b", Key="dump/m1")
    res = sd(st, "join", *MEMBERS, "-o", tmp_path / "j", "--s3-endpoint", st.endpoint)
    assert_one_line_error(res, 6, "s3://sd-b/dump/m1", "no such object")
    res = sd(st, "join", "--allow-incomplete", *MEMBERS, "-o", tmp_path / "j", "--s3-endpoint", st.endpoint)
    assert res.rc == 0, res
    assert "missing" in res.err
    res = sd(st, "info", *MEMBERS, "--s3-endpoint", st.endpoint)
    assert res.rc == 0 and "no such object" in res.out, res


def test_wrong_credentials_are_not_a_missing_member(dumped, tmp_path):
    st, src, proxy = dumped
    res = sd(st, "join", "--allow-incomplete", *MEMBERS, "-o", tmp_path / "j", "--s3-endpoint", st.endpoint,
             env=dict(st.env, AWS_SECRET_ACCESS_KEY="wrong"))
    assert_one_line_error(res, 6, "signature")


def test_mount_serves_the_dump_without_downloading_it(dumped, tmp_path):
    """mount is ready after reading heads and indexes; one page read fetches about one record; the
    whole vmcore read through the mount is the source."""
    from mount.test_mount import need_mount
    need_mount()
    st, src, proxy = dumped
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    total = sum(sizes(st))
    t0 = time.monotonic()
    res = sd(st, "mount", *MEMBERS, mnt, "--s3-endpoint", proxy.endpoint, timeout=60)
    try:
        assert res.rc == 0 and res.err == "", res
        ready = time.monotonic() - t0
        at_mount = proxy.down
        assert at_mount < total / 10, (at_mount, total)
        with open(mnt / "vmcore", "rb") as f:
            f.seek(os.path.getsize(src) // 2)
            f.read(4096)
        one_page = proxy.down - at_mount      # the kernel reads ahead 128 KiB: two or three 64 KiB
        assert one_page < 3 << 20, one_page    # chunks, each a small record read with 1 MiB read-ahead
        assert same(mnt / "vmcore", src)
        assert (mnt / "vmcore.kdump").stat().st_size > 0
    finally:
        done = sd(st, "umount", mnt, timeout=60)
        if done.rc != 0:
            subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)
    assert done.rc == 0, done
    assert ready < 30
