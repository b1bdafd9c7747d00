#!/usr/bin/env python3
"""Soak: kill the dump at N random moments; join --allow-incomplete must recover exactly what reached disk.

    .venv/bin/python bench/soak.py --runs 200           # prints "200/200 recovered" when all is well

Each run starts ``stripedump dump`` on a small synthetic vmcore with a slow
codec (zlib:9) so that the kill lands mid-dump, sleeps a random time up to a
little more than a whole dump takes, and then kills with SIGKILL, in turn:

* the whole process group at once (what power loss leaves of a process tree,
  except the page cache, which SIGKILL does not lose);
* the coordinator alone (the OOM killer's or a watchdog's choice: its
  children notice and stop on their own);
* one worker or writer (the dump must notice, finalize what it can as
  incomplete and exit 8).

Once every process of the dump is gone it checks, with an oracle that
shares nothing with the reader under test (no walk, no index; it lives in
tests/helpers/oracle.py, which the tests that kill a dump use too):

* which chunks reached disk: every chunk record is deterministic (same
  source, codec and geometry), so the oracle encodes each chunk once, up
  front, and a chunk reached disk exactly when its whole record, byte for
  byte, is somewhere in a member file;
* that ``join --allow-incomplete --json`` recovered exactly those: the
  count of chunks it joined, and the missing PFN and file ranges it reports,
  equal the oracle's;
* that every byte of the output is right: the source, with zeros where the
  missing chunks' bytes go (and e_flags bit 0, DUMP_ELF_INCOMPLETE, set when
  anything is missing), compared byte for byte; except the ELF header, the
  program headers and the notes, which join rebuilds from the manifest (the
  oracle finds them in the source with its own few lines of ELF parsing).

A run whose dump was killed before any member had a header has nothing to
recover; join must then refuse with exit 6.  Failures keep their files in
``--dir`` and are listed; the exit status is 0 only when every run passed.

``--reuse``: reused kdump disks (issue 9, case 1).  The members are loop
devices over sparse files in the work directory (detached at the end),
which first receive a complete dump of a *different* source of the same
geometry (every non-zero page changed).  Each run then dumps the real source
over them with ``--force`` and is killed as above; the devices keep whatever
the killed run left for the next one, so every run writes over an older
dump, whole or torn.  The oracle counts only the records of this run's dump
(its id, read from the member headers), so an older dump's records, whether
of the other source or of the same source, must never be joined: join must
give, for every page, this source's bytes or a declared-missing range,
exactly as above.  A run killed before any member had its header has left
the devices byte for byte as they were (checked); they still hold the
previous dump, which is not this run's to recover.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager

import xxhash

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "helpers"))

# the oracle, and how a dump is started and killed: shared with the tests (tests/helpers/oracle.py)
from oracle import KILL_MODES, Oracle, check_run, group_gone, kill_dump, start_dump  # noqa: E402
from stripedump.tools import synth  # noqa: E402
from stripedump.runtime.units import parse_size  # noqa: E402

KILLED = {"group": "the process group", "coordinator": "the coordinator", "child": "one worker or writer"}


def _other_content(pfn: int, ps: int) -> bytes:
    """The older crash on a reused disk: the same machine, every non-zero page changed."""
    p = synth.page_content(pfn, ps)
    return bytes([p[0] ^ 0xA5]) + p[1:] if p.strip(b"\0") else p


@contextmanager
def loop_devices(work: str, n: int, size: int):
    """``n`` loop devices over sparse files of ``size`` bytes in ``work``; detached and deleted on the way out."""
    devs, imgs = [], []
    try:
        for i in range(n):
            imgs.append(os.path.join(work, f"loop{i}.img"))
            with open(imgs[-1], "wb") as f:
                f.truncate(size)
            r = subprocess.run(["losetup", "-f", "--show", imgs[-1]], capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit(f"soak --reuse: cannot set up a loop device: {r.stderr.strip()}")
            devs.append(r.stdout.strip())
        yield devs
    finally:
        for d in devs:
            subprocess.run(["losetup", "-d", d], capture_output=True)
        for img in imgs:
            if os.path.exists(img):
                os.unlink(img)


def _head_id(path: str) -> bytes:
    """The dump id in the member header at the start of ``path`` (MemberHeader.dump_id)."""
    try:
        with open(path, "rb") as f:
            return f.read(28)[12:28]
    except FileNotFoundError:
        return b""


def _digest(paths: list[str]) -> list[int]:
    out = []
    for p in paths:
        h = xxhash.xxh3_128()
        with open(p, "rb") as f:
            while b := f.read(4 << 20):
                h.update(b)
        out.append(h.intdigest())
    return out


def _next_second() -> None:
    """Sleep into the next whole second of the wall clock.

    A member header records when its dump started in whole seconds, and join
    --allow-incomplete, given members of several dumps (a run killed after
    writing the header of member 0 but not of member 1, which still holds the
    previous run's), reads the newest and counts the others' members as
    missing; two dumps started in the same second cannot be told apart, and
    join refuses them.  On a real machine two crashes are seconds apart at
    least; here runs follow each other within a second, so each run starts
    in a later second than the dump before it on the same devices.
    """
    t = time.time()
    time.sleep(int(t) + 1 - t + 0.01)


def _calibrate(src: str, members: list[str], a, extra=()) -> tuple[float, float]:
    """(seconds an undisturbed dump takes, seconds until it starts writing), measured on ``members``."""
    blank = {m: _head_id(m) for m in members}
    t0 = time.monotonic()
    p = start_dump(src, members, a.codec, a.workers, a.chunk_size, extra)
    first = None
    while p.poll() is None:
        if first is None and _head_id(members[0]) != blank[members[0]]:
            first = time.monotonic() - t0
        time.sleep(0.005)
    whole = time.monotonic() - t0
    if p.returncode != 0:
        raise SystemExit(f"soak: the undisturbed dump failed (exit {p.returncode}): {p.stderr.read().decode()[-300:]}")
    return whole, first or 0.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--size", default="48M", help="RAM of the synthetic source (default 48M)")
    ap.add_argument("--codec", default="zlib:9", help="a slowish codec, so kills land mid-dump")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chunk-size", default="256K")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--dir", default=None, help="work directory (default: a new one in $TMPDIR)")
    ap.add_argument("--reuse", action="store_true",
                    help="members are loop devices that hold an older dump of another source (needs root)")
    ap.add_argument("-q", "--quiet", action="store_true", help="only the result line")
    a = ap.parse_args(argv)
    seed = a.seed if a.seed is not None else random.randrange(1 << 32)
    rng = random.Random(seed)
    work = a.dir or tempfile.mkdtemp(prefix="stripedump-soak-")
    os.makedirs(work, exist_ok=True)
    src = os.path.join(work, "vmcore")
    if not os.path.exists(src):
        synth.build(src, synth.demo_loads(parse_size(a.size)))
    oracle = Oracle(src, a.codec, parse_size(a.chunk_size))
    say = (lambda *x: None) if a.quiet else print
    if not a.reuse:
        # how long an undisturbed dump takes here, and when it starts writing, to spread the kills
        cal = [os.path.join(work, f"cal{i}") for i in range(2)]
        whole, first = _calibrate(src, cal, a)
        for m in cal:
            os.unlink(m)
        say(f"soak: seed {seed}, source {os.path.getsize(src) >> 20} MiB, {len(oracle.records)} chunks, "
            f"{a.codec}, an undisturbed dump takes {whole:.2f} s and writes from {first:.2f} s; "
            f"work dir {work}")
        return _soak(a, rng, seed, work, src, oracle, whole, first, None, say)
    old = os.path.join(work, "vmcore-older")
    if not os.path.exists(old):
        synth.build(old, synth.demo_loads(parse_size(a.size)), content=_other_content)
    with loop_devices(work, 3, os.path.getsize(src) + (8 << 20)) as devs:
        # the older dump, on all three devices, times an undisturbed dump too
        whole, first = _calibrate(old, devs, a, ("--force",))
        say(f"soak --reuse: seed {seed}, source {os.path.getsize(src) >> 20} MiB, {len(oracle.records)} chunks, "
            f"{a.codec}; loop devices {', '.join(devs)} hold a complete dump of another source of the "
            f"same geometry, which took {whole:.2f} s and wrote from {first:.2f} s; work dir {work}")
        return _soak(a, rng, seed, work, src, oracle, whole, first, devs, say)


def _soak(a, rng, seed, work, src, oracle, whole, first, devs, say) -> int:
    """The runs: plain (new member files each run) or over the reused loop devices ``devs``."""
    passed, failures, stats = 0, [], {"killed mid-dump": 0, "finished first": 0}
    table: dict[str, dict[str, int]] = {}
    seen = {_head_id(d) for d in devs} if devs else set()     # dump ids the devices have held
    for i in range(a.runs):
        nmem = rng.choice((2, 3))
        members = devs[:nmem] if devs else [os.path.join(work, f"r{i}-m{j}") for j in range(nmem)]
        mode = KILL_MODES[i % len(KILL_MODES)]
        if devs:
            before = _digest(members)
            _next_second()
        p = start_dump(src, members, a.codec, a.workers, a.chunk_size, ("--force",) if devs else ())
        delay = rng.uniform(first * 0.8, whole * 1.05)
        time.sleep(delay)
        rc_before = p.poll()
        what = kill_dump(p, mode, rng) if rc_before is None else "nothing (the dump had ended)"
        p.wait()
        gone = group_gone(p.pid, 60)
        if not gone:
            os.killpg(p.pid, signal.SIGKILL)
        stats["finished first" if rc_before is not None else "killed mid-dump"] += 1
        out = os.path.join(work, f"r{i}-out")
        older = ""
        if not gone:
            ok, msg, n = False, "the dump hung after the kill", 0
        elif not devs:
            ok, msg, n = check_run(oracle, members, out)
        else:
            ids = [_head_id(m) for m in members]
            new = set(ids) - seen
            if not new:
                ok, n = _digest(members) == before, -1
                msg = ("no member has this dump's header yet: the devices are unchanged (they hold the "
                       "previous dump)" if ok else "no member has this dump's header, yet the devices changed")
            elif len(new) > 1:
                ok, msg, n = False, f"members hold {len(new)} new dump ids", 0
            else:
                did = new.pop()
                seen.add(did)
                kept = sum(x != did for x in ids)
                older = f"; {kept} member(s) still hold an older dump's header" if kept else ""
                ok, msg, n = check_run(oracle, members, out, did)
        say(f"run {i + 1:3d}: {nmem} members, killed {what} after {delay:.3f} s (dump exit "
            f"{p.returncode}): {'ok' if ok else 'FAILED'}: {msg}{older}")
        victim = "nothing (the dump had ended)" if rc_before is not None else \
            KILLED["child" if what.startswith("child") else mode if what != "coordinator" else "coordinator"]
        row = table.setdefault(victim, {})      # what was killed: "child" with no child yet kills the coordinator
        cat = ("no header" if n == -1 or (n == 0 and "refused" in msg) else
               "all" if n == len(oracle.records) else "some")
        for key in ("runs", cat) + (("older header kept",) if older else ()):
            row[key] = row.get(key, 0) + 1
        if ok:
            passed += 1
            for f in ([] if devs else members) + [out]:
                if os.path.exists(f):
                    os.unlink(f)
        else:
            failures.append((i + 1, msg))
            if devs:        # the devices go on to the next run: keep what this one left
                for j, m in enumerate(members):
                    shutil.copyfile(m, os.path.join(work, f"r{i}-m{j}"))
    print(f"{passed}/{a.runs} recovered")
    say(f"soak: {stats['killed mid-dump']} killed mid-dump, {stats['finished first']} finished before "
        f"the kill; seed {seed}")
    for what, row in table.items():      # "some": some chunks of this dump on disk; "all": every one
        say(f"  {what}: " + ", ".join(f"{k} {v}" for k, v in row.items()))
    for i, msg in failures:
        print(f"  run {i} failed: {msg} (files kept in {work})")
    if not failures and not a.dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if not failures else 1


if __name__ == "__main__":
    raise SystemExit(main())
