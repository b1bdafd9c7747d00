"""stripedump bench: real runs on small generated sources."""

import json
import os

import pytest

from conftest import assert_one_line_error
from stripedump.tools import bench
from stripedump.source.vmcore import Source

pytestmark = pytest.mark.slow      # benchmark runs (pyproject.toml's markers)


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
                  "ratio", "cpu_percent", "peak_memory_bytes", "cpu_seconds", "cpu_s_per_gib"):
            assert k in row
        # issue 25 item 1: CPU per GiB and the share outside the workers, from dump's cpu_seconds
        cpu = row["cpu_seconds"]
        assert row["cpu_s_per_gib"] == round(cpu["total"] / (row["input_bytes"] / 2**30), 3) > 0
        if "workers" in cpu:     # children reaped by wait4 (not multiprocessing.Process)
            assert 0 < row["non_worker_share"] < 1
            assert len(cpu["each_worker"]) == row["workers"] and len(cpu["each_writer"]) == row["disks"]
        assert 64 << 20 <= row["input_bytes"] < (64 << 20) + 65536    # pages + ELF headers
        assert row["mb_per_s"] > 0 and 0 < row["peak_memory_bytes"] < 512 << 20
    assert {(r["write"]) for r in rows} == {True, False}
    assert os.listdir(work) == []          # source and targets removed
    assert "bench: lz4 workers=1 disks=1 write" in r.err


def test_bench_table_and_plot(tmp_path, cli):
    png = tmp_path / "b.png"
    r = cli("bench", "--size", "32M", "--codecs", "snappy,auto:none+lz4", "--workers", "1,2", "--disks", "1",
            "--data", "mixed", "--repeat", "2", "--plot", png, "-q", timeout=300)
    assert r.rc == 0, r
    assert "snappy" in r.out and "MB/s" in r.out
    head, _, *rows = r.out.splitlines()
    assert "CPU s/GiB" in head and "non-worker" in head
    assert head.endswith("chunks per codec (auto)")          # issue 24 item 12: as the man page says
    for row in rows:
        assert ("lz4 " in row or "none " in row) == ("auto:none+lz4" in row), row
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_into_directories(tmp_path, cli):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    r = cli("bench", "--size", "16M", "--codecs", "lz4", "--workers", "1", "--disks", f"{a},{b}",
            "--json", timeout=300)
    assert r.rc == 0, r
    assert json.loads(r.out)["results"][0]["disks"] == 2
    assert os.listdir(a) == [] and os.listdir(b) == []


def test_bench_runs_codec_auto_and_reports_its_choices(tmp_path, cli):
    """Issue 12: `--codecs auto` runs --codec auto; auto:A+B restricts it; rows say what each chunk got."""
    r = cli("bench", "--size", "16M", "--codecs", "auto,auto:none+lz4", "--workers", "2", "--disks", "2",
            "--json", "--dir", tmp_path, timeout=300)
    assert r.rc == 0, r
    rows = json.loads(r.out)["results"]
    assert [row["codec"] for row in rows] == ["auto", "auto:none+lz4"]
    for row in rows:
        chunks = row["auto_chunks"]
        assert sum(chunks.values()) >= 16           # every chunk of 16 MiB of pages got a codec
    assert set(rows[1]["auto_chunks"]) <= {"none", "lz4"}
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("args,needle", [
    (["--codecs", "gzip"], "unknown codec"),
    (["--codecs", "auto:lz4+gzip"], "unknown codec"),
    (["--workers", "0"], "at least 1"),
    (["--disks", "/no/such/dir"], "not a directory"),
    (["--size", "lots"], "invalid --size"),
])
def test_bench_usage_errors(cli, args, needle):
    assert_one_line_error(cli("bench", *args), 2, needle)


def test_default_data_is_memory_like_and_named(tmp_path, cli):
    """With default options every ratio was 1.00 (random data): now mixed, and the table says so."""
    r = cli("bench", "--size", "16M", "--codecs", "lz4", "--workers", "1", "--dir", tmp_path, timeout=300)
    assert r.rc == 0, r
    head, rule, row = r.out.splitlines()
    assert head.split()[0] == "data" and row.split()[:2] == ["mixed", "lz4"]
    assert float(row.split()[6]) > 1.5           # the ratio column: memory compresses
    # announced before the first run: how many runs, of what, roughly how long
    first = r.err.splitlines()[0]
    assert first.startswith("bench: 1 run(s) (1 codec(s) x 1 worker count(s) x 1 disk count(s)) of "
                            "16 MiB of mixed data (memory-like); roughly "), first


