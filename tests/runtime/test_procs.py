"""Who owns the dump's processes: signals, dying output streams, exceptions, children left behind.

Real processes and real signals: a dump is started as ``python -m
stripedump`` in a session of its own (its own process group), signalled as
a user, systemd or ``timeout`` would (the coordinator alone, or the whole
group), and then judged from the outside: the exit code, every member
finalized (``info --json``), ``join --allow-incomplete`` giving back every
page right or declared missing (the soak's oracle: tests/helpers/oracle.py),
and no process of the group left running.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from stripedump.tools import synth
from stripedump.format.codecs import CodecSpec
from stripedump.dump.config import DumpConfig
from stripedump.read.config import JoinConfig
from stripedump.errors import IncompleteDump, Interrupted, StripedumpError
from stripedump.read.info import info
from stripedump.read.join import join
from stripedump.dump.coordinator import dump
from stripedump.runtime import procs
from conftest import ROOT, default_signals

from oracle import Oracle, check_run, group_alive, group_gone
from waiting import wait_until

CODEC, CHUNK = "zlib:9", "1M"     # slow, so that a signal lands mid-dump


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A 192 MiB synthetic vmcore (sparse where pages are zero) and what a dump of it writes."""
    src = str(tmp_path_factory.mktemp("procs") / "vm")
    synth.build(src, synth.demo_loads(192 << 20))
    yield src, Oracle(src, CODEC, 1 << 20)
    os.unlink(src)


def _start(src, members, **kw):
    return subprocess.Popen([sys.executable, "-m", "stripedump", "dump", "-q", "--codec", CODEC,
                             "--workers", "2", "--chunk-size", CHUNK, "--disks", ",".join(members), src],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=ROOT), start_new_session=True,
                            **{"preexec_fn": default_signals, **kw})


def _ignores_stop_signals(pid: int) -> bool:
    """The kernel's word that ``pid`` ignores SIGINT, SIGTERM and SIGHUP (``procs.child_init`` ran)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            mask = int(next(ln for ln in f if ln.startswith("SigIgn:")).split()[1], 16)
    except (OSError, StopIteration):
        return False
    return all(mask >> (s - 1) & 1 for s in procs.STOP_SIGNALS)


def _under_way(p, members):
    """Until the dump's four children ignore the stop signals and whole chunk records (1 MiB
    chunks) are on every member: a signal now lands mid-dump, on children that leave it to the
    coordinator."""
    def children_ready():
        kids = psutil.Process(p.pid).children()
        return len(kids) >= 4 and all(_ignores_stop_signals(k.pid) for k in kids)
    wait_until(children_ready, "four children past child_init", proc=p)
    wait_until(lambda: all(os.path.exists(m) and os.path.getsize(m) > 2 << 20 for m in members),
               "chunk records on every member", proc=p)


SIGNALS = [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]


@pytest.mark.parametrize("to", ["coordinator", "group"])
@pytest.mark.parametrize("sig,code", SIGNALS, ids=[s.name for s, _ in SIGNALS])
def test_signal_finalizes_every_member(big, tmp_path, sig, code, to):
    """Cases 4 and 3's kin: SIGINT/SIGTERM/SIGHUP, to the coordinator or the whole group."""
    src, oracle = big
    members = [str(tmp_path / "m0"), str(tmp_path / "m1")]
    p = _start(src, members)
    _under_way(p, members)
    if to == "group":
        os.killpg(p.pid, sig)
    else:
        os.kill(p.pid, sig)
    out, err = p.communicate(timeout=90)
    assert p.returncode == code, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"interrupted by {sig.name}" in lines[0] and "Traceback" not in err, err
    assert group_gone(p.pid, 10), f"left running: {group_alive(p.pid)}"
    assert [m["state"] for m in info(members)["members"]] == ["incomplete", "incomplete"]
    ok, msg, n = check_run(oracle, members, str(tmp_path / "out"))
    assert ok, msg
    assert 0 < n < len(oracle.records)     # it did stop mid-dump


def test_sighup_ignored_by_the_parent_stays_ignored(big, tmp_path):
    """As under nohup: SIGHUP to the whole group changes nothing, the dump completes."""
    src, _ = big
    members = [str(tmp_path / "m0"), str(tmp_path / "m1")]
    p = _start(src, members, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    _under_way(p, members)
    os.killpg(p.pid, signal.SIGHUP)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert [m["state"] for m in info(members)["members"]] == ["complete", "complete"]
    assert group_gone(p.pid, 10)


# -- case 3: stdout and stderr that cannot be written -------------------------------------

def _run_with(args, stdout, stderr):
    return subprocess.run([sys.executable, "-m", "stripedump", *map(str, args)], stdout=stdout,
                          stderr=stderr, stdin=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=ROOT),
                          timeout=300).returncode


