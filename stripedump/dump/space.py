"""Room on the targets, and the share of a dump each is expected to take (issue 24, items 8 and 9).

Why: a target that cannot hold its member is found by ENOSPC, at 1 % of the
dump on a 1 MiB tmpfs or at 27 % on a 20 MiB loop device; in a capture
kernel the dump is then incomplete.  The room is known when the targets are
open, so the dump says at once which target will probably fill up (a
warning, never a refusal: the data may compress better than expected), and
``--codec auto`` keeps its choices within that room (autocodec.py).

The room of a target, once it is open and locked (and truncated), its
member's head (``start`` bytes) taken off:

* a block device: its size;
* a file: what ``statvfs`` says an unprivileged writer may still use on its
  file system (``f_bavail``), shared equally among the targets on that
  file system (by ``st_dev``); unknown where it gives no sizes at all
  (``f_blocks`` 0: procfs, a FUSE file system without statfs);
* ``ssh://``: what ``df`` said of its directory on the host when it was
  checked (remote/sshtarget.py), shared equally among the targets of one
  host directory;
* ``s3://`` and ``-``: unknown (None; a store has no free-space figure).

The expected share of a target is ``source bytes x ratio / targets``:
chunks are placed round robin, so each member takes about as much; the
source bytes are the pages and file bytes the plan covers (with ``-d N`` the
whole source: the pages a level leaves out are known only once the workers
read their struct pages, so the estimate is high there); the ratio is the
codec's typical one (format/codecs.py: ``typical_ratio``, measured on a real
kernel's memory), for ``auto`` the smallest of its ladder, since auto turns
to it when the room is short.  The indexes and footers add a few bytes per
chunk, within the estimate's error.
"""

from __future__ import annotations

import os

from .targets import Target


def _free(targets: list[Target]) -> list[tuple[tuple | None, int | None]]:
    """Per target: (what it shares its room with, or None; the free bytes there, or None)."""
    out: list[tuple[tuple | None, int | None]] = []
    for t in targets:
        if t.is_block:
            out.append((None, t.capacity))
        elif t.remote is not None:
            out.append((("ssh", t.path.rsplit("/", 1)[0]), t.remote.avail))
        elif t.stream:
            out.append((None, None))
        else:
            folder = os.path.dirname(os.path.realpath(t.path))
            try:
                st, vfs = os.stat(folder), os.statvfs(folder)
            except OSError:
                vfs = None
            if vfs is None or vfs.f_blocks == 0:     # no sizes given (procfs, a FUSE fs without statfs)
                out.append((None, None))
                continue
            out.append((("fs", st.st_dev), vfs.f_bavail * vfs.f_frsize))
    return out


def _sharing(free) -> list[int]:
    groups = [g for g, _ in free]
    return [groups.count(g) if g is not None else 1 for g in groups]


def rooms(targets: list[Target], start: int) -> list[int | None]:
    """Each target's room for its member's records, in bytes (None: unknown); see the module comment."""
    free = _free(targets)
    return [None if f is None else max(0, f // k - start) for (_, f), k in zip(free, _sharing(free))]


def dump_room(room: list[int | None]) -> int | None:
    """What the members can take together: as many times the least room as there are targets
    (round robin: each takes its share); None when no target's room is known."""
    known = [r for r in room if r is not None]
    return len(room) * min(known) if known else None


def expected_share(input_bytes: int, ratio: float, n: int) -> int:
    """What one of ``n`` targets is expected to take of a dump of ``input_bytes`` source bytes."""
    return int(input_bytes * ratio / max(1, n))


def warnings(targets: list[Target], start: int, input_bytes: int, codec) -> list[str]:
    """One line per target whose room is below its expected share (``codec``: the dump's Spec)."""
    n = len(targets)
    share = expected_share(input_bytes, codec.typical_ratio, n)
    how = (f"{input_bytes / 1e6:.1f} MB of source x {codec.typical_ratio:.2f}, "
           f"{'the smallest typical ratio of its ladder' if codec.is_auto else 'its typical ratio'} "
           f"(codec {codec}), / {n} target(s)")
    free = _free(targets)
    out = []
    for t, r, (_, f), k in zip(targets, rooms(targets, start), free, _sharing(free)):
        if r is None or r >= share:
            continue
        if t.is_block:
            where = f"{f / 1e6:.1f} MB on the device"
        else:
            where = f"{f / 1e6:.1f} MB free " + ("there" if t.remote is not None else "on its file system")
            if k > 1:
                where += f", shared by {k} targets"
        out.append(f"target {t.path}: {where}, less than its expected share of the dump, {share / 1e6:.1f} MB "
                   f"({how}); it will probably fill up (fine if the data compresses better than that)")
    return out
