"""The soak's oracle: which chunks a killed dump left on its disks, and what a join must give back.

It shares nothing with the reader under test (no walk, no index): every chunk
record is deterministic (same source, codec and geometry), so ``Oracle``
encodes each chunk once, up front, and a chunk reached a disk exactly when
its whole record, byte for byte, is somewhere in a member file.
``check_run`` then runs ``join --allow-incomplete --json`` and compares the
chunks it recovered, the missing ranges it reports and every byte of its
output with the oracle's: the source, zeros where missing chunks go, except
the ELF header region, which join rebuilds from the manifest (found here in
the source with its own few lines of ELF parsing, ``header_region``).

Also the way the soak starts a dump in a session of its own and kills it
(the whole group, the coordinator, one child), and waits for its group to
be gone.  Used by bench/soak.py, by the tests that kill or starve a dump
(tests/read/test_recovery.py and others) and by crashstates.py.
"""

from __future__ import annotations

import json
import os
import random
import signal
import struct
import subprocess
import sys
import time

import xxhash

from stripedump.format.codecs import CodecSpec
from stripedump.format.encode import encode_chunk
from stripedump.format.plan import Plan
from stripedump.format.structs import CHUNK_MAGIC, record_bound, seal_chunk_header
from stripedump.source.vmcore import Source

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KILL_MODES = ("group", "coordinator", "child")


def header_region(img: bytes) -> list[list[int]]:
    """File ranges of the ELF header, program headers (section header 0 for PN_XNUM) and notes."""
    e64, end = img[4] == 2, "<" if img[5] == 1 else ">"
    if e64:
        phoff, shoff = struct.unpack_from(end + "QQ", img, 32)
        ehsize, phentsize, phnum, shentsize = 64, *struct.unpack_from(end + "HHH", img, 54)
    else:
        phoff, shoff = struct.unpack_from(end + "II", img, 28)
        ehsize, phentsize, phnum, shentsize = 52, *struct.unpack_from(end + "HHH", img, 42)
    out = [(0, ehsize)]
    if phnum == 0xFFFF:
        out.append((shoff, shoff + shentsize))
        phnum = struct.unpack_from(end + "I", img, shoff + (44 if e64 else 28))[0]
    out.append((phoff, phoff + phnum * phentsize))
    for i in range(phnum):
        at = phoff + i * phentsize
        if struct.unpack_from(end + "I", img, at)[0] == 4:              # PT_NOTE
            off, size = struct.unpack_from(end + ("8xQ16xQ" if e64 else "4xI8xI"), img, at)
            out.append((off, off + size))
    return merge_ranges([r for r in out if r[0] < r[1]])


def _subtract(ranges, cuts):
    out = []
    for a, b in ranges:
        cur = a
        for c, d in cuts:
            if d <= cur or c >= b:
                continue
            if c > cur:
                out.append([cur, c])
            cur = max(cur, d)
        if cur < b:
            out.append([cur, b])
    return out


def merge_ranges(ranges):
    out = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