@pytest.mark.parametrize("case", ["stderr-closed-pipe", "stdout-closed-pipe", "stdout-full-json"])
def test_output_that_fails_changes_nothing(vmcore, tmp_path, case):
    b = vmcore("kernel")
    members = [str(tmp_path / "m0"), str(tmp_path / "m1")]
    r, w = os.pipe()
    os.close(r)           # a reader that went away: every write is EPIPE
    full = open("/dev/full", "w")
    try:
        stdout = {"stdout-closed-pipe": w, "stdout-full-json": full}.get(case, subprocess.DEVNULL)
        stderr = w if case == "stderr-closed-pipe" else subprocess.DEVNULL
        # -v: a line per member and the plan on stderr; progress lines; the summary on stdout
        rc = _run_with(["dump", "-v", "--codec", "lz4", "--chunk-size", "64K", "--disks", ",".join(members),
                        *(["--json"] if case == "stdout-full-json" else []), b.path], stdout, stderr)
        assert rc == 0
        assert [m["state"] for m in info(members)["members"]] == ["complete", "complete"]
        out = str(tmp_path / "joined")
        join(JoinConfig(tuple(members), out))
        assert open(out, "rb").read() == open(b.path, "rb").read()
        # a failure is still told by the exit code, even when its line cannot be written
        with open(tmp_path / "busy", "wb") as f:
            f.write(b"x")
        rc = _run_with(["dump", "--disks", f"{tmp_path}/busy,{tmp_path}/m2", b.path], stdout, stderr)
        assert rc == 4
    finally:
        os.close(w)
        full.close()


# -- the coordinator is exception-safe -----------------------------------------------------

@pytest.fixture
def no_children_left():
    """A check that no process the test started is left.  Children of this process that were
    there before the test are not the test's: the sshd hosts of tests/remote (a session
    fixture) live until the session ends."""
    before = {c.pid for c in psutil.Process().children()}

    def check():
        assert multiprocessing.active_children() == []
        assert [c for c in psutil.Process().children() if c.pid not in before] == []
    return check


@pytest.mark.parametrize("exc", [KeyboardInterrupt, ZeroDivisionError])
def test_exception_in_the_coordinator_finalizes_every_member(vmcore, tmp_path, exc, no_children_left):
    """A bug, or KeyboardInterrupt at a bad moment, in the coordinator's loop: members incomplete."""
    b = vmcore("kernel")
    members = [str(tmp_path / "m0"), str(tmp_path / "m1")]
    calls = []

    def progress(done, total):
        calls.append(done)
        if len(calls) == 3:
            raise exc()
    with pytest.raises(StripedumpError) as ei:
        dump(DumpConfig(b.path, tuple(members), CodecSpec("zlib"), 2, 16 << 10), progress=progress)
    if exc is KeyboardInterrupt:
        assert isinstance(ei.value, Interrupted) and ei.value.exit_code == 130
    else:
        assert isinstance(ei.value, IncompleteDump) and "internal error in the coordinator" in str(ei.value)
    states = [m["state"] for m in info(members)["members"]]
    assert states == ["incomplete", "incomplete"], states
    no_children_left()


def test_progress_output_error_only_switches_progress_off(vmcore, tmp_path, no_children_left):
    b = vmcore("kernel")
    members = [str(tmp_path / "m0"), str(tmp_path / "m1")]
    calls = []

    def progress(done, total):
        calls.append(done)
        raise BrokenPipeError(32, "Broken pipe")
    res = dump(DumpConfig(b.path, tuple(members), CodecSpec("lz4"), 2, 16 << 10), progress=progress,
               say=lambda msg, level=1: progress(0, 0))
    assert len(calls) == 2 and res.chunks > 0
    assert [m["state"] for m in info(members)["members"]] == ["complete", "complete"]
    no_children_left()


# -- procs.py on its own ---------------------------------------------------------------------

def _stubborn():
    procs.child_init()
    while True:
        time.sleep(1)      # the behaviour: a child that does not stop


def test_children_ignore_stop_signals_and_join_all_kills_stragglers(no_children_left):
    p = procs.spawn(_stubborn, "stubborn", ())
    wait_until(lambda: _ignores_stop_signals(p.pid), "the child past child_init")
    for s in procs.STOP_SIGNALS:
        os.kill(p.pid, s)       # ignored: the kernel drops each one as it is sent
    assert p.is_alive()
    failures = []
    t0 = time.monotonic()
    procs.join_all([p], failures.append, "child", timeout=0.5)
    assert time.monotonic() - t0 < procs.KILL_WAIT
    assert not p.is_alive() and p.exitcode == -signal.SIGKILL
    assert len(failures) == 1 and "did not stop in time and was killed" in str(failures[0])
    no_children_left()


