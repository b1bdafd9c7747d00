"""stripedump mount/umount: a real FUSE mount of a real dump, read by real processes.

Every test unmounts what it mounted (the ``mnt`` fixture, even on failure), and
each mount is made by the real CLI in a subprocess whose output is captured:
that it returns at all shows the server does not hold the caller's pipes.
"""

from __future__ import annotations

import errno
import filecmp
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROOT, assert_one_line_error, default_signals, run_cli
from waiting import wait_until

CHUNK = "64K"       # many chunks in a few MiB: reads cross chunk boundaries


def need_mount() -> None:
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse: FUSE is not available here")
    from stripedump.errors import MountError
    from stripedump.mount.fusefs import load_fuse
    try:
        load_fuse()
    except MountError as e:
        pytest.skip(str(e))


def mounted(path) -> tuple[str, str] | None:
    """(type, source) of the mount on ``path`` from /proc/self/mountinfo (paths without spaces)."""
    hit = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            if pre.split()[4] == str(path):
                hit = tuple(post.split()[:2])
    return hit


def server_pid(path) -> int:
    typ, source = mounted(path)
    assert typ == "fuse.stripedump", typ
    name, _, pid = source.partition(":")
    assert name == "stripedump"
    return int(pid)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except OSError:
        return False


def wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def force_unmount(path) -> None:
    hit = mounted(path)
    if hit is None:
        return
    pid = None
    if hit[1].startswith("stripedump:"):
        pid = int(hit[1].partition(":")[2])
    subprocess.run(["fusermount3", "-uz", str(path)], capture_output=True)
    if mounted(path):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
    if pid and alive(pid):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def mnt(tmp_path):
    need_mount()
    m = tmp_path / "mnt"
    m.mkdir()
    yield m
    force_unmount(m)


@pytest.fixture
def dumped(tmp_path, vmcore):
    """A synthetic vmcore dumped by the real CLI over three members."""
    b = vmcore("kernel")
    members = [str(tmp_path / f"m{i}") for i in range(3)]
    res = run_cli("dump", "--disks", ",".join(members), "--codec", "zstd", "--chunk-size", CHUNK,
                  "--workers", "2", "-q", b.path)
    assert res.rc == 0, res
    return b, members


def do_mount(members, mnt, *opts):
    res = run_cli("mount", *opts, *members, mnt, timeout=60)
    assert res.rc == 0, res
    assert res.out == "" and res.err == "", res
    assert mounted(mnt)[0] == "fuse.stripedump"
    return server_pid(mnt)


def test_mount_serves_what_join_writes_and_info_says(dumped, mnt, tmp_path):
    b, members = dumped
    pid = do_mount(members, mnt)
    assert pid != os.getpid() and os.getsid(pid) == pid       # detached: its own session
    names = sorted(os.listdir(mnt))
    assert names in (["dump.json", "vmcore"], ["dump.json", "vmcore", "vmcore.kdump"])
    assert stat.S_IMODE(os.stat(mnt).st_mode) == 0o555
    st = os.stat(mnt / "vmcore")
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o444
    assert st.st_size == os.path.getsize(b.path)
    assert filecmp.cmp(mnt / "vmcore", b.path, shallow=False)
    joined = tmp_path / "joined"
    assert run_cli("join", *members, "-o", joined).rc == 0
    assert filecmp.cmp(mnt / "vmcore", joined, shallow=False)
    info = run_cli("info", "--json", *members)
    assert info.rc == 0
    assert (mnt / "dump.json").read_text() == info.out
    json.loads((mnt / "dump.json").read_text())
    res = run_cli("umount", mnt)
    assert res.rc == 0 and res.err == "", res
    assert mounted(mnt) is None
    assert not alive(pid)                     # umount waited for the server to exit
    assert os.listdir(mnt) == []


def test_mounted_files_are_read_only(dumped, mnt):
    b, members = dumped
    do_mount(members, mnt)
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_TRUNC):
        with pytest.raises(OSError) as e:
            os.open(mnt / "vmcore", flags)
        assert e.value.errno in (errno.EROFS, errno.EACCES)
    with pytest.raises(OSError) as e:
        open(mnt / "new", "wb")
    assert e.value.errno in (errno.EROFS, errno.EACCES)
    for op in (lambda: os.chmod(mnt / "vmcore", 0o644), lambda: os.unlink(mnt / "vmcore"),
               lambda: os.mkdir(mnt / "d"), lambda: os.truncate(mnt / "vmcore", 0)):
        with pytest.raises(OSError) as e:
            op()
        assert e.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
    assert filecmp.cmp(mnt / "vmcore", b.path, shallow=False)


