"""ssh:// targets and ``-``: streamed members, checked against real sshd hosts on loopback.

Every test runs the real CLI with the client HOME of tests/helpers/sshd.py
(``~/.ssh/config`` aliases sdhost0..2 on 127.0.0.2..4, each its own sshd,
port, host key and member root on this machine), so the member a host holds
is a file here: read directly, as a crash server's disk would be.
"""

from __future__ import annotations

import os
import pty
import signal
import stat
import subprocess
import sys
import time

import pytest

from stripedump.tools import synth
from stripedump.format.structs import FEATURE_STREAMED, STATE_COMPLETE, STATE_WRITING
from stripedump.read.member import MemberReader

from conftest import ROOT, CliResult, assert_one_line_error, run_cli

from oracle import Oracle, check_run
from waiting import wait_until

MIB = 1 << 20


def sd_env(hosts, **extra) -> dict:
    return dict(hosts.env, PYTHONPATH=ROOT, **extra)


def sd(hosts, *args, timeout=180, stdout=None, **extra) -> CliResult:
    """``stripedump ARGS`` as the client with the hosts' ~/.ssh/config."""
    p = subprocess.run([sys.executable, "-m", "stripedump", *map(str, args)], env=sd_env(hosts, **extra),
                       stdin=subprocess.DEVNULL, stdout=stdout if stdout is not None else subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=timeout)
    return CliResult(p)


