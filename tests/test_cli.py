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
    # verify changes nothing: it says what a join would do, not that the chunk "reads as zeros"
    assert "read as zeros" not in r.err
    assert "a join refuses the dump; join --allow-incomplete writes zeros in their place" in r.err
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
    assert r.rc == 0, r      # the default, auto, is left with none
    assert "lz4, zstd:1, zstd:3, zstd:9 not installed; auto chooses among none" in r.err
    r = _run_without(gone, "join", tmp_path / "m", "-o", tmp_path / "o", cwd=tmp_path)
    assert r.rc == 0, r
    assert filecmp.cmp(b.path, tmp_path / "o", shallow=False)
    r = _run_without(gone, "dump", "--disks", tmp_path / "mz", "--codec", "zlib", b.path, cwd=tmp_path)
    assert r.rc == 0, r
    r = _run_without(gone, "join", tmp_path / "mz", "-o", tmp_path / "oz", cwd=tmp_path)
    assert r.rc == 0, r
    assert filecmp.cmp(b.path, tmp_path / "oz", shallow=False)
    r = _run_without(gone, "dump", "--disks", tmp_path / "m2", "--codec", "zstd", b.path, cwd=tmp_path)
    assert_one_line_error(r, 2, "zstandard", "not installed")
    assert not (tmp_path / "m2").exists()


def test_verbose_dump_tells_the_plan(tmp_path, vmcore, cli):
    b = vmcore("kernel")
    r = cli("dump", "-v", "--disks", tmp_path / "m", b.path)
    assert r.rc == 0
    assert "plan:" in r.err and "buffer slots" in r.err and "synced" in r.err


@pytest.mark.parametrize("args,code", [
    (["info", "/nonexistent"], 6),
    (["verify", "/nonexistent"], 6),
    (["join", "/nonexistent", "-o", "out"], 6),
    (["dump", "--disks", "m", "/nonexistent"], 3),
    (["--disks", "m", "/nonexistent"], 3),                # the no-subcommand form
    (["bench", "--size", "0"], 2),
])
def test_debug_is_accepted_anywhere(tmp_path, cli, args, code):
    """``stripedump bench ... --debug`` was "unrecognized arguments": after, before, in the middle."""
    for where in (0, len(args)) + ((1,) if args[0] != "--disks" else ()):
        r = cli(*args[:where], "--debug", *args[where:], cwd=tmp_path)
        assert r.rc == code and "unrecognized" not in r.err, (where, r)


def test_debug_after_the_subcommand_shows_the_traceback(tmp_path, cli):
    """An internal error (here: a module of stripedump that cannot be imported) is one line, exit 1;
    with --debug, before or after the subcommand, the traceback."""
    r = cli("info", "m0", without=["stripedump.read.info"], cwd=tmp_path)
    assert r.rc == 1 and "Traceback (most recent call last)" not in r.err, r
    assert "internal error: ModuleNotFoundError" in r.err, r
    for args in (["--debug", "info", "m0"], ["info", "m0", "--debug"]):
        r = cli(*args, without=["stripedump.read.info"], cwd=tmp_path)
        assert r.rc == 1 and "Traceback (most recent call last)" in r.err and "stripedump.read.info" in r.err, r


@pytest.mark.parametrize("args", [
    ["dump", "--disks", "m", "--block-size", "0", "src"],
    ["dump", "--disks", "m", "--block-size", "0K", "src"],
])
def test_block_size_zero_is_a_usage_error(tmp_path, cli, args):
    """--block-size 0 was accepted silently (as one page); like --chunk-size 0, it is refused."""
    assert_one_line_error(cli(*args, cwd=tmp_path), 2, "--block-size must be more than 0")
    assert_one_line_error(cli("dump", "--disks", "m", "--chunk-size", "0", "src", cwd=tmp_path), 2,
                          "--chunk-size")


@pytest.mark.parametrize("codec,needle", [
    ("snapy", "unknown codec"),
    ("lz4", "kdump has no flag for it"),
])
def test_join_codec_lists_only_kdump_codecs(tmp_path, cli, codec, needle):
    """The kdump codecs, and none (pages stored uncompressed); never lz4."""
    r = cli("join", "m0", "-o", "out", "--format", "kdump", "--codec", codec, cwd=tmp_path)
    assert_one_line_error(r, 2, needle, "choose one of zlib, lzo, snappy, zstd, none")
    assert "lz4" not in r.err.split("choose one of")[1]


def test_join_output_checked_before_reading_any_member(tmp_path, vmcore, cli):
    """``join -o DIR --force`` did the whole join, then failed with "Is a directory"."""
    b = vmcore("kernel")
    m = tmp_path / "m0"
    assert cli("dump", "-q", "--disks", m, b.path).rc == 0
    outdir = tmp_path / "outdir"
    outdir.mkdir()
    for fmt in ("elf", "kdump", "flat"):
        assert_one_line_error(cli("join", m, "-o", outdir, "--force", "--format", fmt), 9,
                              f"output {outdir} is a directory")
    # checked before anything is read: members that do not exist are not even opened
    assert_one_line_error(cli("join", "/nonexistent", "-o", outdir, "--force"), 9, "is a directory")
    assert_one_line_error(cli("join", "/nonexistent", "-o", tmp_path / "no" / "out"), 9,
                          f"directory {tmp_path / 'no'} does not exist")
    assert_one_line_error(cli("join", "/nonexistent", "-o", "/dev/null", "--force"), 9,
                          "not a regular file")
    assert os.listdir(outdir) == []


def test_join_output_without_permission(tmp_path, cli):
    """A directory this process may not write in: exit 9 before any member is read.

    Root writes anywhere a mode allows nothing, so as root the directory is a
    read-only bind mount (running as another user would need the checkout
    and its environment readable by that user, which a clone under /root is not).
    """
    import subprocess
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    mounted = False
    if os.geteuid() == 0:
        if subprocess.run(["mount", "--bind", str(ro), str(ro)], capture_output=True).returncode != 0:
            pytest.skip("cannot make a read-only bind mount here")
        mounted = True
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], capture_output=True).returncode != 0:
            subprocess.run(["umount", str(ro)])
            pytest.skip("cannot make a read-only bind mount here")
    try:
        r = cli("join", "/nonexistent", "-o", ro / "out")
        assert_one_line_error(r, 9, f"no permission to write in {ro}")
    finally:
        if mounted:
            subprocess.run(["umount", str(ro)])
        ro.chmod(0o755)


def test_join_and_verify_lower_too_many_workers(tmp_path, vmcore, cli):
    """As for dump: more than 2 workers per usable CPU is lowered with a warning, never refused,
    and never started (each worker is a forked process holding a chunk in flight)."""
    from stripedump.runtime.machine import usable_cpus
    b = vmcore("simple")
    m = [str(tmp_path / "m0"), str(tmp_path / "m1")]
    assert cli("dump", "-q", "--disks", ",".join(m), b.path).rc == 0
    many = 2 * usable_cpus() + 7
    r = cli("join", "--json", "--workers", many, *m, "-o", tmp_path / "out")
    assert r.rc == 0, r
    assert f"--workers {many} is more than 2 per usable CPU" in r.err and "warning" in r.err
    assert (tmp_path / "out").read_bytes() == open(b.path, "rb").read()
    r = cli("verify", "--workers", many, *m)
    assert r.rc == 0 and f"using {2 * usable_cpus()} workers" in r.err, r
    r = cli("join", "--workers", 1, *m, "-o", tmp_path / "out2")
    assert r.rc == 0 and "warning" not in r.err, r
