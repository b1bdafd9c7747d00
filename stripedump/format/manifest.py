"""The manifest: what every member says about the whole dump, built and checked here only.

Why one module: the manifest is JSON written by the dump and read years later
by join, verify, info and the kdump writer, from members that may be damaged
or hostile.  Building it and validating it side by side keeps the two in
step, and nothing else parses manifest JSON by hand: readers get a
``Manifest`` whose every length, count and offset has been checked against
the source geometry (the source size, the segments, the plan) before anything
is sized from it (issue 9, case 7: a manifest with ``n_chunks`` = 2^52 or
segments past the source's end is refused, not allocated).
"""

from __future__ import annotations

import base64
import binascii
import os
import time

from ..version import __version__
from ..errors import MemberError, UsageError
from .structs import MAX_CHUNKS, MAX_SEGMENTS, VERSION
from ..source.elfhead import header_pieces, manifest_pieces
from .plan import Plan

PT_LOAD, PT_NOTE = 1, 4
MAX_SHADOW_FACTOR = 4           # as vmcore.MAX_SHADOW_FACTOR
MAX_NOTES = 64 << 20            # vmcore.py refuses more note bytes than this


def build_manifest(src, plan: Plan, cfg, dump_id: str, block_bytes: int, members: int,
                   dump_level: dict | None = None) -> dict:
    """The manifest of a dump; ``dump_level`` (``dump_level_entry``): the level asked and applied."""
    if plan.n_chunks > MAX_CHUNKS:
        raise UsageError(f"the dump would have {plan.n_chunks} chunks, more than the {MAX_CHUNKS} a "
                         "reader accepts; use a larger --chunk-size")
    info = src.info
    return {
        "format_version": VERSION, "tool": f"stripedump {__version__}", "dump_id": dump_id,
        "created": int(time.time()), "codec": str(cfg.codec), "members": members,
        "placement": "round-robin", "block_bytes": block_bytes,
        # "continue": a failed target's chunks may have moved to the other members (degraded.py)
        "on_disk_error": cfg.on_disk_error,
        "source": {"path": os.path.abspath(src.path), "size": src.size, "elfclass": info.elfclass,
                   "endian": info.endian, "machine": info.machine, "page_size": src.page_size,
                   "nr_cpus": info.nr_cpus,
                   "segments": [s.to_json() for s in sorted(info.loads + info.note_segments,
                                                            key=lambda s: s.index)],
                   "notes": base64.b64encode(info.notes).decode(),
                   # the raw ELF header and program headers, so join rebuilds them without member 0
                   "header_pieces": header_pieces(src.fd, src.size)},
        "plan": plan.to_json(),
        # a key only where a level was asked: a dump without -d has the manifest it always had
        **({"dump_level": dump_level} if dump_level is not None else {}),
    }


def dump_level_entry(asked: int, applied: int, missing=(), weaker=()) -> dict:
    """The manifest's ``dump_level``: the level asked, the level applied (the bits VMCOREINFO allowed),
    the entries whose absence lowered it, and those that made an applied bit keep more pages."""
    return {"asked": asked, "applied": applied, "missing": list(missing), "weaker": list(weaker)}


def _int(v, what: str, lo: int = 0, hi: int = 1 << 64) -> int:
    if type(v) is not int or not lo <= v < hi:
        raise ValueError(f"{what} {v!r} is not an integer in [{lo}, {hi})")
    return v


