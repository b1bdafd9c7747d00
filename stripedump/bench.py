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

from .codecs import CodecSpec
from .config import DumpConfig
from .errors import UsageError

DATA_KINDS = ("random", "mixed", "zero")
POOL_BYTES = 64 << 20
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
    data: str = "random"
    mode: str = "write"              # write, no-write (writers discard) or both
    chunk_size: int = 1 << 20
    block_size: int = 0
    workdir: str | None = None
    repeat: int = 1                  # runs per case; the row reports the median run


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


def run_one(cfg: BenchConfig, src: str, codec: CodecSpec, workers: int, ndisks: int, write: bool,
            tmp: str) -> dict:
    from .pipeline import dump
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
    return {"codec": str(codec), "workers": workers, "disks": ndisks, "write": write, "data": cfg.data,
            "input_bytes": res.bytes_in, "output_bytes": sum(res.bytes_out),
            "seconds": round(res.seconds, 4), "mb_per_s": round(res.mb_per_s, 1),
            "ratio": round(res.ratio, 3), "cpu_percent": round(100 * cpu / res.seconds, 1),
            "peak_memory_bytes": peak, "chunk_bytes": cfg.chunk_size}


def bench(cfg: BenchConfig, report=None) -> list[dict]:
    """Run every combination; ``report(row)`` is called after each run."""
    tmp = tempfile.mkdtemp(prefix="stripedump-bench-", dir=cfg.workdir)
    try:
        src = make_source(os.path.join(tmp, f"source-{cfg.data}.vmcore"), cfg.size, cfg.data)
        rows = []
        for codec in cfg.codecs:
            for w in cfg.workers:
                for d in cfg.disks:
                    for write in {"write": (True,), "no-write": (False,), "both": (True, False)}[cfg.mode]:
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
    head = f"{'codec':<8} {'workers':>7} {'disks':>5} {'mode':<8} {'MB/s':>9} {'ratio':>6} " \
           f"{'CPU %':>6} {'peak MiB':>8} {'seconds':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['codec']:<8} {r['workers']:>7} {r['disks']:>5} {'write' if r['write'] else 'no-write':<8} "
                     f"{r['mb_per_s']:>9.1f} {r['ratio']:>6.2f} {r['cpu_percent']:>6.0f} "
                     f"{r['peak_memory_bytes'] / 2**20:>8.1f} {r['seconds']:>8.2f}")
    return "\n".join(lines)


def plot(rows: list[dict], path: str, title: str = "") -> None:
    """The talk's chart: MB/s per codec, 1 CPU beside N CPUs, one group per disk count."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib (pip install matplotlib)") from None
    rows = [r for r in rows if r["write"]] or rows
    disks = sorted({r["disks"] for r in rows})
    codecs = list(dict.fromkeys(r["codec"] for r in rows))
    workers = sorted({r["workers"] for r in rows})
    fig, axes = plt.subplots(1, len(disks), figsize=(4 + 3 * len(disks), 4.5), sharey=True, squeeze=False)
    width = 0.8 / len(workers)
    for ax, d in zip(axes[0], disks):
        for k, w in enumerate(workers):
            ys = [next((r["mb_per_s"] for r in rows if r["disks"] == d and r["workers"] == w
                        and r["codec"] == c), 0) for c in codecs]
            ax.bar([i + k * width for i in range(len(codecs))], ys, width,
                   label=f"{w} CPU" + ("s" if w > 1 else ""))
        ax.set_xticks([i + width * (len(workers) - 1) / 2 for i in range(len(codecs))])
        ax.set_xticklabels(codecs)
        ax.set_title(f"{d} disk" + ("s" if d > 1 else ""))
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("MB/s of dump (source bytes per second)")
    axes[0][-1].legend()
    fig.suptitle(title or "stripedump throughput by codec, CPUs and disks")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
