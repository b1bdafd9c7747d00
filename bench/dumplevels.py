#!/usr/bin/env python3
"""``stripedump dump -d 31`` against ``makedumpfile -d 31 -l``, in one run (issue 11).

    .venv/bin/python bench/dumplevels.py --repeat 3
    .venv/bin/python bench/dumplevels.py --vmcore /var/tmp/stripedump-real-vmcore/vmcore --json out.json

Why a script of its own: issue 11 is judged on the time of a filtered dump
against makedumpfile's, on the filled real-kernel fixture (at most the same
time) and on a small freshly booted guest (at most twice: makedumpfile needs
a fraction of a second there, stripedump's fixed cost counts), and on how
fast one worker classifies pages, from one worker to two.

What it runs, for each vmcore given (default: the filled fixture
/var/tmp/stripedump-bench/real-m1536-f1024, made by bench/compare.py, and the
fresh 192 MiB guest of tests/fixtures/make-real-vmcore.sh):

* the vmcore rewritten into /proc/vmcore's layout (bench/normalize_vmcore.py,
  as bench/compare.py does: makedumpfile 1.7.2 cannot read QEMU's), in a
  fresh directory next to it, removed at the end;
* page cache warm (the source read once before every round); outputs deleted
  and ``sync`` run before each timed command (untimed);
* ``stripedump dump -d 31 --codec lzo --workers W`` over two member files, for
  W = 1 and 2 (it fsyncs its members), and ``makedumpfile -d 31 -l SRC OUT``
  followed by ``sync OUT`` (timed together), interleaved, --repeat times;
  medians reported, with output sizes and the pages each left out;
* pages classified per second by one worker: ``PageClassifier.classify`` of
  every chunk (4 MiB, the default with -d; and 1 MiB) at level 31 and at
  level 30 (struct pages only, no zero test), in this process, given the
  pages already read (as a dump worker does), median of --repeat passes.

The machine may be shared: the load average before and after is printed with
the results; compare the two tools only within one run.  stripedump's modules
are byte-compiled first (``compileall``), as an installed package has them: with
PYTHONDONTWRITEBYTECODE set, a source tree would otherwise be compiled on every
run (0.13 s here).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import normalize_vmcore  # noqa: E402

DEFAULTS = ("/var/tmp/stripedump-bench/real-m1536-f1024/vmcore", "/var/tmp/stripedump-real-vmcore/vmcore")
STRIPEDUMP = REPO / ".venv" / "bin" / "stripedump"


def timed(cmd: list[str], then: list[str] | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if p.returncode == 0 and then:
        subprocess.run(then, check=True)
    dt = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"dumplevels: {cmd[0]} failed (exit {p.returncode}): {p.stderr.strip()[-300:]}")
    return dt, p.stdout


def clean(paths) -> None:
    for p in paths:
        if os.path.exists(p):
            os.unlink(p)
    subprocess.run(["sync"], check=False)


def warm(path: str) -> None:
    with open(path, "rb") as f:
        while f.read(8 << 20):
            pass


def classify_rate(src_path: str, level: int, repeat: int, chunk: int) -> float:
    """Pages per second one process classifies, chunks of ``chunk`` bytes, the pages given as data."""
    from stripedump.levels.pageclass import PageClassifier
    from stripedump.source.vmcore import Source
    from stripedump.source.vmcoreinfo import VmcoreInfo
    rates = []
    with Source(src_path) as src:
        info = VmcoreInfo.from_source(src)
        step = chunk // src.page_size
        for _ in range(repeat):
            pc = PageClassifier(src, info, level)      # a fresh worker's: caches empty
            pages, spent = 0, 0.0
            for a, b in src.pfn_ranges:
                for s in range(a, b, step):
                    n = min(step, b - s)
                    with src.phys_window(s, n) as w:
                        mv = w.view()
                        t0 = time.perf_counter()
                        pc.classify(s, n, data=mv)
                        spent += time.perf_counter() - t0
                        mv.release()
                    pages += n
            rates.append(pages / spent)
    return statistics.median(rates)


def bench_one(vmcore: str, repeat: int, workers: list[int]) -> dict:
    work = tempfile.mkdtemp(prefix="dumplevels.", dir=os.path.dirname(os.path.abspath(vmcore)))
    try:
        src = os.path.join(work, "vmcore")
        normalize_vmcore.normalize(vmcore, src)
        size = os.path.getsize(src)
        members = [os.path.join(work, "m0"), os.path.join(work, "m1")]
        kd = os.path.join(work, "out.kdump")
        cases = {f"stripedump -d 31 lzo, {w} worker(s)":
                 ([str(STRIPEDUMP), "dump", "-d", "31", "--codec", "lzo", "--workers", str(w), "--json", "--disks",
                   ",".join(members), src], None, members) for w in workers}
        cases["makedumpfile -d 31 -l"] = (["makedumpfile", "-d", "31", "-l", src, kd], ["sync", kd], [kd])
        times: dict[str, list[float]] = {k: [] for k in cases}
        sizes: dict[str, int] = {}
        left_out: dict[str, int] = {}
        order = list(cases)
        for r in range(repeat):
            for key in (order if r % 2 == 0 else order[::-1]):
                cmd, then, outs = cases[key]
                clean(outs)
                warm(src)
                dt, out = timed(cmd, then)
                times[key].append(dt)
                sizes[key] = sum(os.path.getsize(p) for p in outs)
                if key.startswith("stripedump"):
                    left_out[key] = json.loads(out)["dump_level"]["excluded_pages"]
                clean(outs)
        return {"vmcore": vmcore, "normalized_bytes": size,
                "median_s": {k: statistics.median(v) for k, v in times.items()},
                "times_s": times, "output_bytes": sizes, "pages_left_out": left_out,
                "classify_pages_per_s": {f"{lv}@{mib}M": classify_rate(src, lv, repeat, mib << 20)
                                         for lv in (31, 30) for mib in (4, 1)}}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(results: list[dict], load: tuple) -> str:
    lines = [f"load average before {load[0]}, after {load[1]} (2 CPUs, shared)", ""]
    for r in results:
        mdf = r["median_s"]["makedumpfile -d 31 -l"]
        lines += [f"### {r['vmcore']} ({r['normalized_bytes'] / 1e6:.0f} MB in /proc/vmcore layout)", "",
                  "| command | median s | MB/s | output MB | time / makedumpfile's |", "|---|---:|---:|---:|---:|"]
        for k, t in r["median_s"].items():
            lines.append(f"| {k} | {t:.2f} | {r['normalized_bytes'] / 1e6 / t:.0f} | "
                         f"{r['output_bytes'][k] / 1e6:.1f} | {t / mdf:.2f} |")
        c = r["classify_pages_per_s"]
        lines += ["", f"pages left out: {r['pages_left_out']}",
                  "one worker classifies (M pages/s, pages given): "
                  + ", ".join(f"level {k.replace('@', ' in ')} chunks {v / 1e6:.2f}" for k, v in c.items()), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vmcore", action="append", help="a real-kernel vmcore (repeatable); default: "
                    + ", ".join(DEFAULTS))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args(argv)
    if shutil.which("makedumpfile") is None:
        print("dumplevels: makedumpfile is not installed", file=sys.stderr)
        return 2
    cores = a.vmcore or [p for p in DEFAULTS if os.path.exists(p)]
    if not cores:
        print("dumplevels: no vmcore (build one with bench/compare.py or tests/fixtures/make-real-vmcore.sh)",
              file=sys.stderr)
        return 2
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "stripedump")], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    before = os.getloadavg()
    results = [bench_one(c, a.repeat, [int(w) for w in a.workers.split(",")]) for c in cores]
    load = (tuple(round(x, 2) for x in before), tuple(round(x, 2) for x in os.getloadavg()))
    print(report(results, load))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"load_average": load, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