def test_concurrent_readers_all_read_the_source(dumped, mnt):
    b, members = dumped
    do_mount(members, mnt, "--cache", "256K")       # a small cache: chunks are decoded again and again
    src = open(b.path, "rb").read()
    size = len(src)
    errors, reads = [], []

    def reader(seed):
        rnd = random.Random(seed)
        fd = os.open(mnt / "vmcore", os.O_RDONLY)
        try:
            for _ in range(150):
                off = rnd.randrange(size)
                n = rnd.choice([1, 4096, 65536 + 17, 300000])
                got = os.pread(fd, n, off)
                if got != src[off:off + n]:
                    errors.append((seed, off, n))
                reads.append(n)
        except Exception as e:          # noqa: BLE001 - reported below
            errors.append((seed, repr(e)))
        finally:
            os.close(fd)
    threads = [threading.Thread(target=reader, args=(s,)) for s in range(8)]
    # and whole-file readers in other processes at the same time
    procs = [subprocess.Popen(["cmp", str(mnt / "vmcore"), b.path]) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [p.wait(120) for p in procs] == [0, 0]
    assert errors == []
    assert len(reads) == 8 * 150


def _flip_payload_byte(member):
    """Flip a byte in the payload of one page chunk of ``member``; return its chunk id."""
    from stripedump.format.structs import KIND_PAGES, ChunkHeader
    from stripedump.read.member import MemberReader
    r = MemberReader(member)
    try:
        entries = [e for e in r.index(r.footer())
                   if ChunkHeader.unpack(r.read_record(e), member).kind == KIND_PAGES]
    finally:
        r.close()
    e = sorted(entries, key=lambda e: e.chunk_id)[2]
    with open(member, "r+b") as f:
        pos = e.offset + e.length - 5
        f.seek(pos)
        byte = f.read(1)
        f.seek(pos)
        f.write(bytes([byte[0] ^ 0x10]))
    return e.chunk_id


def test_corrupted_chunk_reads_as_eio_and_the_rest_reads_fine(dumped, mnt, tmp_path):
    b, members = dumped
    cid = _flip_payload_byte(members[1])
    # where the library says the file is unreadable: pages of that chunk, nothing else
    import stripedump
    from stripedump.errors import ChunkError
    step = 4096
    bad = []
    with stripedump.open(members) as d:
        for off in range(0, d.size, step):
            try:
                d.pread(off, step)
            except ChunkError:
                bad.append(off)
    assert bad, "the flipped byte made no page unreadable"
    logf = tmp_path / "mount.log"
    do_mount(members, mnt, "--log", logf)
    src = open(b.path, "rb").read()
    fd = os.open(mnt / "vmcore", os.O_RDONLY | os.O_DIRECT)
    try:
        import mmap
        buf = mmap.mmap(-1, step)             # O_DIRECT: page-aligned buffer, no kernel page cache
        for off in range(0, len(src) - len(src) % step, step):
            if off in bad:
                for _ in range(2):            # and again: still an error, never zeros
                    with pytest.raises(OSError) as e:
                        os.preadv(fd, [buf], off)
                    assert e.value.errno == errno.EIO
            else:
                n = os.preadv(fd, [buf], off)
                assert buf[:n] == src[off:off + n], off
    finally:
        os.close(fd)
    # a buffered read across the damage fails too; the server lives on
    with open(mnt / "vmcore", "rb") as f, pytest.raises(OSError):
        f.read()
    json.loads((mnt / "dump.json").read_text())
    with open(mnt / "vmcore", "rb") as f:
        assert f.read(64) == src[:64]
        # umount of a mount in use: refused, one line, still mounted
        assert_one_line_error(run_cli("umount", mnt), 10, "busy")
        assert mounted(mnt)[0] == "fuse.stripedump"
    assert run_cli("umount", mnt).rc == 0
    text = logf.read_text()
    lines = [ln for ln in text.splitlines() if f"chunk {cid}" in ln]
    assert len(lines) == 1, text                # logged once, however often it was read
    assert members[1] in lines[0]


def test_incomplete_dump_needs_allow_incomplete(dumped, mnt, tmp_path):
    b, members = dumped
    present = [members[0], members[2]]
    res = run_cli("mount", *present, mnt)
    assert_one_line_error(res, 6, "missing")
    assert mounted(mnt) is None
    do_mount(present, mnt, "--allow-incomplete")
    joined = tmp_path / "joined"
    assert run_cli("join", "--allow-incomplete", "-q", *present, "-o", joined).rc == 0
    assert filecmp.cmp(mnt / "vmcore", joined, shallow=False)      # missing chunks read as zeros
    assert not filecmp.cmp(mnt / "vmcore", b.path, shallow=False)
    info = json.loads((mnt / "dump.json").read_text())
    assert info == json.loads(run_cli("info", "--json", *present).out)
    assert run_cli("umount", mnt).rc == 0


def test_bad_mount_points_are_refused_before_mounting(dumped, tmp_path):
    need_mount()
    b, members = dumped
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    afile = tmp_path / "afile"
    afile.write_text("x")
    for where, needle in ((tmp_path / "nowhere", "does not exist"), (afile, "not a directory"),
                          (full, "not empty")):
        res = run_cli("mount", *members, where)
        assert_one_line_error(res, 10, str(where), needle)
        assert mounted(where) is None
    assert (full / "x").read_text() == "x" and afile.read_text() == "x"


def test_a_symlink_to_the_mount_point(dumped, mnt, tmp_path):
    b, members = dumped
    link = tmp_path / "link"
    link.symlink_to(mnt)
    res = run_cli("mount", *members, link)
    assert res.rc == 0, res
    assert mounted(mnt)[0] == "fuse.stripedump"
    assert filecmp.cmp(link / "vmcore", b.path, shallow=False)
    res = run_cli("umount", link)
    assert res.rc == 0, res
    assert mounted(mnt) is None


def test_already_a_mount_point(dumped, mnt):
    b, members = dumped
    pid = do_mount(members, mnt)
    res = run_cli("mount", *members, mnt)
    assert_one_line_error(res, 10, "already a mount point", "fuse.stripedump", "stripedump umount")
    assert server_pid(mnt) == pid


def test_members_of_two_dumps_are_refused(dumped, mnt, tmp_path):
    b, members = dumped
    other = [str(tmp_path / f"x{i}") for i in range(3)]
    assert run_cli("dump", "--disks", ",".join(other), "--codec", "lz4", "-q", b.path).rc == 0
    res = run_cli("mount", members[0], other[1], members[2], mnt)
    assert_one_line_error(res, 6, "different dumps")
    assert mounted(mnt) is None


@pytest.mark.parametrize("busy", [False, True])
def test_umount_after_the_server_was_killed(dumped, mnt, busy):
    """Plain unmount works on a dead server's mount; a file still open in it makes that fail
    (busy), and umount detaches it lazily instead."""
    b, members = dumped
    pid = do_mount(members, mnt)
    fd = os.open(mnt / "vmcore", os.O_RDONLY) if busy else None
    try:
        os.kill(pid, signal.SIGKILL)
        assert wait_gone(pid)
        with pytest.raises(OSError) as e:
            os.listdir(mnt)
        assert e.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)   # by kernel version
        res = run_cli("umount", mnt)
        assert res.rc == 0, res
        assert mounted(mnt) is None
        assert os.listdir(mnt) == []
    finally:
        if fd is not None:
            try:
                os.close(fd)           # the flush to a dead server fails: the fd is closed anyway
            except OSError:
                pass


