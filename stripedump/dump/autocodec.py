"""``--codec auto``: a per-chunk codec choice from a model of CPUs and disks (issue 12).

Why a model and not a queue-depth heuristic: with buffered writes and
gigabytes of page cache a slow disk is invisible in any queue until the
final sync, so "the writers fall behind" cannot be read from slots or pipes.
What can be measured is what each resource delivers:

* per codec, its encode rate and its ratio (record bytes / raw bytes, zero
  pages included).  The rate that predicts is raw bytes per *wall* second
  of a worker inside ``encode_chunk`` (page faults on the source included),
  with P = the number of workers: a worker that shares its CPU with the
  writers (whose copy into the page cache, or into a tmpfs, is CPU time
  too), the coordinator or other load is slower by as much, and its wall
  time says so.  Raw bytes per CPU-second (``time.process_time``) is kept
  too and reported; with it and P = min(workers, CPUs) the model was wrong
  on a loaded 2-CPU machine: lz4 looked 2.7x faster than it ran and beat
  none on a tmpfs, where none was faster (1 GiB: 0.76 s none, 1.33 s lz4);
* per writer, the rate at which bytes reach its device: bytes over the
  seconds spent inside ``write`` and ``fdatasync``, published at each sync
  only (a write that lands in the page cache proves nothing; with auto the
  writers sync after AUTO_FIRST_SYNC bytes, then twice as many each time up
  to every AUTO_SYNC_EVERY bytes, writer.py: a first rate after a few MiB).  Writeback that
  overlaps a writer's idle time makes a disk look faster than it is, but a
  writer is idle only when the disks are not the limit, which is the case
  where the estimate does not matter.

A dump of ``raw`` bytes in codec ``c`` then takes about
``max(raw / (encode_rate[c] * P), raw * ratio[c] / disk_rate)``
(``disk_rate``: all targets together, D times the slowest, since chunks are
placed round robin), because encoding and writing overlap in the pipeline.  Each chunk goes to the codec that minimizes it.
Estimates decay with the bytes seen (half-life HALF_LIFE raw bytes) so they
follow the data; about 1 in EXPLORE chunks goes to another codec of the
ladder to keep its estimates fresh, a codec predicted k times slower than
the best k times less often (so exploring costs about 1/EXPLORE of the time
however slow zstd:9 is), and in the first chunks every codec gets one chunk.  Until a disk rate exists the start codec (lz4 when
in the ladder) is used.

Room (issue 24, item 9): on a fast disk the least time is often ``none``,
which on memory-like data writes twice what lz4 does; a crash disk that
cannot hold that fills up and the dump is lost.  So the controller is given
the bytes the members can take in all (``room``: space.dump_room, the
targets' free space; or less, ``auto/ratio=R``: R times the source) and the
dump's raw bytes (``total``), and counts the raw bytes it hands each codec
and every raw and stored byte it is told of (not decayed); the chunks handed
out and not reported yet count at their codec's ratio.  A codec *fits* when
its ratio times the raw bytes still to hand out is at most the room left
(MARGIN of the room kept free); only the codecs that
fit are chosen or explored (the fastest of them by the model, as above); when
none of the measured ones fits, the one with the smallest ratio is used, the
best chance the dump has.  The choice is made again for every chunk, so a
codec that compresses better than needed leaves room for a faster one later.

Size preference (``auto/cost=N%``): a codec whose predicted time is at most
N % above the fastest's wins when its output is smaller (default TIE, 3 %):
``auto/cost=50%`` takes lz4 over none when lz4 is at most half again as slow.

The controller (``Controller``) is a pure class: fed observations, asked
for choices; no clock, no I/O, so its decisions are deterministic and
tested on synthetic observations (tests/dump/test_autocodec.py).  What ``--codec
auto`` names, its ladder and the codecs found installed, is a codec spec like
any other (format/codecs.py: ``AutoSpec``, parsed by ``parse_codec``); this
module is only what the dump does with it.  ``AutoStats`` is the
controller's place in a dump: the shared doubles the workers and writers
publish, read by the coordinator between events and fed to the controller,
and the report of what it chose.
"""

from __future__ import annotations

import mmap

from .writer import AUTO_FIRST_SYNC, AUTO_KICK_EVERY

