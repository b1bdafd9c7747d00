#!/usr/bin/env python3
"""Issue 10's mount benchmark: a striped dump opened in place vs joined first, in one run.

    .venv/bin/python bench/mount.py [--work DIR] [--repeat 3] [--json OUT]     # root (FUSE)

Per source, dumped over 2 members with the default codec (lz4):

* ``ready``: seconds from starting ``stripedump mount`` until the first 64
  bytes of the mounted ``vmcore`` and ``vmcore.kdump`` have been read, for a
  256 MiB synthetic machine (memory-like data) and a 64 GiB sparse one (all
  zero: the size of its index is what counts), medians of ``--repeat``;
  next to it, ``join`` of the same members (the alternative: nothing can be
  opened before it ends).
* ``seq``: MB/s of one sequential pass over the mounted ``vmcore`` (1 MiB
  reads, a fresh mount, so every chunk is read and decoded by the mount)
  against the MB/s of ``join`` (source bytes / wall time, output synced).
* ``random``: 4 KiB reads per second at random page-aligned offsets of the
  mounted ``vmcore`` (5,000 reads, fresh mount, opened with O_DIRECT where
  the mount allows it so that the kernel's page cache does not answer).
* ``memory``: peak RSS of the serving process during ``seq`` and ``random``
  (psutil, sampled every 20 ms), against the bound 64 MiB + ``--cache``.
* ``crash``: with the real-kernel fixture and its vmlinux
  (/var/tmp/stripedump-real-vmcore, tests/fixtures/make-real-vmcore.sh with
  WITH_VMLINUX=1), seconds from ``stripedump mount`` to the end of crash's
  ``log`` and ``bt`` on the mounted vmcore, against join + the same crash
  run on the joined file.

Results go to stdout as a table and, with ``--json``, to a file; docs/benchmarks.md quotes them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import psutil  # noqa: E402

from stripedump.tools import synth  # noqa: E402

SD = [sys.executable, "-m", "stripedump"]
REAL = "/var/tmp/stripedump-real-vmcore"
CACHE = 256 << 20


def sd(*args, check=True, **kw):
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([*SD, *map(str, args)], capture_output=True, text=True, env=env, **kw)
    if check and r.returncode:
        raise SystemExit(f"stripedump {' '.join(map(str, args))}: exit {r.returncode}: {r.stderr.strip()}")
    return r


def drop_caches() -> None:
    """Empty the page cache so that every run starts alike (root; skipped silently otherwise)."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass


def build_sources(work: str) -> dict[str, str]:
    out = {}
    p = os.path.join(work, "vmcore-256M")
    synth.build(p, synth.demo_loads(256 << 20))
    out["256M"] = p
    p = os.path.join(work, "vmcore-64G")
    synth.build(p, synth.demo_loads(64 << 30), content=None)
    out["64G"] = p
    return out


def dump(src: str, work: str, name: str) -> list[str]:
    members = [os.path.join(work, f"{name}.m{i}") for i in range(2)]
    sd("dump", "-q", "--force", "--disks", ",".join(members), src)
    return members


class Mounted:
    """``stripedump mount`` in a context: the mountpoint, the serving process, unmounted on the way out."""

    def __init__(self, members, work, cache=CACHE):
        self.members, self.cache = members, cache
        self.mnt = tempfile.mkdtemp(prefix="mnt-", dir=work)

    def __enter__(self):
        self.t0 = time.monotonic()
        sd("mount", "--cache", self.cache, *self.members, self.mnt)
        for name in ("vmcore", "vmcore.kdump"):
            with open(os.path.join(self.mnt, name), "rb") as f:
                f.read(64)
        self.ready = time.monotonic() - self.t0
        self.proc = server(self.mnt)
        return self

    def __exit__(self, *exc):
        sd("umount", self.mnt, check=False)
        os.rmdir(self.mnt)


def server(mnt: str):
    """The process serving ``mnt``: a stripedump process whose command line names it."""
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if any("stripedump" in c for c in cmd) and mnt in cmd:
            return p
    return None


class PeakRSS:
    def __init__(self, proc):
        self.proc, self.peak, self._stop = proc, 0, threading.Event()

    def __enter__(self):
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except (psutil.Error, AttributeError):
                return
            time.sleep(0.02)

    def __exit__(self, *exc):
        self._stop.set()
        self.t.join()


def seq_read(path: str) -> tuple[int, float]:
    t0 = time.monotonic()
    n = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            n += len(b)
    return n, time.monotonic() - t0