class Oracle:
    """What a dump of ``src`` writes, chunk by chunk, and what a join must give back."""

    def __init__(self, src: str, codec: str, chunk_size: int, block_size: int = 0, rebuild: bool = True):
        spec = CodecSpec.parse(codec)
        c = spec.make()
        with Source(src) as s:
            ps = s.page_size
            block = block_size or ps
            self.plan = Plan(s.pfn_ranges, s.residue(), ps, chunk_size // ps)
            out = bytearray(record_bound(self.plan.chunk_bytes, block))
            zero = bytes(block)
            self.records = {}          # chunk id -> the whole record, before a writer stamps its dump id
            for ch in self.plan:
                n = encode_chunk(s, c, ch, block, out, zero)[0]
                self.records[ch.id] = bytes(out[:n])
            self.loads = [(ld.offset, ld.paddr, ld.filesz) for ld in s.info.loads]
            self.residue = list(self.plan.residue)
        self._hashes: dict = {}
        self.page_size = ps
        with open(src, "rb") as f:
            self.source = f.read()
        # what join rebuilds from the manifest where the chunks holding it are missing
        self.header = header_region(self.source) if rebuild else []

    def on_disk(self, paths, dump_id: bytes | None = None) -> set[int]:
        """Chunk ids whose whole record is in one of these files, found by a plain byte search.

        Only records of dump ``dump_id`` count (default: the dump each file's header names).
        """
        found = set()
        for p in paths:
            try:
                with open(p, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            did = dump_id or data[12:28]      # MemberHeader.dump_id: only this dump's records count
            pos = data.find(CHUNK_MAGIC)
            while pos >= 0:
                cid = int.from_bytes(data[pos + 24:pos + 32], "little")
                rec = self.records.get(cid)
                if rec and pos + len(rec) <= len(data) and \
                        xxhash.xxh3_64_intdigest(memoryview(data)[pos:pos + len(rec)]) == \
                        self._stamped(cid, did):
                    found.add(cid)
                pos = data.find(CHUNK_MAGIC, pos + 1)
        return found

    def explain(self, paths, cids) -> str:
        """Why chunks ``cids`` are not where they should be: what each member's index says of them.

        For a failed assertion's message: per chunk, the index entry of the member that lists it
        (offset, length, checksum) and how the record there differs from the oracle's (header
        fields, payload length, first differing byte); or that no index lists it.
        """
        from stripedump.format.structs import ChunkHeader
        from stripedump.read.member import MemberReader
        where: dict[int, tuple] = {}
        lines = []
        for p in paths:
            try:
                r = MemberReader(p)
                f = r.footer()
                entries = list(r.index(f)) if f is not None else []
            except Exception as e:        # a diagnostic: say what failed and go on
                lines.append(f"{p}: cannot read its index: {type(e).__name__}: {e}")
                continue
            for e in entries:
                if e.chunk_id in cids:
                    where[e.chunk_id] = (p, e, r.pread(e.offset, e.length), r.dump_id)
        for c in sorted(cids)[:8]:
            if c not in where:
                lines.append(f"chunk {c}: in no given member's index")
                continue
            p, e, got, did = where[c]
            want = bytearray(self.records[c])
            seal_chunk_header(want, 0, did)
            diff = next((i for i, (x, y) in enumerate(zip(got, want)) if x != y), min(len(got), len(want)))
            hg = ChunkHeader.STRUCT.unpack_from(got) if len(got) >= ChunkHeader.STRUCT.size else None
            hw = ChunkHeader.STRUCT.unpack_from(want)
            lines.append(f"chunk {c}: {os.path.basename(p)} offset {e.offset} length {e.length} "
                         f"(oracle {len(want)}); first difference at byte {diff}; header {hg} vs oracle {hw}")
        return "\n".join(lines)

    def _stamped(self, cid: int, dump_id: bytes) -> int:
        """xxh3 of chunk ``cid``'s record as the writer of dump ``dump_id`` writes it."""
        key = (cid, dump_id)
        if key not in self._hashes:
            rec = bytearray(self.records[cid])
            seal_chunk_header(rec, 0, dump_id)
            self._hashes[key] = xxhash.xxh3_64_intdigest(rec)
        return self._hashes[key]

    def missing_ranges(self, present: set[int]):
        pfns, files = [], []
        for ch in self.plan:
            if ch.id not in present:
                (pfns if ch.kind == 0 else files).append((ch.start, ch.start + ch.count))
        return merge_ranges(pfns), _subtract(merge_ranges(files), self.header)

    def expected_output(self, present: set[int]) -> bytes:
        """The source, every missing chunk's bytes zeroed where an ELF join puts them, but the header region."""
        img = bytearray(self.source)
        ps = self.page_size
        pfns, files = self.missing_ranges(present)
        for a, b in files:
            img[a:b] = bytes(b - a)
        for p0, p1 in pfns:
            for off, paddr, filesz in self.loads:
                lo, hi = max(p0 * ps, paddr), min(p1 * ps, paddr + filesz)
                if lo >= hi:
                    continue
                a, b = off + lo - paddr, off + hi - paddr
                cur = a
                for ra, rb in self.residue:          # residue bytes come from file chunks
                    if rb <= cur or ra >= b:
                        continue
                    if ra > cur:
                        img[cur:ra] = bytes(ra - cur)
                    cur = max(cur, rb)
                if cur < b:
                    img[cur:b] = bytes(b - cur)
        if set(self.records) - set(present) and img[:4] == b"\x7fELF":
            at = 48 if img[4] == 2 else 36
            order = "little" if img[5] == 1 else "big"
            flags = int.from_bytes(img[at:at + 4], order) | 1       # DUMP_ELF_INCOMPLETE
            img[at:at + 4] = flags.to_bytes(4, order)
        return bytes(img)


def _env():
    return dict(os.environ, PYTHONPATH=ROOT)


def group_alive(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that still run (zombies left for init to reap do not count)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(rest[2]) == pgid and rest[0] != "Z":
            out.append(int(name))
    return out


def group_gone(pgid: int, timeout: float) -> bool:
    """True once no process of the dump's group runs (within ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return True
        time.sleep(0.02)
    return False


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def start_dump(src: str, members: list[str], codec: str, workers: int, chunk: str, extra=()):
    return subprocess.Popen([sys.executable, "-m", "stripedump", "dump", "-q", "--disks", ",".join(members),
                             "--codec", codec, "--workers", str(workers), "--chunk-size", chunk, *extra, src],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(),
                            start_new_session=True)


def kill_dump(p, mode: str, rng: random.Random) -> str:
    """SIGKILL the dump as ``mode`` says; returns what was killed."""
    if mode == "group":
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return "process group"
    if mode == "child":
        kids = _children(p.pid)
        if kids:
            victim = rng.choice(kids)
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return f"child {victim}"
    try:
        os.kill(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return "coordinator"


def check_run(oracle: Oracle, members: list[str], out: str, dump_id: bytes | None = None) -> tuple[bool, str, int]:
    """(passed, what happened, chunks recovered) for the members a killed dump left.

    ``dump_id``: the killed dump's id, where a member may still hold another dump's header (``--reuse``).
    """
    present = oracle.on_disk(members, dump_id)
    r = subprocess.run([sys.executable, "-m", "stripedump", "join", "--allow-incomplete", "--json", "-q",
                        *members, "-o", out], capture_output=True, text=True, env=_env(), timeout=300)
    if r.returncode != 0:
        if not present and r.returncode == 6:
            return True, "nothing reached disk; join refused (6)", 0
        return False, f"join exit {r.returncode}: {r.stderr.strip()[-300:]}", 0
    res = json.loads(r.stdout)
    pfns, files = oracle.missing_ranges(present)
    if res["chunks"] != len(present):
        return False, f"join recovered {res['chunks']} chunks, {len(present)} reached disk", res["chunks"]
    if res["missing"] != pfns or res["missing_file_ranges"] != files:
        return False, f"missing ranges differ: join {res['missing'][:3]}..., oracle {pfns[:3]}...", res["chunks"]
    with open(out, "rb") as f:
        got = f.read()
    want = oracle.expected_output(present)
    if got != want:
        at = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]), min(len(got), len(want)))
        return False, f"output differs at byte {at:#x} (sizes {len(got)}, {len(want)})", res["chunks"]
    return True, f"{len(present)}/{len(oracle.records)} chunks on disk, all recovered", res["chunks"]
