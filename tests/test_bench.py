"""stripedump bench: real runs on small generated sources."""

import json
import os

import pytest

from conftest import assert_one_line_error
from stripedump import bench
from stripedump.vmcore import Source


@pytest.mark.parametrize("data", bench.DATA_KINDS)
def test_generated_source_is_big_in_ram_small_on_disk(tmp_path, data):
    path = bench.make_source(str(tmp_path / "src"), 1 << 30, data)
    st = os.stat(path)
    assert st.st_blocks * 512 <= (bench.POOL_BYTES + (1 << 20))      # 1 GiB machine, <= 65 MiB on disk
    with Source(path) as s:
        assert sum(b - a for a, b in s.pfn_ranges) * 4096 == 1 << 30
        with s.phys_window(3 << 16, 64) as w:
            pages = bytes(w.view())
        zero_pages = sum(pages[i:i + 4096] == bytes(4096) for i in range(0, len(pages), 4096))
        assert zero_pages == {"zero": 64, "random": 0, "mixed": zero_pages}[data]
        if data == "mixed":
            assert 10 < zero_pages < 40          # about 40 % zero, like memory


def test_bench_json_rows_and_nothing_left_behind(tmp_path, cli):
    work = tmp_path / "work"
    work.mkdir()
    r = cli("bench", "--size", "64M", "--codecs", "lz4,none", "--workers", "1,2", "--disks", "1,2",
            "--no-write", "--json", "--dir", work, timeout=300)
    assert r.rc == 0, r
    rows = json.loads(r.out)["results"]
    assert len(rows) == 2 * 2 * 2 * 2
    for row in rows:
        for k in ("codec", "workers", "disks", "input_bytes", "output_bytes", "seconds", "mb_per_s",
                  "ratio", "cpu_percent", "peak_memory_bytes"):
            assert k in row
        assert 64 << 20 <= row["input_bytes"] < (64 << 20) + 65536    # pages + ELF headers
        assert row["mb_per_s"] > 0 and 0 < row["peak_memory_bytes"] < 512 << 20
    assert {(r["write"]) for r in rows} == {True, False}
    assert os.listdir(work) == []          # source and targets removed
    assert "bench: lz4 workers=1 disks=1 write" in r.err


def test_bench_table_and_plot(tmp_path, cli):
    png = tmp_path / "b.png"
    r = cli("bench", "--size", "32M", "--codecs", "snappy", "--workers", "1,2", "--disks", "1",
            "--data", "mixed", "--plot", png, "-q", timeout=300)
    assert r.rc == 0, r
    assert "snappy" in r.out and "MB/s" in r.out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_into_directories(tmp_path, cli):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    r = cli("bench", "--size", "16M", "--codecs", "lz4", "--workers", "1", "--disks", f"{a},{b}",
            "--json", timeout=300)
    assert r.rc == 0, r
    assert json.loads(r.out)["results"][0]["disks"] == 2
    assert os.listdir(a) == [] and os.listdir(b) == []


@pytest.mark.parametrize("args,needle", [
    (["--codecs", "gzip"], "unknown codec"),
    (["--workers", "0"], "at least 1"),
    (["--disks", "/no/such/dir"], "not a directory"),
    (["--size", "lots"], "invalid --size"),
])
def test_bench_usage_errors(cli, args, needle):
    assert_one_line_error(cli("bench", *args), 2, needle)
