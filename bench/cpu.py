#!/usr/bin/env python3
"""CPU per GiB: stripedump's dump against makedumpfile's, on the real-kernel vmcores (issue 25).

    .venv/bin/python bench/cpu.py --rounds 5 --io both --json docs/bench/cpu-real.json
    .venv/bin/python bench/cpu.py --per-chunk --rounds 7   # the coordinator's CPU per chunk (docs/scale.md)
    .venv/bin/python bench/cpu.py --vmcore CORE --codec none --no-makedumpfile --workers 2 --io both \
        --rounds 4 --json docs/bench/cpu-writers.json      # the writers' CPU, O_DIRECT vs buffered

What it measures (issue 25, items 1, 2 and 7, and its central goal): the
CPU seconds (user + system, every process of the command: ``os.wait4`` of
the command, which counts its reaped descendants) and the wall time of

* ``makedumpfile -d 0 -l SRC OUT && sync OUT`` (one thread, its default);
* ``makedumpfile --num-threads 2 -d 0 -l SRC OUT && sync OUT``;
* ``stripedump dump --codec lzo --workers 1`` and ``--workers 2`` over two
  member files (``--json``: the CPU per role too: coordinator, workers,
  writers); with ``--io both`` each of them also with ``--buffered``
  (item 2: the writers' CPU with and without O_DIRECT);
* ``stripedump dump`` of a 4 MiB synthetic core: the fixed cost of a dump
  (interpreter, imports, forks, heads, final syncs), which the table's
  "beyond start" takes off each stripedump case's CPU before dividing by
  the GiB of source: what a dump costs per GiB where the source is large.

How: stripedump runs byte-compiled, as installed (``compileall`` first; the
runs without PYTHONDONTWRITEBYTECODE, which would compile every module on
every start).  The sources are the real-kernel fixtures (tests/fixtures/make-real-vmcore.sh:
``/var/tmp/stripedump-real-vmcore/vmcore``, a freshly booted guest, and
``...-workload/vmcore``, the guest after a workload: nearly every page
non-zero and very compressible), or ``--vmcore PATH`` (repeatable),
rewritten into /proc/vmcore's layout by bench/normalize_vmcore.py (what a
capture kernel gives both tools; makedumpfile 1.7.2 cannot read QEMU's) in
``--dir`` (default /var/tmp/stripedump-cpu-bench; outputs there too, so
source and targets share a file system).  Page cache warm (the source read
before each round); outputs removed and ``sync`` run (untimed) before each
run.  Every case runs once per round, the order reversed every other round
(A B C D, D C B A, ...), so load from elsewhere hits all alike.  Reported:
the minimum and the median of the rounds, CPU seconds per GiB of source
(2^30 bytes), and each case's CPU against makedumpfile -l's.

Output: a markdown table per source on stdout; ``--json FILE`` the raw runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import normalize_vmcore  # noqa: E402

FIXTURES = ["/var/tmp/stripedump-real-vmcore/vmcore", "/var/tmp/stripedump-real-vmcore-workload/vmcore"]
GIB = 1 << 30
START = "stripedump start (4 MiB core)"
# as an installed package runs (pip and the Debian package byte-compile it): with PYTHONDONTWRITEBYTECODE
# set (this machine sets it), a source tree is compiled anew by every run, 0.15 CPU s of each here
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run(cmd: list[str], sync: str | None = None) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the command's process tree, its stdout), ``sync OUT`` included."""
    import tempfile
    with tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out_f, stderr=err_f, stdin=subprocess.DEVNULL, env=ENV)
        _, status, ru = os.wait4(p.pid, 0)     # reaped here, with the rusage of its tree
        p.returncode = os.waitstatus_to_exitcode(status)
        out_f.seek(0)
        err_f.seek(0)
        out, err = out_f.read(), err_f.read()
    if p.returncode != 0:
        raise SystemExit(f"bench/cpu.py: {cmd[0]} failed ({p.returncode}): {err.decode()[-300:]}")
    cpu = ru.ru_utime + ru.ru_stime
    if sync:
        r0 = os.times()
        subprocess.run(["sync", sync], check=True)
        r1 = os.times()
        cpu += (r1.children_user - r0.children_user) + (r1.children_system - r0.children_system)
    return time.perf_counter() - t0, cpu, out.decode()


