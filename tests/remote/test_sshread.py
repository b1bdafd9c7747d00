"""join, info, verify and mount reading ``ssh://`` members where they are (issue 13, stripedump/remote/sshread.py).

Real sshd hosts on loopback (tests/helpers/sshd.py: 127.0.0.2-4, each its own port, host key
and member directory), real SFTP, the real CLI in a subprocess whose HOME is the fixture's
client home (its ~/.ssh/config: an alias per host, the identity file, known hosts,
StrictHostKeyChecking yes).  Members of a local dump are copied into the hosts' directories, so
every remote result is compared with the same command on the local members.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT, CliResult, assert_one_line_error
from mount.test_mount import need_mount

CHUNK = "64K"


def sd(env: dict, *args, timeout: int = 180) -> CliResult:
    """``python -m stripedump ARGS`` as the fixture's SSH user (its HOME, its ssh on PATH)."""
    proc = subprocess.run([sys.executable, "-m", "stripedump", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=dict(env, PYTHONPATH=ROOT), stdin=subprocess.DEVNULL)
    return CliResult(proc)


@pytest.fixture
def dumped(tmp_path, vmcore, ssh_hosts):
    """A synthetic vmcore dumped locally over three members, each copied to one host:
    (source path, local members, ssh:// URLs by alias, env)."""
    b = vmcore("kernel")
    local = [str(tmp_path / f"m{i}.sd") for i in range(3)]
    env = ssh_hosts.env
    res = sd(env, "dump", "--disks", ",".join(local), "--codec", "lz4", "--chunk-size", CHUNK, "-q", b.path)
    assert res.rc == 0, res
    urls = []
    for h, m in zip(ssh_hosts.hosts, local):
        shutil.copy(m, h.path(f"m{len(urls)}.sd"))
        urls.append(h.url(f"m{len(urls)}.sd"))
    return b.path, local, urls, env


def _no_paths(d: dict) -> dict:
    """info/verify JSON without what names where the members are, or how long it took."""
    d = json.loads(json.dumps(d))
    for k in ("seconds", "mb_per_s", "output"):
        d.pop(k, None)
    for m in d.get("members", []):
        m.pop("path", None)
    for m in d.get("recovery", {}).get("members", []):
        m.pop("path", None)
    return d


def test_join_info_verify_read_members_where_they_are(dumped, tmp_path):
    src, local, urls, env = dumped
    out = tmp_path / "joined"
    res = sd(env, "join", "-q", *reversed(urls), "-o", out)     # any order, aliases from ~/.ssh/config
    assert res.rc == 0, res
    assert filecmp.cmp(out, src, shallow=False)
    # kdump-compressed: byte-identical to the same join of the local members
    kd_local, kd_remote = tmp_path / "local.kdump", tmp_path / "remote.kdump"
    assert sd(env, "join", "-q", "--format", "kdump", *local, "-o", kd_local).rc == 0
    res = sd(env, "join", "-q", "--format", "kdump", *urls, "-o", kd_remote)
    assert res.rc == 0, res
    assert filecmp.cmp(kd_local, kd_remote, shallow=False)
    li, ri = sd(env, "info", "--json", *local), sd(env, "info", "--json", *urls)
    assert li.rc == 0 and ri.rc == 0, ri
    assert [m["path"] for m in json.loads(ri.out)["members"]] == urls
    assert _no_paths(json.loads(ri.out)) == _no_paths(json.loads(li.out))
    lv, rv = sd(env, "verify", "-q", "--json", *local), sd(env, "verify", "-q", "--json", *urls)
    assert lv.rc == 0 and rv.rc == 0, rv
    assert _no_paths(json.loads(rv.out)) == _no_paths(json.loads(lv.out))


def test_members_over_three_hosts_and_a_local_disk(tmp_path, vmcore, ssh_hosts):
    b = vmcore("kernel")
    env = ssh_hosts.env
    local = [str(tmp_path / f"m{i}.sd") for i in range(4)]
    assert sd(env, "dump", "--disks", ",".join(local), "--codec", "zstd", "--chunk-size", CHUNK, "-q",
              b.path).rc == 0
    hosts = ssh_hosts.hosts
    for h, m in zip(hosts, local):
        shutil.copy(m, h.path())
    # by alias; as user@address:port (the known host entry, no alias); as address:port
    members = [hosts[0].url(), hosts[1].url(user=True, port=True), hosts[2].url(port=True), local[3]]
    out = tmp_path / "joined"
    res = sd(env, "join", "-q", "--workers", "2", *members, "-o", out)
    assert res.rc == 0, res
    assert filecmp.cmp(out, b.path, shallow=False)


def test_a_missing_remote_member_file(dumped, tmp_path, ssh_hosts):
    src, local, urls, env = dumped
    os.unlink(ssh_hosts.hosts[1].path("m1.sd"))
    res = sd(env, "join", *urls, "-o", tmp_path / "x")
    assert_one_line_error(res, 6, urls[1], "no such file")
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()
    # --allow-incomplete: the member counts as missing; the rest is exactly what a join of the
    # other members writes
    out, ref = tmp_path / "remote", tmp_path / "local"
    res = sd(env, "join", "--allow-incomplete", *urls, "-o", out)
    assert res.rc == 0, res
    assert "missing" in res.err and "Traceback" not in res.err
    assert f"{urls[1]}: not read (no such file on " in res.err
    assert sd(env, "join", "--allow-incomplete", local[0], local[2], "-o", ref).rc == 0
    assert filecmp.cmp(out, ref, shallow=False)
    info = json.loads(sd(env, "info", "--json", *urls).out)
    gone = [m for m in info["members"] if m["path"] == urls[1]]
    assert len(gone) == 1 and gone[0]["index"] is None and "no such file" in gone[0]["state"]
    assert not info["recovery"]["complete"]


def test_a_host_that_is_down(dumped, tmp_path, ssh_hosts):
    src, local, urls, env = dumped
    ssh_hosts.hosts[2].kill()
    res = sd(env, "join", *urls, "-o", tmp_path / "x")
    assert_one_line_error(res, 6, urls[2], "cannot connect")
    res = sd(env, "info", urls[2])
    assert_one_line_error(res, 6, "cannot connect")
    out, ref = tmp_path / "remote", tmp_path / "local"
    res = sd(env, "join", "--allow-incomplete", *urls, "-o", out)
    assert res.rc == 0, res
    assert sd(env, "join", "--allow-incomplete", local[0], local[1], "-o", ref).rc == 0
    assert filecmp.cmp(out, ref, shallow=False)
    res = sd(env, "verify", *urls)          # verify says what a join would lack
    assert res.rc == 8 and "Traceback" not in res.err, res


def _home(tmp_path, ssh_hosts, *, known: str | None = None, key: str | None = None,
          strict: str = "yes") -> dict:
    """A client HOME like the fixture's, with other known hosts, identity or StrictHostKeyChecking."""
    home = tmp_path / "otherhome"
    (home / ".ssh").mkdir(parents=True)
    text = open(ssh_hosts.ssh_config).read()
    if known is not None:
        text = text.replace(ssh_hosts.known_hosts, known)
    if key is not None:
        text = text.replace(f"IdentityFile {ssh_hosts.client_key}", f"IdentityFile {key}")
    text = text.replace("StrictHostKeyChecking yes", f"StrictHostKeyChecking {strict}")
    (home / ".ssh" / "config").write_text(text)
    return dict(ssh_hosts.env, HOME=str(home))


def test_unknown_host_key_is_refused_unless_the_config_says_so(dumped, tmp_path, ssh_hosts):
    src, local, urls, env = dumped
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    res = sd(_home(tmp_path, ssh_hosts, known=str(empty)), "info", *urls)
    assert_one_line_error(res, 6, "not in known_hosts", "refused")
    shutil.rmtree(tmp_path / "otherhome")
    res = sd(_home(tmp_path, ssh_hosts, known=str(empty), strict="no"), "info", "--json", *urls)
    assert res.rc == 0, res
    assert empty.read_text() == ""            # accepted, not recorded: a reader writes nothing
    # a changed host key is refused whatever the config says
    shutil.rmtree(tmp_path / "otherhome")
    other = tmp_path / "otherkey"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", other], check=True)
    h = ssh_hosts.hosts[0]
    pub = " ".join(open(f"{other}.pub").read().split()[:2])
    empty.write_text(f"[{h.addr}]:{h.port} {pub}\n")
    res = sd(_home(tmp_path, ssh_hosts, known=str(empty), strict="no"), "info", urls[0])
    assert_one_line_error(res, 6, "does not match")


def test_a_refused_login(dumped, tmp_path, ssh_hosts):
    src, local, urls, env = dumped
    key = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    res = sd(_home(tmp_path, ssh_hosts, key=str(key)), "join", "--allow-incomplete", *urls,
             "-o", tmp_path / "x")
    assert_one_line_error(res, 6, "refused the login")      # never taken for a missing member


def test_round_trips_are_few(tmp_path, vmcore, ssh_hosts):
    """Reading what info needs (headers, manifests, footers, indexes) of members with several index
    records each takes a bounded number of SFTP round trips, counted in paramiko: a round trip is
    a burst of requests sent before the next answer is read."""
    from stripedump.tools import synth
    src = synth.build(str(tmp_path / "vmcore"), [synth.Load(0, 12 << 20)]).path
    env = ssh_hosts.env
    local = [str(tmp_path / f"m{i}.sd") for i in range(2)]
    assert sd(env, "dump", "--disks", ",".join(local), "--codec", "lz4", "--chunk-size", "4K", "-q",
              src).rc == 0
    urls = []
    for h, m in zip(ssh_hosts.hosts, local):
        shutil.copy(m, h.path())
        urls.append(h.url())
    code = textwrap.dedent(f"""
        import json, paramiko
        from paramiko.sftp_client import SFTPClient
        n = {{"requests": 0, "bursts": 0}}
        last = ["read"]
        send, recv = SFTPClient._async_request, SFTPClient._read_packet
        def counted_send(self, *a):
            n["requests"] += 1
            if last[0] == "read":
                n["bursts"] += 1
            last[0] = "send"
            return send(self, *a)
        def counted_recv(self):
            last[0] = "read"
            return recv(self)
        SFTPClient._async_request, SFTPClient._read_packet = counted_send, counted_recv
        from stripedump.read.info import info
        d = info({urls!r})
        print(json.dumps({{"n": n, "chunks": [m["chunks"] for m in d["members"]],
                          "complete": d["recovery"]["complete"]}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(env, PYTHONPATH=ROOT), stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["complete"] and min(got["chunks"]) > 1024          # two index records per member
    # per member: OPEN+STAT, head+tail, the index records not in the tail (and CLOSE, unanswered)
    assert got["n"]["bursts"] <= 4 * len(urls), got
    assert got["n"]["requests"] <= 40 * len(urls), got


def test_a_local_join_does_not_load_paramiko(tmp_path, vmcore):
    from conftest import run_python
    b = vmcore("kernel")
    members = [str(tmp_path / f"m{i}") for i in range(2)]
    proc = run_python(textwrap.dedent(f"""
        import sys
        from stripedump.cli import main
        assert main(["dump", "-q", "--disks", {",".join(members)!r}, {b.path!r}]) == 0
        assert main(["join", "-q", *{members!r}, "-o", {str(tmp_path / "j")!r}]) == 0
        assert main(["info", *{members!r}]) == 0
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("paramiko", "cryptography")))
    """))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


# -- mount ------------------------------------------------------------------------

def test_mount_reads_ssh_members(dumped, tmp_path):
    """The server is a forked daemon: it reads on SSH connections of its own (remote.before_fork)."""
    need_mount()
    src, local, urls, env = dumped
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = sd(env, "mount", *urls, mnt, timeout=60)
    try:
        assert res.rc == 0 and res.err == "", res
        assert filecmp.cmp(mnt / "vmcore", src, shallow=False)
        info = sd(env, "info", "--json", *urls)
        assert (mnt / "dump.json").read_text() == info.out
    finally:
        done = sd(env, "umount", mnt, timeout=60)
        if done.rc != 0:
            subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)
    assert done.rc == 0, done


def test_members_that_dump_streamed_to_the_hosts(tmp_path, vmcore, ssh_hosts):
    """Members written by ``dump --disks ssh://...`` (streamed: the trailer ends them) are joined,
    described and verified where they are; one cut mid-record on its host is recovered by
    ``join --allow-incomplete`` exactly as from a local copy of the same bytes."""
    b = vmcore("kernel")
    env = ssh_hosts.env
    hosts = ssh_hosts.hosts
    members = [hosts[0].url(), hosts[1].url(), str(tmp_path / "m2.sd")]
    res = sd(env, "dump", "--disks", ",".join(members), "--codec", "lz4", "--chunk-size", CHUNK, "-q", b.path)
    assert res.rc == 0, res
    out = tmp_path / "joined"
    res = sd(env, "join", "-q", *members, "-o", out)
    assert res.rc == 0, res
    assert filecmp.cmp(out, b.path, shallow=False)
    info = json.loads(sd(env, "info", "--json", *members).out)
    assert [m["state"] for m in info["members"]] == ["complete"] * 3
    assert sd(env, "verify", "-q", *members).rc == 0
    # cut member 1 on its host in the middle of a record
    path = hosts[1].path()
    size = os.path.getsize(path)
    os.truncate(path, size * 2 // 3 + 123)
    copy = tmp_path / "m1-copy.sd"
    shutil.copy(path, copy)
    res = sd(env, "join", *members, "-o", tmp_path / "x")
    assert res.rc in (6, 8) and "Traceback" not in res.err, res
    remote_out, local_out = tmp_path / "remote", tmp_path / "local"
    res = sd(env, "join", "--allow-incomplete", *members, "-o", remote_out)
    assert res.rc == 0, res
    assert sd(env, "join", "--allow-incomplete", hosts[0].path(), copy,
              members[2], "-o", local_out).rc == 0
    assert filecmp.cmp(remote_out, local_out, shallow=False)


def test_a_host_that_hangs(dumped, tmp_path, ssh_hosts):
    """A frozen host (sshd and its sessions stopped: the TCP connection opens, nothing answers)
    costs ConnectTimeout (5 s in the fixture's config), then counts as unreachable."""
    src, local, urls, env = dumped
    ssh_hosts.hosts[1].stop()
    res = sd(env, "info", urls[1], timeout=60)
    assert_one_line_error(res, 6, urls[1])
    out, ref = tmp_path / "remote", tmp_path / "local"
    res = sd(env, "join", "--allow-incomplete", *urls, "-o", out, timeout=60)
    assert res.rc == 0, res
    assert sd(env, "join", "--allow-incomplete", local[0], local[2], "-o", ref).rc == 0
    assert filecmp.cmp(out, ref, shallow=False)


def test_a_host_dying_during_the_join(tmp_path, ssh_hosts):
    """Host 1 is frozen as soon as a join worker has its session there, then killed: the join
    exits 6 with one line; with --allow-incomplete it exits 0, and every page it wrote is the
    source's page or zeros (a missing chunk), some of them zeros."""
    from stripedump.tools import synth
    import sshd            # tests/helpers (on sys.path: pyproject.toml's pythonpath)
    from waiting import wait_until
    src = synth.build(str(tmp_path / "vmcore"), [synth.Load(0, 48 << 20)]).path
    env = ssh_hosts.env
    local = [str(tmp_path / f"m{i}.sd") for i in range(3)]
    assert sd(env, "dump", "--disks", ",".join(local), "--codec", "lz4", "--chunk-size", CHUNK, "-q",
              src).rc == 0
    hosts = ssh_hosts.hosts
    urls = []
    for h, m in zip(hosts, local):
        shutil.copy(m, h.path())
        urls.append(h.url())
    for allow in (False, True):
        ssh_hosts.ready()
        for h, m in zip(hosts, local):
            shutil.copy(m, h.path())
        out = tmp_path / f"joined-{allow}"
        proc = subprocess.Popen([sys.executable, "-m", "stripedump", "join", "--workers", "1",
                                 *(["--allow-incomplete"] if allow else []), *urls, "-o", str(out)],
                                env=dict(env, PYTHONPATH=ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, stdin=subprocess.DEVNULL)
        h = hosts[1]
        # the output exists once the members are open; then the worker's session on host 1
        wait_until(lambda: os.path.exists(f"{out}.partial") and len(sshd.descendants(h.proc.pid)) > 1,
                   "the worker's session on host 1", timeout=60, proc=proc, interval=0.005)
        h.stop()
        h.kill()
        _, err = proc.communicate(timeout=120)
        assert "Traceback" not in err, err
        if not allow:
            assert proc.returncode == 6, err
            assert len(err.strip().splitlines()) == 1 and urls[1] in err, err
            assert not out.exists()
            continue
        assert proc.returncode == 0, err
        assert "missing" in err
        zero = bytes(4096)
        zeros = 0
        with open(out, "rb") as a, open(src, "rb") as b:
            first = True
            while True:
                x, y = a.read(4096), b.read(4096)
                if not y:
                    break
                if first:        # e_flags: join marks the ELF incomplete (DUMP_ELF_INCOMPLETE)
                    assert x[48] == y[48] | 1
                    x, y, first = x[:48] + x[49:], y[:48] + y[49:], False
                assert x == y or x == zero[:len(x)]
                zeros += x != y
        assert zeros > 0


# -- --ssh-option of the reading commands (issue 24, item 17) --------------------------------------

def test_ssh_option_reaches_join_info_verify_and_mount(dumped, tmp_path, ssh_hosts):
    """A HOME without ~/.ssh: the members as user@address:port are refused (no key, no known host);
    with the options ssh -o would take they are read, by join's workers and mount's server too."""
    need_mount()
    src, local, urls, env = dumped
    home = tmp_path / "bare"
    home.mkdir()
    bare = {k: v for k, v in dict(env, HOME=str(home)).items() if k != "SSH_AUTH_SOCK"}
    members = [h.url(f"m{i}.sd", user=True, port=True) for i, h in enumerate(ssh_hosts.hosts)]
    res = sd(bare, "info", *members)
    assert_one_line_error(res, 6, "not in known_hosts")
    opts = ["--ssh-option", f"IdentityFile={ssh_hosts.client_key}", "--ssh-option", "IdentitiesOnly yes",
            "--ssh-option", f"UserKnownHostsFile={ssh_hosts.known_hosts}", "--ssh-option", "BatchMode=yes"]
    out = tmp_path / "joined"
    res = sd(bare, "join", "-q", "--workers", "2", *opts, *members, "-o", out)
    assert res.rc == 0, res
    assert filecmp.cmp(out, src, shallow=False)
    res = sd(bare, "info", "--json", *opts, *members)
    assert res.rc == 0 and _no_paths(json.loads(res.out)) == _no_paths(json.loads(sd(env, "info", "--json",
                                                                                     *local).out)), res
    res = sd(bare, "verify", "-q", *opts, *members)
    assert res.rc == 0, res
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = sd(bare, "mount", *opts, *members, mnt, timeout=60)
    try:
        assert res.rc == 0 and res.err == "", res
        assert filecmp.cmp(mnt / "vmcore", src, shallow=False)
    finally:
        done = sd(bare, "umount", mnt, timeout=60)
        if done.rc != 0:
            subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)
    assert done.rc == 0, done


@pytest.mark.parametrize("command", ["join", "info", "verify", "mount"])
@pytest.mark.parametrize("option,needle", [
    ("Ciphers=aes128-ctr", "Ciphers is not applied when reading members"),
    ("BatchMode=no", "reading members never asks for a password"),
    ("Port=ssh", "'ssh' is not a number"),
    ("IdentityFile", "no value"),
])
def test_an_ssh_option_a_reader_cannot_apply_is_refused(tmp_path, command, option, needle):
    args = {"join": ["m0", "-o", "out"], "info": ["m0"], "verify": ["m0"], "mount": ["m0", "mnt"]}[command]
    res = sd(dict(os.environ), command, "--ssh-option", option, *args)
    assert_one_line_error(res, 2, f"argument --ssh-option: {option!r}: {needle}", f"'stripedump {command} --help'")
    if "not applied" in needle:
        assert "HostName, Port, User, IdentityFile" in res.err
