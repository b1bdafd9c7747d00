#!/usr/bin/env python3
"""stripedump against makedumpfile and cp, in one run, on a real kernel's vmcore.

    .venv/bin/python bench/compare.py --fill 1024 --repeat 3
    .venv/bin/python bench/compare.py --fill 1024 --repeat 3 --json bench-compare.json

What it measures (issue 3, targets 1 and 2):

1. ``stripedump dump --codec lzo`` against ``makedumpfile -d 0 -l`` (and zlib
   against ``-c``; snappy against ``-p`` and zstd against ``-z`` when this
   makedumpfile was built with them, which ``makedumpfile -v`` tells; Debian's
   1.7.2 has neither).  Goal: stripedump takes at most 2/3 of the time.
   makedumpfile runs in its default single-thread mode, its fastest on few
   cores.
2. ``stripedump dump --codec none`` against ``cp SOURCE TARGET`` + sync.
   Goal: at least 90% of cp's throughput.

How:
* The source is a vmcore of a real Debian kernel, made by
  tests/fixtures/make-real-vmcore.sh (QEMU dump-guest-memory of a guest whose
  /init fills --fill MiB of tmpfs with random, binary and text data; cached
  under --vmcore-dir, default /var/tmp/stripedump-bench/real-m<MEM>-f<FILL>,
  and kept for the next run unless --drop-vmcore; about 70 s to make under
  TCG, plus the kernel download), or --vmcore PATH.  It is rewritten by
  bench/normalize_vmcore.py into /proc/vmcore's layout (what a capture kernel
  gives both tools; makedumpfile 1.7.2 cannot read QEMU's layout), fully
  allocated, checked against stripedump's reader (stripedump.source.vmcore.Source)
  and against makedumpfile (an untimed --dump-dmesg run), and both tools read
  that file.
* The normalized source and every output live in one fresh directory (inside
  --outdir, default next to the vmcore, so source and targets share a
  filesystem), removed at the end, also on error or Ctrl-C.
* Page cache warm: ``cat SOURCE > /dev/null`` before every round.  Outputs
  synced: stripedump fsyncs its members itself; makedumpfile and cp are timed
  together with ``sync OUTPUT`` (fsync of that file; ``--sync global`` times a
  plain ``sync`` instead, which also flushes whatever else the machine has
  dirty).  Before each timed run the previous outputs are deleted and
  ``sync`` runs (untimed).
* Each measurement runs --repeat times; the tools are interleaved (stripedump,
  its baseline, the next pair, ...; odd rounds in reverse order) so that noise
  hits both alike; the medians are reported.  Times are time.perf_counter()
  around running the command to its exit (subprocess.Popen + wait, which is
  subprocess.run, in a process group of its own for clean interruption; both
  commands for the synced baselines).
* MB/s is source bytes (the normalized vmcore's size, 10^6 bytes per MB) per
  second, for every tool.

Output: a markdown table (times, MB/s, output sizes, ratios against the
goals, the exact commands) on stdout; ``--json FILE`` writes the same as JSON.
Exit status: 0 when the benchmark ran (whether or not the goals were met),
1 when a tool failed, 2 for a missing tool or bad arguments; errors are one
line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import normalize_vmcore  # noqa: E402

MAKE_VMCORE = REPO / "tests" / "fixtures" / "make-real-vmcore.sh"
DEFAULT_STRIPEDUMP = REPO / ".venv" / "bin" / "stripedump"
MDF_FLAG = {"zlib": "-c", "lzo": "-l", "snappy": "-p", "zstd": "-z"}
MDF_FEATURE = {"lzo": "lzo", "snappy": "snappy", "zstd": "zstd"}   # names in `makedumpfile -v`
TIME_GOAL = 2 / 3          # stripedump time / makedumpfile time, at most
CP_GOAL = 0.90             # stripedump none MB/s / cp MB/s, at least
MB = 1e6


class BenchError(Exception):
    """A one-line failure: exit 1."""


class ToolMissing(Exception):
    """A one-line failure: exit 2."""


class Terminated(BaseException):
    pass


def _on_sigterm(signum, frame):
    raise Terminated()


@dataclass
class Case:
    key: str                 # unique name, e.g. "stripedump lzo"
    tool: str                # stripedump | makedumpfile | cp
    codec: str
    cmd: list[str]
    outputs: list[str]
    sync_cmd: list[str] | None = None
    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)      # user + sys seconds of the children
    out_bytes: int = 0
    out_alloc: int = 0
    log_first: str = ""

    def shown(self) -> str:
        s = shlex.join(self.cmd)
        if self.sync_cmd:
            s += " && " + shlex.join(self.sync_cmd)
        return s


def die_missing(msg: str):
    raise ToolMissing(msg)


def check_tools(args) -> dict:
    found = {}
    sd = Path(args.stripedump)
    if not (sd.is_file() and os.access(sd, os.X_OK)):
        die_missing(f"stripedump not found at {sd} (run `make test` or pass --stripedump PATH)")
    found["stripedump"] = str(sd)
    for tool, hint in (("makedumpfile", "apt-get install makedumpfile"), ("cp", "coreutils"),
                       ("sync", "coreutils"), ("cat", "coreutils")):
        path = shutil.which(tool)
        if not path:
            die_missing(f"{tool} not found on PATH ({hint})")
        found[tool] = path
    if not args.vmcore and not MAKE_VMCORE.is_file():
        die_missing(f"{MAKE_VMCORE} not found")
    return found


def capture(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           errors="replace", timeout=60)
        return r.stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"({e})"


def makedumpfile_features(tools) -> tuple[str, dict[str, bool]]:
    out = capture([tools["makedumpfile"], "-v"])
    version = out.splitlines()[0].strip() if out else "?"
    feats = {"zlib": True}
    for codec, name in MDF_FEATURE.items():
        m = re.search(rf"^{name}\s+(enabled|disabled)", out, re.M)
        feats[codec] = bool(m and m.group(1) == "enabled")
    return version, feats


def machine_info(path: str) -> dict:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    fstype = " ".join(capture(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", path]).split()) or "?"
    mem = "?"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) // 1024} MiB"
    except OSError:
        pass
    return {"cpus_usable": len(os.sched_getaffinity(0)), "cpus_online": os.cpu_count(),
            "cpu_model": cpu, "memory": mem, "kernel": platform.release(),
            "filesystem": fstype, "python": platform.python_version(),
            "hostname": platform.node()}


def default_vmcore_dir(args) -> str:
    return args.vmcore_dir or f"/var/tmp/stripedump-bench/real-m{args.guest_mem}-f{args.fill}"


def build_vmcore(args) -> tuple[str, dict]:
    """The raw (QEMU-layout) vmcore path and facts about how it was made."""
    if args.vmcore:
        if not os.path.isfile(args.vmcore):
            raise BenchError(f"--vmcore {args.vmcore}: no such file")
        return args.vmcore, {"made_by": "given (--vmcore)"}
    vdir = default_vmcore_dir(args)
    env = dict(os.environ, GUEST_MEM_MB=str(args.guest_mem), FILL_MB=str(args.fill))
    log(f"making the real-kernel vmcore in {vdir} (GUEST_MEM_MB={args.guest_mem} "
        f"FILL_MB={args.fill}; cached after the first time)")
    t0 = time.perf_counter()
    r = subprocess.run([str(MAKE_VMCORE), vdir], env=env)
    if r.returncode:
        raise BenchError(f"{MAKE_VMCORE.name} failed (exit {r.returncode})")
    rel = Path(vdir, "kernel-release").read_text().strip()
    return os.path.join(vdir, "vmcore"), {
        "made_by": f"GUEST_MEM_MB={args.guest_mem} FILL_MB={args.fill} "
                   f"tests/fixtures/make-real-vmcore.sh {vdir}",
        "kernel_release": rel, "guest_mem_mb": args.guest_mem, "fill_mb": args.fill,
        "make_seconds": round(time.perf_counter() - t0, 1)}


def check_source(raw: str, src: str) -> dict:
    """stripedump's reader sees the same memory in SRC as in RAW."""
    from stripedump.source.vmcore import Source
    with Source(raw) as a, Source(src) as b:
        if a.pfn_ranges != b.pfn_ranges:
            raise BenchError("normalized vmcore: stripedump sees other PFN ranges than in the source")
        if a.info.vmcoreinfo != b.info.vmcoreinfo or not b.info.vmcoreinfo:
            raise BenchError("normalized vmcore: VMCOREINFO differs or is missing")
        pages = sum(e - s for s, e in b.pfn_ranges)
        # spot-check page content through stripedump's own page reads
        step = max(1, pages // 64)
        for s, e in b.pfn_ranges:
            for pfn in range(s, e, step):
                with a.phys_window(pfn, 1) as wa, b.phys_window(pfn, 1) as wb:
                    if bytes(wa.view()) != bytes(wb.view()):
                        raise BenchError(f"normalized vmcore: page {pfn:#x} differs")
        return {"pfn_ranges": [list(r) for r in b.pfn_ranges], "pages": pages,
                "page_size": b.page_size, "loads": len(b.info.loads),
                "osrelease": b.info.vmcoreinfo.get("OSRELEASE", "?")}


def has_holes(path: str) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        return os.lseek(fd, 0, os.SEEK_HOLE) < size
    except OSError:
        return False
    finally:
        os.close(fd)


def file_sizes(paths) -> tuple[int, int]:
    apparent = alloc = 0
    for p in paths:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            continue
        apparent += st.st_size
        alloc += st.st_blocks * 512
    return apparent, alloc


def remove(paths) -> None:
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def log(msg: str) -> None:
    print(f"compare: {msg}", file=sys.stderr, flush=True)


def tail_line(text: str) -> str:
    lines = [ln.strip() for ln in re.split(r"[\r\n]+", text) if ln.strip()]
    return lines[-1] if lines else "(no output)"


def make_cases(args, tools, src, work, mdf_feats) -> tuple[list[Case], list[dict]]:
    cases, pairs = [], []
    members = [os.path.join(work, f"sd.{i}") for i in range(args.disks_count)]
    for codec in args.codecs:
        sd = Case(f"stripedump {codec}", "stripedump", codec,
                  [tools["stripedump"], "dump", "--disks", ",".join(members), "--codec", codec,
                   "--workers", str(args.workers), src], members)
        cases.append(sd)
        base = None
        if codec == "none":
            out = os.path.join(work, "cp.out")
            base = Case("cp", "cp", "none", [tools["cp"], src, out], [out], sync_cmd=sync_cmd(args, out))
            kind, note = "throughput", None
        elif codec in MDF_FLAG:
            kind = "time"
            if mdf_feats.get(codec):
                out = os.path.join(work, f"makedumpfile.{codec}")
                base = Case(f"makedumpfile {MDF_FLAG[codec]}", "makedumpfile", codec,
                            [tools["makedumpfile"], "-d", "0", MDF_FLAG[codec], src, out], [out],
                            sync_cmd=sync_cmd(args, out))
                note = None
            else:
                note = (f"no baseline: this makedumpfile was built without {codec} "
                        f"(`makedumpfile -v`), so `-{MDF_FLAG[codec][1]}` is not available")
        else:
            kind, note = None, f"no baseline: makedumpfile has no {codec}"
        if base:
            cases.append(base)
        pairs.append({"codec": codec, "stripedump": sd, "baseline": base, "kind": kind, "note": note})
    return cases, pairs


def sync_cmd(args, out: str) -> list[str]:
    return ["sync"] if args.sync == "global" else ["sync", out]


def run_cmd(cmd: list[str], **kw) -> int:
    """subprocess.run(cmd).returncode, but in its own process group, so that on
    Ctrl-C or SIGTERM the whole tree (stripedump's workers too) gets SIGTERM
    (SIGKILL 10 s later) instead of only the leader getting SIGKILL."""
    p = subprocess.Popen(cmd, start_new_session=True, **kw)
    try:
        return p.wait()
    except BaseException:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                break
            try:
                p.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue
        raise


def warm(tools, src) -> None:
    with open(os.devnull, "wb") as null:
        subprocess.run([tools["cat"], src], stdout=null, check=True)


def run_case(case: Case, work: str, first: bool) -> float:
    remove(case.outputs)
    subprocess.run(["sync"], check=False)
    logpath = os.path.join(work, "run.log")
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(logpath, "wb") as lf:
        t0 = time.perf_counter()
        rc = run_cmd(case.cmd, stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        rc_sync = 0
        if rc == 0 and case.sync_cmd:
            rc_sync = run_cmd(case.sync_cmd, stdout=lf, stderr=subprocess.STDOUT)
        dt = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    case.cpu.append(ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime)
    text = Path(logpath).read_text(errors="replace")
    os.unlink(logpath)
    if rc or rc_sync:
        remove(case.outputs)
        what = case.cmd[0] if rc else shlex.join(case.sync_cmd)
        raise BenchError(f"{Path(what).name} failed (exit {rc or rc_sync}): "
                         f"{tail_line(text)}  [command: {case.shown()}]")
    case.out_bytes, case.out_alloc = file_sizes(case.outputs)
    if first:
        case.log_first = text
    remove(case.outputs)
    subprocess.run(["sync"], check=False)
    return dt


def mdf_notes(text: str) -> list[str]:
    """makedumpfile's messages that are not progress or the success lines."""
    keep = []
    for ln in re.split(r"[\r\n]+", text):
        ln = ln.strip()
        if (not ln or "%]" in ln or ln.startswith("The dumpfile is saved to")
                or ln == "makedumpfile Completed." or ln.startswith("Copying data")):
            continue
        if ln not in keep:
            keep.append(ln)
    return keep


def fmt_s(x: float) -> str:
    return f"{x:.2f}"


def report(meta, cases, pairs, src_bytes) -> tuple[str, dict]:
    rows, results = [], []
    for c in cases:
        med = statistics.median(c.times)
        mbps = src_bytes / med / MB
        results.append({"key": c.key, "tool": c.tool, "codec": c.codec, "command": c.shown(),
                        "argv": c.cmd, "sync": c.sync_cmd, "times_s": [round(t, 4) for t in c.times],
                        "median_s": round(med, 4), "cpu_s": [round(t, 3) for t in c.cpu],
                        "median_cpu_s": round(statistics.median(c.cpu), 3), "input_bytes": src_bytes, "mb_per_s": round(mbps, 1),
                        "output_bytes": c.out_bytes, "output_alloc_bytes": c.out_alloc,
                        "output_ratio": round(c.out_bytes / src_bytes, 4)})
        rows.append(f"| {c.key} | {c.codec} | {fmt_s(med)} | {' '.join(fmt_s(t) for t in c.times)} | "
                    f"{fmt_s(statistics.median(c.cpu))} | {mbps:.1f} | {c.out_bytes / MB:.1f} | {c.out_bytes / src_bytes:.3f} |")
    targets, trows = [], []
    for p in pairs:
        sd, base = p["stripedump"], p["baseline"]
        sd_med = statistics.median(sd.times)
        if base is None:
            if p["note"]:
                targets.append({"codec": p["codec"], "kind": p["kind"], "stripedump_s": round(sd_med, 4),
                                "baseline": None, "note": p["note"]})
                trows.append(f"| {p['codec']}: stripedump vs (none) | {fmt_s(sd_med)} s | - | - | - | "
                             f"{p['note']} |")
            continue
        b_med = statistics.median(base.times)
        if p["kind"] == "time":
            ratio = sd_med / b_med
            met = ratio <= TIME_GOAL
            goal = f"time <= {TIME_GOAL:.3f} x"
            desc = f"{p['codec']}: time, stripedump / {base.key}"
            shown = (f"{fmt_s(sd_med)} s", f"{fmt_s(b_med)} s")
        else:
            ratio = b_med / sd_med   # throughput ratio = inverse time ratio
            met = ratio >= CP_GOAL
            goal = f"MB/s >= {CP_GOAL:.2f} x"
            desc = "none: throughput, stripedump / cp+sync"
            shown = (f"{src_bytes / sd_med / MB:.1f} MB/s", f"{src_bytes / b_med / MB:.1f} MB/s")
        targets.append({"codec": p["codec"], "kind": p["kind"], "baseline": base.key,
                        "stripedump_s": round(sd_med, 4), "baseline_s": round(b_med, 4),
                        "ratio": round(ratio, 3), "goal": goal, "met": met})
        trows.append(f"| {desc} | {shown[0]} | {shown[1]} | {ratio:.3f} | {goal} | "
                     f"{'yes' if met else 'NO'} |")
    m = meta
    src = m["source"]
    lines = [
        "## stripedump vs makedumpfile and cp on a real-kernel vmcore",
        "",
        f"- date: {m['date']}; whole benchmark {m['total_seconds']:.0f} s",
        f"- machine: {m['machine']['cpus_usable']} usable CPUs ({m['machine']['cpu_model']}), "
        f"{m['machine']['memory']}, Linux {m['machine']['kernel']}; source and outputs on "
        f"{m['machine']['filesystem']} ({m['workdir_parent']})",
        f"- source: {src['bytes'] / MB:.1f} MB vmcore of Linux {src.get('osrelease', '?')} "
        f"({src.get('made_by', '')}), normalized to /proc/vmcore's layout "
        f"({src['pages']} pages in {len(src['pfn_ranges'])} PFN ranges, fully allocated)",
        f"- tools: {m['versions']['stripedump']}; {m['versions']['makedumpfile']} "
        f"(codecs: {', '.join(k for k, v in m['makedumpfile_codecs'].items() if v)}); "
        f"{m['versions']['cp']}",
        f"- stripedump: --workers {m['workers']}, {m['disks_count']} members; "
        f"makedumpfile: single thread (default); page cache warm; outputs synced "
        f"(baselines: `{'sync OUTPUT' if m['sync'] == 'file' else 'sync'}` inside the timing)",
        f"- {m['repeat']} runs each, tools interleaved, median reported; MB = 10^6 bytes of source; "
        f"CPU s = user + sys of the tool's processes; load average {m['loadavg_start']} at the start, "
        f"{m['loadavg_end']} at the end",
        "",
        "| run | codec | median s | runs s | CPU s | MB/s | output MB | out/in |",
        "|---|---|---:|---|---:|---:|---:|---:|",
        *rows,
        "",
        "| target (issue 3) | stripedump | baseline | ratio | goal | met |",
        "|---|---:|---:|---:|---|---|",
        *trows,
        "",
        "Commands (SOURCE and outputs in the temporary work directory):",
        "",
        *[f"- {c.key}: `{c.shown()}`" for c in cases],
    ]
    if m.get("makedumpfile_messages"):
        lines += ["", "makedumpfile said: " + " / ".join(m["makedumpfile_messages"])]
    doc = {"meta": m, "results": results, "targets": targets}
    return "\n".join(lines) + "\n", doc


def parse_args(argv):
    ap = argparse.ArgumentParser(
        description="Benchmark stripedump against makedumpfile and cp on a real-kernel vmcore "
                    "(issue 3, targets 1 and 2).",
        epilog="example: .venv/bin/python bench/compare.py --fill 1024 --repeat 3 --json out.json")
    ap.add_argument("--vmcore", help="use this ELF vmcore instead of making one")
    ap.add_argument("--fill", type=int, default=1024, metavar="MiB",
                    help="MiB of tmpfs the guest fills before the dump (default 1024)")
    ap.add_argument("--guest-mem", type=int, default=None, metavar="MiB",
                    help="guest memory (default: fill + 512, at least 192)")
    ap.add_argument("--vmcore-dir", help="where make-real-vmcore.sh keeps its vmcore and cache "
                    "(default /var/tmp/stripedump-bench/real-m<MEM>-f<FILL>)")
    ap.add_argument("--outdir", help="a temporary work directory is made inside (default: "
                    "next to the vmcore); it holds the normalized source and every output and is "
                    "removed at the end")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement (default 3)")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                    help="stripedump --workers (default: all usable CPUs)")
    ap.add_argument("--disks-count", type=int, default=2, metavar="D",
                    help="stripedump members (files in the work directory; default 2)")
    ap.add_argument("--codecs", default="lzo,zlib,snappy,zstd,none",
                    help="stripedump codecs (default lzo,zlib,snappy,zstd,none)")
    ap.add_argument("--sync", choices=("file", "global"), default="file",
                    help="baselines are timed with `sync OUTPUT` (file, default) or `sync` (global)")
    ap.add_argument("--stripedump", default=str(DEFAULT_STRIPEDUMP), help="stripedump executable")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    ap.add_argument("--drop-vmcore", action="store_true",
                    help="at the end also remove --vmcore-dir (the ~1.6 GB vmcore, kernel and "
                         "initramfs cache that make the next run start in seconds)")
    ap.add_argument("--no-normalize", action="store_true",
                    help="the vmcore already has /proc/vmcore's layout: copy it as is")
    a = ap.parse_args(argv)
    if a.guest_mem is None:
        a.guest_mem = max(192, a.fill + 512) if a.fill else 192
    a.codecs = [c.strip() for c in a.codecs.split(",") if c.strip()]
    if a.repeat < 1 or a.workers < 1 or a.disks_count < 1 or a.fill < 0:
        ap.error("--repeat, --workers and --disks-count must be >= 1, --fill >= 0")
    if not a.codecs or len(set(a.codecs)) != len(a.codecs):
        ap.error("--codecs: a non-empty list without repeats")
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    t_start = time.perf_counter()
    load0 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    work = vdir = None
    try:
        tools = check_tools(args)
        mdf_version, mdf_feats = makedumpfile_features(tools)
        if not args.vmcore:
            vdir = default_vmcore_dir(args)
        raw, made = build_vmcore(args)
        parent = args.outdir or os.path.dirname(os.path.abspath(raw))
        os.makedirs(parent, exist_ok=True)
        raw_bytes = os.stat(raw).st_size
        free = shutil.disk_usage(parent).free
        need = int(raw_bytes * 3.2)     # normalized source + cp output + stripedump none members
        if free < need:
            raise BenchError(f"{parent}: {free / 1e9:.1f} GB free, need about {need / 1e9:.1f} GB")
        work = tempfile.mkdtemp(prefix="compare.", dir=parent)
        src = os.path.join(work, "vmcore")
        t0 = time.perf_counter()
        if args.no_normalize:
            shutil.copyfile(raw, src)
            norm = {"output_bytes": os.stat(src).st_size}
        else:
            try:
                norm = normalize_vmcore.normalize(raw, src)
                normalize_vmcore.compare_loads(raw, src)
            except normalize_vmcore.NormalizeError as e:
                raise BenchError(f"normalizing {raw}: {e}") from None
        if has_holes(src):
            raise BenchError(f"{src} has holes; the benchmark needs a fully allocated source")
        srcinfo = check_source(raw, src)
        log(f"normalized {raw} ({raw_bytes} bytes) -> {src} ({norm['output_bytes']} bytes) "
            f"in {time.perf_counter() - t0:.1f} s; stripedump's reader agrees")
        # makedumpfile must accept it (untimed): --dump-dmesg reads headers, notes and memory
        dm = os.path.join(work, "dmesg.txt")
        r = subprocess.run([tools["makedumpfile"], "--dump-dmesg", src, dm],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        if r.returncode:
            raise BenchError(f"makedumpfile does not accept the normalized vmcore: {tail_line(r.stdout)}")
        dmesg_lines = len(Path(dm).read_text(errors="replace").splitlines())
        os.unlink(dm)
        log(f"makedumpfile --dump-dmesg read {dmesg_lines} lines of the guest's log")

        src_bytes = os.stat(src).st_size
        cases, pairs = make_cases(args, tools, src, work, mdf_feats)
        order = list(cases)
        for rnd in range(args.repeat):
            warm(tools, src)
            for c in (order if rnd % 2 == 0 else order[::-1]):
                dt = run_case(c, work, first=not c.times)
                c.times.append(dt)
                log(f"round {rnd + 1}/{args.repeat}: {c.key}: {dt:.2f} s "
                    f"({src_bytes / dt / MB:.1f} MB/s)")
        notes = []
        for c in cases:
            if c.tool == "makedumpfile":
                for n in mdf_notes(c.log_first):
                    if n not in notes:
                        notes.append(n)
        meta = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "machine": machine_info(work),
            "workdir_parent": parent,
            "versions": {"stripedump": capture([tools["stripedump"], "--version"]).strip(),
                         "makedumpfile": mdf_version,
                         "cp": capture([tools["cp"], "--version"]).splitlines()[0]},
            "makedumpfile_codecs": mdf_feats,
            "source": {"raw_path": raw, "raw_bytes": raw_bytes, "bytes": src_bytes,
                       "normalized": not args.no_normalize, **made, **srcinfo},
            "workers": args.workers, "disks_count": args.disks_count, "repeat": args.repeat,
            "sync": args.sync, "codecs": args.codecs,
            "makedumpfile_messages": notes,
            "stripedump_summary": next((c.log_first.strip() for c in cases if c.tool == "stripedump"), ""),
            "total_seconds": round(time.perf_counter() - t_start, 1),
            "loadavg_start": load0,
            "loadavg_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        }
        text, doc = report(meta, cases, pairs, src_bytes)
        sys.stdout.write(text)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(doc, f, indent=2)
                f.write("\n")
            log(f"wrote {args.json}")
        return 0
    except ToolMissing as e:
        print(f"compare: error: {e}", file=sys.stderr)
        return 2
    except BenchError as e:
        print(f"compare: error: {e}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Terminated):
        print("compare: interrupted; removing the work directory", file=sys.stderr)
        return 130
    finally:
        if work:
            shutil.rmtree(work, ignore_errors=True)
        if vdir and args.drop_vmcore:
            shutil.rmtree(vdir, ignore_errors=True)
            log(f"removed {vdir}")
        elif vdir and os.path.exists(os.path.join(vdir, "vmcore")):
            log(f"kept the vmcore cache {vdir} "
                f"({os.stat(os.path.join(vdir, 'vmcore')).st_size / 1e9:.1f} GB; --drop-vmcore removes it)")


if __name__ == "__main__":
    sys.exit(main())