def start(hosts, *args, **extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stripedump", *map(str, args)], env=sd_env(hosts, **extra),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def same(a, b) -> bool:
    with open(a, "rb") as f, open(b, "rb") as g:
        while True:
            x, y = f.read(MIB), g.read(MIB)
            if x != y:
                return False
            if not x:
                return True


def assert_streamed(path: str) -> None:
    """What a streamed member is: header never rewritten (state 0, FEATURE_STREAMED), its footer
    found through the trailer, complete; mode 0600 on the host."""
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    r = MemberReader(path)
    try:
        assert r.header.state == STATE_WRITING and r.header.footer_offset == 0
        assert r.header.features_optional & FEATURE_STREAMED
        t = r.trailer()
        assert t is not None and r.footer_place() == (t.footer_offset, t.footer_length)
        assert r.footer().state == STATE_COMPLETE
    finally:
        r.close()


def size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return -1


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return synth.build(str(tmp_path_factory.mktemp("sshsrc") / "vmcore"), **synth.layouts()["kernel"])


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """48 MiB of RAM, mostly non-zero pages: stored raw (--codec none) it outlasts every buffer
    between a writer and a host's disk (pipe, ssh channel, TCP), so a host can fail mid-dump."""
    d = tmp_path_factory.mktemp("sshbig")
    src = str(d / "vmcore")
    synth.build(src, synth.demo_loads(48 * MIB))
    yield src, Oracle(src, "none", 256 << 10)


# -- round trips -------------------------------------------------------------------

@pytest.mark.parametrize("nhosts", [1, 2, 3])
def test_round_trip_over_hosts_and_a_local_file(ssh_hosts, small, tmp_path, nhosts):
    hosts = ssh_hosts.hosts[:nhosts]
    local = tmp_path / "local.sd"
    targets = [h.url(f"m{i}.sd") for i, h in enumerate(hosts)] + [str(local)]
    r = sd(ssh_hosts, "dump", "--disks", ",".join(targets), "--codec", "lz4", "--chunk-size", "64K", small.path)
    assert r.rc == 0, r
    members = [h.path(f"m{i}.sd") for i, h in enumerate(hosts)]
    for m in members:
        assert_streamed(m)
    j = run_cli("join", *reversed(members + [str(local)]), "-o", tmp_path / "out")
    assert j.rc == 0, j
    assert same(tmp_path / "out", small.path)


def test_user_host_port_form_and_alias_together(ssh_hosts, small, tmp_path):
    """``ssh://user@ADDR:PORT/path`` (no alias: port and user from the URL) next to an alias."""
    a, b = ssh_hosts.hosts[:2]
    r = sd(ssh_hosts, "dump", "--disks", f"{a.url('a.sd', user=True, port=True)},{b.url('b.sd')}",
           "--codec", "lz4", small.path)
    assert r.rc == 0, r
    j = run_cli("join", a.path("a.sd"), b.path("b.sd"), "-o", tmp_path / "out")
    assert j.rc == 0 and same(tmp_path / "out", small.path), j


def test_ssh_option_reaches_ssh(ssh_hosts, small, tmp_path):
    """--ssh-option comes before the config: Port=1 sends the alias to a closed port (exit 5)."""
    h = ssh_hosts.hosts[0]
    r = sd(ssh_hosts, "dump", "--disks", h.url(), "--ssh-option", "Port=1", small.path)
    assert_one_line_error(r, 5, h.url(), "cannot reach host sdhost0", "port 1")
    assert not os.path.exists(h.path())


def test_stdout_member_redirected_and_piped(ssh_hosts, small, tmp_path):
    """``--disks -``: a member on standard output, to a file and through a pipe; the summary
    goes to stderr."""
    m0, m1 = tmp_path / "m0.sd", tmp_path / "m1.sd"
    with open(m0, "wb") as f:
        r = sd(ssh_hosts, "dump", "--disks", "-", small.path, stdout=f)
    assert r.rc == 0 and "dumped" in r.err, r
    j = run_cli("join", m0, "-o", tmp_path / "out0")
    assert j.rc == 0 and same(tmp_path / "out0", small.path), j
    local = tmp_path / "local.sd"
    pipe = f"{sys.executable} -m stripedump dump --disks -,{local} --codec lz4 {small.path} | cat > {m1}"
    p = subprocess.run(["sh", "-c", pipe], env=sd_env(ssh_hosts), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p
    j = run_cli("join", local, m1, "-o", tmp_path / "out1")
    assert j.rc == 0 and same(tmp_path / "out1", small.path), j
    r = MemberReader(str(m1))
    assert r.header.features_optional & FEATURE_STREAMED and r.footer().state == STATE_COMPLETE
    r.close()


def test_stdout_terminal_is_refused(ssh_hosts, small):
    master, slave = pty.openpty()
    try:
        p = subprocess.run([sys.executable, "-m", "stripedump", "dump", "--disks", "-", small.path],
                           env=sd_env(ssh_hosts), stdin=subprocess.DEVNULL, stdout=slave,
                           stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(slave)
        os.close(master)
    assert_one_line_error(CliResult(subprocess.CompletedProcess(p.args, p.returncode, "", p.stderr)), 4,
                          "standard output", "terminal")


# -- safety ------------------------------------------------------------------------

def test_existing_remote_path_is_refused_and_force_overwrites(ssh_hosts, small, tmp_path):
    h = ssh_hosts.hosts[1]
    with open(h.path(), "wb") as f:
        f.write(b"an earlier crash")
    local = tmp_path / "local.sd"
    r = sd(ssh_hosts, "dump", "--disks", f"{local},{h.url()}", small.path)
    assert_one_line_error(r, 4, h.url(), "exists", "--force")
    assert open(h.path(), "rb").read() == b"an earlier crash"
    assert not os.path.exists(local)            # refused before any local target was opened
    r = sd(ssh_hosts, "dump", "--disks", f"{local},{h.url()}", "--force", small.path)
    assert r.rc == 0, r
    assert_streamed(h.path())
    j = run_cli("join", local, h.path(), "-o", tmp_path / "out")
    assert j.rc == 0 and same(tmp_path / "out", small.path), j


def test_remote_directory_missing_and_relative_path(ssh_hosts, small):
    h = ssh_hosts.hosts[0]
    r = sd(ssh_hosts, "dump", "--disks", h.url("no/such/dir/m.sd"), small.path)
    assert_one_line_error(r, 5, "does not exist there")
    r = sd(ssh_hosts, "dump", "--disks", "ssh://sdhost0", small.path)
    assert_one_line_error(r, 2, "ssh://[user@]host[:port]/absolute/path")
    r = sd(ssh_hosts, "dump", "--disks", f"{h.url('x.sd')},{h.url('x.sd')}", small.path)
    assert_one_line_error(r, 4, "given twice")


def test_second_dump_to_a_locked_remote_path_is_refused(ssh_hosts, big, tmp_path):
    """Dump A holds the remote lock (its session frozen mid-stream); dump B to the same path,
    even with --force, is refused (exit 4) and A then completes."""
    src, _ = big
    h = ssh_hosts.hosts[0]
    a = start(ssh_hosts, "dump", "--disks", h.url(), "--codec", "none", "--chunk-size", "256K", src)
    try:
        wait_until(lambda: size(h.path()) > 64 << 10, "the first bytes on the host", timeout=60, proc=a)
        h.stop(sessions_only=True)
        r = sd(ssh_hosts, "dump", "--disks", h.url(), "--force", src)
        assert_one_line_error(r, 4, h.url(), "in use", "lock")
    finally:
        h.cont()
    out, err = a.communicate(timeout=180)
    assert a.returncode == 0, err
    j = run_cli("join", h.path(), "-o", tmp_path / "out")
    assert j.rc == 0 and same(tmp_path / "out", src), j


def test_unreachable_host_fails_before_any_data(ssh_hosts, small, tmp_path):
    """Exit 5 naming the host; nothing created anywhere (the reachable host's empty member is removed)."""
    a, b = ssh_hosts.hosts[:2]
    b.kill()
    local = tmp_path / "local.sd"
    r = sd(ssh_hosts, "dump", "--disks", f"{a.url()},{local},{b.url()}", small.path)
    assert_one_line_error(r, 5, b.url(), "cannot reach host sdhost1")
    assert not os.path.exists(local)
    assert os.listdir(a.root) == [] and os.listdir(b.root) == []


# -- a host that dies or hangs mid-dump -------------------------------------------------

def _kill_mid_dump(ssh_hosts, big, tmp_path, *extra):
    """Hosts 0 and 1 and a local file; host 1 dies (frozen once bytes reached it, then SIGKILL)."""
    src, oracle = big
    a, b = ssh_hosts.hosts[:2]
    local = str(tmp_path / "local.sd")
    p = start(ssh_hosts, "dump", "--disks", f"{a.url()},{b.url()},{local}", "--codec", "none",
              "--chunk-size", "256K", "--workers", "2", *extra, src, STRIPEDUMP_SYNC_EVERY=str(MIB))
    wait_until(lambda: size(b.path()) > 2 * MIB, "2 MiB on host 1", timeout=60, proc=p)
    b.stop()
    time.sleep(0.3)        # the behaviour: frozen a while, then dead (no condition to wait for)
    b.kill()
    out, err = p.communicate(timeout=240)
    r = MemberReader(b.path())
    assert r.trailer() is None, "host 1 had its whole member before it died"
    r.close()
    return p.returncode, out, err, [a.path(), b.path(), local], oracle


def test_host_killed_mid_dump_continue(ssh_hosts, big, tmp_path):
    rc, out, err, members, _ = _kill_mid_dump(ssh_hosts, big, tmp_path, "--on-disk-error", "continue")
    assert rc == 0, err
    assert "dropped that target" in err and "sdhost1" in err, err
    # what host 1 confirmed synced stays there (its disk outlives it); the rest went to the others:
    # the members that remain, host 1's read from its directory, join byte for byte
    j = run_cli("join", *members, "-o", tmp_path / "out")
    assert j.rc == 0, j
    assert same(tmp_path / "out", big[0])
    assert run_cli("verify", *members).rc == 0
    assert_streamed(members[0])


def test_host_killed_mid_dump_stop_recovers_what_reached_the_hosts(ssh_hosts, big, tmp_path):
    rc, out, err, members, oracle = _kill_mid_dump(ssh_hosts, big, tmp_path)
    assert rc == 8, err
    assert "sdhost1" in err and "Traceback" not in err, err
    ok, msg, n = check_run(oracle, members, str(tmp_path / "out"))
    assert ok, msg
    assert 0 < n < len(oracle.records)


def test_stream_cut_mid_record_is_recoverable(ssh_hosts, big, tmp_path):
    """A streamed member cut inside a chunk record (the connection dropped): join
    --allow-incomplete gives back every chunk before the cut, page by page."""
    src, oracle = big
    h = ssh_hosts.hosts[2]
    r = sd(ssh_hosts, "dump", "--disks", h.url(), "--codec", "none", "--chunk-size", "256K", src)
    assert r.rc == 0, r
    reader = MemberReader(h.path())
    entries = list(reader.index(reader.footer()))
    reader.close()
    e = entries[len(entries) // 2]
    os.truncate(h.path(), e.offset + e.length // 2)
    ok, msg, n = check_run(oracle, [h.path()], str(tmp_path / "out"))
    assert ok, msg
    assert n == len([x for x in entries if x.offset + x.length <= e.offset + e.length // 2])


def test_hung_host_does_not_hang_the_dump(ssh_hosts, big, tmp_path):
    """A host frozen mid-stream (TCP open, silent): the dump ends (exit 8) within a bound."""
    src, _ = big
    a, b = ssh_hosts.hosts[:2]
    t0 = time.monotonic()
    p = start(ssh_hosts, "dump", "--disks", f"{a.url()},{b.url()}", "--codec", "none", "--io-timeout", "4",
              src)
    wait_until(lambda: size(b.path()) > MIB, "1 MiB on host 1", timeout=60, proc=p)
    b.stop()
    try:
        out, err = p.communicate(timeout=90)
    finally:
        b.cont()
    assert p.returncode == 8, err
    assert "sdhost1" in err and "Traceback" not in err, err
    assert time.monotonic() - t0 < 60


def test_sigint_to_the_terminal_group_finalizes_remote_members(ssh_hosts, big, tmp_path):
    """ssh runs in a session of its own: a Ctrl-C to the dump's process group stops the dump
    (exit 130) with the remote member finalized as incomplete, not a cut stream."""
    src, _ = big
    h = ssh_hosts.hosts[0]
    p = subprocess.Popen([sys.executable, "-m", "stripedump", "dump", "--disks", h.url(), "--codec", "none",
                          src], env=sd_env(ssh_hosts), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_until(lambda: size(h.path()) > MIB, "1 MiB on the host", timeout=60, proc=p)
    os.killpg(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    r = MemberReader(h.path())
    try:
        f = r.footer()
        assert f is not None and f.state != STATE_COMPLETE
    finally:
        r.close()


def test_host_frozen_before_the_dump_is_an_unreachable_host(ssh_hosts, small, tmp_path):
    """A host that accepts the connection and then says nothing: exit 5 within --io-timeout."""
    h = ssh_hosts.hosts[2]
    h.stop()
    try:
        t0 = time.monotonic()
        r = sd(ssh_hosts, "dump", "--disks", f"{h.url()},{tmp_path / 'local.sd'}", "--io-timeout", "3",
               small.path, timeout=60)
        took = time.monotonic() - t0
    finally:
        h.cont()
    assert_one_line_error(r, 5, h.url(), "sdhost2")
    assert took < 30, took
    assert not os.path.exists(tmp_path / "local.sd")


def test_remote_disk_full_is_a_failed_target(ssh_hosts, big, tmp_path):
    """ENOSPC on the host (a 2 MiB tmpfs there): first a warning (less free space there than the
    source / targets), then exit 8 naming the target and dd's reason; join --allow-incomplete
    recovers exactly what reached it and the other member."""
    src, oracle = big
    a, b = ssh_hosts.hosts[:2]
    full = os.path.join(b.root, "full")
    os.mkdir(full)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", full], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    try:
        target = f"ssh://{b.alias}{full}/m1"
        local = str(tmp_path / "m0")
        r = sd(ssh_hosts, "dump", "-q", "--disks", f"{local},{target}", "--codec", "none", "--chunk-size",
               "256K", src, STRIPEDUMP_SYNC_EVERY=str(MIB))
        warning, error = r.err.splitlines()
        assert r.rc == 8 and warning.startswith(f"stripedump: warning: target {target}: 2.1 MB free there, "
                                                "less than its expected share of the dump"), r
        assert error.startswith("stripedump: error: ") and target in error and "No space left on device" in error
        with open(os.path.join(full, "m1"), "rb") as f, open(tmp_path / "m1", "wb") as g:
            g.write(f.read())
    finally:
        subprocess.run(["umount", "-l", full], capture_output=True)
    ok, msg, n = check_run(oracle, [local, str(tmp_path / "m1")], str(tmp_path / "out"))
    assert ok, msg
    assert 0 < n < len(oracle.records)


def test_hosts_mixed_with_a_block_device(ssh_hosts, small, tmp_path, loop_device):
    dev = loop_device(16 * MIB)
    a = ssh_hosts.hosts[0]
    r = sd(ssh_hosts, "dump", "--disks", f"{dev},{a.url()}", "--codec", "lz4", small.path)
    assert r.rc == 0, r
    j = run_cli("join", a.path(), dev, "-o", tmp_path / "out")
    assert j.rc == 0 and same(tmp_path / "out", small.path), j


def test_ssh_command_line(ssh_hosts, small, tmp_path):
    """BatchMode=yes always, after the user's --ssh-option (ssh takes the first value given: the
    user's wins); -p and -l from the URL; the remote command is one sh -c."""
    log = tmp_path / "argv"
    wrap = tmp_path / "bin"
    wrap.mkdir()
    with open(wrap / "ssh", "w") as f:
        f.write(f'#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done > {log}\n'
                f'exec {ssh_hosts.bin}/ssh "$@"\n')
    os.chmod(wrap / "ssh", 0o755)
    h = ssh_hosts.hosts[0]
    r = sd(ssh_hosts, "dump", "--disks", h.url(user=True, port=True), "--ssh-option", "Compression=no",
           "--ssh-option", "BatchMode=yes", small.path, PATH=f"{wrap}:{ssh_hosts.env['PATH']}")
    assert r.rc == 0, r
    argv = log.read_text().split("\n")
    opts = [argv[i + 1] for i, x in enumerate(argv) if x == "-o"]
    assert opts[:2] == ["Compression=no", "BatchMode=yes"] and "BatchMode=yes" in opts[2:], opts
    assert any(o.startswith("ServerAliveInterval=") for o in opts)
    assert argv[argv.index("-p") + 1] == str(h.port) and argv[argv.index("-l") + 1] == ssh_hosts.user
    assert argv[argv.index("--") + 1] == h.addr and argv[argv.index("--") + 2].startswith("exec sh -c ")
