"""Issue 12's `--codec auto` benchmark: auto vs the fixed codecs on fast and on slow targets.

    sudo .venv/bin/python bench/auto.py [--size 256M] [--rate 30] [--runs 3] [--disks 2] [--json OUT]
    sudo .venv/bin/python bench/auto.py --vmcore /var/tmp/b12/f1024 ...   (a real kernel's vmcore)

Fast targets: files on a tmpfs (/dev/shm): the CPUs are the limit.  Slow
targets: loop devices over files on the disk of --workdir, each throttled to
--rate MB/s of writes by the block I/O controller (cgroup v2 ``io.max`` when
this process's cgroup has the io controller, else cgroup v1
``blkio.throttle.write_bps_device``): the disks are the limit, and a dump's
buffered writes reach them only as fast as the throttle lets them (each run
ends with the members synced).  Source: a memory-like synthetic vmcore
(stripedump.tools.bench.make_source, ``--data``) or ``--vmcore``, its page cache warm.

Runs are interleaved (each round runs every codec once), medians of
--runs; the table prints, per kind of target, each codec's median time and
the ratio auto / best fixed codec (issue 12's goal: at most 1.15 on both).
Needs root (loop devices, cgroup files); cleans up its devices and throttles.
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

FIXED = ("none", "lz4", "zstd:3", "zstd:9")
CODECS = FIXED + ("auto",)


class Throttle:
    """Write-rate limits on block devices, v2 io.max or v1 blkio; removed by ``close``."""

    def __init__(self):
        self.set: list[tuple[str, str]] = []
        cg = open("/proc/self/cgroup").read().splitlines()
        v2 = next((ln.split(":", 2)[2] for ln in cg if ln.startswith("0::")), None)
        self.v2 = None
        if v2 is not None:
            base = "/sys/fs/cgroup" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else \
                "/sys/fs/cgroup/unified"
            path = os.path.join(base, v2.lstrip("/"), "io.max")
            if os.path.exists(path):
                self.v2 = path
        self.v1 = "/sys/fs/cgroup/blkio/blkio.throttle.write_bps_device"
        if self.v2 is None and not os.path.exists(self.v1):
            raise SystemExit("bench/auto.py: no block I/O controller (cgroup v2 io.max or v1 blkio) here")

    @property
    def kind(self) -> str:
        return f"cgroup v2 io.max ({self.v2})" if self.v2 else f"cgroup v1 blkio ({self.v1})"

    def limit(self, dev: str, bps: int) -> None:
        st = os.stat(dev)
        mm = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        if self.v2:
            self._write(self.v2, f"{mm} wbps={bps}")
        else:
            self._write(self.v1, f"{mm} {bps}")
        self.set.append((mm, dev))

    @staticmethod
    def _write(path: str, text: str) -> None:
        with open(path, "w") as f:
            f.write(text)

    def close(self) -> None:
        for mm, _ in self.set:
            try:
                self._write(self.v2, f"{mm} wbps=max") if self.v2 else self._write(self.v1, f"{mm} 0")
            except OSError:
                pass


def loop_devices(workdir: str, n: int, size: int) -> list[tuple[str, str]]:
    out = []
    for i in range(n):
        img = os.path.join(workdir, f"auto-target{i}.img")
        with open(img, "wb") as f:
            f.truncate(size)
        dev = subprocess.run(["losetup", "-f", "--show", img], capture_output=True, text=True,
                             check=True).stdout.strip()
        out.append((dev, img))
    return out


def run_dump(src: str, targets: list[str], codec: str, workers: int) -> dict:
    cmd = [sys.executable, "-m", "stripedump", "dump", "-q", "--json", "--force", "--codec", codec,
           "--disks", ",".join(targets), src] + (["--workers", str(workers)] if workers else [])
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        raise SystemExit(f"bench/auto.py: {codec} failed: {p.stderr.strip()}")
    r = json.loads(p.stdout)
    return {"codec": codec, "wall_s": wall, "seconds": r["seconds"], "output_bytes": r["output_bytes"],
            "auto_chunks": r.get("auto_chunks"), "auto_model": r.get("auto_model")}


def measure(kind: str, src: str, make_targets, runs: int, workers: int, say) -> dict:
    rows: dict[str, list] = {c: [] for c in CODECS}
    for r in range(runs):
        for c in CODECS:
            targets = make_targets()
            res = run_dump(src, targets, c, workers)
            rows[c].append(res)
            say(f"{kind} run {r + 1}/{runs}: {c:7s} {res['wall_s']:6.2f} s, "
                f"{res['output_bytes'] / 1e6:8.1f} MB" + (f", {res['auto_chunks']}" if res["auto_chunks"] else ""))
    med = {c: statistics.median(x["wall_s"] for x in rows[c]) for c in CODECS}
    best = min(FIXED, key=lambda c: med[c])
    return {"kind": kind, "runs": rows, "median_s": med, "best_fixed": best,
            "auto_over_best": med["auto"] / med[best]}


def table(res: dict, size: int) -> str:
    lines = [f"{res['kind']}:", "| codec | median s | MB/s | output MB |", "|---|---|---|---|"]
    for c in CODECS:
        out = statistics.median(x["output_bytes"] for x in res["runs"][c])
        lines.append(f"| {c} | {res['median_s'][c]:.2f} | {size / res['median_s'][c] / 1e6:.0f} "
                     f"| {out / 1e6:.1f} |")
    lines.append(f"auto / best fixed ({res['best_fixed']}): x{res['auto_over_best']:.3f} (goal <= 1.15)")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="256M")
    ap.add_argument("--rate", type=float, default=30.0, help="MB/s of writes per slow target")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--disks", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--data", default="mixed")
    ap.add_argument("--vmcore", help="dump this vmcore (e.g. a real kernel's, bench/compare.py's fixture in "
                                     "/proc/vmcore layout) instead of generating --size of --data")
    ap.add_argument("--workdir", default="/var/tmp", help="where the loop devices' files go (a real disk)")
    ap.add_argument("--only", choices=("fast", "slow"), help="one kind of target only")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)
    size = os.path.getsize(a.vmcore) if a.vmcore else parse_size(a.size)

    def say(msg):
        print(msg, file=sys.stderr, flush=True)

    results = {"size": size, "data": a.vmcore or a.data, "disks": a.disks, "rate_mb_s": a.rate, "runs": a.runs,
               "cpus": os.cpu_count(), "loadavg_before": os.getloadavg(), "kinds": []}
    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        if a.vmcore:
            src = a.vmcore
            subprocess.run(["cat", src], stdout=subprocess.DEVNULL, check=True)     # page cache warm
        else:
            src = make_source(os.path.join(shm, "vmcore"), size, a.data)
        if a.only != "slow":
            fast = [os.path.join(shm, f"t{i}.sd") for i in range(a.disks)]
            results["kinds"].append(measure("fast: files on tmpfs", src, lambda: fast, a.runs, a.workers, say))
        if a.only != "fast":
            thr = Throttle()
            devs = []
            try:
                devs = loop_devices(a.workdir, a.disks, size + (64 << 20))
                for dev, _ in devs:
                    thr.limit(dev, int(a.rate * 1e6))
                say(f"slow targets: {', '.join(d for d, _ in devs)}, {a.rate:g} MB/s each by {thr.kind}")
                results["throttle"] = thr.kind
                results["kinds"].append(measure(f"slow: loop devices at {a.rate:g} MB/s", src,
                                                lambda: [d for d, _ in devs], a.runs, a.workers, say))
            finally:
                thr.close()
                for dev, img in devs:
                    subprocess.run(["losetup", "-d", dev], check=False)
                    os.unlink(img)
    results["loadavg_after"] = os.getloadavg()
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
