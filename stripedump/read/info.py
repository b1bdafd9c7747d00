"""What a set of members holds, for humans and for scripts.

Why: before a multi-hour join an engineer wants to know which kernel this is,
whether every member finished, and how big the result will be; ``info``
answers from the headers, manifests, footers and indexes alone (no chunk
payload is read).  For a member that has no usable footer (the dump was
killed) it walks the chunk headers, without reading payloads.  Members may be
missing (a disk died): that is when the question matters most, so ``info``
says, per member and in total, what a join --allow-incomplete would recover
and which PFN ranges it would lack, and exits 0.
"""

from __future__ import annotations

import datetime

from .dumpset import DumpSet
from .reader import ChunkIndex
from ..format.codecs import BY_ID
from ..format.structs import STATE_NAMES
from ..levels.pagebits import left_out_text
from ..source.vmcore import parse_notes, parse_vmcoreinfo


def info(members: list[str]) -> dict:
    """What the members hold and what a join would recover; members may be missing."""
    from .output import missing_report
    with DumpSet(members, allow_missing=True) as ds:
        m, plan = ds.manifest, ds.plan
        src = m["source"]
        vmcoreinfo = {}
        for n in parse_notes(ds.notes, src.get("endian", "<")):
            if n.name == b"VMCOREINFO":
                vmcoreinfo = parse_vmcoreinfo(n.desc)
                break
        # which chunks a join finds: the reader's index (indexes, or walks of record headers; no payload)
        report = missing_report(ds, ChunkIndex.build(ds, allow_incomplete=True).missing(), ds.header_pieces)
        recovery = {d["index"]: d for d in report["members"] if d["index"] is not None}
        out_members = []
        codecs: dict = {}      # codec name -> chunks, raw and stored bytes, from the footers (v2)
        level = m.get("dump_level")       # dump -d N: asked, applied, missing (the manifest)
        classes: dict = {}                # pages left out per class, over the dump (any footer's XCLS)
        excluded = 0                      # pages of BLOCK_EXCLUDED blocks, summed over the footers
        for pos, (r, f) in enumerate(zip(ds.readers, ds.footers(allow_incomplete=True))):
            if f is not None:
                excluded += f.excluded_pages
                if f.excluded_classes and not classes:
                    classes = dict(f.excluded_classes)
            for t in (f.codec_totals if f else ()):
                name = BY_ID[t.codec_id].name if t.codec_id in BY_ID else f"codec {t.codec_id}"
                c = codecs.setdefault(name, {"chunks": 0, "raw_bytes": 0, "stored_bytes": 0})
                c["chunks"] += t.chunks
                c["raw_bytes"] += t.raw_bytes
                c["stored_bytes"] += t.stored_bytes
            d = {"index": r.header.member_index, "path": r.path, "bytes": r.size,
                 "state": STATE_NAMES.get(f.state if f else r.header.state, "unknown"),
                 "chunks": f.chunks if f else None, "input_bytes": f.bytes_in if f else None,
                 "note": f.note if f else None}
            s = ds.source(pos)
            if f is None:        # killed dump or unreadable footer: what a walk finds
                if r.header.footer_offset and not s.repair:
                    d["state"], d["note"] = "footer unreadable", s.problem
            if s.walked:
                d["recovered_chunks"] = s.used
                d["repaired"] = bool(s.repair)      # finished, its footer or index damaged: join walks it too
                d["walk"] = s.walk.describe()
            if f is not None and f.degraded:
                d["took_over"] = [list(x) for x in f.degraded]
            d.update({k: v for k, v in recovery[d["index"]].items() if k not in d})
            out_members.append(d)
        for i in ds.absent:      # not given, or given but unusable (e.g. its manifest cut off)
            path, why = ds.unusable.get(i, (None, None))
            out_members.append({**recovery[i], "index": i, "path": path, "bytes": None,
                                "state": f"unusable ({why})" if why else "not given",
                                "chunks": None, "input_bytes": None, "note": None})
        out_members.sort(key=lambda d: d["index"])
        for p in ds.unwritten:
            out_members.append({"index": None, "path": p, "bytes": None,
                                "state": "no member header (never written)", "chunks": None,
                                "input_bytes": None, "note": None})
        for p, why in ds.unreached:      # ssh:// and s3:// members not there to be read
            out_members.append({"index": None, "path": p, "bytes": None, "state": f"not read ({why})",
                                "chunks": None, "input_bytes": None, "note": None})
        return {
            "dump_id": ds.dump_id, "tool": m.get("tool"), "created": m.get("created"),
            "codec": m.get("codec"), "codecs": codecs, "placement": m.get("placement"),
            "chunk_bytes": plan.chunk_bytes, "block_bytes": ds.block_bytes,
            "chunks": plan.n_chunks, "page_chunks": plan.n_page_chunks,
            "source": {"path": src.get("path"), "size": ds.source_size, "elfclass": src.get("elfclass"),
                       "machine": src.get("machine"), "page_size": ds.page_size,
                       "nr_cpus": src.get("nr_cpus"), "pages": plan.total_pages,
                       "pfn_ranges": len(plan.pfn_ranges), "residue_bytes": plan.residue_bytes,
                       "osrelease": vmcoreinfo.get("OSRELEASE"), "crashtime": vmcoreinfo.get("CRASHTIME")},
            "members": out_members,
            **({"dump_level": {**level, "excluded_pages": excluded,
                               "excluded": {k: v for k, v in classes.items() if k not in ("struct_unread", "zero")},
                               "zero_pages": classes.get("zero", 0),
                               "struct_unreadable_pages": classes.get("struct_unread", 0)}}
               if level is not None else {}),
            "degraded": [[m, n] for m, n in sorted(ds.dropped.items())],
            "recovery": {k: v for k, v in report.items() if k != "members"},
            # what a join without --allow-incomplete refuses (every chunk may still be there)
            "join_refuses": [str(e) for e in ds.refusals()],
            "repaired": ds.repairs(),
        }


