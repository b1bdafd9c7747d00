"""``stripedump bench``: throughput per codec x CPUs x disks, like the 2013 talk.

Why this shape:
* The source is a real ELF vmcore read through the real reader and pipeline,
  but generated so that a 10 GiB run needs neither 10 GiB of RAM nor of disk:
  for ``random`` and ``mixed`` data every PT_LOAD shows the same 64 MiB pool
  (``synth.build_aliased``); per-block compression cannot see the repeats.
  ``zero`` is one sparse PT_LOAD, all holes.
* Targets are temporary files (in the given directories, one per disk, or in
  one temporary directory), deleted after each run, so nothing is left behind.
* ``--mode no-write`` (or ``both``; ``--no-write`` is ``both``) runs the same
  pipeline with writers that discard, so a CPU limit can be told from an I/O
  limit.
* The default data is ``mixed`` (memory-like: zero, text-like, low-entropy
  and random pages), so the ratios mean something; ``random`` is the talk's
  incompressible worst case.  The table names the data of each row.
* Everything that can be known before the first run is checked first
  (``preflight``): matplotlib for ``--plot``, and the free space of every
  target filesystem against the worst case (the source stored raw, spread
  over the disks), so that a bench never ends in "No space left on device"
  after minutes of runs.  The number of runs and a rough duration (from
  compressing a small sample with each codec) are announced up front.
* Memory is the sum over the process tree of each process's peak
  proportional set size (private plus a fair share of shared memory; the
  source is mapped one chunk per worker at a time), sampled every 100 ms; CPU
  use is user+system time of the tree over wall time.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
import threading
from dataclasses import dataclass

from ..format.codecs import CodecSpec
from ..dump.config import DumpConfig
from ..errors import UsageError

DATA_KINDS = ("random", "mixed", "zero")
DEFAULT_DATA = "mixed"
DATA_WORDS = {"random": "incompressible", "mixed": "memory-like", "zero": "all zero"}
POOL_BYTES = 64 << 20
MEMBER_SLACK = 16 << 20       # per member: header, manifest, index, alignment (generous)
RECORD_SLACK = 1 / 64         # chunk headers and block tables: about 1.1 KiB per 1 MiB chunk
SAMPLE_BYTES = 2 << 20        # what each codec compresses to estimate the duration
RUN_OVERHEAD = 0.25           # seconds per run (measured 0.15-0.3 s): processes started, members synced
ZERO_RATE = 10e9              # bytes/s per worker on all-zero pages (measured 17.7 GB/s, 1 worker, 200 GiB)
SAMPLE_EVERY = 0.1     # smaps_rollup walks every mapping: sampling faster costs the run CPU


def make_pool(data: str, size: int = POOL_BYTES) -> bytes:
    from . import synth
    if data == "random":
        return os.urandom(size)
    if data == "mixed":
        return b"".join(synth.page_content(p) for p in range(size // 4096))
    raise UsageError(f"unknown --data {data!r}; choose one of {', '.join(DATA_KINDS)}")


def make_source(path: str, size: int, data: str) -> str:
    from . import synth
    if data == "zero":
        synth.build(path, [synth.Load(0, size)], content=None, nr_cpus=1)
    else:
        synth.build_aliased(path, size, make_pool(data, min(POOL_BYTES, size)))
    return path


def tree_memory(pid: int) -> dict[int, int]:
    """Proportional set size of ``pid`` and each descendant (smaps_rollup), by pid.

    PSS counts private memory plus a fair share of shared memory (the slot
    pool); the source is mapped one chunk per worker at a time.
    """
    import psutil
    out = {}
    try:
        procs = [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return out
    for p in procs:
        try:
            with open(f"/proc/{p.pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        out[p.pid] = int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return out


class MemorySampler(threading.Thread):
    """Peak memory of the process tree: the sum of each process's own peak PSS.

    Summing per-process peaks is an upper bound of the simultaneous peak and,
    unlike a sampled total, does not depend on how long the run lasts (short
    runs end before every process has reached its peak at the same moment).
    """

    def __init__(self):
        super().__init__(daemon=True)
        self.peaks: dict[int, int] = {}
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            for pid, v in tree_memory(os.getpid()).items():
                self.peaks[pid] = max(self.peaks.get(pid, 0), v)
            self._halt.wait(SAMPLE_EVERY)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return sum(self.peaks.values())


def _cpu_seconds() -> float:
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


@dataclass(frozen=True)
class BenchConfig:
    size: int
    codecs: tuple[CodecSpec, ...]
    workers: tuple[int, ...]
    disks: tuple[int, ...] = (1,)
    disk_dirs: tuple[str, ...] = ()
    data: str = DEFAULT_DATA
    mode: str = "write"              # write, no-write (writers discard) or both
    chunk_size: int = 1 << 20
    block_size: int = 0
    workdir: str | None = None
    repeat: int = 1                  # runs per case; the row reports the median run

    def __post_init__(self):
        if self.size < 1:
            raise UsageError("--size must be more than 0")
        if self.data not in DATA_KINDS:
            raise UsageError(f"unknown --data {self.data!r}; choose one of {', '.join(DATA_KINDS)}")
        # chunk and block sizes are checked now, against the generated source's 4 KiB pages
        DumpConfig("", (), chunk_size=self.chunk_size, block_size=self.block_size).geometry(4096)

    @property
    def writes(self) -> tuple[bool, ...]:
        return {"write": (True,), "no-write": (False,), "both": (True, False)}[self.mode]

    @property
    def runs(self) -> int:
        return len(self.codecs) * len(self.workers) * len(self.disks) * len(self.writes) * self.repeat


def parse_codecs(text: str) -> tuple:
    """``lz4,zstd:3,auto`` -> specs; ``auto:lz4+zstd:3`` is auto over those codecs, as for dump's --codec."""
    from ..format.codecs import parse_codec
    codecs = tuple(parse_codec(c) for c in text.split(",") if c.strip())
    if not codecs:
        raise UsageError("--codecs is empty")
    return codecs


