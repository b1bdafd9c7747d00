"""Memory that cannot be read: a real FUSE file whose reads fail, as /proc/vmcore's do.

The source is served by tests/helpers/faulty_fs.py, which fails every read
touching two chosen pages with EIO.  Through mmap the page fault never
completes (FUSE retries it), so the worker is stuck: the coordinator kills it
after ``stall_seconds`` and retries the chunk with read(), page by page.
With ``--no-mmap`` the read fails at once and the same careful path runs.
Either way the dump succeeds, the two pages are recorded as unreadable, and
join and verify report them; every other byte comes back.
"""

import json
import subprocess
import time

import pytest

from stripedump.tools import synth
from stripedump.format.codecs import CodecSpec
from stripedump.dump.config import DumpConfig
from stripedump.dump.coordinator import dump

from conftest import need_fuse, start_fuse

BAD_PFN = 0x1010          # two pages in the last RAM range of the "kernel" layout


@pytest.fixture
def faulty_source(tmp_path):
    need_fuse()
    b = synth.build(str(tmp_path / "vm"), **synth.layouts()["kernel"])
    ram3 = b.loads[3]
    off = b.offsets[3] + BAD_PFN * 4096 - ram3.paddr
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = start_fuse("faulty_fs.py", [b.path, mnt, f"{off}:{off + 8192}"], mnt)
    yield b, str(mnt / "vmcore"), (off, off + 8192)
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    proc.kill()
    proc.wait(10)


def _expected(b, bad):
    data = bytearray(open(b.path, "rb").read())
    data[bad[0]:bad[1]] = bytes(bad[1] - bad[0])
    return bytes(data)


def test_stuck_mmap_read_is_retried_page_by_page(tmp_path, faulty_source, cli):
    b, src, bad = faulty_source
    targets = (str(tmp_path / "m0"), str(tmp_path / "m1"))
    notes = []
    t0 = time.monotonic()
    res = dump(DumpConfig(src, targets, CodecSpec("lz4"), 2, 1 << 20, stall_seconds=2),
               say=lambda msg, level=1: notes.append(msg))
    assert time.monotonic() - t0 < 30
    assert res.extra["unreadable_blocks"] == 2
    assert any("reading it page by page" in n for n in notes)
    r = cli("join", "--json", *targets, "-o", tmp_path / "out")
    assert r.rc == 0, r
    assert json.loads(r.out)["unreadable"]["pfn_ranges"] == [[BAD_PFN, BAD_PFN + 2]]
    assert "PFN 0x1010-0x1011" in r.err
    assert (tmp_path / "out").read_bytes() == _expected(b, bad)


def test_read_errors_without_mmap(tmp_path, faulty_source, cli):
    b, src, bad = faulty_source
    m = f"{tmp_path}/m0,{tmp_path}/m1"
    r = cli("dump", "--no-mmap", "-q", "--json", "--disks", m, src)
    assert r.rc == 0, r
    assert json.loads(r.out)["unreadable_blocks"] == 2
    r = cli("verify", tmp_path / "m0", tmp_path / "m1")
    assert r.rc == 0 and "could not be read" in r.err and "PFN 0x1010-0x1011" in r.err
    r = cli("join", "-q", tmp_path / "m1", tmp_path / "m0", "-o", tmp_path / "out")
    assert r.rc == 0 and "warning" in r.err
    assert (tmp_path / "out").read_bytes() == _expected(b, bad)


def test_kdump_output_marks_unreadable_pages_missing(tmp_path, faulty_source, cli):
    """As makedumpfile marks pages it could not save: descriptor offset 0, header INCOMPLETE."""
    import struct
    b, src, bad = faulty_source
    m = f"{tmp_path}/m0,{tmp_path}/m1"
    assert cli("dump", "--no-mmap", "-q", "--codec", "lzo", "--disks", m, src).rc == 0
    out = tmp_path / "vmcore.kdump"
    r = cli("join", "--format", "kdump", tmp_path / "m0", tmp_path / "m1", "-o", out)
    assert r.rc == 0, r
    assert "PFN 0x1010-0x1011" in r.err
    data = out.read_bytes()
    status, block, sub_hdr, bitmap_blocks = struct.unpack_from("<IiiI", data, 424)
    assert status & 0x8 and status & 0x2            # INCOMPLETE, LZO
    table = (1 + sub_hdr + bitmap_blocks) * block
    rank = (0x9F - 1) + (0x400 - 0x100) + (BAD_PFN - 0x1000)    # dumpable pages before BAD_PFN
    offsets = [struct.unpack_from("<q", data, table + 24 * (rank + i))[0] for i in range(3)]
    assert offsets[0] == offsets[1] == 0 and offsets[2] > 0
