#!/usr/bin/env python3
"""stripedump into two S3 endpoints against makedumpfile piped into one upload, each link rate-limited.

    sudo .venv/bin/python bench/s3.py --rate 100mbit --repeat 3 [--json docs/bench/s3-100mbit.json]

What it measures (issue 27's benchmark, root only: it shapes ``lo``):

* ``makedumpfile -F -l -d 0 SRC | s3cat s3://bucket/vmcore.flat``: one stream to one endpoint,
  uploaded by the same client stripedump uses (botocore through stripedump's own
  ``remote.s3put.Uploader``: 8 MiB parts, 2 in flight), against ``stripedump dump --codec lzo
  --disks s3://sd-a/m0,s3://sd-b/m1`` over two endpoints (goal: at least 1.8x faster), and
  stripedump over one endpoint.  Then, on the two-endpoint dump in the store: the time of
  ``stripedump info`` and of ``stripedump mount`` until it returns (the files are served then),
  and the bytes each fetched.
* The store is a real SeaweedFS cluster (tests/helpers/seaweed.py, the test suite's: a master, two
  volume servers, a filer, authentication on) with two extra S3 gateways on 127.0.0.112 and
  127.0.0.113; each gateway's link is an HTB class of ``--rate`` on ``lo``, chosen by
  destination address (what goes to the endpoint; the answers are not shaped); every other
  packet on ``lo`` goes to a default class of 100 Gbit/s.  The qdisc is removed at the end,
  also on error, Ctrl-C or SIGTERM.
* Source: a real-kernel fixture (tests/fixtures/make-real-vmcore.sh; default: the largest of
  those cached in /var/tmp), rewritten into /proc/vmcore's layout by bench/normalize_vmcore.py
  (makedumpfile cannot read QEMU's); page cache warm.
* Each case runs ``--repeat`` times, interleaved (odd rounds in reverse order), medians
  reported; the objects are deleted before each run, untimed.  Both sides end with their
  objects completed in the store.
* The machine is shared: the load average at the start and end is recorded.

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
from ssh import BenchError, shape as ssh_shape, timed, unshape  # noqa: E402

GATEWAYS = ("127.0.0.112", "127.0.0.113")     # not the test suite's 127.0.0.1-4, nor bench/ssh.py's .102-104
SOURCES = ["/var/tmp/stripedump-bench/real-m1536-f1024/vmcore", "/var/tmp/stripedump-bench/real-m1024-f0/vmcore",
           "/var/tmp/stripedump-real-vmcore-workload/vmcore", "/var/tmp/stripedump-real-vmcore/vmcore"]
MB = 1e6

# the baseline's uploader: stdin -> one object, with stripedump's own client code and part settings
S3CAT = """
import os, sys
from stripedump.remote.s3put import Uploader, read_part
from stripedump.remote.s3url import S3Options
up = Uploader(sys.argv[1], S3Options(os.environ["EP"]), True, 60.0)
up.check()
n = 0
while True:
    buf, k = read_part(up, 0)
    if k:
        n += 1
        up.put(n, buf, k)
    else:
        up.unused(buf)
    if k < len(buf):
        break
up.drain()
if up.failed:
    up.abort()
    sys.exit(up.failed)
up.complete(0)
"""


def log(msg: str) -> None:
    print(f"s3-bench: {msg}", file=sys.stderr, flush=True)


def shape(rate: str) -> None:
    """bench/ssh.py's HTB classes, one per gateway address."""
    from types import SimpleNamespace
    ssh_shape([SimpleNamespace(addr=ip) for ip in GATEWAYS], rate)


def fetched_by(cmd, env, proxy) -> tuple[float, int]:
    proxy.reset()
    return timed(cmd, env), proxy.down