def _crashtime(text: str) -> str:
    """VMCOREINFO's CRASHTIME (seconds since the epoch) as a UTC date, or as it is."""
    try:
        t = datetime.datetime.fromtimestamp(int(text), datetime.timezone.utc)
    except (ValueError, OverflowError, OSError):
        return text
    return f"{t:%Y-%m-%d %H:%M:%S} UTC"


def render(d: dict) -> str:
    from .output import chunk_kinds
    s = d["source"]
    created = datetime.datetime.fromtimestamp(d["created"] or 0, datetime.timezone.utc)
    lines = [
        f"dump id:    {d['dump_id']}",
        f"created:    {created:%Y-%m-%d %H:%M:%S} UTC by {d['tool']}",
        f"source:     {s['path']} ({s['size']} bytes, ELF{s['elfclass']}, e_machine {s['machine']}, "
        f"{s['nr_cpus']} CPU notes)",
        f"kernel:     {s['osrelease'] or 'unknown (no VMCOREINFO)'}"
        + (f", crashed at {_crashtime(s['crashtime'])}" if s['crashtime'] else ""),
        f"memory:     {s['pages']} pages of {s['page_size']} bytes in {s['pfn_ranges']} range(s), "
        f"{s['residue_bytes']} bytes of headers and padding",
        f"codec:      {d['codec']}, chunks of {d['chunk_bytes']} bytes, blocks of {d['block_bytes']} bytes, "
        f"{d['chunks']} chunks ({chunk_kinds({'dump_chunks': d['chunks'], 'page_chunks': d['page_chunks']})}), "
        f"placed {d['placement']}",
        *(["by codec:   " + ", ".join(
            f"{n} {c['chunks']} chunk(s) ({_mb(c['raw_bytes'])} -> {_mb(c['stored_bytes'])})"
            for n, c in d["codecs"].items())] if d.get("codecs") else []),
        *_level_lines(d.get("dump_level")),
        f"members:    {sum(1 for m in d['members'] if m['path'] and m['index'] is not None)} given of "
        f"{sum(1 for m in d['members'] if m['index'] is not None)}",
    ]
    for m in d["members"]:
        if m["index"] is None:
            lines.append(f"  [-] {m['path']}: {m['state']}")
            continue
        lines.append(f"  [{m['index']}] {m['path'] + ': ' if m['path'] else ''}{m['state']}"
                     + (f", {m['bytes']} bytes" if m["bytes"] is not None else "")
                     + (f", {m['chunks']} chunks" if m["chunks"] is not None else "")
                     + (f" ({m['note']})" if m["note"] and m["state"] != "complete" else ""))
        for what in m.get("damage", []):
            lines.append(f"      damaged: {what}")
        if "recovered_chunks" in m:
            lines.append(f"      {m['recovered_chunks']} chunk record(s) found by walking its records, "
                         + ("as join and mount do (no option needed)" if m.get("repaired") else
                            "recoverable with join --allow-incomplete")
                         + f" (payloads are checked by verify and join); {m['walk']}")
        if any(n for i, n in m.get("took_over", [])):
            lines.append("      holds chunks of failed member(s): "
                         + ", ".join(f"{n} of member {i}" for i, n in m["took_over"] if n))
        if "share_chunks" in m:
            lines.append(f"      its share: {m['recoverable_chunks']} of {m['share_chunks']} chunk(s) "
                         f"recoverable ({_mb(m['recoverable_bytes'])} of {_mb(m['share_bytes'])})"
                         + (f"; missing {m['missing_pages']} page(s){_pfns(m['missing'], 4)}"
                            if m["missing_chunks"] else ""))
    for i, n in d.get("degraded", []):
        lines.append(f"degraded:   member {i}'s target failed during the dump; {n} of its chunks were "
                     "written to the other members instead")
    r = d.get("recovery")
    if r:
        lines.append(f"recovery:   a join recovers {r['recoverable_chunks']} of {d['chunks']} chunk(s), "
                     f"{_mb(r['recoverable_bytes'])} of {_mb(r['recoverable_bytes'] + r['missing_bytes'])}"
                     + (_complete(d) if r["complete"] else
                        " with join --allow-incomplete; the rest reads as zeros"))
        if not r["complete"]:
            files = sum(b - a for a, b in r["missing_file_ranges"])
            lines.append(f"missing:    {r['missing_pages']} page(s) in {len(r['missing'])} PFN range(s)"
                         f"{_pfns(r['missing'], 8)}; {files} byte(s) of ELF headers and padding")
            if r["rebuilt_file_ranges"]:
                lines.append("rebuilt:    the ELF header, program headers and notes, from the manifest ("
                             f"{sum(b - a for a, b in r['rebuilt_file_ranges'])} bytes)")
    return "\n".join(lines)


