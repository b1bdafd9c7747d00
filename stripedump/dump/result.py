"""What a dump reports: ``DumpResult``, its one-line summary and its ``--json`` form.

Why a module of its own: the coordinator (loop.py) counts; what the user
reads of it (the summary line, ``dump --json``, what ``bench`` compares) is
written here, with the parts that only some dumps have: the codecs an
``--codec auto`` dump chose (autocodec.AutoStats.report), the pages a dump
level left out (``level_report``), the targets a degraded dump dropped
(degraded.Resends.report), the memory the source could not give, and the
CPU each kind of process spent (``CpuClock``).
"""

from __future__ import annotations

import resource

from ..errors import IncompleteDump, Interrupted, StripedumpError
from ..runtime.plain import Plain
from .wire import class_totals


class DumpResult(Plain):
    __slots__ = ("dump_id", "source", "codec", "members", "bytes_in", "bytes_out", "chunks", "seconds",
                 "workers", "extra")

    def __init__(self, dump_id: str, source: str, codec: str, members: list[str], bytes_in: int,
                 bytes_out: list[int], chunks: int, seconds: float, workers: int, extra: dict | None = None):
        self.dump_id = dump_id
        self.source = source
        self.codec = codec
        self.members = members
        self.bytes_in = bytes_in
        self.bytes_out = bytes_out
        self.chunks = chunks
        self.seconds = seconds
        self.workers = workers
        self.extra = {} if extra is None else extra

    @property
    def ratio(self) -> float:
        out = sum(self.bytes_out)
        return self.bytes_in / out if out else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes_in / self.seconds / 1e6 if self.seconds else 0.0

    def summary(self) -> str:
        outs = ", ".join(f"{p} {n / 1e6:.1f} MB" for p, n in zip(self.members, self.bytes_out))
        bad = self.extra.get("unreadable_blocks", 0)
        return (f"dumped {self.bytes_in / 1e6:.1f} MB from {self.source} to {len(self.members)} "
                f"member(s) [{outs}], {self.codec}, ratio {self.ratio:.2f}, "
                f"{self.seconds:.2f} s, {self.mb_per_s:.1f} MB/s"
                + (" (chunks per codec: " + ", ".join(f"{c} {n}" for c, n in self.extra["auto_chunks"].items())
                   + ")" if self.extra.get("auto_chunks") else "")
                + (f"; {bad} block(s) of source memory could not be read and are recorded as "
                   "unreadable" if bad else "")
                + self.level_summary()
                + "".join(f"; degraded: target {f['path']} failed and was dropped, {f['moved']} of its "
                          "chunks are on the other members" for f in self.extra.get("degraded", [])))

    def level_summary(self) -> str:
        lv = self.extra.get("dump_level")
        if lv is None:
            return ""
        from ..levels.pagebits import left_out_text    # a dump without -d never imports levels/
        return (f"; dump level {lv['applied']}" + (f" (asked {lv['asked']})" if lv["applied"] != lv["asked"] else "")
                + ": " + left_out_text(lv))

    def to_json(self) -> dict:
        return {"dump_id": self.dump_id, "source": self.source, "codec": self.codec,
                "members": [{"path": p, "bytes": n} for p, n in zip(self.members, self.bytes_out)],
                "input_bytes": self.bytes_in, "output_bytes": sum(self.bytes_out),
                "chunks": self.chunks, "seconds": round(self.seconds, 6),
                "mb_per_s": round(self.mb_per_s, 3), "ratio": round(self.ratio, 4),
                "workers": self.workers, **self.extra}


def degraded_warnings(degraded: list[dict], members: list[str]) -> list[str]:
    """One warning per target a degraded dump dropped (``degraded``: Resends.report), each saying
    which members a join needs: the survivors, and every dropped one that holds chunks synced on it
    before it failed (``kept``), which no other member has (issue 24, item 3); an s3:// target
    acknowledges nothing before its upload completes, so it never holds any."""
    dropped = {f["path"]: f for f in degraded}
    needed = [p for p in members if p not in dropped or dropped[p]["kept"]]
    out = []
    for f in degraded:
        head = (f"{f['error']}; dropped that target (--on-disk-error continue): {f['moved']} of its chunks "
                "went to the other members")
        if f["kept"]:
            out.append(f"{head}, but {f['kept']} chunk(s) synced on it before it failed are on it alone: "
                       f"join needs {', '.join(needed)} ({f['path']} included)")
        elif f["path"].startswith("s3://"):     # an upload is completed only by its member's trailer
            out.append(f"{head}; its upload was not completed, so it holds nothing: join the other members "
                       f"without it ({', '.join(needed)})")
        else:
            out.append(f"{head}, nothing is on it alone: join needs only {', '.join(needed)} "
                       f"({f['path']} may be given too)")
    return out


