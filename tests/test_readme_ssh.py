"""The README's "Trying ssh:// on one machine" recipe, run as written (issue 24, item 17).

The README had no way to try ``ssh://`` targets without a second machine.  Its recipe starts an sshd
on a loopback address with its own keys, adds a ``~/.ssh/config`` alias and dumps, describes,
verifies and joins through it, then does the same with ``--ssh-option`` and no alias.  This test
takes the recipe's shell block from README.md and runs it with bash, changing only where it may
not go here: HOME is a private directory (the user's ~/.ssh is never read or written), the address
and port are 127.0.0.31 and a free port instead of 127.0.0.2:2222 (the test hosts of
tests/helpers/sshd.py are on 127.0.0.2-4), and, since OpenSSH's ``ssh`` finds ``~`` through the
password database rather than $HOME, an ``ssh`` first on PATH adds ``-F $HOME/.ssh/config`` (as
tests/helpers/sshd.py does).  Afterwards the same sshd is started again and ``mount`` reads the
members with ``--ssh-option`` as well.
"""

from __future__ import annotations

import filecmp
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT

ADDR = "127.0.0.31"


def recipe() -> str:
    text = open(os.path.join(ROOT, "README.md")).read()
    at = text.index("#### Trying `ssh://` on one machine")
    m = re.compile(r"^```sh\n(.*?)^```$", re.S | re.M).search(text, at)
    assert m, "no ```sh block after the recipe's heading"
    return m.group(1)


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind((ADDR, 0))
        return s.getsockname()[1]


def _stop(pidfile: str) -> None:
    try:
        pid = int(open(pidfile).read())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
        time.sleep(0.05)


def test_the_readme_ssh_recipe_runs_as_written(tmp_path):
    import sshd
    sshd.need_sshd()
    if os.geteuid() != 0:
        pytest.skip("the README's recipe is for root (sshd's /run/sshd, the crash server's login)")
    if not os.access("/usr/sbin/sshd", os.X_OK):
        pytest.skip("the recipe runs /usr/sbin/sshd, which is not there")
    port = _free_port()
    script = recipe()
    assert "127.0.0.2:2222" in script and "Host crashtest" in script and "--ssh-option" in script
    for cmd in ("stripedump dump", "stripedump info", "stripedump verify", "stripedump join"):
        assert cmd in script, cmd
    script = script.replace("127.0.0.2", ADDR).replace("2222", str(port))
    home = tmp_path / "home"
    home.mkdir()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "ssh").write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F "$HOME/.ssh/config" "$@"\n')
    (bindir / "ssh").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    env.update(HOME=str(home), PYTHONPATH=ROOT,
               PATH=os.pathsep.join((str(bindir), os.path.dirname(sys.executable), os.environ.get("PATH", ""))))
    d = home / "stripedump-ssh-try"
    try:
        p = subprocess.run(["bash", "-e", "-c", script], env=env, capture_output=True, text=True, timeout=600,
                           stdin=subprocess.DEVNULL, cwd=tmp_path)
        assert p.returncode == 0, f"{p.stdout}\n{p.stderr}"
        assert "Host crashtest" in (home / ".ssh" / "config").read_text()
        assert sorted(os.listdir(d / "crash")) == ["m0", "m1", "n0"]
        assert filecmp.cmp(d / "vmcore", d / "vmcore.joined", shallow=False)
        assert filecmp.cmp(d / "vmcore", d / "vmcore.n0", shallow=False)
        assert "all checksums good" in p.stdout and "2 given of 2" in p.stdout, p.stdout
        assert not (d / "sshd.pid").exists()          # the recipe's kill: sshd exited, removing it
        _mount_too(d, port, env, tmp_path)
    finally:
        _stop(str(d / "sshd.pid"))


def _mount_too(d, port: int, env: dict, tmp_path) -> None:
    """The recipe's sshd again: mount takes --ssh-option too (the members by address, no alias)."""
    from mount.test_mount import need_mount
    need_mount()
    subprocess.run(["/usr/sbin/sshd", "-f", str(d / "sshd_config")], check=True, env=env, timeout=30)
    opts = ["--ssh-option", f"IdentityFile={d}/client_key", "--ssh-option", f"UserKnownHostsFile={d}/known_hosts"]
    members = [f"ssh://{ADDR}:{port}{d}/crash/m{i}" for i in range(2)]
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    sd = [sys.executable, "-m", "stripedump"]
    deadline = time.monotonic() + 15
    while True:           # sshd -f returns once it has forked; it listens a moment later
        p = subprocess.run([*sd, "mount", *opts, *members, str(mnt)], env=env, capture_output=True, text=True,
                           timeout=120, stdin=subprocess.DEVNULL)
        if p.returncode == 0 or "cannot connect" not in p.stderr or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    try:
        assert p.returncode == 0, p.stderr
        assert filecmp.cmp(mnt / "vmcore", d / "vmcore", shallow=False)
    finally:
        done = subprocess.run([*sd, "umount", str(mnt)], env=env, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)