def _complete(d: dict) -> str:
    """The end of the recovery line of a dump whose chunks are all there: what a join does with it."""
    if d.get("join_refuses"):
        return ("; every chunk is there, but a join refuses the dump without --allow-incomplete: "
                + d["join_refuses"][0].split("; the dump did not finish")[0])
    if d.get("repaired"):
        return "; the dump is complete (join and mount work around the damage above, with a warning)"
    return "; the dump is complete"


def _level_lines(lv: dict | None) -> list[str]:
    """dump -d N: the level asked and applied, what lowered it, the pages left out per class."""
    if lv is None:
        return []
    lines = [f"dump level: {lv['applied']} applied ({lv['asked']} asked); {left_out_text(lv)}"
             + (f"; {lv['struct_unreadable_pages']} page(s) kept whose struct page could not be read"
                if lv.get("struct_unreadable_pages") else "")]
    if lv["missing"]:
        lines.append(f"            not applied for lack of VMCOREINFO {', '.join(lv['missing'])}")
    return lines


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _pfns(ranges: list, most: int) -> str:
    if not ranges:
        return ""
    return (" (PFN " + ", ".join(f"{a:#x}-{b - 1:#x}" for a, b in ranges[:most])
            + (" ..." if len(ranges) > most else "") + ")")
