"""The command line as a user meets it: real processes, exit codes, one-line errors."""

import filecmp
import json
import os

import pytest

from conftest import assert_one_line_error


def test_no_subcommand_form_dumps(tmp_path, vmcore, cli):
    b = vmcore("kernel")
    a, c = tmp_path / "sdb", tmp_path / "sdc"
    r = cli("--disks", f"{a},{c}", "--codec", "snappy", b.path)
    assert r.rc == 0, r
    assert "MB/s" in r.out and "ratio" in r.out
    r = cli("join", c, a, "-o", tmp_path / "out")
    assert r.rc == 0, r
    assert filecmp.cmp(b.path, tmp_path / "out", shallow=False)


def test_json_outputs(tmp_path, vmcore, cli):
    b = vmcore("kernel")
    m = [tmp_path / "m0", tmp_path / "m1"]
    r = cli("dump", "--json", "--disks", f"{m[0]},{m[1]}", "--codec", "zstd:3", "--workers", "2", b.path)
    assert r.rc == 0, r
    d = json.loads(r.out)
    assert d["codec"] == "zstd:3" and d["input_bytes"] > 0 and len(d["members"]) == 2
    r = cli("info", "--json", m[1], m[0])
    i = json.loads(r.out)
    assert i["dump_id"] == d["dump_id"]
    assert i["source"]["osrelease"] == "6.1.0-synthetic"
    assert [x["state"] for x in i["members"]] == ["complete", "complete"]
    r = cli("verify", "--json", *m)
    v = json.loads(r.out)
    assert r.rc == 0 and v["errors"] == [] and v["chunks"] == d["chunks"]
    r = cli("join", "--json", *m, "-o", tmp_path / "o")
    assert r.rc == 0 and json.loads(r.out)["output_bytes"] == os.path.getsize(b.path)


def test_info_for_humans(tmp_path, vmcore, cli):
    b = vmcore("kernel")
    m = tmp_path / "m0"
    assert cli("dump", "-q", "--disks", m, b.path).rc == 0
    r = cli("info", m)
    assert r.rc == 0
    assert "6.1.0-synthetic" in r.out and "complete" in r.out and "lz4" in r.out


def test_help_lists_exit_codes_and_examples(cli):
    for args in (["--help"], ["dump", "--help"], ["join", "--help"], ["verify", "--help"], ["info", "--help"]):
        r = cli(*args)
        assert r.rc == 0
        assert "exit codes:" in r.out and "examples:" in r.out


@pytest.mark.parametrize("args,code,needle", [
    (["dump", "--disks", "x", "/nonexistent/vmcore"], 3, "cannot open source"),
    (["dump", "x.vmcore"], 2, "--disks"),
    (["dump", "--disks", "a", "--codec", "gzip", "src"], 2, "unknown codec"),
    (["dump", "--disks", "a", "--chunk-size", "12Q", "src"], 2, "invalid --chunk-size"),
    (["dump", "--disks", "a", "--workers", "0", "src"], 2, "at least 1"),
    (["frobnicate"], 2, "frobnicate"),
    (["join", "-o", "x"], 2, "MEMBER"),
    (["join", "/nonexistent", "-o", "x"], 6, "cannot open"),
    (["verify", "/etc/hostname"], 6, "not a stripedump member"),
    (["info", "/nonexistent"], 6, "cannot open"),
])
def test_usage_and_input_errors(tmp_path, cli, args, code, needle):
    assert_one_line_error(cli(*args, cwd=tmp_path), code, needle)


def test_not_an_elf_source(tmp_path, cli):
    src = tmp_path / "notelf"
    src.write_bytes(b"hello world" * 100)
    assert_one_line_error(cli("dump", "--disks", tmp_path / "m", src), 3, "not an ELF file")
    assert not (tmp_path / "m").exists()


def test_refusals_have_their_exit_code(tmp_path, vmcore, cli):
    b = vmcore("simple")
    t = tmp_path / "t"
    t.write_bytes(b"x")
    assert_one_line_error(cli("dump", "--disks", t, b.path), 4, str(t), "--force")
    assert_one_line_error(cli("dump", "--disks", f"{tmp_path}/a,{tmp_path}/a", b.path), 4, "twice")
    assert_one_line_error(cli("dump", "--disks", b.path, b.path), 4, "source itself")
    assert t.read_bytes() == b"x"


def test_chunk_size_must_fit_the_page_size(tmp_path, vmcore, cli):
    b = vmcore("simple")
    assert_one_line_error(cli("dump", "--disks", tmp_path / "m", "--chunk-size", "6000", b.path), 2,
                          "multiple of the dump's page size")
    assert_one_line_error(cli("dump", "--disks", tmp_path / "m", "--block-size", "2M", b.path), 2,
                          "--block-size")


def test_join_errors_are_one_line(tmp_path, vmcore, cli):
    b = vmcore("kernel")
    m = [tmp_path / "m0", tmp_path / "m1"]
    assert cli("dump", "-q", "--disks", f"{m[0]},{m[1]}", b.path).rc == 0
    out = tmp_path / "out"
    out.write_bytes(b"old")
    assert_one_line_error(cli("join", *m, "-o", out), 9, "exists", "--force")
    assert_one_line_error(cli("join", m[0], "-o", tmp_path / "o2"), 6, "missing member(s) 1")
    with open(m[1], "r+b") as f:
        f.seek(os.path.getsize(m[1]) // 2)
        f.write(b"\x00\xff\x00\xff")
    r = cli("verify", *m)
    assert r.rc == 7 and "Traceback" not in r.err and str(m[1]) in r.err
    assert_one_line_error(cli("join", *m, "-o", tmp_path / "o3"), 7, str(m[1]))
    assert not (tmp_path / "o3").exists()


def test_version(cli):
    r = cli("--version")
    assert r.rc == 0 and r.out.startswith("stripedump ")


def _run_without(modules, *args, cwd):
    """Run the CLI in a Python where ``modules`` cannot be imported."""
    import subprocess
    import sys
    block = "; ".join(f"sys.modules[{m!r}] = None" for m in modules)
    code = f"import sys; {block}; from stripedump.cli import main; sys.exit(main({list(map(str, args))!r}))"
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env,
                       timeout=120)
    from conftest import CliResult
    return CliResult(p)


def test_missing_codec_libraries_leave_zlib_working(tmp_path, vmcore):
    b = vmcore("kernel")
    gone = ["lz4", "lz4.block", "cramjam", "snappy", "lzo", "zstandard"]
    r = _run_without(gone, "dump", "--disks", tmp_path / "m", b.path, cwd=tmp_path)
    assert r.rc == 0, r
    assert "lz4 is not installed; using zlib" in r.err
    r = _run_without(gone, "join", tmp_path / "m", "-o", tmp_path / "o", cwd=tmp_path)
    assert r.rc == 0, r
    assert filecmp.cmp(b.path, tmp_path / "o", shallow=False)
    r = _run_without(gone, "dump", "--disks", tmp_path / "m2", "--codec", "zstd", b.path, cwd=tmp_path)
    assert_one_line_error(r, 2, "zstandard", "not installed")
    assert not (tmp_path / "m2").exists()


def test_verbose_dump_tells_the_plan(tmp_path, vmcore, cli):
    b = vmcore("kernel")
    r = cli("dump", "-v", "--disks", tmp_path / "m", b.path)
    assert r.rc == 0
    assert "plan:" in r.err and "buffer slots" in r.err and "synced" in r.err