def bench(src: str, st, eps: list[str], args, sd: str) -> dict:
    size = os.path.getsize(src)
    env = dict(st.env, PYTHONPATH=str(REPO))
    cases = {
        "makedumpfile -F -l -d 0 | s3 upload (1 endpoint)":
            (f"set -o pipefail; makedumpfile -F -l -d 0 {src} | EP={eps[0]} {sys.executable} -c '{S3CAT}' "
             "s3://sd-a/vmcore.flat", True),
        "stripedump lzo, 1 endpoint": ([sd, "dump", "-q", "--force", "--codec", "lzo", "--disks", "s3://sd-a/m0",
                                       "--s3-endpoint", eps[0], src], False),
        "stripedump lzo, 2 endpoints": ([sd, "dump", "-q", "--force", "--codec", "lzo", "--disks",
                                         "s3://sd-a/m0,s3://p2@sd-b/m1", "--s3-endpoint", eps[0], src], False),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    order = list(cases)
    sent: dict[str, int] = {}
    for rnd in range(args.repeat):
        compare.warm({"cat": "cat"}, src)
        for k in (order if rnd % 2 == 0 else order[::-1]):
            for b in ("sd-a", "sd-b"):
                st.empty(b)
            cmd, shell = cases[k]
            dt = timed(cmd, env, shell)
            times[k].append(dt)
            sent[k] = sum(st.keys("sd-a").values()) + sum(st.keys("sd-b").values())
            log(f"round {rnd + 1}: {k}: {dt:.2f} s ({size / dt / MB:.1f} MB/s), {sent[k] / MB:.1f} MB stored")
    # reading the last two-endpoint dump where it is, through the shaped links and a counting relay
    from countproxy import CountingProxy
    members = ["s3://sd-a/m0", "s3://sd-b/m1"]      # read through endpoint A (any gateway serves both)
    st.empty("sd-a")
    st.empty("sd-b")
    timed(cases[order[2]][0], env)
    reads = {}
    host, port = eps[0].rsplit("/", 1)[1].split(":")
    proxy = CountingProxy(host, int(port))
    try:
        renv = dict(env, AWS_CONFIG_FILE=env["AWS_CONFIG_FILE"])
        info_s, info_b = fetched_by([sd, "info", *members, "--s3-endpoint", proxy.endpoint], renv, proxy)
        mnt = tempfile.mkdtemp(prefix="s3-bench-mnt.")
        try:
            mount_s, mount_b = fetched_by([sd, "mount", *members, mnt, "--s3-endpoint", proxy.endpoint], renv,
                                          proxy)
            t0 = time.perf_counter()
            with open(os.path.join(mnt, "vmcore"), "rb") as f:
                f.seek(size // 2)
                f.read(4096)
            page_s = time.perf_counter() - t0
            subprocess.run([sd, "umount", mnt], env=renv, capture_output=True)
        finally:
            subprocess.run(["fusermount3", "-uz", mnt], capture_output=True)
            os.rmdir(mnt)
        reads = {"info_s": round(info_s, 2), "info_fetched_bytes": info_b, "mount_ready_s": round(mount_s, 2),
                 "mount_fetched_bytes": mount_b, "first_page_s": round(page_s, 3),
                 "members_bytes": sum(st.keys("sd-a").values()) + sum(st.keys("sd-b").values())}
        log(f"info {info_s:.2f} s ({info_b} bytes fetched), mount ready {mount_s:.2f} s ({mount_b} bytes), "
            f"a page through the mount {page_s * 1000:.0f} ms")
    finally:
        proxy.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med[order[0]]
    return {"source": src, "bytes": size, "reads": reads, "cases": [
        {"case": k, "seconds": [round(t, 2) for t in times[k]], "median_s": round(med[k], 2),
         "mb_per_s": round(size / med[k] / MB, 1), "speedup": round(base / med[k], 2),
         "stored_mb": round(sent[k] / MB, 1)} for k in order]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", default="100mbit", help="each endpoint's link (tc rate; default 100mbit)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--vmcore", help="the source (default: the largest real-kernel fixture cached)")
    ap.add_argument("--workdir", default="/var/tmp")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("s3-bench: error: root is needed to shape lo with tc", file=sys.stderr)
        return 2
    for tool in ("tc", "makedumpfile"):
        if shutil.which(tool) is None:
            print(f"s3-bench: error: {tool} is not installed", file=sys.stderr)
            return 2
    raw = args.vmcore or next((s for s in SOURCES if os.path.exists(s)), None)
    if raw is None:
        print("s3-bench: error: no real-kernel fixture (tests/fixtures/make-real-vmcore.sh) or --vmcore",
              file=sys.stderr)
        return 2
    import seaweed
    sd = str(REPO / ".venv" / "bin" / "stripedump")
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    load0 = os.getloadavg()
    work = tempfile.mkdtemp(prefix="s3-bench.", dir=args.workdir)
    st = None
    try:
        src = os.path.join(work, "vmcore")
        log(f"normalizing {raw} into {src}")
        normalize_vmcore.normalize(raw, src)
        st = seaweed.Store(os.path.join(work, "store"))
        eps = [st.add_gateway(ip) for ip in GATEWAYS]
        with open(st.config_file, "w") as f:      # the second endpoint as a profile: s3://p2@sd-b/m1
            f.write(f"[profile p2]\nendpoint_url = {eps[1]}\ns3 =\n    addressing_style = path\n")
        with open(st.credentials_file, "w") as f:
            f.write(f"[p2]\naws_access_key_id = {seaweed.ACCESS_KEY}\naws_secret_access_key = {seaweed.SECRET_KEY}\n")
        for b in ("sd-a", "sd-b"):
            st.bucket(b)
        shape(args.rate)
        result = bench(src, st, eps, args, sd)
    except (BenchError, seaweed.StoreError) as e:
        print(f"s3-bench: error: {e}", file=sys.stderr)
        return 1
    finally:
        unshape()
        if st is not None:
            st.close()
        shutil.rmtree(work, ignore_errors=True)
    load1 = os.getloadavg()
    doc = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "rate": args.rate, "repeat": args.repeat,
           "cpus": os.cpu_count(), "loadavg_start": [round(x, 2) for x in load0],
           "loadavg_end": [round(x, 2) for x in load1], "result": result}
    r = result
    lines = [f"each endpoint's link {args.rate} (tc htb on lo); {args.repeat} runs each, medians; "
             f"{os.cpu_count()} CPUs, shared: load average {load0[0]:.2f} at the start, {load1[0]:.2f} at the end",
             "", "| source | case | median s | MB/s | vs makedumpfile | stored MB | runs (s) |",
             "|---|---|---:|---:|---:|---:|---|"]
    name = os.path.basename(os.path.dirname(r["source"] if args.vmcore else raw))
    for c in r["cases"]:
        lines.append(f"| {name} ({r['bytes'] / 2**20:.0f} MiB) | {c['case'].replace('|', chr(92) + '|')} | {c['median_s']:.2f} | "
                     f"{c['mb_per_s']:.1f} | {c['speedup']:.2f}x | {c['stored_mb']} | "
                     f"{', '.join(map(str, c['seconds']))} |")
    x = r["reads"]
    lines += ["", f"on the two-endpoint dump ({x['members_bytes'] / MB:.1f} MB in the store): info {x['info_s']} s "
              f"({x['info_fetched_bytes'] / 1e3:.0f} kB fetched); mount ready {x['mount_ready_s']} s "
              f"({x['mount_fetched_bytes'] / 1e3:.0f} kB fetched); a page read through the mount "
              f"{x['first_page_s'] * 1000:.0f} ms"]
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
