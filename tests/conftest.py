"""Shared fixtures: synthetic vmcores from the one builder, and a CLI runner.

The CLI runner starts a real ``python -m stripedump`` process, so exit codes,
stderr and the absence of tracebacks are checked as a user would see them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from stripedump.tools import synth
from stripedump.format.structs import TRAILER_SIZE
from stripedump.read.member import MemberReader

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)         # the repository: PYTHONPATH of the stripedump processes tests start
HELPERS = os.path.join(TESTS, "helpers")     # on sys.path too (pyproject.toml's pythonpath)
FIXTURES = os.path.join(TESTS, "fixtures")


@pytest.fixture
def vmcore(tmp_path):
    """build(layout_name, **overrides) -> Built, written under tmp_path."""
    def make(layout="kernel", name="vmcore", **kw):
        args = dict(synth.layouts()[layout])
        args.update(kw)
        return synth.build(str(tmp_path / name), **args)
    return make


class CliResult:
    def __init__(self, proc):
        self.rc, self.out, self.err = proc.returncode, proc.stdout, proc.stderr

    def __repr__(self):
        return f"<rc={self.rc} out={self.out!r} err={self.err!r}>"


def run_cli(*args, timeout=120, cwd=None, without=()) -> CliResult:
    """``python -m stripedump ARGS``; ``without``: modules that cannot be imported in that Python."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    run = ["-m", "stripedump"]
    if without:
        block = "; ".join(f"sys.modules[{m!r}] = None" for m in without)
        run = ["-c", f"import sys, runpy; {block}; runpy.run_module('stripedump', run_name='__main__')"]
    proc = subprocess.run([sys.executable, *run, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env=env, stdin=subprocess.DEVNULL)
    return CliResult(proc)


def default_signals() -> None:
    """``preexec_fn`` for a child a test sends SIGHUP: as a terminal's process has it.  Under
    ``nohup`` (a CI runner may start the suite so) SIGHUP is ignored and children inherit that,
    and stripedump rightly leaves an ignored SIGHUP ignored (procs.Signals)."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def run_python(code: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter that imports this tree's stripedump (stdin /dev/null,
    output captured as text): for what a fresh process imports, loads or leaves behind."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=ROOT), stdin=subprocess.DEVNULL)


@pytest.fixture
def cli():
    return run_cli


def assert_one_line_error(res: CliResult, code: int, *needles: str) -> None:
    """The error contract: documented exit code, one line on stderr, no traceback."""
    assert res.rc == code, res
    assert "Traceback" not in res.err, res.err
    lines = [ln for ln in res.err.splitlines() if ln.strip()]
    assert len(lines) == 1, res.err
    assert lines[0].startswith("stripedump: error: "), res.err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def need_fuse() -> None:
    """Skip the test unless FUSE can run here: fusepy (over Debian's libfuse2) and /dev/fuse."""
    try:
        import fuse
        assert fuse.FUSE
    except (ImportError, OSError, EnvironmentError) as e:
        pytest.skip(f"fusepy/libfuse2 not usable here: {e}")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse")


def start_fuse(helper: str, args, mnt) -> subprocess.Popen:
    """Run tests/helpers/HELPER (a FUSE file system) on ``mnt``; skip the test if it cannot mount."""
    proc = subprocess.Popen([sys.executable, os.path.join(HELPERS, helper), *map(str, args)],
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while not os.path.ismount(mnt):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.skip(f"cannot mount FUSE here: {proc.stderr.read().decode()[-200:]}")
        time.sleep(0.05)
    return proc


@pytest.fixture
def small_fs(tmp_path):
    """mount(size) -> a directory on a fresh tmpfs of that many bytes."""
    mounts = []

    def mount(size: int) -> str:
        d = tmp_path / f"fs{len(mounts)}"
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounts.append(d)
        return str(d)
    yield mount
    for d in mounts:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


@pytest.fixture
def loop_device(tmp_path):
    """loop(size) -> /dev/loopN backed by a zero-filled file of that many bytes."""
    devs = []

    def loop(size: int) -> str:
        img = tmp_path / f"loop{len(devs)}.img"
        with open(img, "wb") as f:
            f.truncate(size)
        r = subprocess.run(["losetup", "-f", "--show", str(img)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"no loop device here: {r.stderr.strip()}")
        devs.append(r.stdout.strip())
        return devs[-1]
    yield loop
    for d in devs:
        subprocess.run(["losetup", "-d", d], capture_output=True)


@pytest.fixture
def lz4_dump(tmp_path, vmcore):
    """(the source's bytes, [m0, m1, m2]): the synthetic kernel vmcore (``tmp_path/vmcore``) dumped
    by the real CLI in lz4 over three member files."""
    b = vmcore("kernel")
    members = [str(tmp_path / f"m{i}") for i in range(3)]
    res = run_cli("dump", "-q", "--disks", ",".join(members), "--codec", "lz4", b.path)
    assert res.rc == 0, res
    with open(b.path, "rb") as f:
        return f.read(), members


def damage_chunk(d, cid: int, back: int = 1, mask: int = 0xFF) -> None:
    """Flip bits (``mask``) of one payload byte of chunk ``cid``'s record, ``back`` bytes before its
    end, in the member that holds it; ``d`` is a ``stripedump.open`` of the dump (its index)."""
    at = d.index.offset[cid] + d.index.length[cid] - back
    with open(d.paths[d.index.member[cid]], "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ mask]))


def unfinalize(path: str) -> None:
    """The header as a dump that was killed leaves it: state 0, no footer in the header, no trailer."""
    r = MemberReader(path)
    h = r.header._replace(state=0, footer_offset=0, footer_length=0)
    r.close()
    with open(path, "r+b") as f:
        f.write(h.pack())
        f.truncate(os.path.getsize(path) - TRAILER_SIZE)


# -- the slow marker (pyproject.toml): QEMU guests and benchmarks --------------

GUEST_FIXTURES = {"real_vmcore", "workload_vmcore"}


@pytest.hookimpl(tryfirst=True)      # before `-m "not slow"` deselects by marker
def pytest_collection_modifyitems(items):
    """A test that needs a QEMU guest's vmcore, itself or through another fixture, is ``slow``:
    building the guest takes minutes where it is not cached yet.  Tests that open the cached
    guest without the fixture, and the benchmarks, carry the marker themselves."""
    for item in items:
        if GUEST_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


# -- the real-kernel vmcore (tests/fixtures/make-real-vmcore.sh) ---------------

REAL_DIR = os.environ.get("STRIPEDUMP_REAL_VMCORE_DIR", "/var/tmp/stripedump-real-vmcore")


@pytest.fixture(scope="session")
def real_vmcore():
    """A QEMU dump of Debian's kernel, built once and cached in REAL_DIR."""
    script = os.path.join(FIXTURES, "make-real-vmcore.sh")
    if not os.path.exists(script):
        pytest.skip("tests/fixtures/make-real-vmcore.sh is missing")
    if shutil.which("qemu-system-x86_64") is None and os.geteuid() != 0:
        pytest.skip("QEMU (qemu-system-x86) is not installed and cannot be installed without root")
    p = subprocess.run(["bash", script, REAL_DIR], capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        pytest.skip(f"cannot build the real-kernel vmcore: {lines[-1] if lines else p.returncode}")
    with open(os.path.join(REAL_DIR, "kernel-release")) as f:
        return os.path.join(REAL_DIR, "vmcore"), f.read().strip()


# -- real sshd hosts on loopback (tests/helpers/sshd.py) -----------------------

@pytest.fixture(scope="session")
def sshd_cluster(tmp_path_factory):
    """Three sshd "hosts" (127.0.0.2-4, own ports, keys and member roots) for the whole session,
    with a client HOME and ``.env`` whose ``ssh`` knows them by alias; skips without sshd."""
    import sshd
    cluster = sshd.Cluster(str(tmp_path_factory.mktemp("sshd")), n=3)
    yield cluster
    cluster.close()


@pytest.fixture
def ssh_hosts(sshd_cluster):
    """The session's sshd hosts, all running (a host a test killed or froze comes back) and
    their member directories emptied before and after the test."""
    yield sshd_cluster.ready()
    sshd_cluster.ready()


@pytest.fixture(scope="session")
def workload_vmcore():
    """The real-kernel vmcore with WORKLOAD=1 (ext4 page cache, written files, anonymous memory),
    built once and cached next to the plain one."""
    out = REAL_DIR + "-workload"
    script = os.path.join(FIXTURES, "make-real-vmcore.sh")
    if shutil.which("qemu-system-x86_64") is None and os.geteuid() != 0:
        pytest.skip("QEMU (qemu-system-x86) is not installed and cannot be installed without root")
    p = subprocess.run(["bash", script, out], capture_output=True, text=True, timeout=900,
                       env=dict(os.environ, WORKLOAD="1"))
    if p.returncode != 0:
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        pytest.skip(f"cannot build the workload vmcore: {lines[-1] if lines else p.returncode}")
    return os.path.join(out, "vmcore")
