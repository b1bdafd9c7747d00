"""What a set of members holds, for humans and for scripts.

Why: before a multi-hour join an engineer wants to know which kernel this is,
whether every member finished, and how big the result will be; ``info``
answers from the headers, manifests and footers alone (no chunk is read).
For a member that has no usable footer (the dump was killed) it walks the
chunk headers, without reading payloads, to say how many chunks a join
--allow-incomplete can recover.
"""

from __future__ import annotations

import datetime

from .dumpset import DumpSet
from .format import STATE_NAMES
from .member import WalkReport
from .vmcore import parse_notes, parse_vmcoreinfo


def info(members: list[str]) -> dict:
    with DumpSet(members) as ds:
        m, plan = ds.manifest, ds.plan
        src = m["source"]
        vmcoreinfo = {}
        for n in parse_notes(ds.notes, src.get("endian", "<")):
            if n.name == b"VMCOREINFO":
                vmcoreinfo = parse_vmcoreinfo(n.desc)
                break
        out_members = []
        for pos, (r, f) in enumerate(zip(ds.readers, ds.footers(allow_incomplete=True))):
            d = {"index": r.header.member_index, "path": r.path, "bytes": r.size,
                 "state": STATE_NAMES.get(f.state if f else r.header.state, "unknown"),
                 "chunks": f.chunks if f else None, "input_bytes": f.bytes_in if f else None,
                 "note": f.note if f else None}
            if f is None:        # killed dump or unreadable footer: what a walk finds
                if r.header.footer_offset:
                    d["state"], d["note"] = "footer unreadable", ds.source(pos).problem
                walk = WalkReport()
                d["recovered_chunks"] = sum(1 for _ in r.walk(verify=False, report=walk))
                d["walk"] = walk.describe()
            if f is not None and f.degraded:
                d["took_over"] = [list(x) for x in f.degraded]
            out_members.append(d)
        return {
            "dump_id": ds.dump_id, "tool": m.get("tool"), "created": m.get("created"),
            "codec": m.get("codec"), "placement": m.get("placement"),
            "chunk_bytes": plan.chunk_bytes, "block_bytes": ds.block_bytes,
            "chunks": plan.n_chunks, "page_chunks": plan.n_page_chunks,
            "source": {"path": src.get("path"), "size": ds.source_size, "elfclass": src.get("elfclass"),
                       "machine": src.get("machine"), "page_size": ds.page_size,
                       "nr_cpus": src.get("nr_cpus"), "pages": plan.total_pages,
                       "pfn_ranges": len(plan.pfn_ranges), "residue_bytes": plan.residue_bytes,
                       "osrelease": vmcoreinfo.get("OSRELEASE"), "crashtime": vmcoreinfo.get("CRASHTIME")},
            "members": out_members,
            "degraded": [[m, n] for m, n in sorted(ds.dropped.items())],
        }


def _crashtime(text: str) -> str:
    """VMCOREINFO's CRASHTIME (seconds since the epoch) as a UTC date, or as it is."""
    try:
        t = datetime.datetime.fromtimestamp(int(text), datetime.timezone.utc)
    except (ValueError, OverflowError, OSError):
        return text
    return f"{t:%Y-%m-%d %H:%M:%S} UTC"


def render(d: dict) -> str:
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
        f"{d['chunks']} chunks, placed {d['placement']}",
        f"members:    {len(d['members'])}",
    ]
    for m in d["members"]:
        lines.append(f"  [{m['index']}] {m['path']}: {m['state']}, {m['bytes']} bytes"
                     + (f", {m['chunks']} chunks" if m["chunks"] is not None else "")
                     + (f" ({m['note']})" if m["note"] and m["state"] != "complete" else ""))
        if "recovered_chunks" in m:
            lines.append(f"      {m['recovered_chunks']} chunk record(s) found by walking its records, "
                         "recoverable with join --allow-incomplete (payloads are checked by verify "
                         f"and join); {m['walk']}")
        if any(n for i, n in m.get("took_over", [])):
            lines.append("      holds chunks of failed member(s): "
                         + ", ".join(f"{n} of member {i}" for i, n in m["took_over"] if n))
    for i, n in d.get("degraded", []):
        lines.append(f"degraded:   member {i}'s target failed during the dump; {n} of its chunks were "
                     "written to the other members instead")
    return "\n".join(lines)
