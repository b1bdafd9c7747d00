"""join --format flat: makedumpfile's flattened stream, judged by ``makedumpfile -R``."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys

import pytest

from kdump.test_join import (assert_every_page_reads_back, dump_members, kdump_join, needs_libkdumpfile,
                        needs_makedumpfile)
from stripedump.kdump.flat import ABORT_RECORD, END_RECORD, flat_header
from stripedump.source.vmcore import Source

from conftest import ROOT



def replay(flat: bytes) -> bytes:
    """Our own reading of the format (kdump-format.md §10), for the record checks."""
    assert flat[:16] == b"makedumpfile\0\0\0\0"
    assert struct.unpack_from(">qq", flat, 16) == (1, 1) and flat[32:4096] == bytes(4064)
    out, pos, records = bytearray(), 4096, 0
    while True:
        off, size = struct.unpack_from(">qq", flat, pos)
        pos += 16
        if (off, size) == (-1, -1):
            break
        assert off >= 0 and size > 0, "a zero-length record would end makedumpfile -R early"
        if len(out) < off + size:
            out += bytes(off + size - len(out))
        out[off:off + size] = flat[pos:pos + size]
        pos += size
        records += 1
    assert pos == len(flat), "bytes after the end record"
    return bytes(out)


def test_header_and_end_record():
    h = flat_header()
    assert len(h) == 4096 and h[:12] == b"makedumpfile" and END_RECORD == b"\xff" * 16


def test_flat_file_replays_to_the_kdump_file(tmp_path, vmcore):
    b = vmcore("kernel")
    m = dump_members(tmp_path, b.path, "zlib")
    kdump_join(m, tmp_path / "o.kdump", workers=1)
    kdump_join(m, tmp_path / "o.flat", fmt="flat", workers=1)
    assert replay((tmp_path / "o.flat").read_bytes()) == (tmp_path / "o.kdump").read_bytes()


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return [sys.executable, "-m", "stripedump", *map(str, args)], env


@needs_makedumpfile
def test_stdout_pipe_into_makedumpfile_R(tmp_path, vmcore):
    """stripedump join --format flat -o - | makedumpfile -R OUT gives the kdump file."""
    b = vmcore("kernel")
    m = dump_members(tmp_path, b.path, "lzo")
    kdump_join(m, tmp_path / "o.kdump", workers=1)
    cmd, env = _cli("join", *m, "--format", "flat", "-o", "-", "--workers", "1")
    sd = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    r = subprocess.run(["makedumpfile", "-R", str(tmp_path / "r.kdump")], stdin=sd.stdout,
                       capture_output=True, text=True, timeout=120)
    sd.stdout.close()
    err = sd.stderr.read().decode()
    assert sd.wait(60) == 0, err
    assert r.returncode == 0, r.stdout + r.stderr
    assert "joined" in err and "standard output" in err       # the summary goes to stderr
    assert (tmp_path / "r.kdump").read_bytes() == (tmp_path / "o.kdump").read_bytes()


@needs_makedumpfile
@needs_libkdumpfile
def test_parallel_flat_stream_reads_back(tmp_path, vmcore):
    """Records in completion order (two workers, three members, a transcode): still every page."""
    b = vmcore("holes")
    m = dump_members(tmp_path, b.path, "lz4", members=3, chunk="16K")
    with open(tmp_path / "o.flat", "wb") as f:
        cmd, env = _cli("join", *m, "--format", "flat", "-o", "-", "--workers", "2")
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.PIPE, text=True, env=env, timeout=120)
    assert p.returncode == 0 and "transcoding every page to lzo" in p.stderr, p.stderr
    with open(tmp_path / "o.flat", "rb") as f:
        r = subprocess.run(["makedumpfile", "-R", str(tmp_path / "r.kdump")], stdin=f,
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    with Source(b.path) as src:
        ranges = src.pfn_ranges
    assert_every_page_reads_back(str(tmp_path / "r.kdump"), b.path, ranges)


def test_failed_join_never_writes_the_end_record(tmp_path, vmcore):
    b = vmcore("kernel")
    m = dump_members(tmp_path, b.path, "lzo")
    with open(m[0], "r+b") as f:          # corrupt a chunk payload
        f.seek(os.path.getsize(m[0]) // 2)
        c = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([c[0] ^ 0x55]))
    cmd, env = _cli("join", *m, "--format", "flat", "-o", "-")
    with open(tmp_path / "o.flat", "wb") as f:
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.PIPE, text=True, env=env, timeout=120)
    assert p.returncode == 7 and "checksum mismatch" in p.stderr and "Traceback" not in p.stderr
    data = (tmp_path / "o.flat").read_bytes()
    assert data.endswith(ABORT_RECORD)
    with pytest.raises(AssertionError, match="zero-length"):
        replay(data)
    if shutil.which("makedumpfile"):     # refused at once, not after its 600 s stdin timeout
        with open(tmp_path / "o.flat", "rb") as f:
            r = subprocess.run(["makedumpfile", "-R", str(tmp_path / "r.kdump")], stdin=f,
                               capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "end header" in r.stderr, r.stderr


def test_closed_pipe_is_one_line_error(tmp_path, vmcore):
    b = vmcore("kernel")
    m = dump_members(tmp_path, b.path, "zstd")
    cmd, env = _cli("join", *m, "--format", "flat", "-o", "-")
    p = subprocess.run(f"{' '.join(map(shlex_quote, cmd))} | head -c 100 >/dev/null", shell=True,
                       capture_output=True, text=True, env=env, timeout=120,
                       executable=shutil.which("bash"))
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "pipe was closed" in lines[0], p.stderr


def shlex_quote(s):
    import shlex
    return shlex.quote(s)


@pytest.mark.skipif(not shutil.which("crash"), reason="crash is not installed")
def test_crash_reads_the_flat_file_directly(tmp_path, vmcore):
    b = vmcore("same-page")
    m = dump_members(tmp_path, b.path, "zstd")
    kdump_join(m, tmp_path / "o.flat", fmt="flat")
    p = subprocess.run(["crash", "--osrelease", str(tmp_path / "o.flat")], capture_output=True, text=True)
    assert p.stdout.strip() == "6.1.0-synthetic"