def test_umount_lazy_detaches_a_busy_mount(dumped, mnt):
    b, members = dumped
    pid = do_mount(members, mnt)
    src = open(b.path, "rb").read()
    with open(mnt / "vmcore", "rb") as f:
        assert_one_line_error(run_cli("umount", mnt), 10, "busy", "--lazy")
        res = run_cli("umount", "--lazy", mnt)
        assert res.rc == 0, res
        assert mounted(mnt) is None
        assert f.read() == src                 # what is open is still served
        assert alive(pid)
    assert wait_gone(pid)                      # and the server ends with its last user


def test_umount_refuses_what_is_not_a_stripedump_mount(tmp_path):
    need_mount()
    d = tmp_path / "d"
    d.mkdir()
    assert_one_line_error(run_cli("umount", d), 10, "not a mount point")
    assert_one_line_error(run_cli("umount", tmp_path / "nowhere"), 10, "does not exist")
    if os.geteuid() != 0:
        return
    if subprocess.run(["mount", "-t", "tmpfs", "none", str(d)], capture_output=True).returncode:
        return
    try:
        assert_one_line_error(run_cli("umount", d), 10, "not a stripedump mount", "tmpfs")
        assert mounted(d)[0] == "tmpfs"
    finally:
        subprocess.run(["umount", str(d)], capture_output=True)


