"""Every exit code the README and the man page list, provoked for real and compared with both tables.

Issue 24, item 7: the README's Safety section said a missing remote directory
exits 4, the code (and a test) said 5.  Here one table, ``CASES``, names for
each documented code the causes that provoke it, how (a real ``stripedump``
process: a real file, a real lock, a real sshd host, a real signal), and the
words both documents' entries for that code must contain; the prose that
names a cause's exit code (``prose``) must name the same code wherever it
says it.  A code documented but never provoked here, or provoked and not
documented, fails ``test_every_documented_code_is_provoked``.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

from stripedump.errors import ExitCode

from conftest import ROOT, CliResult, run_cli
from waiting import wait_until

README = os.path.join(ROOT, "README.md")
MAN = os.path.join(ROOT, "docs", "stripedump.1")


def _words(text: str) -> str:
    """Lower case, roff escapes and markup gone, whitespace collapsed."""
    text = re.sub(r"\\f[BIRP]", "", text.replace("\\-", "-").replace("\\(mu", "x"))
    return " ".join(text.replace("`", "").replace('"', "").lower().split())


def readme_codes() -> dict[int, str]:
    """The README's exit code table: {code: meaning} (a row "129, 130, 143" gives each code)."""
    text = open(README).read()
    table = text.split("### Exit codes", 1)[1].split("\n\n", 2)[1]
    out = {}
    for row in table.splitlines()[2:]:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        for code in re.findall(r"\d+", cells[0]):
            out[int(code)] = _words(cells[1])
    return out


def man_codes() -> dict[int, str]:
    """The man page's EXIT STATUS section: {code: meaning}."""
    text = open(MAN).read().split(".SH EXIT STATUS", 1)[1].split("\n.SH ", 1)[0]
    out = {}
    for entry in text.split(".TP\n")[1:]:
        head, _, body = entry.partition("\n")
        for code in re.findall(r"\d+", head):
            out[int(code)] = _words(body)
    return out


def _sentences(path: str) -> list[str]:
    return re.split(r"(?<=[.;])\s", _words(open(path).read()))


# -- how each cause is provoked: fn(tmp_path, env) -> CliResult ------------------------------------

def _source(tmp_path, size=4 << 20):
    from stripedump.tools import synth
    path = tmp_path / "vmcore"
    if not path.exists():
        synth.build(str(path), synth.demo_loads(size))
    return str(path)


def _dump_ok(tmp_path, env):
    return run_cli("dump", "-q", "--disks", tmp_path / "m0", _source(tmp_path))


def _internal(tmp_path, env):
    return run_cli("info", tmp_path / "m0", without=["stripedump.read.info"])


def _usage(tmp_path, env):
    return run_cli("dump", "--chunk-size", "0", "--disks", tmp_path / "m0", _source(tmp_path))


def _not_elf(tmp_path, env):
    (tmp_path / "notes.txt").write_text("not a vmcore\n" * 100)
    return run_cli("dump", "--disks", tmp_path / "m0", tmp_path / "notes.txt")


def _non_empty(tmp_path, env):
    (tmp_path / "m0").write_bytes(b"precious")
    return run_cli("dump", "--disks", tmp_path / "m0", _source(tmp_path))


def _twice(tmp_path, env):
    return run_cli("dump", "--disks", f"{tmp_path / 'm0'},{tmp_path / 'm0'}", _source(tmp_path))


def _held(tmp_path, env):
    fd = os.open(tmp_path / "m0", os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)            # as another dump holds its targets
        return run_cli("dump", "--disks", tmp_path / "m0", _source(tmp_path))
    finally:
        os.close(fd)


def _missing_dir(tmp_path, env):
    return run_cli("dump", "--disks", tmp_path / "no" / "m0", _source(tmp_path))


def _manifest(tmp_path, env):
    return run_cli("dump", "--manifest", tmp_path / "no" / "m.json", "--disks", tmp_path / "m0",
                   _source(tmp_path))


def _sd(env, *args) -> CliResult:
    p = subprocess.run([sys.executable, "-m", "stripedump", *map(str, args)], capture_output=True, text=True,
                       env=dict(env, PYTHONPATH=ROOT), stdin=subprocess.DEVNULL, timeout=120)
    return CliResult(p)


def _remote_missing_dir(tmp_path, hosts):
    return _sd(hosts.env, "dump", "--disks", hosts.hosts[0].url("no/such/dir/m.sd"), _source(tmp_path))


def _unreachable(tmp_path, hosts):
    # a loopback address and port where nothing listens: ssh itself fails at once
    return _sd(hosts.env, "dump", "--disks", "ssh://127.0.0.1:1/tmp/m.sd", _source(tmp_path))


def _members(tmp_path, n=2):
    m = [tmp_path / f"m{i}" for i in range(n)]
    assert run_cli("dump", "-q", "--disks", ",".join(map(str, m)), _source(tmp_path)).rc == 0
    return m


def _unreadable_member(tmp_path, env):
    (tmp_path / "junk").write_bytes(os.urandom(65536))
    return run_cli("info", tmp_path / "junk")


def _checksum(tmp_path, env):
    m = _members(tmp_path)
    with open(m[1], "r+b") as f:
        f.seek(os.path.getsize(m[1]) // 2)
        f.write(b"\x00\xff\x00\xff")
    return run_cli("verify", *m)


def _incomplete(tmp_path, env):
    return run_cli("verify", _members(tmp_path)[0])


def _repaired(tmp_path, env):
    m = _members(tmp_path)
    with open(m[0], "r+b") as f:       # one byte of the footer: an index the records rebuild
        f.seek(os.path.getsize(m[0]) - 100)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))
    return run_cli("verify", *m)