EXPLORE = 32               # 1 chunk in EXPLORE goes to another codec of the ladder
WARMUP = 4                 # in the first chunks, 1 in WARMUP goes to a codec not tried yet
HALF_LIFE = 64 << 20       # raw (or written) bytes after which an old observation weighs half
MIN_SAMPLE = 256 << 10     # raw bytes of a codec before its rates are trusted (a tiny header chunk is not)
TIE = 0.03                 # predicted times this close: the smaller output wins (auto/cost=N% sets it)
MARGIN = 0.05              # of the room left, kept free: indexes, footers, chunks in flight, estimates


class Controller:
    """Chooses a ladder index per chunk from encode and disk observations (see the module comment).

    ``parallel``: how many workers encode at once (their encode rates are per wall second);
    ``room``: the bytes the members can take in all, or None; ``total``: the dump's raw bytes;
    ``cost``: the fraction of time a smaller output may cost.
    """

    def __init__(self, names, parallel: int, start: int = 0, explore: int = EXPLORE,
                 room: float | None = None, total: float = 0.0, cost: float = TIE):
        self.names = list(names)
        self.n = len(self.names)
        self.parallel = max(1, parallel)
        self.start = start
        self.explore = explore
        self.raw = [0.0] * self.n
        self.stored = [0.0] * self.n
        self.cpu = [0.0] * self.n
        self.wall = [0.0] * self.n
        self.disk_bytes = 0.0
        self.disk_secs = 0.0
        self.disk_cpu = 0.0
        self.chunks = 0
        self.tried = [False] * self.n
        self.tried[start] = True
        self.credit = [0.0] * self.n
        self.handed = [0] * self.n
        self.room, self.total, self.cost = room, total, cost
        self.done_stored = 0.0               # every stored byte seen, not decayed: what the room lost
        self.seen_raw = [0.0] * self.n       # raw bytes seen encoded, per codec, not decayed
        self.handed_raw = [0.0] * self.n     # raw bytes handed out, per codec (``choose``)

    # -- observations -----------------------------------------------------------

    def observe_encode(self, i: int, raw: float, stored: float, cpu_s: float,
                       wall_s: float | None = None) -> None:
        """Codec ``i`` encoded ``raw`` bytes into ``stored`` bytes in ``cpu_s`` CPU-seconds and
        ``wall_s`` seconds of a worker (None: as many as CPU-seconds: a CPU of its own)."""
        if raw <= 0:
            return
        self.seen_raw[i] += raw
        self.done_stored += stored
        k = 0.5 ** (raw / HALF_LIFE)
        self.raw[i] = self.raw[i] * k + raw
        self.stored[i] = self.stored[i] * k + stored
        self.cpu[i] = self.cpu[i] * k + max(cpu_s, 0.0)
        self.wall[i] = self.wall[i] * k + max(cpu_s if wall_s is None else wall_s, 0.0)

    def observe_disk(self, nbytes: float, seconds: float, cpu_s: float = 0.0) -> None:
        """All targets together took ``nbytes`` to their devices in ``seconds`` of write+sync,
        ``cpu_s`` of which the writers spent on a CPU."""
        if nbytes <= 0 or seconds < 0:
            return
        k = 0.5 ** (nbytes / HALF_LIFE)
        self.disk_bytes = self.disk_bytes * k + nbytes
        self.disk_secs = self.disk_secs * k + seconds
        self.disk_cpu = self.disk_cpu * k + max(cpu_s, 0.0)

    # -- the model --------------------------------------------------------------

    def cpu_rate(self, i: int) -> float | None:
        """Raw bytes per CPU-second of codec ``i``; None until MIN_SAMPLE bytes were seen."""
        if self.raw[i] < MIN_SAMPLE:
            return None
        return self.raw[i] / self.cpu[i] if self.cpu[i] > 0 else float("inf")

    def encode_rate(self, i: int) -> float | None:
        """Raw bytes per wall second of a worker encoding with codec ``i`` (what predicts)."""
        if self.raw[i] < MIN_SAMPLE:
            return None
        return self.raw[i] / self.wall[i] if self.wall[i] > 0 else float("inf")

    def ratio(self, i: int) -> float | None:
        return self.stored[i] / self.raw[i] if self.raw[i] > 0 else None

    def disk_rate(self) -> float | None:
        if self.disk_bytes <= 0:
            return None
        return self.disk_bytes / self.disk_secs if self.disk_secs > 0 else float("inf")

    def predicted(self, i: int) -> float | None:
        """Seconds per raw byte with codec ``i``: max(encode, write), or None while unmeasured."""
        rate, ratio, disk = self.encode_rate(i), self.ratio(i), self.disk_rate()
        if rate is None or disk is None:
            return None
        return max(1.0 / (rate * self.parallel), ratio / disk)

    def fitting(self) -> list[int] | None:
        """The measured codecs whose output for the raw bytes still to hand out fits the room left
        (MARGIN of the room kept free; the chunks in flight counted at their codec's ratio); None
        when the room is unknown."""
        if self.room is None:
            return None
        left = max(0.0, self.total - sum(self.handed_raw))
        flight = sum(max(0.0, h - s) * (self.ratio(i) or 1.0)
                     for i, (h, s) in enumerate(zip(self.handed_raw, self.seen_raw)))
        room = self.room * (1 - MARGIN) - self.done_stored - flight
        return [i for i in range(self.n) if self.raw[i] >= MIN_SAMPLE and left * self.ratio(i) <= room]

    def best(self) -> int:
        """The measured codec with the least predicted time (within ``cost``: the smaller output)
        among those that fit the room; the smallest output when none fits; else start."""
        allowed = range(self.n)
        fit = self.fitting()
        if fit is not None:
            measured = [i for i in range(self.n) if self.raw[i] >= MIN_SAMPLE]
            if measured and not fit:
                return min(measured, key=lambda i: (self.ratio(i), i))
            if fit and len(fit) < len(measured):
                allowed = fit
        scored = [(t, self.ratio(i), i) for i in allowed if (t := self.predicted(i)) is not None]
        if not scored:
            if allowed is not fit or self.start in allowed:
                return self.start
            return max(fit, key=lambda i: (self.encode_rate(i), -i))    # no disk rate yet: the fastest
        low = min(t for t, _, _ in scored)
        return min((r, i) for t, r, i in scored if t <= low * (1 + self.cost))[1]

    def _explore(self, best: int) -> int:
        """``best``, or the other codec whose turn to be measured has come.

        Each other codec earns 1 / (EXPLORE * (n - 1) * cost) of a chunk per
        chunk, ``cost`` its predicted time over the best's (at least 1), and
        is given a chunk when it has earned one: together about 1 chunk in
        EXPLORE, and the time spent on exploration about 1/EXPLORE of the
        dump's, however slow a codec far off the best is.  A codec measured
        not to fit the room is not explored (it would not be chosen).
        """
        tb = self.predicted(best)
        fit = self.fitting()
        others = [j for j in range(self.n)
                  if j != best and (fit is None or j in fit or self.raw[j] < MIN_SAMPLE)]
        for j in others:
            tj = self.predicted(j)
            cost = max(1.0, tj / tb) if tj is not None and tb else 1.0
            self.credit[j] += 1.0 / (self.explore * (self.n - 1) * cost)
        due = max(((self.credit[j], -j) for j in others), default=(0.0, 0))
        if due[0] >= 1.0:
            self.credit[-due[1]] -= 1.0
            return -due[1]
        return best

    def choose(self, raw: float = 0.0) -> int:
        """The ladder index for the next chunk (``raw``: its raw bytes, for the room's books)."""
        self.chunks += 1
        i = self.best()
        if self.n > 1:
            untried = [j for j in range(self.n) if not self.tried[j]]
            if untried and self.chunks % WARMUP == 0:
                i = untried[0]
            elif not untried:
                i = self._explore(i)
        self.tried[i] = True
        self.handed[i] += 1
        self.handed_raw[i] += raw
        return i