class Manifest:
    """A manifest read from a member, checked; the raw dict stays in ``data``.

    ``header`` is the member header it came with (format.MemberHeader): the
    two must agree on the geometry.
    """

    def __init__(self, data: dict, header, where: str):
        self.data = data
        try:
            self._check(data, header)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            msg = str(e) if not isinstance(e, KeyError) else f"key {e} missing"
            raise MemberError(f"{where}: the member's manifest is malformed ({msg}); the member is "
                              "damaged or was not written by stripedump") from None
        if self.page_size != header.page_size or self.plan.chunk_pages != header.chunk_pages \
                or self.block_bytes != header.block_pages * self.page_size:
            raise MemberError(f"{where}: the member's manifest and header disagree on the dump geometry; "
                              "the member is damaged")

    def _check(self, m: dict, header) -> None:
        src = m["source"]
        self.page_size = _int(src["page_size"], "page size", 512, (1 << 20) + 1)
        self.source_size = _int(src["size"], "source size", 1, 1 << 63)
        segs = src["segments"]
        if not isinstance(segs, list) or len(segs) > MAX_SEGMENTS:
            raise ValueError(f"segments are not a list of at most {MAX_SEGMENTS} program headers")
        ends = []
        for s in segs:
            for k in ("type", "offset", "paddr", "filesz", "memsz"):
                _int(s[k], f"segment field {k}")
            if s["offset"] + s["filesz"] > self.source_size:
                raise ValueError(f"segment {s.get('index')} runs past the source's end")
            if s["filesz"] > s["memsz"] and s["type"] == PT_LOAD:
                raise ValueError(f"segment {s.get('index')} has more file bytes than memory")
            if s["paddr"] + s["memsz"] >= 1 << 64:
                raise ValueError(f"segment {s.get('index')} overflows the address space")
            ends.append(s["offset"] + s["filesz"])
        self.segments = segs
        notes = src["notes"]
        if not isinstance(notes, str) or len(notes) > MAX_NOTES * 4 // 3 + 4:
            raise ValueError("notes are not a string of a plausible size")
        try:
            self.notes = base64.b64decode(notes, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("notes are not base64") from None
        if len(self.notes) > self.source_size:
            raise ValueError("more note bytes than the source has")
        self.block_bytes = _int(m["block_bytes"], "block size", 1, (1 << 30) + 1)
        plan = m["plan"]
        n = _int(plan["n_chunks"], "chunk count", 0, MAX_CHUNKS + 1)
        self.plan = Plan.from_json(plan)      # recomputes n_chunks from the ranges
        if self.plan.n_chunks != n or self.plan.page_size != self.page_size:
            raise ValueError("plan does not match the source")
        for a, b in self.plan.residue:
            if b > self.source_size:
                raise ValueError(f"residue range [{a}, {b}) runs past the source's end")
        # the residue and the PT_LOADs' file data cover the whole source: nothing lies past them
        last = max([b for a, b in self.plan.residue] +
                   [s["offset"] + s["filesz"] for s in segs if s["type"] == PT_LOAD])
        if self.source_size > last:
            raise ValueError(f"source size {self.source_size} is larger than what the segments and "
                             "the residue cover")
        # PT_LOADs describing the same physical memory again and again would cost join
        # (loads x size) of work: allowed as much as a source is (vmcore.MAX_SHADOW_FACTOR)
        with_data = sorted((s["paddr"], s["paddr"] + s["filesz"]) for s in segs
                           if s["type"] == PT_LOAD and s["filesz"])
        shadowed = sum(b - a for a, b in with_data) - sum(b - a for a, b in _merge(with_data))
        if shadowed > MAX_SHADOW_FACTOR * max(self.source_size, 1 << 26):
            raise ValueError(f"PT_LOADs overlap implausibly ({shadowed} bytes described more than once)")
        # every page of the plan lies in a PT_LOAD's memory
        loads = sorted((s["paddr"] // self.page_size, -(-(s["paddr"] + s["memsz"]) // self.page_size))
                       for s in segs if s["type"] == PT_LOAD and s["memsz"])
        covered = sum(b - a for a, b in _merge(loads))
        if self.plan.total_pages > covered:
            raise ValueError("the plan has more pages than the segments describe")
        if self.plan.pfn_ranges and not self.plan.chunk_bytes:
            raise ValueError("empty chunks")
        self.members = _int(m.get("members", header.member_count), "member count", 1, 1 << 32)
        self.on_disk_error = m.get("on_disk_error", "stop")
        if self.on_disk_error not in ("stop", "continue"):
            raise ValueError(f"on_disk_error {self.on_disk_error!r}")
        dl = m.get("dump_level")
        if dl is not None:      # dump -d N (issue 11); absent: a full dump
            _int(dl["asked"], "dump level asked", 0, 32)
            _int(dl["applied"], "dump level applied", 0, 32)
            if dl["applied"] & ~dl["asked"] or not all(isinstance(k, str) for k in dl["missing"] + dl["weaker"]):
                raise ValueError("dump_level does not describe a level")
        self.dump_level = dl
        # the header region join rebuilds without member 0 (None: a manifest from before it was kept)
        self.header_pieces = manifest_pieces(src, self.notes, segs, self.source_size)

    @property
    def source(self) -> dict:
        return self.data["source"]

    def get(self, key, default=None):
        return self.data.get(key, default)


def _merge(spans):
    out: list[list[int]] = []
    for a, b in spans:
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out