def cases(args, src: str, work: str) -> list[dict]:
    sd = [str(args.stripedump), "dump", "--json", "-q", "--force", "--codec", args.codec]
    members = f"{work}/m0,{work}/m1"
    out = [] if args.no_makedumpfile else [
        {"key": "makedumpfile -l", "cmd": ["makedumpfile", "-d", "0", "-l", src, f"{work}/mdf"],
         "sync": f"{work}/mdf", "outputs": [f"{work}/mdf"]},
        {"key": "makedumpfile --num-threads 2 -l",
         "cmd": ["makedumpfile", "--num-threads", "2", "-d", "0", "-l", src, f"{work}/mdf2"],
         "sync": f"{work}/mdf2", "outputs": [f"{work}/mdf2"]},
    ]
    # the fixed cost of a dump (interpreter, imports, forks, heads, syncs): a 4 MiB synthetic core,
    # 2 workers; "beyond start" in the table is each stripedump case's CPU less this, per GiB
    out.append({"key": START, "cmd": sd + ["--workers", "2", "--disks", f"{work}/s0,{work}/s1", args.tiny],
                "sync": None, "outputs": [f"{work}/s0", f"{work}/s1"]})
    for io in (["", "--buffered"] if args.io == "both" else ["--buffered"] if args.io == "buffered" else [""]):
        for w in args.workers:
            key = f"stripedump {args.codec} {w}w" + (" buffered" if io else "")
            out.append({"key": key, "cmd": sd + ["--workers", str(w)] + ([io] if io else []) +
                        ["--disks", members, src], "sync": None, "outputs": [f"{work}/m0", f"{work}/m1"]})
    return out


def bench_source(args, raw: str) -> dict:
    work = os.path.join(args.dir, Path(raw).parent.name)
    os.makedirs(work, exist_ok=True)
    src = os.path.join(work, "vmcore")
    if not os.path.exists(src) or os.path.getmtime(src) < os.path.getmtime(raw):
        normalize_vmcore.normalize(raw, src)
    size = os.path.getsize(src)
    todo = cases(args, src, work)
    runs = {c["key"]: [] for c in todo}
    for rnd in range(args.rounds):
        subprocess.run(["cat", src], stdout=subprocess.DEVNULL, check=True)   # page cache warm
        for c in (todo if rnd % 2 == 0 else todo[::-1]):
            for o in c["outputs"]:
                if os.path.exists(o):
                    os.unlink(o)
            subprocess.run(["sync"], check=True)
            wall, cpu, out = run(c["cmd"], c["sync"])
            r = {"wall": round(wall, 4), "cpu": round(cpu, 4)}
            if out.startswith("{"):
                r["roles"] = json.loads(out).get("cpu_seconds")
            r["out_bytes"] = sum(os.path.getsize(o) for o in c["outputs"])
            runs[c["key"]].append(r)
            print(f"bench/cpu.py: {Path(raw).parent.name} round {rnd + 1} {c['key']}: {wall:.3f} s, "
                  f"{cpu:.3f} CPU s", file=sys.stderr)
    shutil.rmtree(work) if args.drop else None
    return {"source": raw, "bytes": size, "runs": runs, "commands": {c["key"]: c["cmd"] for c in todo}}


