"""Power-loss model check: crash states of a recorded dump, and what a join makes of each.

Why: a dump killed by power loss leaves on its disks whatever the disks had
made durable, which is neither "everything written" nor "a prefix of it".
In the spirit of CrashMonkey and ALICE, a dump runs once onto a FUSE file
system that records every write and sync (``recording_fs.py``); this module
then builds, from that log, the states a power cut could leave, and checks
each one with the reader under test.

The disk model.  Targets are block devices: a truncate is recorded but not
replayed (a device cannot be truncated, and the kdump disk is a device), so
bytes the dump did not overwrite keep what the device held before: nothing
(``base`` empty) or an older dump of the same geometry.  Per file, a
completed ``fsync``/``fdatasync`` is a barrier: every write to that file
before it is durable.  Writes after a file's last completed barrier sit in a
volatile cache: any subset of them may persist, in any order, and each write
only in part, cut at 4 KiB boundaries (a 4 KiB piece is atomic, as a sector
of an Advanced Format disk).  The states built:

* ``prefix k``: the first k operations, every write whole, in order (k = 0
  .. all); each one, again, with operation k torn (a random subset of its
  4 KiB pieces);
* ``barrier k #i``: power lost while sync operation k was in flight: for
  every file, the writes up to its last completed barrier, then a random
  subset of the later ones (before k), torn, applied in a random order.

What must hold for every state (``check``), as ``join --allow-incomplete``
sees it (the same steps as ``pool.run_pool`` and join's ELF handler, in
process: ``reader.ChunkIndex``, ``Dump.check_record``, ``decode_chunk``):

* no wrong page: every chunk the join would output equals the chunk of the
  source of the dump it says it joined (by dump id); a chunk it cannot
  verify is declared missing, never output;
* nothing synced is lost: every chunk whose whole record was written before
  its member's last completed barrier is recovered (a refusal to join is
  allowed only when nothing was synced).

``real_join`` runs the ``stripedump join`` command on a state and compares
its output file byte for byte with what the in-process model says it holds,
so the model cannot drift from the command.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import NamedTuple

from stripedump.read import reader
from stripedump.read.dumpset import DumpSet
from stripedump.errors import StripedumpError
from stripedump.format.structs import KIND_FILE, KIND_PAGES
from stripedump.read.join import RenderMap, mark_elf_incomplete
from stripedump.format.decode import decode_chunk
from stripedump.source.vmcore import Source

from oracle import header_region   # the oracle's own ELF parsing (what join rebuilds)
from waiting import next_second

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
ENTRY = struct.Struct("<cBHQI")      # recording_fs.py's log entry
PIECE = 4096                         # atomic unit of a write


class Op(NamedTuple):
    seq: int
    kind: str        # "write", "sync", "flush", "truncate"
    name: str        # file name under the mount point, without the "/"
    offset: int      # write: offset; truncate: length
    data: bytes


def read_log(path: str) -> list[Op]:
    kinds = {b"W": "write", b"S": "sync", b"F": "flush", b"T": "truncate"}
    ops = []
    with open(path, "rb") as f:
        blob = f.read()
    pos = 0
    while pos + ENTRY.size <= len(blob):
        op, _flag, nlen, value, dlen = ENTRY.unpack_from(blob, pos)
        pos += ENTRY.size
        name = blob[pos:pos + nlen].decode().lstrip("/")
        data = blob[pos + nlen:pos + nlen + dlen]
        pos += nlen + dlen
        ops.append(Op(len(ops), kinds[op], name, value, data))
    if pos != len(blob):
        raise ValueError(f"{path}: the log ends in a cut-off entry")
    return ops


def pieces(op: Op) -> list[tuple[int, bytes]]:
    """A write cut at the file's 4 KiB boundaries."""
    out, a, end = [], op.offset, op.offset + len(op.data)
    while a < end:
        b = min((a // PIECE + 1) * PIECE, end)
        out.append((a, op.data[a - op.offset:b - op.offset]))
        a = b
    return out


def put(img: bytearray, offset: int, data: bytes) -> None:
    if len(img) < offset:
        img.extend(bytes(offset - len(img)))
    img[offset:offset + len(data)] = data


# -- recording a dump ----------------------------------------------------------

def mount_recorder(backing: str, mnt: str, log: str) -> subprocess.Popen:
    """Start recording_fs.py on ``mnt``; RuntimeError if it does not mount."""
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "recording_fs.py"), backing, mnt, log],
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while not os.path.ismount(mnt):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"cannot mount FUSE here: {proc.stderr.read().decode()[-200:]}")
        time.sleep(0.05)
    return proc