def foreground(members, mnt, **kw) -> subprocess.Popen:
    """``stripedump mount --foreground MEMBERS MNT`` started, its output in pipes."""
    return subprocess.Popen([sys.executable, "-m", "stripedump", "mount", "--foreground", *members, str(mnt)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=ROOT), **kw)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_foreground_ends_on_a_signal_and_unmounts(dumped, mnt, sig):
    b, members = dumped
    proc = foreground(members, mnt, preexec_fn=default_signals)
    try:
        wait_until(lambda: mounted(mnt) is not None, "the mount", proc=proc, interval=0.02)
        assert server_pid(mnt) == proc.pid          # attached: this very process serves
        assert filecmp.cmp(mnt / "vmcore", b.path, shallow=False)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert mounted(mnt) is None
        assert b"Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_foreground_says_once_where_what_and_how_to_stop_it(dumped, mnt):
    """Issue 24 item 15: --foreground printed nothing once serving.  Now one line on stderr, once the
    mount is live: the mount point, the dump and its members, the files, the pid and how to stop it;
    and the stop it names works."""
    b, members = dumped
    proc = foreground(members, mnt, text=True)
    try:
        wait_until(lambda: mounted(mnt) is not None, "the mount", proc=proc, interval=0.02)
        import select
        said = select.select([proc.stderr], [], [], 10)[0]     # said once live (it was silent)
        assert said, "mount --foreground said nothing in 10 s of serving"
        line = proc.stderr.readline()
        dump_id = json.loads((mnt / "dump.json").read_text())["dump_id"]
        assert line == (f"stripedump: mount: serving dump {dump_id} ({len(members)} member(s): {', '.join(members)}) as "
                        f"vmcore, vmcore.kdump, dump.json on {mnt} (pid {proc.pid}); stop it with Ctrl-C, "
                        f"kill {proc.pid} or 'stripedump umount {mnt}'\n")
        assert run_cli("umount", mnt).rc == 0
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and out == "", (out, err)
        assert err == f"stripedump mount: unmounted {mnt}\n", err        # nothing else was said
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_no_fuse_is_a_one_line_error_saying_how_to_get_it(dumped, mnt):
    """In a mount namespace whose /dev has no fuse device."""
    b, members = dumped
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private /dev")
    env = dict(os.environ, PYTHONPATH=ROOT)
    script = (f"mount -t tmpfs none /dev && exec {sys.executable} -m stripedump mount "
              + " ".join(members) + f" {mnt}")
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=60, env=env,
                          stdin=subprocess.DEVNULL)
    if "unshare failed" in proc.stderr or "mount:" in proc.stderr:
        pytest.skip(f"no private mount namespace here: {proc.stderr.strip()}")

    class R:
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    assert_one_line_error(R, 10, "/dev/fuse", "modprobe fuse", "apt-get install fuse3")
    assert mounted(mnt) is None


def test_a_mount_libfuse_refuses_is_a_mount_error_with_its_reason(tmp_path):
    """The server's own failure (here a mount point that vanished after the checks) reaches the
    caller as one MountError carrying libfuse's message, and no server stays behind."""
    need_mount()
    from stripedump.errors import MountError
    from stripedump.mount.fusefs import BytesFile, load_fuse
    from stripedump.mount.lifecycle import _daemon
    gone = tmp_path / "gone"
    with pytest.raises(MountError, match="bad mount point") as e:
        _daemon(load_fuse(), {"f": BytesFile(b"x")}, str(gone), None)
    assert e.value.exit_code == 10 and "\n" not in str(e.value)
    assert mounted(gone) is None


def test_loading_fuse_leaves_the_environment_as_it_was():
    """libfuse 3 is named to mfusepy only while it loads: children of this process (fusepy's
    libfuse 2 file systems in this suite, anything a library user starts) must not inherit it."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse")
    from stripedump.mount import fusefs
    before = os.environ.get("FUSE_LIBRARY_PATH")
    mfusepy = fusefs.load_fuse()
    assert mfusepy.fuse_version_major == 3
    assert os.environ.get("FUSE_LIBRARY_PATH") == before