def _join_output(tmp_path, env):
    return run_cli("join", *_members(tmp_path), "-o", tmp_path / "no" / "out")


def _not_a_mount(tmp_path, env):
    (tmp_path / "mnt").mkdir()
    return run_cli("umount", tmp_path / "mnt")


def _wiring(tmp_path, env):
    conf = tmp_path / "kdump.conf"
    conf.write_text('STRIPEDUMP_CODEC="lz4"\n')          # no targets: a problem of the wiring
    return run_cli("kdump", "test", "--config", conf, "--records", tmp_path / "records")


def _signal(sig):
    def provoke(tmp_path, env):
        src = _source(tmp_path, 48 << 20)
        p = subprocess.Popen([sys.executable, "-m", "stripedump", "dump", "-q", "--codec", "zlib:9", "--workers",
                              "1", "--chunk-size", "256K", "--disks", str(tmp_path / "m0"), src],
                             env=dict(os.environ, PYTHONPATH=ROOT), stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
        wait_until(lambda: os.path.exists(tmp_path / "m0") and os.path.getsize(tmp_path / "m0") > 256 << 10,
                   "the dump writing", proc=p)
        p.send_signal(sig)
        out, err = p.communicate(timeout=60)
        return CliResult(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return provoke


class Case:
    """One cause of an exit code: ``words`` both tables say for the code, ``prose`` a phrase whose
    sentences (README, man page) name this code wherever they name one, ``needle`` in the error."""

    def __init__(self, code, name, provoke, words, needle="", prose="", ssh=False):
        self.code, self.name, self.provoke, self.words = code, name, provoke, words
        self.needle, self.prose, self.ssh = needle, prose, ssh


CASES = [
    Case(0, "dump", _dump_ok, "success"),
    Case(1, "internal", _internal, "internal error", "internal error"),
    Case(2, "usage", _usage, "usage error", "--chunk-size"),
    Case(3, "not-elf", _not_elf, "not an elf vmcore"),
    Case(4, "non-empty", _non_empty, "refused for safety", "non-empty file"),
    Case(4, "twice", _twice, "given twice", "given twice"),
    Case(4, "held", _held, "another process", "in use"),
    Case(5, "missing-dir", _missing_dir, "directory missing", "does not exist", prose="missing or not writable"),
    Case(5, "remote-missing-dir", _remote_missing_dir, "on an ssh:// host", "does not exist there",
         prose="missing or not writable", ssh=True),
    Case(5, "unreachable", _unreachable, "cannot be reached", "cannot reach host", ssh=True),
    Case(5, "manifest", _manifest, "--manifest cannot be written", "manifest"),
    Case(6, "unreadable", _unreadable_member, "members are unreadable"),
    Case(7, "checksum", _checksum, "checksum"),
    Case(8, "incomplete", _incomplete, "incomplete", "missing"),
    Case(9, "join-output", _join_output, "join output cannot be written"),
    Case(10, "not-a-mount", _not_a_mount, "not a stripedump mount", "not a mount point"),
    Case(11, "kdump-wiring", _wiring, "the kdump wiring has problems", "kdump test:"),
    Case(12, "repaired", _repaired, "damaged only where the readers repair it", "repair"),
    Case(129, "sighup", _signal(signal.SIGHUP), "sighup", "SIGHUP"),
    Case(130, "sigint", _signal(signal.SIGINT), "sigint", "SIGINT"),
    Case(143, "sigterm", _signal(signal.SIGTERM), "sigterm", "SIGTERM"),
]


def test_every_documented_code_is_provoked():
    """README, man page and ExitCode list the same codes, and each has a case here."""
    codes = {int(c) for c in ExitCode}
    assert set(readme_codes()) == codes
    assert set(man_codes()) == codes
    assert {c.code for c in CASES} == codes


@pytest.mark.parametrize("case", CASES, ids=[f"{c.code}-{c.name}" for c in CASES])
def test_both_tables_say_what_provokes_it(case):
    for doc, table in (("README", readme_codes()), ("man page", man_codes())):
        assert case.words in table[case.code], (doc, case.code, table[case.code])
    if case.prose:        # the prose names this code for this cause, and no other
        for path in (README, MAN):
            for s in _sentences(path):
                if case.prose in s:
                    named = {int(n) for n in re.findall(r"exit(?:s| status)? (\d+)", s)}
                    assert named <= {case.code}, (path, s)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.code}-{c.name}" for c in CASES])
def test_each_code_is_what_the_cause_gives(case, tmp_path, request):
    env = None
    if case.ssh:
        if shutil.which("ssh") is None:
            pytest.skip("no ssh client")
        env = request.getfixturevalue("ssh_hosts")
    r = case.provoke(tmp_path, env)
    assert r.rc == case.code, r
    assert "Traceback" not in r.err, r.err
    if case.code:        # one error line (verify reports each problem before it), naming the cause
        errors = [ln for ln in r.err.splitlines() if re.match(r"stripedump: (internal )?error: ", ln)]
        assert len(errors) == 1, r.err
        assert case.needle.lower() in errors[0].lower(), (case.needle, errors[0])