def unmount_recorder(proc: subprocess.Popen, mnt: str) -> None:
    """Unmount and wait: the recorder closes its log when the file system goes away."""
    for _ in range(50):
        if subprocess.run(["umount", mnt], capture_output=True).returncode == 0:
            break
        time.sleep(0.1)
    else:
        subprocess.run(["umount", "-l", mnt], capture_output=True)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def stripedump(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    e = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
    return subprocess.run([sys.executable, "-m", "stripedump", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=e, stdin=subprocess.DEVNULL)


@dataclass
class Recording:
    ops: list[Op]
    names: list[str]                  # member file names, member i first
    old: dict[str, bytes]             # the older dump the targets held (same names)
    final: dict[str, bytes] = field(default_factory=dict)

    def __post_init__(self):
        self.final = {n: bytes(self.image(len(self.ops), {})[n]) for n in self.names}

    def image(self, k: int, base: dict) -> dict[str, bytearray]:
        """Every file after the first ``k`` operations, whole and in order."""
        imgs = {n: bytearray(base.get(n, b"")) for n in self.names}
        for op in self.ops[:k]:
            if op.kind == "write" and op.name in imgs:
                put(imgs[op.name], op.offset, op.data)
        return imgs


def record_dump(work: str, source: str, old_source: str, members: int = 2, sync_every: int = 128 << 10,
                dump_args=("--codec", "lz4", "--chunk-size", "64K", "--workers", "2")) -> Recording:
    """Dump ``old_source`` to plain files, then record a dump of ``source`` over copies of them."""
    names = [f"m{i}.sd" for i in range(members)]
    olddir, backing, mnt = (os.path.join(work, d) for d in ("old", "backing", "mnt"))
    for d in (olddir, backing, mnt):
        os.makedirs(d, exist_ok=True)
    r = stripedump("dump", "-q", "--disks", ",".join(os.path.join(olddir, n) for n in names), *dump_args,
                   old_source)
    if r.returncode:
        raise RuntimeError(f"the older dump failed: {r.stderr}")
    old = {}
    for n in names:
        shutil.copyfile(os.path.join(olddir, n), os.path.join(backing, n))
        with open(os.path.join(olddir, n), "rb") as f:
            old[n] = f.read()
    shutil.rmtree(olddir)
    # a reused disk holds a dump of an earlier crash: member headers carry their creation time in
    # seconds, by which join --allow-incomplete tells the newer dump from the older (DumpSet)
    next_second()
    log = os.path.join(work, "ops.log")
    proc = mount_recorder(backing, mnt, log)
    try:
        r = stripedump("dump", "-q", "--force", "--disks", ",".join(os.path.join(mnt, n) for n in names),
                       *dump_args, source, env={"STRIPEDUMP_SYNC_EVERY": str(sync_every)})
    finally:
        unmount_recorder(proc, mnt)
    shutil.rmtree(backing)
    if r.returncode:
        raise RuntimeError(f"the recorded dump failed (exit {r.returncode}): {r.stderr}")
    return Recording(read_log(log), names, old)


# -- crash states ---------------------------------------------------------------

@dataclass
class CrashState:
    label: str
    images: dict[str, bytearray]
    synced_before: dict[str, int]     # file -> seq of its last completed barrier (-1: none)


def last_barriers(ops: list[Op], k: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for op in ops[:k]:
        if op.kind == "sync":
            out[op.name] = op.seq
    return out


def crash_states(rec: Recording, base: dict, rng: random.Random, per_barrier: int = 2,
                 torn: bool = True, prefixes: bool = True):
    """Every crash state of the model (see the module comment), built on ``base``."""
    ops, names = rec.ops, rec.names
    sync = {n: -1 for n in names}
    if prefixes:
        img = {n: bytearray(base.get(n, b"")) for n in names}
        for k in range(len(ops) + 1):
            yield CrashState(f"prefix {k}", {n: bytearray(v) for n, v in img.items()}, dict(sync))
            if k == len(ops):
                break
            op = ops[k]
            if torn and op.kind == "write" and len(op.data) > PIECE:
                ps = pieces(op)
                keep = rng.sample(ps, rng.randrange(1, len(ps)))
                t = {n: bytearray(v) for n, v in img.items()}
                for a, d in keep:
                    put(t[op.name], a, d)
                yield CrashState(f"prefix {k} + torn op {k} ({len(keep)}/{len(ps)} pieces)", t, dict(sync))
            if op.kind == "write" and op.name in img:
                put(img[op.name], op.offset, op.data)
            elif op.kind == "sync" and op.name in sync:
                sync[op.name] = op.seq
    for op in ops:
        if op.kind != "sync" or op.name not in names:
            continue
        k = op.seq
        done = last_barriers(ops, k)
        for i in range(per_barrier):
            imgs = {n: bytearray(base.get(n, b"")) for n in names}
            volatile = []
            for w in ops[:k]:
                if w.kind != "write" or w.name not in imgs:
                    continue
                if w.seq < done.get(w.name, -1):
                    put(imgs[w.name], w.offset, w.data)
                else:
                    volatile.extend((w.name, a, d) for a, d in pieces(w))
            p = rng.choice((0.1, 0.5, 0.9)) if i else 0.5
            chosen = [v for v in volatile if rng.random() < p]
            rng.shuffle(chosen)
            for n, a, d in chosen:
                put(imgs[n], a, d)
            yield CrashState(f"barrier {k} ({op.name}) #{i}: {len(chosen)}/{len(volatile)} volatile pieces",
                             imgs, {n: done.get(n, -1) for n in names})


# -- what must hold ------------------------------------------------------------

class Expected:
    """Per dump id, every chunk's bytes from its source; per member, when each record was written."""

    def __init__(self, rec: Recording, sources: dict[str, str], work: str):
        """``sources``: "new"/"old" -> source path; ``work``: a directory for scratch files."""
        self.chunks: dict[str, dict[int, bytes]] = {}
        self.ids: dict[str, str] = {}
        for which, images in (("new", rec.final), ("old", rec.old)):
            paths = write_state(work, rec.names, images)
            with DumpSet(paths) as ds:
                self.ids[which] = ds.dump_id
                self.chunks[ds.dump_id] = source_chunks(sources[which], ds)
                if which == "new":
                    self.plan, self.page_size, self.segments = ds.plan, ds.page_size, ds.segments
                    self.source_size = ds.source_size
                    self.written = written_at(rec, ds)

    def durable(self, synced_before: dict[str, int]) -> set[int]:
        """Chunks of the recorded dump whose record was whole before its member's last barrier."""
        return {c for n, recs in self.written.items() for c, seq in recs.items()
                if seq < synced_before.get(n, -1)}


def source_chunks(path: str, ds: DumpSet) -> dict[int, bytes]:
    out = {}
    with Source(path, use_mmap=False) as src:
        for c in range(ds.plan.n_chunks):
            ch = ds.plan.chunk(c)
            with src.phys_window(ch.start, ch.count) if ch.kind == KIND_PAGES \
                    else src.window(ch.start, ch.count) as w:
                out[c] = bytes(w.view())
    return out


def written_at(rec: Recording, ds: DumpSet) -> dict[str, dict[int, int]]:
    """file -> chunk id -> seq of the last write that put bytes of its record (or of the header) there."""
    out = {}
    for n, r in zip(rec.names, ds.readers):
        writes = [op for op in rec.ops if op.kind == "write" and op.name == n]
        head = min(op.seq for op in writes if op.offset == 0)
        recs = {}
        for e in r.index(r.footer()):
            a, b = e.offset, e.offset + e.length
            recs[e.chunk_id] = max([head] + [op.seq for op in writes
                                             if op.offset < b and a < op.offset + len(op.data)])
        out[n] = recs
    return out


def write_state(work: str, names: list[str], images: dict) -> list[str]:
    paths = []
    for n in names:
        p = os.path.join(work, n)
        with open(p, "wb") as f:
            f.write(images[n])
        paths.append(p)
    return paths


@dataclass
class Outcome:
    dump_id: str | None = None
    recovered: dict = field(default_factory=dict)     # chunk id -> bytes
    missing: list = field(default_factory=list)
    refused: str | None = None


def join_model(paths: list[str]) -> Outcome:
    """What ``join --allow-incomplete`` outputs for these members, chunk by chunk (in process)."""
    out = Outcome()
    try:
        with reader.Dump(paths, allow_incomplete=True, cache_bytes=0, verify_walks=True) as dump:
            codecs: dict = {}
            failed = []
            for cid in range(dump.plan.n_chunks):
                if not dump.index.has(cid):
                    continue
                try:
                    rec = dump.record(cid)
                    dump.check_record(cid, rec)
                    _, data, _ = decode_chunk(rec, dump.where(cid), dump.block_bytes, codecs)
                except StripedumpError:
                    failed.append(cid)
                    continue
                out.recovered[cid] = bytes(data)
            out.dump_id = dump.dump_id
            out.missing = sorted(set(dump.missing + failed))
    except StripedumpError as e:
        out.refused = str(e)
    return out


class Verdict(NamedTuple):
    ok: bool
    kind: str        # "ok", "wrong" (a wrong page output), "lost" (a synced chunk not recovered)
    detail: str
    cause: str = ""  # the failure's kind in a few words, for counting


REFUSALS = (("manifest differs", "a member's manifest differs"),
            ("SDMF record", "a member's manifest is unreadable"),      # no manifest, or cut off
            ("different dumps", "members of different dumps"))


def refusal_cause(msg: str) -> str:
    return "join refused: " + next((why for key, why in REFUSALS if key in msg), "other")


def check(outcome: Outcome, exp: Expected, durable: set[int]) -> Verdict:
    if outcome.refused is not None:
        if durable:
            return Verdict(False, "lost", f"join refused ({outcome.refused}) although {len(durable)} "
                                          "chunk(s) were synced", refusal_cause(outcome.refused))
        return Verdict(True, "ok", "refused; nothing synced")
    want = exp.chunks.get(outcome.dump_id)
    if want is None:
        return Verdict(False, "wrong", f"joined an unknown dump {outcome.dump_id}", "an unknown dump")
    for c, data in sorted(outcome.recovered.items()):
        if data != want[c]:
            ps = exp.page_size
            bad = [i for i in range(0, len(data), ps) if data[i:i + ps] != want[c][i:i + ps]]
            which = "old" if exp.ids.get("old") == outcome.dump_id else "recorded"
            other = [k for k, v in exp.chunks.items() if k != outcome.dump_id and v.get(c) == data]
            return Verdict(False, "wrong", f"chunk {c}: {len(bad)} page(s) differ from the {which} dump's "
                                           f"source" + (" (they are the other dump's)" if other else ""),
                           "pages of the other dump" if other else "wrong pages")
    if outcome.dump_id != exp.ids["new"]:
        lost = durable
    else:
        lost = durable - set(outcome.recovered)
    if lost:
        other = outcome.dump_id != exp.ids["new"]
        return Verdict(False, "lost", f"{len(lost)} synced chunk(s) not recovered (e.g. {sorted(lost)[:5]})"
                                      + (f"; joined dump {outcome.dump_id} instead" if other else ""),
                       "joined the older dump instead" if other else "synced chunks not found")
    return Verdict(True, "ok", f"{len(outcome.recovered)} recovered, {len(outcome.missing)} missing")


def expected_output(exp: Expected, source: str, missing: list[int]) -> bytearray:
    """The ELF file a join must write: the source, zeros where missing chunks go, e_flags marked.

    But the ELF header, program headers and notes, which join rebuilds from
    the manifest (docs/reliability.md, promise 8): the source's bytes there,
    whatever is missing (found with the soak oracle's own ELF parsing).
    """
    with open(source, "rb") as f:
        src = f.read()
    out = bytearray(src)
    render = RenderMap(exp.segments, exp.plan.residue)
    ps = exp.page_size
    for c in missing:
        ch = exp.plan.chunk(c)
        if ch.kind == KIND_FILE:
            out[ch.start:ch.start + ch.count] = bytes(ch.count)
            for a, b in header_region(src):
                lo, hi = max(a, ch.start), min(b, ch.start + ch.count)
                if lo < hi:
                    out[lo:hi] = src[lo:hi]
            continue
        for pa, pb, offs in render.spans(ch.start * ps, (ch.start + ch.count) * ps):
            for off in offs:
                out[off:off + pb - pa] = bytes(pb - pa)
    return out


def real_join(paths: list[str], out: str, exp: Expected, sources: dict[str, str]) -> Verdict:
    """``stripedump join --allow-incomplete`` on one state, compared with the model, byte for byte."""
    model = join_model(paths)
    r = stripedump("join", "--allow-incomplete", "--json", "--workers", "2", "--force", "-o", out, *paths)
    if model.refused is not None:
        return Verdict(r.returncode != 0, "ok" if r.returncode else "wrong",
                       f"model refused ({model.refused}); join exit {r.returncode}")
    if r.returncode != 0:
        return Verdict(False, "lost", f"join failed (exit {r.returncode}): {r.stderr.strip()[-300:]}")
    rep = json.loads(r.stdout)
    if rep["missing_chunks"] != len(model.missing):
        return Verdict(False, "wrong", f"join reports {rep['missing_chunks']} missing chunks, model "
                                       f"{len(model.missing)}")
    which = "new" if model.dump_id == exp.ids["new"] else "old"
    want = expected_output(exp, sources[which], model.missing)
    if model.missing:
        tmp = out + ".want"
        with open(tmp, "wb") as f:
            f.write(want)
        mark_elf_incomplete(tmp)
        with open(tmp, "rb") as f:
            want = f.read()
        os.unlink(tmp)
    with open(out, "rb") as f:
        got = f.read()
    os.unlink(out)
    if got != bytes(want):
        first = next(i for i in range(min(len(got), len(want))) if got[i] != want[i]) \
            if len(got) == len(want) else min(len(got), len(want))
        return Verdict(False, "wrong", f"join output differs from the model's at byte {first:#x}")
    return Verdict(True, "ok", f"join output equals the model's ({len(model.missing)} chunk(s) missing)")


def run_states(rec: Recording, exp: Expected, base: dict, work: str, rng: random.Random,
               per_barrier: int, limit: int | None = None, on_fail=None) -> dict:
    """Check every crash state; returns counts by verdict kind and the first failure of each kind."""
    counts = {"states": 0, "ok": 0, "wrong": 0, "lost": 0}
    first: dict[str, str] = {}
    causes: dict[str, int] = {}
    for st in crash_states(rec, base, rng, per_barrier):
        if limit is not None and counts["states"] >= limit:
            break
        paths = write_state(work, rec.names, st.images)
        v = check(join_model(paths), exp, exp.durable(st.synced_before))
        counts["states"] += 1
        counts[v.kind] += 1
        if not v.ok:
            first.setdefault(v.kind, f"{st.label}: {v.detail}")
            causes[f"{v.kind}: {v.cause}"] = causes.get(f"{v.kind}: {v.cause}", 0) + 1
            if on_fail:
                on_fail(st, v)
    for p in write_state(work, rec.names, {n: b"" for n in rec.names}):
        os.unlink(p)
    return {**counts, "first": first, "causes": causes}