def parse_disks(text: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """``2`` or ``1,2,4`` (counts of temporary files) or ``DIR,DIR`` (one target per directory)."""
    items = [x for x in text.split(",") if x]
    if items and all(x.isdigit() for x in items):
        counts = tuple(int(x) for x in items)
        if min(counts) < 1:
            raise UsageError("--disks counts must be at least 1")
        return counts, ()
    for d in items:
        if not os.path.isdir(d):
            raise UsageError(f"--disks {d}: not a directory (give counts like 1,2 or directories)")
    return (len(items),), tuple(items)


def _fs_free(path: str) -> tuple[int, int]:
    """(filesystem id, bytes free to an unprivileged writer) of the filesystem holding ``path``."""
    st = os.statvfs(path)
    return os.stat(path).st_dev, st.f_bavail * st.f_frsize


def space_needed(cfg: BenchConfig) -> dict[str, int]:
    """Worst-case bytes each target directory must hold at once, by directory.

    Runs follow one another and delete their members, so a directory needs
    what the largest run puts there: with temporary files (one directory
    for all members) the whole source, stored raw when it does not shrink
    (``random``, or the ``none`` codec); with one directory per disk, a
    share of it.  The generated source itself (at most 64 MiB) is counted in
    the work directory.
    """
    if True not in cfg.writes:
        need: dict[str, int] = {}
    else:
        raw = 0 if cfg.data == "zero" else cfg.size
        raw = int(raw * (1 + RECORD_SLACK))
        if cfg.disk_dirs:
            n = len(cfg.disk_dirs)
            need = {}
            for d in cfg.disk_dirs:
                need[d] = need.get(d, 0) + -(-raw // n) + MEMBER_SLACK
        else:
            need = {workdir(cfg): raw + max(cfg.disks) * MEMBER_SLACK}
    src = 0 if cfg.data == "zero" else min(POOL_BYTES, cfg.size) + (1 << 20)
    need[workdir(cfg)] = need.get(workdir(cfg), 0) + src
    return need


def human(n: float) -> str:
    """Bytes in binary units, three significant digits: 4 KiB, 64 MiB, 1.5 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if n >= 100 else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.0f} TiB" if n >= 100 else f"{n:.3g} TiB"


def workdir(cfg: BenchConfig) -> str:
    return cfg.workdir or tempfile.gettempdir()


def check_space(cfg: BenchConfig) -> None:
    """Refuse (a usage error) when the targets' filesystems may not hold the worst case."""
    need = space_needed(cfg)
    by_fs: dict[int, list] = {}
    for d, n in need.items():
        if not os.path.isdir(d):
            raise UsageError(f"bench: {d} is not a directory (--dir, --disks or $TMPDIR)")
        dev, free = _fs_free(d)
        fs = by_fs.setdefault(dev, [0, free, []])
        fs[0] += n
        fs[2].append(d)
    for total, free, dirs in by_fs.values():
        if total > free:
            where = " and ".join(dirs)
            raise UsageError(
                f"bench: --size {human(cfg.size)} may need up to {human(total)} in {where} (the worst "
                f"case: every page stored raw), which has {human(free)} free; use --mode no-write "
                f"(compress only, write nothing), "
                f"or --disks DIR,DIR,... on filesystems with room, or a smaller --size")


def need_matplotlib() -> None:
    """``--plot`` is checked before the first run, not after the last."""
    try:
        import matplotlib
        assert matplotlib
    except ImportError:
        raise UsageError("--plot needs matplotlib, which is not installed in this Python (install it "
                         "with this environment's pip: pip install matplotlib, or from the checkout: "
                         "pip install '.[bench]'); or leave out --plot") from None


def preflight(cfg: BenchConfig, plot_path: str | None = None) -> None:
    """Everything that can fail before any run: plot library and file, free space."""
    if plot_path:
        need_matplotlib()
        d = os.path.dirname(os.path.abspath(plot_path))
        if not os.path.isdir(d):
            raise UsageError(f"--plot {plot_path}: directory {d} does not exist")
    check_space(cfg)


def estimate_seconds(cfg: BenchConfig, cpus: int) -> float:
    """A rough duration of the whole bench: each codec timed on a small sample of the data.

    Each run is taken as the source size over (sample rate x its workers,
    at most the CPUs), plus a fixed start-up cost; writing to slow disks can
    make the real runs longer.  ``zero`` pages are only scanned (ZERO_RATE).
    """
    sample = make_pool(cfg.data, SAMPLE_BYTES) if cfg.data != "zero" else b""
    block = cfg.block_size or 4096
    total = 0.0
    for spec in cfg.codecs:
        rate = ZERO_RATE
        if sample:
            # auto: at best as fast as the fastest codec of its ladder
            ladder = spec.resolve().ladder
            rate = max(_sample_rate(s.make(), sample, block) for s in ladder)
        for w in cfg.workers:
            per_run = cfg.size / (rate * min(w, cpus)) + RUN_OVERHEAD
            total += per_run * len(cfg.disks) * len(cfg.writes) * cfg.repeat
    return total


def _sample_rate(codec, sample: bytes, block: int) -> float:
    """Bytes per second ``codec`` compresses ``sample`` at, block by block."""
    import time
    mv = memoryview(sample)
    t0 = time.perf_counter()
    for a in range(0, len(sample), block):
        codec.compress(bytes(mv[a:a + block]) if codec.wants_bytes else mv[a:a + block])
    return len(sample) / max(time.perf_counter() - t0, 1e-6)


def announce(cfg: BenchConfig, cpus: int) -> str:
    """The line said before the first run: how many runs, of what, and roughly how long."""
    secs = estimate_seconds(cfg, cpus)
    parts = [f"{len(cfg.codecs)} codec(s)", f"{len(cfg.workers)} worker count(s)",
             f"{len(cfg.disks)} disk count(s)"]
    if len(cfg.writes) > 1:
        parts.append("write and no-write")
    if cfg.repeat > 1:
        parts.append(f"{cfg.repeat} repeats")
    when = f"{secs:.0f} s" if secs < 120 else f"{secs / 60:.0f} min"
    return (f"bench: {cfg.runs} run(s) ({' x '.join(parts)}) of {human(cfg.size)} of "
            f"{cfg.data} data ({DATA_WORDS[cfg.data]}); roughly {when} (estimated from a sample; "
            f"slow disks take longer)")


def run_one(cfg: BenchConfig, src: str, codec: CodecSpec, workers: int, ndisks: int, write: bool,
            tmp: str) -> dict:
    from ..dump.coordinator import dump
    dirs = cfg.disk_dirs or (tmp,) * ndisks
    targets = tuple(os.path.join(d, f"stripedump-bench-{os.getpid()}-{i}.sd") for i, d in enumerate(dirs))
    sampler = MemorySampler()
    cpu0 = _cpu_seconds()
    sampler.start()
    try:
        res = dump(DumpConfig(src, targets, codec, workers, cfg.chunk_size, cfg.block_size,
                              force=True, discard=not write))
    finally:
        peak = sampler.stop()
        for t in targets:
            try:
                os.unlink(t)
            except OSError:
                pass
    cpu = _cpu_seconds() - cpu0
    return {**cpu_columns(res.extra.get("cpu_seconds", {}), res.bytes_in),"codec": str(codec), "workers": workers, "disks": ndisks, "write": write, "data": cfg.data,
            "input_bytes": res.bytes_in, "output_bytes": sum(res.bytes_out),
            "seconds": round(res.seconds, 4), "mb_per_s": round(res.mb_per_s, 1),
            "ratio": round(res.ratio, 3), "cpu_percent": round(100 * cpu / res.seconds, 1),
            "peak_memory_bytes": peak, "chunk_bytes": cfg.chunk_size,
            **({"auto_chunks": res.extra["auto_chunks"]} if res.extra.get("auto_chunks") else {})}


def cpu_columns(roles: dict, bytes_in: int) -> dict:
    """``cpu_seconds`` per role (dump --json's), the dump's CPU seconds per GiB of source, and the
    share of that CPU spent outside the workers (coordinator, writers, helpers): what a dump costs
    on every core beyond its codec, and the serial part that caps its scaling."""
    total = roles.get("total", 0.0)
    out = {"cpu_seconds": roles, "cpu_s_per_gib": round(total / (bytes_in / 2**30), 3) if bytes_in else 0.0}
    if "workers" in roles and total:
        out["non_worker_share"] = round(1 - roles["workers"] / total, 3)
    return out


def bench(cfg: BenchConfig, report=None) -> list[dict]:
    """Run every combination; ``report(row)`` is called after each run."""
    tmp = tempfile.mkdtemp(prefix="stripedump-bench-", dir=cfg.workdir)
    try:
        src = make_source(os.path.join(tmp, f"source-{cfg.data}.vmcore"), cfg.size, cfg.data)
        rows = []
        for codec in cfg.codecs:
            for w in cfg.workers:
                for d in cfg.disks:
                    for write in cfg.writes:
                        runs = sorted((run_one(cfg, src, codec, w, d, write, tmp)
                                       for _ in range(cfg.repeat)), key=lambda r: r["mb_per_s"])
                        row = dict(runs[len(runs) // 2])
                        if cfg.repeat > 1:
                            row["runs_mb_per_s"] = [r["mb_per_s"] for r in runs]
                            row["peak_memory_bytes"] = max(r["peak_memory_bytes"] for r in runs)
                        rows.append(row)
                        if report:
                            report(row)
        return rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def table(rows: list[dict]) -> str:
    """The rows for people; auto rows end with how many chunks each codec got (as --json's auto_chunks)."""
    auto = any(r.get("auto_chunks") for r in rows)
    w = max([8] + [len(r["codec"]) for r in rows])      # auto:none+lz4/ratio=0.3 is longer than 8
    head = f"{'data':<6} {'codec':<{w}} {'workers':>7} {'disks':>5} {'mode':<8} {'MB/s':>9} {'ratio':>6} " \
           f"{'CPU %':>6} {'CPU s/GiB':>9} {'non-worker':>10} {'peak MiB':>8} {'seconds':>8}" + ("  chunks per codec (auto)" if auto else "")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append((f"{r['data']:<6} {r['codec']:<{w}} {r['workers']:>7} {r['disks']:>5} "
                      f"{'write' if r['write'] else 'no-write':<8} "
                      f"{r['mb_per_s']:>9.1f} {r['ratio']:>6.2f} {r['cpu_percent']:>6.0f} "
                      f"{r.get('cpu_s_per_gib', 0):>9.2f} {_share(r):>10} "
                      f"{r['peak_memory_bytes'] / 2**20:>8.1f} {r['seconds']:>8.2f}"
                      + ("  " + ", ".join(f"{c} {n}" for c, n in r.get("auto_chunks", {}).items()) if auto else ""))
                     .rstrip())
    return "\n".join(lines)


def _share(row: dict) -> str:
    return f"{100 * row['non_worker_share']:.0f} %" if "non_worker_share" in row else "-"


def _workers(n: int) -> str:
    """The table's word for worker processes, in the plot's legend too."""
    return f"{n} worker" + ("s" if n != 1 else "")


def figure(rows: list[dict], title: str = ""):
    """The talk's chart, per disk count: MB/s per codec, one bar per worker count (min-max bars
    over the runs of --repeat), and below it the compression ratio of each bar (auto and none
    look fast partly because they compress little).  Returns the matplotlib figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in rows if r["write"]] or rows
    disks = sorted({r["disks"] for r in rows})
    codecs = list(dict.fromkeys(r["codec"] for r in rows))
    workers = sorted({r["workers"] for r in rows})
    fig, axes = plt.subplots(2, len(disks), figsize=(4 + 3 * len(disks), 7), sharex="col", sharey="row",
                             squeeze=False, gridspec_kw={"height_ratios": (3, 2)})
    width = 0.8 / len(workers)
    for col, d in enumerate(disks):
        speed, ratio = axes[0][col], axes[1][col]
        for k, w in enumerate(workers):
            got = [next((r for r in rows if r["disks"] == d and r["workers"] == w and r["codec"] == c), None)
                   for c in codecs]
            xs = [i + k * width for i in range(len(codecs))]
            ys = [r["mb_per_s"] if r else 0 for r in got]
            runs = [r.get("runs_mb_per_s") or [r["mb_per_s"]] if r else [0] for r in got]
            spread = [[y - min(v) for y, v in zip(ys, runs)], [max(v) - y for y, v in zip(ys, runs)]]
            many = any(len(v) > 1 for v in runs)
            speed.bar(xs, ys, width, label=_workers(w), color=f"C{k}",
                      **({"yerr": spread, "capsize": 3, "ecolor": "black"} if many else {}))
            ratio.bar(xs, [r["ratio"] if r else 0 for r in got], width, color=f"C{k}")
        speed.set_title(f"{d} disk" + ("s" if d > 1 else ""))
        ratio.set_xticks([i + width * (len(workers) - 1) / 2 for i in range(len(codecs))])
        ratio.set_xticklabels(codecs)
        for ax in (speed, ratio):
            ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("MB/s of dump (source bytes per second)"
                          + ("\nmedian, bars: min to max of the runs" if any("runs_mb_per_s" in r for r in rows)
                             else ""))
    axes[1][0].set_ylabel("compression ratio\n(source bytes / member bytes)")
    axes[0][-1].legend()
    fig.suptitle(title or "stripedump throughput by codec, workers and disks")
    fig.tight_layout()
    return fig


def plot(rows: list[dict], path: str, title: str = "") -> None:
    """``figure`` saved as a PNG at ``path``."""
    try:
        fig = figure(rows, title)
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib (pip install matplotlib, or pip install '.[bench]')") from None
    fig.savefig(path, dpi=100)
    plt.close(fig)
