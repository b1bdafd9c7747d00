"""Issue 12, target 4: join to ELF (and verify) against the dump of the same data, measured in one run.

Why a script: the target is a ratio (join's throughput at least 1.2x the
dump's, same data, same codec; verify likewise) and this machine's timings
move by 15% from run to run, so dump, join and verify are timed in the same
rounds, interleaved, and compared by medians.  With ``--base COMMIT`` the
same rounds also run that commit's code (exported with ``git archive``
next to the working tree), so a change is measured before and after in one
run.

Source: ``python -m stripedump.tools.synth src --size 1G`` (memory-like data: 4 of
10 pages zero, the file sparse where the machine's memory is).  Each round,
for each version (order alternating): ``dump -q --codec C --disks m0,m1
src`` (members deleted first), ``join -q -o out m0 m1`` (out deleted first:
a join that replaces a file pays for the old file's unlink), ``verify -q m0
m1``; each timed from interpreter start to exit (all three sync or read
what they must; dump and join end with fsync).  Throughput is source bytes
per second; the ratio join/dump is t_dump / t_join of the same round.

The floor (issue 12: is join on a disk at the disk's limit?): once a round
and codec, after the versions, the same bytes are written by ``cp`` and
synced, with what each command writes: ``cp --sparse=always src copy &&
sync copy`` (the join's output: the source, byte for byte, its zero pages
holes as join leaves them) and ``cp m0 m0c && cp m1 m1c && sync m0c m1c``
(the dump's members).  What cp reads is read first, untimed, so only the
writes and their sync are timed.  join/floor and dump/floor say how close
each is to the file system's own write rate for its output; floor_dump /
floor_join is the best join/dump ratio two commands at that rate can
reach (the output is larger than the members).  A join also reads the
members, which the dump's writers dropped from the page cache: the members'
cold read (their cached pages dropped with ``POSIX_FADV_DONTNEED``, then
``cat``) is timed too, and join/(floor+read) compares the join with reading
its input and writing its output one after the other.

    .venv/bin/python bench/joinspeed.py [--size 1G] [--rounds 3] [--codecs lz4,zstd] [--base 02b246a] [--dir D]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(cmd, cwd, env) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def rm(*paths) -> None:
    for p in paths:
        if os.path.exists(p):
            os.unlink(p)


def copy_time(srcs, dsts) -> float:
    """Seconds to write ``srcs`` to ``dsts`` with cp (holes kept) and sync them, the sources read first."""
    for p in srcs:        # into the page cache: only the writes are timed
        subprocess.run(["cat", p], check=True, stdout=subprocess.DEVNULL)
    t0 = time.perf_counter()
    for p, q in zip(srcs, dsts):
        subprocess.run(["cp", "--sparse=always", p, q], check=True)
    subprocess.run(["sync", *dsts], check=True)
    return time.perf_counter() - t0


def cold_read_time(paths) -> float:
    """Seconds to read ``paths`` from the device: their cached pages dropped first (what a join
    of members written earlier reads; the dump's writers drop them too), no other file's."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    t0 = time.perf_counter()
    subprocess.run(["cat", *paths], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--codecs", default="lz4,zstd")
    ap.add_argument("--base", help="also time this commit's code, interleaved")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where source, members and output go")
    a = ap.parse_args(argv)
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        trees = {"now": ROOT}
        if a.base:
            base = os.path.join(tmp, "base")
            os.makedirs(base)
            subprocess.run(f"git -C {ROOT} archive --format=tar {a.base} stripedump | tar -x -C {base}",
                           shell=True, check=True)
            trees = {"before": base, "now": ROOT}
        for k, tree in trees.items():
            got = subprocess.run([sys.executable, "-c", "import stripedump; print(stripedump.__file__)"],
                                 cwd=tree, check=True, capture_output=True, text=True).stdout.strip()
            if not got.startswith(tree):
                raise SystemExit(f"{k}: python -m stripedump in {tree} loads {got}")
        src = os.path.join(tmp, "src")
        subprocess.run([sys.executable, "-m", "stripedump.tools.synth", src, "--size", a.size], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        size = os.path.getsize(src)
        m0, m1, out = (os.path.join(tmp, n) for n in ("m0.sd", "m1.sd", "out"))
        t: dict = {}
        floors: dict = {}
        for codec in a.codecs.split(","):
            for r in range(a.rounds):
                order = list(trees) if r % 2 == 0 else list(trees)[::-1]
                for k in order:
                    env, here = dict(os.environ), trees[k]    # python -m from the tree: its code first
                    sd = [sys.executable, "-m", "stripedump"]
                    rm(m0, m1, out)
                    row = t.setdefault((codec, k), {"dump": [], "join": [], "verify": []})
                    row["dump"].append(timed(sd + ["dump", "-q", "--codec", codec, "--disks", f"{m0},{m1}", src],
                                             here, env))
                    row["join"].append(timed(sd + ["join", "-q", "-o", out, m0, m1], here, env))
                    row["verify"].append(timed(sd + ["verify", "-q", m0, m1], here, env))
                    if subprocess.run(["cmp", "-s", src, out]).returncode:
                        raise SystemExit(f"{k} {codec}: the joined output differs from the source")
                fl = floors.setdefault(codec, {"join": [], "dump": [], "read": [], "out_bytes": 0, "member_bytes": 0})
                fl["out_bytes"] = os.stat(out).st_blocks * 512
                fl["member_bytes"] = os.path.getsize(m0) + os.path.getsize(m1)
                rm(out)
                fl["read"].append(cold_read_time([m0, m1]))
                fl["join"].append(copy_time([src], [out]))
                fl["dump"].append(copy_time([m0, m1], [m0 + "c", m1 + "c"]))
                rm(out, m0 + "c", m1 + "c")
        rm(m0, m1, out)
    print(f"{a.rounds} interleaved rounds, {a.size} synthetic source ({size} bytes) in {a.dir}, "
          f"2 member files; MB/s of source bytes, medians")
    print("| codec | code | dump MB/s | join MB/s | verify MB/s | join/dump | verify/dump |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for (codec, k), row in t.items():
        med = {op: statistics.median(v) for op, v in row.items()}
        rj = statistics.median(d / j for d, j in zip(row["dump"], row["join"]))
        rv = statistics.median(d / v for d, v in zip(row["dump"], row["verify"]))
        print(f"| {codec} | {k} | {size / med['dump'] / 1e6:.0f} | {size / med['join'] / 1e6:.0f} | "
              f"{size / med['verify'] / 1e6:.0f} | {rj:.2f} | {rv:.2f} |")
    print()
    print("Floors: cp and sync of what each command writes (join: the source with its holes; dump: the members)")
    print("| codec | code | join MB written | cp+sync s | members cold read s | join s | join/floor | "
          "join/(floor+read) | dump MB written | cp+sync s | dump s | dump/floor | floor_dump/floor_join |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (codec, k), row in t.items():
        fl = floors[codec]
        fj, fd, fr = statistics.median(fl["join"]), statistics.median(fl["dump"]), statistics.median(fl["read"])
        print(f"| {codec} | {k} | {fl['out_bytes'] / 1e6:.0f} | {fj:.2f} | {fr:.2f} | "
              f"{statistics.median(row['join']):.2f} | "
              f"{statistics.median(j / f for j, f in zip(row['join'], fl['join'])):.2f} | "
              f"{statistics.median(j / (f + r) for j, f, r in zip(row['join'], fl['join'], fl['read'])):.2f} | "
              f"{fl['member_bytes'] / 1e6:.0f} | {fd:.2f} | {statistics.median(row['dump']):.2f} | "
              f"{statistics.median(d / f for d, f in zip(row['dump'], fl['dump'])):.2f} | "
              f"{statistics.median(d / j for d, j in zip(fl['dump'], fl['join'])):.2f} |")
    print("load average (1, 5, 15 min) at the start: " + " ".join(f"{x:.2f}" for x in load0) +
          "; at the end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