class AutoStats:
    """``--codec auto`` in a dump (``spec``: its AutoSpec): the Controller, and the shared doubles the
    children publish.

    Anonymous shared memory, inherited across fork: per worker and ladder
    choice (``worker_row``) raw bytes, record bytes, CPU and wall seconds;
    per writer (``writer_row``) bytes synced, seconds in write + sync and
    the CPU-seconds of them.  Each is written only by its child; the
    coordinator reads them (``observe``) and keeps what it last fed to the
    controller (``seen``).
    """
    ENCODE, DISK = 4, 3          # doubles per (worker, choice), per writer

    def __init__(self, spec, workers: int, members: int, room: int | None = None, total: int = 0):
        self.ladder, self.W, self.D = spec.ladder, workers, members
        # the room: the targets' (space.dump_room), or /ratio=R of the source where that is less
        rooms = [r for r in (room, spec.max_ratio * total if spec.max_ratio else None) if r is not None]
        self.room = min(rooms) if rooms else None
        # encode rates are per wall second of a worker (above): W workers, however many CPUs
        self.ctl = Controller([str(c) for c in self.ladder], workers, spec.start, room=self.room, total=total,
                              cost=TIE if spec.cost is None else spec.cost)
        self.base = workers * len(self.ladder) * self.ENCODE     # where the writers' rows begin
        n = self.base + members * self.DISK
        self.stats = memoryview(mmap.mmap(-1, 8 * n, mmap.MAP_SHARED)).cast("d")
        self.seen = [0.0] * n

    def worker_row(self, wid: int):
        """Worker ``wid``'s doubles: ``ENCODE`` per ladder choice (stages.worker_main)."""
        n = len(self.ladder) * self.ENCODE
        return self.stats[wid * n:(wid + 1) * n]

    def time_writer(self, d: int, w) -> None:
        """Make member ``d``'s MemberWriter publish its disk rate: synced early and often (writer.py)."""
        at = self.base + self.DISK * d
        w.io_stats, w.sync_every, w.kick_every = self.stats[at:at + self.DISK], AUTO_FIRST_SYNC, AUTO_KICK_EVERY

    def choose(self, raw: int) -> int:
        """The codec choice (ladder index) for the next chunk, of ``raw`` bytes."""
        return self.ctl.choose(raw)

    def observe(self, dropped) -> None:
        """Feed the controller what the children published since the last look (``dropped``: the
        members whose targets failed, left out of the disk rate)."""
        st, seen, L = self.stats, self.seen, len(self.ladder)
        for w in range(self.W):
            for c in range(L):
                i = (w * L + c) * self.ENCODE
                raw = st[i] - seen[i]
                if raw > 0:
                    now = st[i:i + 4].tolist()
                    self.ctl.observe_encode(c, now[0] - seen[i], now[1] - seen[i + 1], now[2] - seen[i + 2],
                                            now[3] - seen[i + 3])
                    seen[i:i + 4] = now
        # the targets together: D times the slowest writer's rate (chunks are placed round robin)
        rates = []
        for d in range(self.D):
            i = self.base + self.DISK * d
            secs, cpu = st[i + 1] - seen[i + 1], st[i + 2] - seen[i + 2]
            nb = st[i] - seen[i]
            if nb > 0 and d not in dropped:
                rates.append((nb, secs, cpu))
                seen[i:i + 3] = st[i:i + 3].tolist()
        if rates:
            nb, secs, cpu = min(rates, key=lambda r: r[0] / r[1] if r[1] > 0 else float("inf"))
            k = max(len(rates), self.D - len(dropped))
            self.ctl.observe_disk(nb * k, secs, cpu * k)

    def report(self) -> dict:
        """For the summary and --json: chunks per codec, and the model's last estimates."""
        ctl = self.ctl

        def mb(r):
            return round(r / 1e6, 1) if r not in (None, float("inf")) else r
        est = {str(c): {"cpu_mb_s": mb(ctl.cpu_rate(i)), "wall_mb_s": mb(ctl.encode_rate(i)),
                        "ratio": round(ctl.ratio(i), 4) if ctl.ratio(i) is not None else None}
               for i, c in enumerate(self.ladder)}
        return {"auto_chunks": {str(c): n for c, n in zip(self.ladder, ctl.handed) if n},
                "auto_model": {"codecs": est, "parallel": ctl.parallel, "disk_mb_s": mb(ctl.disk_rate()),
                               "room_mb": mb(self.room) if self.room is not None else None,
                               "cost": ctl.cost}}