def test_announces_every_run(tmp_path, cli):
    r = cli("bench", "--size", "8M", "--codecs", "lz4,zlib", "--workers", "1,2", "--disks", "1,2",
            "--mode", "both", "--repeat", "2", "--json", "--dir", tmp_path, timeout=300)
    assert r.rc == 0, r
    assert r.err.splitlines()[0].startswith(
        "bench: 32 run(s) (2 codec(s) x 2 worker count(s) x 2 disk count(s) x write and no-write x "
        "2 repeats) of 8 MiB of mixed data")
    assert len(json.loads(r.out)["results"]) == 16              # 32 runs, the median of each pair
    assert {row["data"] for row in json.loads(r.out)["results"]} == {"mixed"}


@pytest.mark.parametrize("args,needle", [
    (["--size", "0"], "--size must be more than 0"),
    (["--chunk-size", "0"], "--chunk-size must be more than 0"),
    (["--block-size", "0"], "--block-size must be more than 0"),
    (["--block-size", "6000"], "--block-size 6000 must be a multiple of the page size"),
    (["--chunk-size", "1M", "--block-size", "2M"], "at most --chunk-size"),
])
def test_sizes_checked_before_any_run(tmp_path, cli, args, needle):
    """--size 0 was "internal error: ZeroDivisionError"; bad geometry failed after making the source."""
    r = cli("bench", "--codecs", "lz4", "--workers", "1", "--dir", tmp_path, *args)
    assert_one_line_error(r, 2, needle)
    assert os.listdir(tmp_path) == []


def test_plot_without_matplotlib_refused_before_any_run(tmp_path, cli):
    r = cli("bench", "--size", "16M", "--codecs", "lz4", "--workers", "1", "--dir", tmp_path,
            "--plot", tmp_path / "b.png", without=["matplotlib"])
    assert_one_line_error(r, 2, "--plot needs matplotlib", "pip install '.[bench]'", "leave out --plot")
    assert os.listdir(tmp_path) == []            # no source made, no run started
    r = cli("bench", "--size", "16M", "--plot", tmp_path / "no" / "b.png")
    assert_one_line_error(r, 2, "--plot", "does not exist")


def _small_fs(tmp_path, size="24M"):
    """A real filesystem with little room: a tmpfs of ``size`` (root only)."""
    import subprocess
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    d = tmp_path / "small"
    d.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)],
                       capture_output=True, text=True)
    if p.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    return d


def test_too_little_space_refused_before_any_run(tmp_path, cli):
    """It ran every case, then ended in "No space left on device" without a hint."""
    import subprocess
    small = _small_fs(tmp_path)
    try:
        # members to a 24 MiB filesystem: 64 MiB of memory-like data may need 64 MiB stored raw
        r = cli("bench", "--size", "64M", "--codecs", "lz4", "--workers", "1", "--disks", f"{small}",
                "--dir", tmp_path)
        assert_one_line_error(r, 2, "may need up to", str(small), "free", "--mode no-write", "--disks DIR")
        assert "bench: lz4" not in r.err and os.listdir(small) == []
        # the default: source and members in --dir (or $TMPDIR)
        r = cli("bench", "--size", "64M", "--codecs", "lz4", "--workers", "1", "--dir", small)
        assert_one_line_error(r, 2, "may need up to", str(small), "--mode no-write")
        # what the message suggests works: no members written; or data that fits (all-zero pages)
        r = cli("bench", "--size", "64M", "--codecs", "lz4", "--workers", "1", "--disks", f"{small}",
                "--dir", tmp_path, "--mode", "no-write", "-q")
        assert r.rc == 0, r
        r = cli("bench", "--size", "64M", "--codecs", "lz4", "--workers", "1", "--disks", f"{small}",
                "--dir", tmp_path, "--data", "zero", "-q")
        assert r.rc == 0, r
        assert os.listdir(small) == []
    finally:
        subprocess.run(["umount", str(small)])


def test_bench_auto_without_zstandard_runs_on_what_is_installed(tmp_path):
    """The default ladder less a missing library, in the estimate and in the runs (no traceback)."""
    from test_cli import _run_without
    r = _run_without(["zstandard"], "bench", "--size", "16M", "--codecs", "auto", "--workers", "1",
                     "--disks", "1", "--json", "--dir", tmp_path, cwd=tmp_path)
    assert r.rc == 0, r
    row = json.loads(r.out)["results"][0]
    assert row["codec"] == "auto" and set(row["auto_chunks"]) <= {"none", "lz4"}
    assert sum(row["auto_chunks"].values()) >= 16
