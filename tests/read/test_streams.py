"""A member cannot be read from a stream: ``-`` and pipes are refused, saying what works (issue 24, item 16).

``ssh host cat m0 | stripedump join - m1 -o out`` was "member -: cannot open: No such file or
directory", and a pipe given by name (``join <(ssh host cat m0) m1``) an internal error ("Illegal
seek", exit 1).  A member is read at random (read/member.py: the header, then the trailer, footer
and index at its end; read/pool.py: records by several forked workers, each reading its own), so a
stream is refused: ``-`` as a usage error (2), a pipe as an unreadable member (6), each in one line
that says what to do instead.  What it says works: a member dumped to standard output and saved is
joined like any other.
"""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys

import pytest

from conftest import ROOT, assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    """A dump over two members, the first streamed to standard output (``--disks -,m1``) and saved."""
    from stripedump.tools import synth
    d = tmp_path_factory.mktemp("stream")
    b = synth.build(str(d / "vmcore"), **synth.layouts()["kernel"])
    m0, m1 = d / "m0.saved", d / "m1"
    with open(m0, "wb") as out:
        p = subprocess.run([sys.executable, "-m", "stripedump", "dump", "-q", "--chunk-size", "256K",
                            "--disks", f"-,{m1}", b.path], stdout=out, stderr=subprocess.PIPE,
                           env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
    assert p.returncode == 0, p.stderr
    return b.path, str(m0), str(m1)


def _piped(args, stdin_file, tmp_path):
    with open(stdin_file, "rb") as f:
        p = subprocess.run([sys.executable, "-m", "stripedump", *map(str, args)], stdin=f, capture_output=True,
                           text=True, env=dict(os.environ, PYTHONPATH=ROOT), timeout=60, cwd=tmp_path)

    class R:
        rc, out, err = p.returncode, p.stdout, p.stderr
    return R


@pytest.mark.parametrize("command", ["join", "info", "verify", "mount"])
def test_dash_is_refused_saying_how_to_do_it(streamed, tmp_path, command):
    _, m0, m1 = streamed
    args = {"join": ["join", "-", m1, "-o", "out"], "info": ["info", "-", m1], "verify": ["verify", "-", m1],
            "mount": ["mount", "-", m1, "mnt"]}[command]
    r = _piped(args, m0, tmp_path)
    assert_one_line_error(r, 2, "- (standard input) cannot be a member", "read at random", "cat PATH > m0",
                          "ssh://HOST/PATH", f"'stripedump {command} --help'")
    assert os.listdir(tmp_path) == []            # no output, no OUT.partial


@pytest.mark.parametrize("command", ["join", "info", "verify"])
def test_a_pipe_given_by_name_is_refused_not_an_internal_error(streamed, tmp_path, command):
    _, m0, m1 = streamed
    fifo = tmp_path / "m0.fifo"
    os.mkfifo(fifo)
    feed = subprocess.Popen(["sh", "-c", f"cat {m0} > {fifo}"], stderr=subprocess.DEVNULL)
    try:
        args = {"join": ["join", fifo, m1, "-o", tmp_path / "out"], "info": ["info", fifo, m1],
                "verify": ["verify", fifo, m1]}[command]
        r = run_cli(*args, timeout=60)
        assert_one_line_error(r, 6, f"member {fifo} is a pipe", "read at random", "ssh://HOST/PATH")
        assert sorted(os.listdir(tmp_path)) == ["m0.fifo"]
    finally:
        feed.kill()
        feed.wait()


def test_what_the_refusal_advises_works(streamed, tmp_path):
    """The streamed member, saved to a file, joins with the other: the source, byte for byte."""
    src, m0, m1 = streamed
    r = run_cli("join", m0, m1, "-o", tmp_path / "out")
    assert r.rc == 0, r
    assert filecmp.cmp(tmp_path / "out", src, shallow=False)
