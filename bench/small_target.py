"""Issue 24, item 9: `--codec auto` on targets too small for `none`, against none, lz4 and zstd:3.

    sudo .venv/bin/python bench/small_target.py [--size 1G] [--room 400M] [--disks 2] [--runs 3]
                                                [--base REV] [--json OUT]

A memory-like synthetic source of --size (stripedump.tools.bench.make_source:
none stores about 0.6 of it, lz4 0.29) is dumped over --disks targets whose
room in all is --room: files on one tmpfs of that size (fast: the CPUs are
the limit, where auto used to choose none), and loop devices of --room /
--disks each over files on the disk of --workdir (unthrottled).  Each
codec's run is timed from process start to exit (members synced); a run
that fills its targets exits 8 and is shown so.  ``--base REV`` also runs
``--codec auto`` of that commit (``git archive``, run from a temporary
directory): auto before the room was taken into account.  Runs are
interleaved (each round runs every codec once), medians of --runs.  Needs
root (tmpfs, loop devices).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from stripedump.tools.bench import make_source            # noqa: E402
from stripedump.runtime.units import parse_size            # noqa: E402
from auto import loop_devices                              # noqa: E402  (bench/auto.py)

CODECS = ("none", "lz4", "zstd:3", "auto")


def run_dump(src: str, targets: list[str], codec: str, tree: str) -> dict:
    cmd = [sys.executable, "-m", "stripedump", "dump", "-q", "--json", "--force", "--codec", codec,
           "--disks", ",".join(targets), src]
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=tree, env=dict(os.environ, PYTHONPATH=tree))
    wall = time.monotonic() - t0
    r = json.loads(p.stdout) if p.returncode == 0 else {}
    return {"rc": p.returncode, "wall_s": wall, "output_bytes": r.get("output_bytes"),
            "auto_chunks": r.get("auto_chunks"), "error": p.stderr.strip().splitlines()[-1:] if p.returncode else []}


def measure(kind: str, src: str, make_targets, runs: int, trees: dict, say) -> dict:
    rows: dict[str, list] = {c: [] for c in trees}
    for r in range(runs):
        for c, (codec, tree) in trees.items():
            res = run_dump(src, make_targets(), codec, tree)
            rows[c].append(res)
            say(f"{kind} run {r + 1}/{runs}: {c:12s} exit {res['rc']} {res['wall_s']:6.2f} s"
                + (f", {res['output_bytes'] / 1e6:8.1f} MB" if res["output_bytes"] else "")
                + (f", {res['auto_chunks']}" if res["auto_chunks"] else ""))
    return {"kind": kind, "runs": rows}


def table(res: dict, size: int) -> str:
    lines = [f"{res['kind']}:", "| codec | exit | median s | MB/s | output MB | chunks per codec |",
             "|---|---|---:|---:|---:|---|"]
    for c, runs in res["runs"].items():
        ok = [x for x in runs if x["rc"] == 0]
        rcs = ", ".join(str(x["rc"]) for x in runs)
        if not ok:
            lines.append(f"| {c} | {rcs} | - | - | full (ENOSPC) | |")
            continue
        med = statistics.median(x["wall_s"] for x in ok)
        out = statistics.median(x["output_bytes"] for x in ok)
        chunks = ok[len(ok) // 2]["auto_chunks"] or ""
        chunks = ", ".join(f"{k} {v}" for k, v in chunks.items()) if chunks else ""
        lines.append(f"| {c} | {rcs} | {med:.2f} | {size / med / 1e6:.0f} | {out / 1e6:.1f} | {chunks} |")
    return "\n".join(lines)


def _clean(paths):
    for p in paths:
        if os.path.exists(p):
            os.unlink(p)
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--room", default="400M", help="the targets' room in all")
    ap.add_argument("--disks", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--data", default="mixed")
    ap.add_argument("--base", help="also run --codec auto of this commit")
    ap.add_argument("--workdir", default="/var/tmp", help="where the loop devices' files go (a real disk)")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)
    size, room = parse_size(a.size), parse_size(a.room)

    def say(msg):
        print(msg, file=sys.stderr, flush=True)

    results = {"size": size, "room": room, "data": a.data, "disks": a.disks, "runs": a.runs, "base": a.base,
               "cpus": os.cpu_count(), "loadavg_before": os.getloadavg(), "kinds": []}
    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm, tempfile.TemporaryDirectory() as old:
        trees = {c: (c, ROOT) for c in CODECS}
        if a.base:
            archive = subprocess.run(["git", "-C", ROOT, "archive", a.base], capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", old], input=archive, check=True)
            trees[f"auto ({a.base})"] = ("auto", old)
        src = make_source(os.path.join(shm, "vmcore"), size, a.data)
        fs = os.path.join(shm, "fs")
        os.mkdir(fs)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={room}", "tmpfs", fs], check=True)
        try:
            files = [os.path.join(fs, f"t{i}.sd") for i in range(a.disks)]
            results["kinds"].append(measure(f"files on a {room >> 20} MiB tmpfs", src, lambda: _clean(files),
                                            a.runs, trees, say))
        finally:
            subprocess.run(["umount", fs], check=False)
        devs = []
        try:
            devs = loop_devices(a.workdir, a.disks, room // a.disks)
            results["kinds"].append(measure(f"{a.disks} loop devices of {room // a.disks >> 20} MiB on "
                                            f"{a.workdir}'s disk", src, lambda: [d for d, _ in devs],
                                            a.runs, trees, say))
        finally:
            for dev, img in devs:
                subprocess.run(["losetup", "-d", dev], check=False)
                os.unlink(img)
    results["loadavg_after"] = os.getloadavg()
    print(f"source: {size / 1e6:.0f} MB of {a.data} data; targets: {a.disks}, {room / 1e6:.0f} MB of room in all")
    for k in results["kinds"]:
        print(table(k, size))
        print()
    print(f"load average before {results['loadavg_before'][0]:.2f}, after {results['loadavg_after'][0]:.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
