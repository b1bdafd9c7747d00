#!/usr/bin/env python3
"""stripedump over SSH hosts against makedumpfile piped into ssh, each host's link rate-limited.

    .venv/bin/python bench/ssh.py --rate 400mbit --repeat 3 [--json bench-ssh.json]

What it measures (issue 13's benchmark, root only: it shapes ``lo``):

* ``makedumpfile -F -l -d 0 SRC | ssh host 'cat > FILE'``: kdump's SSH target today, one
  stream to one host, against ``stripedump dump --codec lzo --disks ssh://host1/...,ssh://host2/...``
  (goal: at least 1.8x faster), and stripedump over 1, 2 and 3 hosts.
* The hosts are real sshd instances (tests/helpers/sshd.py, the test suite's fixture) on
  127.0.0.102-104, so the shaping never touches the 127.0.0.2-4 of tests running beside it.
  Each host's link is an HTB class of ``--rate`` on ``lo``, chosen by destination address (the
  data goes to the host; what comes back is not shaped); every other packet on ``lo`` goes to
  a default class of 100 Gbit/s.  The qdisc is removed at the end, also on error, Ctrl-C or
  SIGTERM.
* Sources: the real-kernel fixtures (tests/fixtures/make-real-vmcore.sh, cached in
  /var/tmp/stripedump-bench/real-m1024-f0, sparse, and real-m1536-f1024, 1 GiB of filled tmpfs),
  each rewritten into /proc/vmcore's layout by bench/normalize_vmcore.py as bench/compare.py does
  (makedumpfile cannot read QEMU's layout); page cache warm (read once before each round).
* Each case runs ``--repeat`` times, interleaved (odd rounds in reverse order), medians
  reported; outputs are deleted (and ``sync``) before each run, untimed.  stripedump's members
  end synced on their hosts (dd conv=fdatasync before the acknowledgement); the baseline's
  ``cat >`` is not synced: that favours the baseline.
* The machine is shared (other jobs run beside it): the load average at the start and end is
  recorded with the table.

Output: a markdown table on stdout, ``--json FILE`` the same as JSON; exit 0 when it ran.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
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
sys.path.insert(0, str(REPO / "tests" / "helpers"))

import compare  # noqa: E402
import normalize_vmcore  # noqa: E402

FIRST_HOST = 100              # hosts 127.0.0.102...: not the test suite's 127.0.0.2-4
DEFAULT_SOURCES = ["/var/tmp/stripedump-bench/real-m1024-f0/vmcore",
                   "/var/tmp/stripedump-bench/real-m1536-f1024/vmcore"]
MB = 1e6


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(f"ssh-bench: {msg}", file=sys.stderr, flush=True)


def tc(*args: str, check: bool = True) -> None:
    r = subprocess.run(["tc", *args], capture_output=True, text=True)
    if check and r.returncode:
        raise BenchError(f"tc {' '.join(args)}: {r.stderr.strip()}")


def shape(hosts, rate: str) -> None:
    """An HTB class of ``rate`` per host address on lo; everything else unshaped."""
    tc("qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "99")
    tc("class", "add", "dev", "lo", "parent", "1:", "classid", "1:99", "htb", "rate", "100gbit")
    for i, h in enumerate(hosts):
        cid = f"1:{10 + i}"
        # burst: lo carries 64 KiB packets (GSO); smaller bursts throttle below the rate
        tc("class", "add", "dev", "lo", "parent", "1:", "classid", cid, "htb", "rate", rate, "ceil", rate,
           "burst", "256k", "cburst", "256k")
        tc("filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
           "match", "ip", "dst", f"{h.addr}/32", "flowid", cid)


def unshape() -> None:
    tc("qdisc", "del", "dev", "lo", "root", check=False)


def cluster(base: str, n: int):
    """n sshd hosts from the test suite's fixture, on 127.0.0.102 and up."""
    import sshd

    class BenchHost(sshd.Host):
        def __init__(self, cl, i):
            super().__init__(cl, FIRST_HOST + i)

    plain, sshd.Host = sshd.Host, BenchHost
    try:
        return sshd.Cluster(base, n=n)
    except BaseException as e:
        if type(e).__name__ == "Skipped":       # the fixture's pytest.skip: sshd missing or not starting
            raise BenchError(str(e)) from None
        raise
    finally:
        sshd.Host = plain


def timed(cmd, env, shell=False) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, shell=shell, executable="/bin/bash" if shell else None,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    dt = time.perf_counter() - t0
    if p.returncode:
        raise BenchError(f"{cmd if shell else ' '.join(cmd)}: exit {p.returncode}: "
                         f"{compare.tail_line(p.stderr)}")
    return dt