def dump_result(job, paths: list[str], lengths: list[int], extra: dict) -> DumpResult:
    """The result of a dump that completed (``job``: loop.DumpJob; ``lengths``: each member's);
    its dump id and time are the caller's to fill in."""
    return DumpResult("", job.src.path, str(job.cfg.codec), paths, job.plan.input_bytes, lengths,
                      job.plan.n_chunks, 0.0, job.cfg.nworkers,
                      {"block_bytes": job.block_bytes, "chunk_bytes": job.plan.chunk_bytes, "slots": job.slots,
                       "pool_bytes": job.slots * job.slot_size, **extra})


def stopped(error: StripedumpError, lost: str) -> StripedumpError:
    """What a dump that stopped raises: a stop signal as itself, anything else as an incomplete dump
    that says what the members hold (``lost``: the chunks that may be on no member, or "")."""
    if isinstance(error, Interrupted):
        return error
    held = f"; {lost}; the members hold every other chunk" if lost else "; the members hold every chunk"
    return IncompleteDump(f"dump incomplete: {error}{held} written before the failure")


def level_report(entry: dict, counters, unclassified: int, excluded: int) -> dict:
    """dump -d N, for the summary and --json: the level asked and applied (``entry``: the manifest's),
    the pages left out (``excluded``: the writers' count, which their footers hold) and per class
    (``counters``: the workers' shared counters, or None where the level applied is 0), the zero
    pages (kept, as zero blocks), and the chunks whose classification failed (their pages kept).
    The same keys as ``info --json``'s dump_level: read/info.py, docs/dumplevels.md."""
    per = dict(class_totals(counters)) if counters is not None else {}
    unread, zero = per.pop("struct_unread", 0), per.pop("zero", 0)
    return {"dump_level": {**entry, "excluded_pages": excluded, "excluded": per, "zero_pages": zero,
                           "struct_unreadable_pages": unread, "unclassified_chunks": unclassified}}



class CpuClock:
    """The CPU seconds (user + system) a dump spent, per role, for ``dump --json`` and ``bench``.

    ``coordinator``: the thread that runs ``dump()``, from its start to its
    end (``RUSAGE_THREAD``: a caller's other threads, such as bench's memory
    sampler, are not the dump's); ``workers`` and ``writers``: each child as
    the kernel counted it when it was reaped (crew.Crew.cpu); ``other``: the
    rest of the children reaped meanwhile (``RUSAGE_CHILDREN``: an s3://
    target's uploader, an ssh:// target's ssh, and their children).  Where
    the dump's children were not reaped by wait4 (a multiprocessing.Process),
    the children are one sum, ``children``.
    """
    __slots__ = ("thread0", "children0")

    def __init__(self):
        self.thread0, self.children0 = _cpu(resource.RUSAGE_THREAD), _cpu(resource.RUSAGE_CHILDREN)

    def report(self, each: dict | None) -> dict:
        coordinator = _cpu(resource.RUSAGE_THREAD) - self.thread0
        children = _cpu(resource.RUSAGE_CHILDREN) - self.children0
        out = {"coordinator": round(coordinator, 4)}
        if each is None:
            out["children"] = round(children, 4)
        else:
            workers, writers = sum(each["workers"]), sum(each["writers"])
            out.update(workers=round(workers, 4), writers=round(writers, 4),
                       other=round(max(0.0, children - workers - writers), 4),
                       each_worker=[round(x, 4) for x in each["workers"]],
                       each_writer=[round(x, 4) for x in each["writers"]])
        out["total"] = round(coordinator + children, 4)
        return out


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime
