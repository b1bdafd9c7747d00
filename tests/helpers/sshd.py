"""Real sshd instances on loopback addresses, one per "host", for the SSH target tests.

Why real ones: ``ssh://`` targets stream a member through the system ``ssh`` client into a remote
``sh`` (flock, cat, sync); only a real sshd on the other end runs that command, closes the
connection when the host dies, and honours host keys, ports and identity files the way a crash
server does.  Each host listens on its own loopback address (127.0.0.2, 127.0.0.3, ...) and port,
has its own host key and a root directory for members; one client key (made per test session with
ssh-keygen) is authorized on all of them.

The client side is a private HOME whose ``~/.ssh/config`` has one ``Host`` alias per instance
(HostName, Port, IdentityFile, UserKnownHostsFile with the hosts' keys, StrictHostKeyChecking yes,
BatchMode yes).  OpenSSH's ``ssh`` finds ``~`` through the password database, not ``$HOME``, so
``env`` also puts a directory first on PATH whose ``ssh``, ``scp`` and ``sftp`` add ``-F
HOME/.ssh/config``: a process started with ``cluster.env`` (stripedump included) runs ``ssh alias``
and ``ssh://alias/path`` exactly as a user with that config would; paramiko and other readers
that expand ``~`` through $HOME find the same config and known hosts.  The user's own ``~/.ssh``
is never read or written.

``Host.kill()`` is a host dying: SIGKILL to its sshd and every session process below it (the
client sees the connection reset).  ``Host.stop()`` / ``cont()`` freeze and thaw them (a hung
host: the TCP connection stays open and silent).  ``Host.start()`` brings a killed host back.

Not installed (no /usr/sbin/sshd or ssh-keygen): ``need_sshd()`` skips with the reason.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd")


def sshd_binary() -> str | None:
    for p in SSHD_CANDIDATES:
        if os.access(p, os.X_OK):
            return p
    return shutil.which("sshd")


def need_sshd() -> str:
    """The sshd path, or skip the test with the reason (package names included)."""
    sshd = sshd_binary()
    if sshd is None:
        pytest.skip("sshd is not installed (apt-get install openssh-server; make test-deps)")
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install openssh-client; make test-deps)")
    return sshd


def _free_port(addr: str) -> int:
    with socket.socket() as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


def _children() -> dict[int, list[int]]:
    """ppid -> [pid] for every process visible in /proc."""
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(name))
    return kids


def descendants(pid: int) -> list[int]:
    kids, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def _keygen(path: str, comment: str) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path],
                   check=True, stdin=subprocess.DEVNULL, capture_output=True)


class Host:
    """One sshd: ``alias`` (the ~/.ssh/config name), ``addr``, ``port``, ``root`` (its member
    directory, on this machine), ``url(name)`` -> ``ssh://alias/root/name``."""

    def __init__(self, cluster: "Cluster", n: int):
        self.cluster, self.n = cluster, n
        self.alias = f"sdhost{n}"
        self.addr = f"127.0.0.{n + 2}"
        self.port = _free_port(self.addr)
        self.dir = os.path.join(cluster.base, self.alias)
        self.root = os.path.join(self.dir, "root")
        os.makedirs(self.root)
        self.hostkey = os.path.join(self.dir, "ssh_host_ed25519_key")
        _keygen(self.hostkey, self.alias)
        self.log = os.path.join(self.dir, "sshd.log")
        self.config = os.path.join(self.dir, "sshd_config")
        with open(self.config, "w") as f:
            f.write(f"""ListenAddress {self.addr}:{self.port}
HostKey {self.hostkey}
PidFile {os.path.join(self.dir, 'sshd.pid')}
AuthorizedKeysFile {cluster.client_key}.pub
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowUsers {cluster.user}
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
MaxStartups 100:30:200
MaxSessions 100
ClientAliveInterval 0
Subsystem sftp internal-sftp
""")
        self.proc: subprocess.Popen | None = None

    def url(self, name: str = "member.sd", user: bool = False, port: bool = False) -> str:
        """``ssh://alias/ROOT/name``; ``port``: ``ssh://[user@]ADDR:PORT/...`` (no alias needed
        for the address, the config's known hosts still apply)."""
        who = f"{self.cluster.user}@" if user else ""
        where = f"{self.addr}:{self.port}" if port else self.alias
        return f"ssh://{who}{where}{os.path.join(self.root, name)}"

    def path(self, name: str = "member.sd") -> str:
        return os.path.join(self.root, name)

    def known_hosts_line(self) -> str:
        with open(self.hostkey + ".pub") as f:
            key = " ".join(f.read().split()[:2])
        return f"[{self.addr}]:{self.port} {key}\n"

    def start(self) -> None:
        if self.alive():
            return
        self.proc = subprocess.Popen(
            [self.cluster.sshd, "-D", "-e", "-f", self.config],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"),
            start_new_session=True)
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                with open(self.log, errors="replace") as f:
                    tail = f.read()[-400:]
                pytest.skip(f"sshd on {self.addr}:{self.port} did not start: {tail}")
            try:
                socket.create_connection((self.addr, self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    pytest.skip(f"sshd on {self.addr}:{self.port} did not listen within 15 s")
                time.sleep(0.02)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _signal_all(self, sig: int) -> None:
        if self.proc is None:
            return
        for pid in descendants(self.proc.pid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """The host dies: SIGKILL to sshd and every session under it, at once."""
        if self.proc is None:
            return
        # stop them first so none forks while we look, then kill the lot
        self._signal_all(signal.SIGSTOP)
        self._signal_all(signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        """The host hangs: SIGSTOP sshd and its sessions (connections stay open, silent)."""
        self._signal_all(signal.SIGSTOP)

    def cont(self) -> None:
        self._signal_all(signal.SIGCONT)

    def ssh(self, *command: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run ``command`` on this host with the cluster's client config (text output)."""
        return subprocess.run(["ssh", self.alias, *command], env=self.cluster.env,
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)


class Cluster:
    """``n`` sshd hosts and one client HOME under ``base``; ``env`` for the client processes."""

    def __init__(self, base: str, n: int = 3):
        self.sshd = need_sshd()
        self.base = base
        self.user = _username()
        if os.geteuid() == 0:
            # sshd's privilege separation directory (Debian's unit creates it; we run sshd by hand)
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.home = os.path.join(base, "home")
        sshdir = os.path.join(self.home, ".ssh")
        os.makedirs(sshdir, mode=0o700)
        self.client_key = os.path.join(sshdir, "id_ed25519")
        _keygen(self.client_key, "stripedump-tests")
        self.hosts = [Host(self, i) for i in range(n)]
        self.known_hosts = os.path.join(sshdir, "known_hosts")
        with open(self.known_hosts, "w") as f:
            f.writelines(h.known_hosts_line() for h in self.hosts)
        self.ssh_config = os.path.join(sshdir, "config")
        with open(self.ssh_config, "w") as f:
            for h in self.hosts:
                f.write(f"""Host {h.alias}
    HostName {h.addr}
    Port {h.port}
    User {self.user}
""")
            f.write(f"""Host *
    IdentityFile {self.client_key}
    IdentitiesOnly yes
    UserKnownHostsFile {self.known_hosts}
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    BatchMode yes
    ConnectTimeout 5
    LogLevel ERROR
""")
        os.chmod(self.ssh_config, 0o600)
        self.bin = os.path.join(base, "bin")
        os.makedirs(self.bin)
        for tool in ("ssh", "scp", "sftp"):
            real = shutil.which(tool)
            if real is None:
                continue
            wrapper = os.path.join(self.bin, tool)
            with open(wrapper, "w") as f:
                f.write(f'#!/bin/sh\nexec {real} -F "{self.ssh_config}" "$@"\n')
            os.chmod(wrapper, 0o755)
        self.env = dict(os.environ, HOME=self.home,
                        PATH=self.bin + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin"))
        for h in self.hosts:
            h.start()

    def ready(self) -> "Cluster":
        """Every host running, every root directory empty (between tests)."""
        for h in self.hosts:
            h.cont()
            h.start()
            for name in os.listdir(h.root):
                p = os.path.join(h.root, name)
                if os.path.isdir(p) and not os.path.islink(p):
                    shutil.rmtree(p)
                else:
                    os.unlink(p)
        return self

    def close(self) -> None:
        for h in self.hosts:
            h.cont()
            h.kill()


def _username() -> str:
    import pwd
    return pwd.getpwuid(os.geteuid()).pw_name