def table(res: dict) -> str:
    size, runs = res["bytes"], res["runs"]
    base = statistics.median(r["cpu"] for r in runs["makedumpfile -l"]) if "makedumpfile -l" in runs else 0
    start = statistics.median(r["cpu"] for r in runs[START])
    lines = [f"### {res['source']} ({size / 1e6:.0f} MB)", "",
             "| case | wall min / median s | CPU min / median s | CPU s per GiB | beyond start, per GiB "
             "| CPU vs makedumpfile -l | coordinator / workers / writers CPU s (median) |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for key, rs in runs.items():
        walls, cpus = [r["wall"] for r in rs], [r["cpu"] for r in rs]
        med = statistics.median(cpus)
        roles = ""
        if rs and rs[0].get("roles") and "workers" in rs[0]["roles"]:
            roles = " / ".join(f"{statistics.median(r['roles'][k] for r in rs):.3f}"
                               for k in ("coordinator", "workers", "writers"))
        beyond = f"{(med - start) / (size / GIB):.2f}" if key.startswith("stripedump") and key != START else ""
        lines.append(f"| {key} | {min(walls):.3f} / {statistics.median(walls):.3f} | {min(cpus):.3f} / {med:.3f} "
                     f"| {med / (size / GIB):.2f} | {beyond} | {f'{med / base:.2f}x' if base else ''} | {roles} |")
    return "\n".join(lines)


def per_chunk(args) -> str:
    """--per-chunk: the coordinator's and the writers' CPU per chunk at the highest chunk rate (a sparse
    16 GiB synthetic core: every chunk a hole, so the workers do almost nothing), codec none, 2 workers,
    2 members (issue 25, item 3; docs/scale.md)."""
    src = os.path.join(args.dir, "sparse-16G.core")
    if not os.path.exists(src):
        subprocess.run([sys.executable, "-c", "from stripedump.tools import synth; "
                        f"synth.build({src!r}, [synth.Load(0, 16 << 30)], content=None)"], check=True, cwd=REPO)
    members = [os.path.join(args.dir, f"pc{i}") for i in range(2)]
    rows = []
    for rnd in range(args.rounds):
        _, _, out = run([str(args.stripedump), "dump", "--json", "-q", "--force", "--codec", "none", "--workers",
                         "2", "--disks", ",".join(members), src])
        j = json.loads(out)
        c, n = j["cpu_seconds"], j["chunks"]
        rows.append((c["coordinator"] / n * 1e6, c["writers"] / n * 1e6, n, j["seconds"]))
        print(f"bench/cpu.py: per chunk, round {rnd + 1}: coordinator {rows[-1][0]:.1f} us, writers "
              f"{rows[-1][1]:.1f} us ({n} chunks, {j['seconds']:.2f} s)", file=sys.stderr)
    co, wr = sorted(r[0] for r in rows), sorted(r[1] for r in rows)
    return (f"per chunk ({rows[0][2]} chunks, {args.rounds} rounds): coordinator min {co[0]:.1f} / median "
            f"{statistics.median(co):.1f} us of CPU; writers (both) min {wr[0]:.1f} / median "
            f"{statistics.median(wr):.1f} us")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vmcore", action="append", help="a source (repeatable); default the real-kernel fixtures")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    ap.add_argument("--io", choices=("default", "buffered", "both"), default="default",
                    help="stripedump's writers: default (O_DIRECT where accepted), --buffered, or both")
    ap.add_argument("--dir", default="/var/tmp/stripedump-cpu-bench")
    ap.add_argument("--drop", action="store_true", help="remove the normalized sources afterwards")
    ap.add_argument("--stripedump", default=str(REPO / ".venv" / "bin" / "stripedump"))
    ap.add_argument("--codec", default="lzo", help="stripedump's codec (default lzo, as makedumpfile -l)")
    ap.add_argument("--no-makedumpfile", action="store_true",
                    help="stripedump only (a source makedumpfile cannot read, e.g. a synthetic core)")
    ap.add_argument("--per-chunk", action="store_true",
                    help="only the coordinator's and writers' CPU per chunk, on a sparse 16 GiB core")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    os.makedirs(args.dir, exist_ok=True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "stripedump")], check=True, env=ENV,
                   stdout=subprocess.DEVNULL)
    if args.per_chunk:
        print(per_chunk(args))
        return 0
    args.tiny = os.path.join(args.dir, "start-4M.core")
    if not os.path.exists(args.tiny):
        subprocess.run([sys.executable, "-m", "stripedump.tools.synth", "--size", "4M", args.tiny], check=True,
                       cwd=REPO, stdout=subprocess.DEVNULL)
    sources = args.vmcore or [p for p in FIXTURES if os.path.exists(p)]
    if not sources:
        raise SystemExit("bench/cpu.py: no real-kernel fixture; build it (tests/fixtures/make-real-vmcore.sh) "
                         "or give --vmcore")
    results = [bench_source(args, s) for s in sources]
    print(f"load average after: {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs\n")
    print("\n\n".join(table(r) for r in results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "loadavg_after": os.getloadavg()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