def random_reads(path: str, count: int = 5000, seed: int = 1) -> float:
    size = os.path.getsize(path)
    rnd = random.Random(seed)
    offs = [rnd.randrange(size // 4096) * 4096 for _ in range(count)]
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError:
        fd = os.open(path, os.O_RDONLY)
    import mmap
    buf = mmap.mmap(-1, 4096)
    try:
        t0 = time.monotonic()
        for off in offs:
            os.preadv(fd, [buf], off)
        return count / (time.monotonic() - t0)
    finally:
        os.close(fd)


def timed_join(members, work) -> float:
    out = os.path.join(work, "joined")
    t0 = time.monotonic()
    sd("join", "--force", *members, "-o", out)
    t = time.monotonic() - t0
    os.unlink(out)
    return t


def crash_run(vmlinux: str, vmcore: str) -> float:
    script = "log\nbt\nquit\n"
    t0 = time.monotonic()
    r = subprocess.run(["crash", "-s", vmlinux, vmcore], input=script, capture_output=True, text=True,
                       timeout=600)
    t = time.monotonic() - t0
    if r.returncode or "PID:" not in r.stdout:
        raise SystemExit(f"crash failed on {vmcore}: {r.stderr.strip()[-300:]}")
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/var/tmp")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="sd-mount-bench-", dir=a.work)
    res: dict = {"repeat": a.repeat, "cache_bytes": CACHE}
    try:
        srcs = build_sources(work)
        members = {k: dump(p, work, k) for k, p in srcs.items()}
        for k in srcs:
            ready, joins = [], []
            for _ in range(a.repeat):
                drop_caches()
                with Mounted(members[k], work) as m:
                    ready.append(m.ready)
                drop_caches()
                joins.append(timed_join(members[k], work))
            res[f"ready_{k}_s"] = statistics.median(ready)
            res[f"join_{k}_s"] = statistics.median(joins)
        size = os.path.getsize(srcs["256M"])
        seq, joinbw, rnd, peak = [], [], [], 0
        for _ in range(a.repeat):
            with Mounted(members["256M"], work) as m, PeakRSS(m.proc) as rss:
                n, t = seq_read(os.path.join(m.mnt, "vmcore"))
                assert n == size, (n, size)
                seq.append(n / t / 1e6)
            peak = max(peak, rss.peak)
            with Mounted(members["256M"], work) as m, PeakRSS(m.proc) as rss:
                rnd.append(random_reads(os.path.join(m.mnt, "vmcore")))
            peak = max(peak, rss.peak)
            joinbw.append(size / timed_join(members["256M"], work) / 1e6)
        res.update(seq_mb_s=statistics.median(seq), join_mb_s=statistics.median(joinbw),
                   random_reads_s=statistics.median(rnd), peak_rss_bytes=peak)
        vmlinux, real = os.path.join(REAL, "vmlinux"), os.path.join(REAL, "vmcore")
        if os.path.exists(vmlinux) and shutil.which("crash"):
            rm = dump(real, work, "real")
            via_mount, via_join = [], []
            for _ in range(a.repeat):
                with Mounted(rm, work) as m:
                    t0 = m.t0
                    crash_run(vmlinux, os.path.join(m.mnt, "vmcore"))
                    via_mount.append(time.monotonic() - t0)
                out = os.path.join(work, "real.joined")
                t0 = time.monotonic()
                sd("join", "--force", *rm, "-o", out)
                crash_run(vmlinux, out)
                via_join.append(time.monotonic() - t0)
                os.unlink(out)
            res.update(crash_via_mount_s=statistics.median(via_mount), crash_via_join_s=statistics.median(via_join))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [("time until readable, 256 MiB dump", f"{res['ready_256M_s']:.2f} s (join: {res['join_256M_s']:.2f} s)",
             "< 1 s", res["ready_256M_s"] < 1),
            ("time until readable, 64 GiB sparse dump", f"{res['ready_64G_s']:.2f} s (join: {res['join_64G_s']:.2f} s)",
             "<= 2 x the 256 MiB time", res["ready_64G_s"] <= 2 * res["ready_256M_s"]),
            ("sequential read of the mounted vmcore vs join", f"{res['seq_mb_s']:.0f} vs {res['join_mb_s']:.0f} MB/s "
             f"= x{res['seq_mb_s'] / res['join_mb_s']:.2f}", ">= x0.5", res["seq_mb_s"] >= 0.5 * res["join_mb_s"]),
            ("random 4 KiB reads of the mounted vmcore", f"{res['random_reads_s']:.0f} /s", ">= 2000 /s",
             res["random_reads_s"] >= 2000),
            ("peak RSS of the mount process", f"{res['peak_rss_bytes'] / 2**20:.1f} MiB (cache {CACHE >> 20} MiB)",
             "<= 64 MiB + cache", res["peak_rss_bytes"] <= (64 << 20) + CACHE)]
    if "crash_via_mount_s" in res:
        rows.append(("crash log + bt: mount vs join, then crash", f"{res['crash_via_mount_s']:.2f} s vs "
                     f"{res['crash_via_join_s']:.2f} s", "mount first", res["crash_via_mount_s"] < res["crash_via_join_s"]))
    print("| measure | result | goal | met |\n|---|---|---|---|")
    for name, got, goal, ok in rows:
        print(f"| {name} | {got} | {goal} | {'yes' if ok else 'NO'} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
