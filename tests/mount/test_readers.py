"""The real readers open a mounted dump directly: drgn, libkdumpfile, makedumpfile and crash.

Issue 10's judges: what ``stripedump mount`` serves must be what these tools
expect of a vmcore, page for page, without a join.  Each test mounts a dump
made by the real CLI and unmounts it whatever happens.
"""

from __future__ import annotations

import contextlib
import filecmp
import hashlib
import os
import shutil
import subprocess

import pytest

from stripedump.tools import synth
from stripedump.source.vmcore import Source

from conftest import run_cli
from read.test_reader import _loads
from kdump.test_join import (REAL_DIR, assert_every_page_reads_back, needs_crash, needs_libkdumpfile,
                        needs_makedumpfile, ram_only_copy, source_digests)

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse")

# drgn insists on a kernel's VMCOREINFO: give the synthetic core the keys it checks
DRGN_VMCOREINFO = ("SYMBOL(swapper_pg_dir)=ffffffff82a0a000\nKERNELOFFSET=0\n"
                   "NUMBER(pgtable_l5_enabled)=0\nSYMBOL(_stext)=ffffffff81000000\n")


def _dump(tmp_path, src, codec, n=2, chunk="64K"):
    members = [str(tmp_path / f"m{i}") for i in range(n)]
    r = run_cli("dump", "-q", "--codec", codec, "--chunk-size", chunk, "--disks", ",".join(members), src)
    assert r.rc == 0, r
    return members


@contextlib.contextmanager
def mounted(members, mnt, *opts):
    os.makedirs(mnt, exist_ok=True)
    r = run_cli("mount", *opts, *members, mnt)
    assert r.rc == 0, r
    try:
        yield str(mnt)
    finally:
        run_cli("umount", "--lazy", mnt)     # a failed test may still hold a file open there


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_drgn_reads_every_page_of_both_mounted_files(tmp_path, vmcore, codec):
    drgn = pytest.importorskip("drgn", reason="drgn is not installed")
    b = vmcore("kernel", notes=synth.notes_blob(vmcoreinfo=synth.vmcoreinfo_text(extra=DRGN_VMCOREINFO)))
    members = _dump(tmp_path, b.path, codec)
    with Source(b.path) as src:
        ranges = src.pfn_ranges
    want = source_digests(b.path, ranges)
    # drgn reads an ELF core by PT_LOAD: a page the last load covers only in part (this layout
    # ends with one) is unreadable there even from the source; the kdump file has it whole
    whole = {pfn for off, pa, filesz in _loads(b.path) for pfn in range(-(-pa // 4096), (pa + filesz) // 4096)}
    with mounted(members, tmp_path / "mnt") as mnt:
        for name in ("vmcore", "vmcore.kdump"):
            prog = drgn.Program()
            prog.set_core_dump(os.path.join(mnt, name))
            pages = [p for p in want if name == "vmcore.kdump" or p in whole]
            assert len(pages) > 0.9 * len(want)
            bad = [pfn for pfn in pages
                   if hashlib.sha1(prog.read(pfn * 4096, 4096, True)).hexdigest() != want[pfn]]
            assert not bad, (name, len(bad), hex(bad[0]))
            del prog


@needs_libkdumpfile
@pytest.mark.parametrize("codec", ["lzo", "none"])
def test_libkdumpfile_reads_every_page_of_both_mounted_files(tmp_path, vmcore, codec):
    b = vmcore("kernel")
    members = _dump(tmp_path, b.path, codec, n=3)
    with Source(b.path) as src:
        ranges = src.pfn_ranges
    with mounted(members, tmp_path / "mnt") as mnt:
        for name in ("vmcore", "vmcore.kdump"):
            attrs = assert_every_page_reads_back(os.path.join(mnt, name), b.path, ranges)
            assert attrs["file.format"] == ("elf" if name == "vmcore" else "diskdump"), attrs


@pytest.mark.parametrize("codec,join_codec", [("lzo", None), ("snappy", None), ("lz4", "none")])
def test_mounted_files_equal_joins_output(tmp_path, vmcore, codec, join_codec):
    """vmcore == join (ELF); vmcore.kdump == join --format kdump (copied pages, or --codec none)."""
    b = vmcore("kernel")
    members = _dump(tmp_path, b.path, codec)
    elf, kd = str(tmp_path / "joined"), str(tmp_path / "joined.kdump")
    assert run_cli("join", *members, "-o", elf).rc == 0
    r = run_cli("join", "--format", "kdump", *(["--codec", join_codec] if join_codec else []), *members,
                "-o", kd)
    assert r.rc == 0, r
    with mounted(members, tmp_path / "mnt") as mnt:
        assert filecmp.cmp(os.path.join(mnt, "vmcore"), elf, shallow=False)
        assert filecmp.cmp(os.path.join(mnt, "vmcore.kdump"), kd, shallow=False)


# -- the real kernel ----------------------------------------------------------

@pytest.fixture(scope="module")
def real_mounted(real_vmcore, tmp_path_factory):
    """The real-kernel core in /proc/vmcore layout, dumped in lzo over 2 members and mounted."""
    src, release = real_vmcore
    d = tmp_path_factory.mktemp("real-mount")
    ram = str(d / "ram.elf")
    ram_only_copy(src, ram)
    members = _dump(d, ram, "lzo", chunk="1M")
    with mounted(members, d / "mnt") as mnt:
        yield ram, release, mnt, d
    shutil.rmtree(d, ignore_errors=True)


@needs_makedumpfile
def test_makedumpfile_filters_straight_from_the_mounted_dump(real_mounted):
    """makedumpfile -d 31 reads the mounted ELF vmcore like /proc/vmcore and writes a file crash opens."""
    ram, release, mnt, d = real_mounted
    out = d / "d31"
    p = subprocess.run(["makedumpfile", "-l", "-d", "31", os.path.join(mnt, "vmcore"), str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert os.path.getsize(out) < os.path.getsize(ram) // 2          # filtered: free pages left out
    p = subprocess.run(["makedumpfile", "--dump-dmesg", str(out), str(d / "dmesg")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"Linux version {release}" in (d / "dmesg").read_text(errors="replace")
    os.unlink(out)


@needs_crash
@pytest.mark.parametrize("name", ["vmcore", "vmcore.kdump"])
def test_crash_session_on_the_mounted_files(real_mounted, name, tmp_path):
    ram, release, mnt, d = real_mounted
    p = subprocess.run(["crash", "--osrelease", os.path.join(mnt, name)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == release, p
    vmlinux = os.path.join(REAL_DIR, "vmlinux")
    if not os.path.exists(vmlinux):
        pytest.skip(f"no {vmlinux}: build the fixture with WITH_VMLINUX=1 (an 860 MB download)")
    cmds = tmp_path / "cmds"
    cmds.write_text("sys\nbt\nlog\nquit\n")
    p = subprocess.run(["crash", "-s", vmlinux, os.path.join(mnt, name), "-i", str(cmds)], capture_output=True,
                       text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr
    assert f"RELEASE: {release}" in p.stdout and " #0 [" in p.stdout and "start_kernel" in p.stdout
    assert f"Linux version {release}" in p.stdout