def test_signals_flag_and_nohup():
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with procs.Signals() as sig:
            # os.kill of this process runs its Python handlers before it returns
            os.kill(os.getpid(), signal.SIGHUP)      # ignored on entry: stays ignored
            assert sig.signum is None
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
            wait_until(lambda: sig.signum is not None, "the signal flag", timeout=5)
            assert sig.signum == signal.SIGTERM      # the first one counts
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, old)


@pytest.mark.parametrize("failing", [2, 3], ids=["second-writer", "first-worker"])
def test_fork_failing_still_finalizes_every_member(vmcore, tmp_path, monkeypatch, failing, no_children_left):
    """fork() fails with EAGAIN (a process limit) for the Nth child: the members are finalized
    anyway, by their writer or, where it never started, by the coordinator itself."""
    import errno
    from stripedump.dump import crew
    b = vmcore("kernel")
    members = [str(tmp_path / "m0"), str(tmp_path / "m1")]
    calls = []

    def spawn(*a):
        calls.append(a[1])
        if len(calls) == failing:
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        return procs.spawn(*a)
    monkeypatch.setattr(crew, "spawn", spawn)
    with pytest.raises(IncompleteDump, match="Resource temporarily unavailable"):
        dump(DumpConfig(b.path, tuple(members), CodecSpec("lz4"), 2, 16 << 10))
    assert [m["state"] for m in info(members)["members"]] == ["incomplete", "incomplete"]
    no_children_left()


def test_manifest_that_cannot_be_written_leaves_no_member_writing(vmcore, tmp_path):
    """--manifest in a missing directory is refused before any target is touched (exit 5); one that
    fails half-way (a full filesystem) leaves no member "writing": the files the dump created are
    removed (issue 24, item 6), targets that existed before are finalized as incomplete."""
    b = vmcore("kernel")
    members = [str(tmp_path / "m0"), str(tmp_path / "m1")]
    r = subprocess.run([sys.executable, "-m", "stripedump", "dump", "-q", "--manifest",
                        str(tmp_path / "nodir" / "m.json"), "--disks", ",".join(members), b.path],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 5 and "m.json" in r.stderr and "no directory" in r.stderr, r
    assert not any(os.path.exists(m) for m in members)
    full = tmp_path / "full"
    full.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(full)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (full / "filler").write_bytes(b"x" * 4096)      # the filesystem is full
        for existed in (False, True):
            if existed:
                for m in members:
                    open(m, "wb").close()
            r = subprocess.run([sys.executable, "-m", "stripedump", "dump", "-q", "--manifest",
                                str(full / "m.json"), "--disks", ",".join(members), b.path],
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 5 and "m.json" in r.stderr, r
            if existed:
                states = [m["state"] for m in info(members)["members"]]
                assert states == ["incomplete", "incomplete"], states
            else:
                assert not any(os.path.exists(m) for m in members)
    finally:
        subprocess.run(["umount", "-l", str(full)])


_LATE_CHILD = """
import os, signal, sys, time
from stripedump.runtime import procs
def child(q, path, coordinator):
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{coordinator}") and time.monotonic() < deadline:
        time.sleep(0.01)            # the coordinator is gone before this child first looks at its parent
    for _ in procs.messages(q):
        pass
    with open(path, "w") as f:
        f.write("stopped")

q = procs.queue_pair()[0]
p = procs.spawn(child, "late", (q, sys.argv[1], os.getpid()))
print(p.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_child_stops_when_the_coordinator_died_before_it_looked(tmp_path):
    """A coordinator SIGKILLed between a fork and its child's first liveness check: the child still stops.

    The soak found it: the child read ``os.getppid()`` only after the
    coordinator was gone, took init for its parent, and waited for ever.
    """
    done, log = tmp_path / "stopped", tmp_path / "log"
    with open(log, "w") as out:       # a file, not a pipe: a child that does not stop must not hold up the test
        p = subprocess.run([sys.executable, "-c", _LATE_CHILD, str(done)], stdout=out, stderr=subprocess.STDOUT,
                           env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
    assert p.returncode == -signal.SIGKILL, log.read_text()
    pid = int(log.read_text().split()[0])
    try:
        # the coordinator was reaped before run() returned: the child is looking now
        wait_until(done.exists, "the child to stop (it still waits for a coordinator that is gone)",
                   timeout=10 * procs.POLL + 1)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