def bench_source(raw: str, work: str, cl, args, stripedump: str) -> dict:
    src = os.path.join(work, "vmcore")
    log(f"normalizing {raw} into {src}")
    normalize_vmcore.normalize(raw, src)
    size = os.path.getsize(src)
    env = cl.env
    hosts = cl.hosts
    cases = {"makedumpfile -F -l -d 0 | ssh (1 host)":
             (f"set -o pipefail; makedumpfile -F -l -d 0 {src} | ssh {hosts[0].alias} "
              f"'cat > {hosts[0].path('vmcore.flat')}'", True, [hosts[0].path("vmcore.flat")])}
    for n in args.hosts:
        members = [h.url(f"m{i}.sd") for i, h in enumerate(hosts[:n])]
        cases[f"stripedump lzo, {n} host{'s' if n > 1 else ''}"] = (
            [stripedump, "dump", "-q", "--codec", "lzo", "--disks", ",".join(members), src], False,
            [h.path(f"m{i}.sd") for i, h in enumerate(hosts[:n])])
    times: dict[str, list[float]] = {k: [] for k in cases}
    order = list(cases)
    for rnd in range(args.repeat):
        compare.warm({"cat": "cat"}, src)
        for k in (order if rnd % 2 == 0 else order[::-1]):
            cmd, shell, outs = cases[k]
            compare.remove(outs)
            subprocess.run(["sync"], check=False)
            dt = timed(cmd, env, shell)
            times[k].append(dt)
            log(f"{os.path.basename(os.path.dirname(raw))} round {rnd + 1}: {k}: {dt:.2f} s "
                f"({size / dt / MB:.1f} MB/s), {sum(os.path.getsize(o) for o in outs) / MB:.1f} MB sent")
        compare.remove([o for c in cases.values() for o in c[2]])
    os.unlink(src)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med[order[0]]
    return {"source": raw, "bytes": size, "cases": [
        {"case": k, "seconds": [round(t, 2) for t in times[k]], "median_s": round(med[k], 2),
         "mb_per_s": round(size / med[k] / MB, 1), "speedup": round(base / med[k], 2)} for k in order]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", default="400mbit", help="each host's link (tc rate; default 400mbit)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--hosts", default="1,2,3", help="stripedump host counts to run (default 1,2,3)")
    ap.add_argument("--vmcore", action="append", help="a source (repeatable; default the two fixtures)")
    ap.add_argument("--workdir", default="/var/tmp", help="where the normalized source and hosts live")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    args.hosts = sorted({int(x) for x in args.hosts.split(",")})
    if os.geteuid() != 0:
        print("ssh-bench: error: root is needed to shape lo with tc", file=sys.stderr)
        return 2
    for tool in ("tc", "makedumpfile", "ssh"):
        if shutil.which(tool) is None:
            print(f"ssh-bench: error: {tool} is not installed", file=sys.stderr)
            return 2
    sources = args.vmcore or [s for s in DEFAULT_SOURCES if os.path.exists(s)]
    if not sources:
        print("ssh-bench: error: no source (make one with bench/compare.py or give --vmcore)", file=sys.stderr)
        return 2
    stripedump = str(REPO / ".venv" / "bin" / "stripedump")
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    load0 = os.getloadavg()
    work = tempfile.mkdtemp(prefix="ssh-bench.", dir=args.workdir)
    cl = None
    try:
        cl = cluster(os.path.join(work, "hosts"), max(args.hosts))
        shape(cl.hosts, args.rate)
        results = [bench_source(raw, work, cl, args, stripedump) for raw in sources]
    except BenchError as e:
        print(f"ssh-bench: error: {e}", file=sys.stderr)
        return 1
    finally:
        unshape()
        if cl is not None:
            cl.close()
        shutil.rmtree(work, ignore_errors=True)
    load1 = os.getloadavg()
    doc = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "rate": args.rate, "repeat": args.repeat,
           "cpus": os.cpu_count(), "loadavg_start": [round(x, 2) for x in load0],
           "loadavg_end": [round(x, 2) for x in load1], "results": results}
    lines = [f"each host's link {args.rate} (tc htb on lo); {args.repeat} runs each, medians; "
             f"{os.cpu_count()} CPUs, shared: load average {load0[0]:.2f} at the start, {load1[0]:.2f} "
             "at the end", "",
             "| source | case | median s | MB/s | vs makedumpfile | runs (s) |", "|---|---|---:|---:|---:|---|"]
    for r in results:
        name = os.path.basename(os.path.dirname(r["source"]))
        for c in r["cases"]:
            lines.append(f"| {name} ({r['bytes'] / 2**20:.0f} MiB) | {c['case']} | {c['median_s']:.2f} | "
                         f"{c['mb_per_s']:.1f} | {c['speedup']:.2f}x | {', '.join(map(str, c['seconds']))} |")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
