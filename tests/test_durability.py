"""Durability: what a dump or a join created survives a power loss right after it exits.

A file's data is synced by its writer; its *name* lives in the directory, and
only an fsync of the directory makes a creation or a rename durable.  The
order of the system calls is the promise, so a real run is traced with
strace (``-y`` names the file behind each descriptor) and the order checked.
The --manifest JSON is replaced by a rename, so a reader sees the old or the
new file, never a part: a reader process polls it while dumps rewrite it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from stripedump.format.codecs import CodecSpec
from stripedump.dump.config import DumpConfig
from stripedump.dump.coordinator import dump

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# "PID call(args) = result", or "PID call(args <unfinished ...>" when another process interrupts it
CALL = re.compile(r"^(\d+)\s+(\w+)\((.*?)(?:\)\s+=\s+(-?\d+)|\s*<unfinished \.\.\.>)")


def _strace(tmp_path, *args) -> list[tuple[str, str]]:
    """Run ``stripedump ARGS`` under strace; [(syscall, arguments)] in order, successful calls only."""
    if not shutil.which("strace"):
        pytest.skip("strace not installed (make test-deps installs it)")
    log = tmp_path / "trace"
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run(["strace", "-f", "-y", "-o", str(log), "-e",
                           "trace=openat,fsync,fdatasync,rename,renameat,renameat2",
                           sys.executable, "-m", "stripedump", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=120)
    if proc.returncode and "ptrace" in proc.stderr:
        pytest.skip(f"strace cannot trace here: {proc.stderr.strip()[-200:]}")
    assert proc.returncode == 0, proc.stderr
    calls = []
    for line in log.read_text().splitlines():
        m = CALL.match(line)
        if m and (m.group(4) is None or int(m.group(4)) >= 0):
            calls.append((m.group(2), m.group(3)))
    log.unlink()
    return calls


def _index(calls, name, *needles, after=-1) -> int:
    for i, (n, args) in enumerate(calls):
        if i > after and n == name and all(x in args for x in needles):
            return i
    raise AssertionError(f"no {name}({', '.join(needles)}) after call {after}:\n"
                         + "\n".join(f"{n}({a})" for n, a in calls if "/usr/" not in a and ".py" not in a))


def test_dump_syncs_member_directory_and_manifest_in_order(tmp_path, vmcore):
    b = vmcore("kernel")
    d = tmp_path / "out"
    d.mkdir()
    m0, m1, man = d / "m0", d / "m1", d / "dump.json"
    man.write_text('{"old": true}\n')
    calls = _strace(tmp_path, "dump", "--disks", f"{m0},{m1}", "--manifest", man, "-q", b.path)
    # the members' names are synced once the files exist, before the dump goes on
    created = max(_index(calls, "openat", f'"{m}"', "O_CREAT") for m in (m0, m1))
    dir_sync = _index(calls, "fsync", f"<{d}>", after=created)
    # the manifest: a temporary file in the same directory, synced, renamed, directory synced
    tmp_open = _index(calls, "openat", f"{d}/.dump.json.", "O_CREAT", after=dir_sync)
    tmp = re.search(r'"([^"]+)"', calls[tmp_open][1]).group(1)
    tmp_sync = _index(calls, "fsync", f"<{tmp}>", after=tmp_open)
    renamed = _index(calls, "rename", f'"{tmp}"', f'"{man}"', after=tmp_sync)
    _index(calls, "fsync", f"<{d}>", after=renamed)
    # the members themselves are synced (by their writers)
    for m in (m0, m1):
        assert any(n in ("fsync", "fdatasync") and f"<{m}>" in a for n, a in calls), m
    assert json.loads(man.read_text())["member_paths"] == [str(m0), str(m1)]
    assert sorted(os.listdir(d)) == ["dump.json", "m0", "m1"]      # no temporary file left


def test_join_syncs_the_directory_after_its_rename(tmp_path, vmcore):
    b = vmcore("kernel")
    m = [tmp_path / "m0", tmp_path / "m1"]
    dump(DumpConfig(b.path, tuple(map(str, m)), CodecSpec("lz4"), 1, 65536))
    d = tmp_path / "joined"
    d.mkdir()
    out = d / "vmcore"
    calls = _strace(tmp_path, "join", *m, "-o", out, "-q")
    synced = _index(calls, "fsync", f"<{out}.partial>")
    renamed = _index(calls, "rename", f'"{out}.partial"', f'"{out}"', after=synced)
    _index(calls, "fsync", f"<{d}>", after=renamed)
    assert open(out, "rb").read() == open(b.path, "rb").read()


READER = r"""
import json, os, sys
path, stop = sys.argv[1], sys.argv[2]
seen = bad = 0
while not os.path.exists(stop):
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        continue
    seen += 1
    try:
        json.loads(text)
    except ValueError:
        bad += 1
print(seen, bad)
"""


def test_manifest_is_never_seen_half_written(tmp_path, vmcore):
    """A reader polling --manifest while dumps rewrite it parses every version it reads."""
    b = vmcore("kernel")
    man, stop = tmp_path / "dump.json", tmp_path / "stop"
    man.write_text(json.dumps({"old": True}))
    reader = subprocess.Popen([sys.executable, "-c", READER, str(man), str(stop)], stdout=subprocess.PIPE,
                              text=True)
    try:
        for i in range(12):
            targets = (str(tmp_path / "m0"), str(tmp_path / "m1"))
            dump(DumpConfig(b.path, targets, CodecSpec("lz4"), 1, 65536, force=True, manifest_path=str(man)))
    finally:
        stop.write_text("")
        out, _ = reader.communicate(timeout=60)
    seen, bad = map(int, out.split())
    assert seen > 100, out          # the reader really raced the writes
    assert bad == 0, f"{bad} of {seen} reads of the manifest were not whole JSON"
    assert [p for p in os.listdir(tmp_path) if p.startswith(".dump.json")] == []
