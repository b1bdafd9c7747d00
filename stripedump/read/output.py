"""What a join leaves behind: the output file, and the account of what it holds.

Why one module: ELF join and kdump/flat join (and verify, which writes
nothing) end the same way.  The output is created as ``OUT.partial`` and
renamed to OUT (then its directory synced) only when every chunk made it
(``PartialOutput``; ``check_output`` refuses a bad OUT before anything is
read), and the result (``JoinResult``) says what was recovered, what is
missing (``missing_report``) and what the source could not give at dump time
(``unreadable_report``), in JSON and in lines for people.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .dumpset import INCOMPLETE_HINT, DumpSet
from .member import is_remote
from ..source.elfhead import rebuilt_ranges
from ..errors import IncompleteDump, MemberError, OutputError, Repaired, VerifyError
from ..runtime.fileio import fsync_dir, write_exact
from ..format.structs import KIND_PAGES
from ..format.plan import placement
from ..source.vmcore import merge_ranges, subtract_ranges


def pwrite_all(fd: int, data, offset: int, where: str) -> None:
    write_exact(fd, data, OutputError, where, offset)


@dataclass
class JoinResult:
    dump_id: str
    output: str | None
    bytes_out: int
    chunks: int
    seconds: float
    errors: list[str]
    extra: dict = field(default_factory=dict)

    @property
    def mb_per_s(self) -> float:
        return self.bytes_out / self.seconds / 1e6 if self.seconds else 0.0

    def to_json(self) -> dict:
        return {"dump_id": self.dump_id, "output": self.output, "output_bytes": self.bytes_out,
                "chunks": self.chunks, "seconds": round(self.seconds, 6),
                "mb_per_s": round(self.mb_per_s, 3), "errors": self.errors, **self.extra}

    def chunk_words(self) -> str:
        """The chunks read, named as ``info`` counts them: every chunk of the dump (``dump_chunks``),
        of which ``page_chunks`` hold memory pages and the rest the source's headers, notes and
        padding; kdump output and a filtered dump's ELF file read only the page chunks (issue 24:
        "joined 512 chunks" beside info's 514)."""
        x = self.extra
        total, pages, n = x["dump_chunks"], x["page_chunks"], self.chunks
        if x.get("page_chunks_only"):
            return ((f"the dump's {pages}" if n == pages else f"{n} of the dump's {pages}")
                    + " chunks of memory pages" + (f" (not its {total - pages} of the source's headers, "
                                                   "notes and padding: this output has headers of its own)"
                                                   if total > pages else ""))
        return (f"{n} chunks" if n == total else f"{n} of the dump's {total} chunks") + f" ({chunk_kinds(x)})"


def chunk_kinds(counts: dict) -> str:
    """``dump_chunks`` split as ``info`` splits them: memory pages, and the rest."""
    pages, other = counts["page_chunks"], counts["dump_chunks"] - counts["page_chunks"]
    return f"{pages} of memory pages" + (f", {other} of the source's headers, notes and padding" if other else "")


def _ranges_left(ranges, cuts) -> list[tuple[int, int]]:
    return [r for a, b in ranges for r in subtract_ranges((a, b), cuts)]


def missing_report(ds: DumpSet, missing: list[int], pieces: list | None = None) -> dict:
    """What a join of a possibly incomplete dump recovers and lacks, for --json and for people.

    ``missing`` holds PFN ranges [start, end) and ``missing_file_ranges``
    source file byte ranges, each merged: what reads as zeros.  File bytes
    of missing chunks that the manifest's header copy (``pieces``) rebuilds
    are ``rebuilt_file_ranges`` instead.  ``members`` says, for each member,
    how its chunks were found (its index, or a walk of its records) and,
    of its share of the plan (chunk i is member i % members's), what a join
    recovers and what is missing.
    """
    ps = ds.page_size
    pfns, files = ds.missing_ranges(missing)
    rebuilt = rebuilt_ranges(pieces, files)
    files = _ranges_left(files, rebuilt)
    miss_by: dict[int, list[int]] = {}
    for c in missing:
        miss_by.setdefault(placement(c, ds.count), []).append(c)
    members = ds.member_report()
    total_bytes = 0
    for m in members:
        if m["index"] is None:
            continue
        share_chunks, share_bytes = ds.share(m["index"])
        gone = miss_by.get(m["index"], [])
        mp, mf = ds.missing_ranges(gone)
        mf = _ranges_left(mf, rebuilt)
        gone_bytes = sum(ds.plan.chunk(c).raw_bytes(ps) for c in gone)
        total_bytes += gone_bytes
        m.update({"share_chunks": share_chunks, "share_bytes": share_bytes,
                  "recoverable_chunks": share_chunks - len(gone), "recoverable_bytes": share_bytes - gone_bytes,
                  "missing_chunks": len(gone), "missing_pages": sum(b - a for a, b in mp),
                  "missing": [list(r) for r in mp], "missing_file_ranges": [list(r) for r in mf]})
    return {"dump_chunks": ds.plan.n_chunks, "page_chunks": ds.plan.n_page_chunks,
            "complete": not missing, "missing_chunks": len(missing),
            "recoverable_chunks": ds.plan.n_chunks - len(missing),
            "recoverable_bytes": ds.plan.input_bytes - total_bytes,
            "missing_pages": sum(b - a for a, b in pfns), "missing_bytes": total_bytes,
            "missing": [list(r) for r in pfns], "missing_file_ranges": [list(r) for r in files],
            "rebuilt_file_ranges": [list(r) for r in rebuilt], "members": members}


def verdict(res: JoinResult):
    """verify's verdict on what it found, as the error its exit code comes from; None: all good.

    In this order: a chunk that fails its checks (7: join fails on it); chunks missing (8);
    a member a plain join refuses although every chunk is there, e.g. one never finalized (8,
    or 6 for a footer that cannot be read); damage the readers work around (12, ``Repaired``:
    join and mount give the whole dump, with a warning).  So verify exits 0 exactly when a
    plain join and mount succeed without a warning.
    """
    if res.errors:
        more = f" ({len(res.errors) - 20} more not shown)" if len(res.errors) > 20 else ""
        return VerifyError(f"{len(res.errors)} problem(s) found{more}; first: {res.errors[0]}")
    x = res.extra
    if not x.get("complete", True):
        return IncompleteDump(f"the dump is incomplete: {x['missing_chunks']} chunk(s) missing; "
                              f"the {res.chunks} present are good; join --allow-incomplete recovers them")
    for r in x.get("refused", []):
        cls = IncompleteDump if r["exit_code"] == IncompleteDump.exit_code else MemberError
        return cls(f"every chunk is there and good, but join refuses the dump without --allow-incomplete: "
                   f"{r['error']}")
    if x.get("repaired"):
        return Repaired(f"{len(x['repaired'])} damaged part(s) found, each repaired on reading: all "
                        f"{res.chunks} chunks are good, and join and mount give the whole dump without an "
                        "option, with a warning")
    return None


def describe_missing(report: dict, most: int = 16, verify: bool = False) -> list[str]:
    """Lines for stderr: how much is missing, the merged ranges, and each member's part.

    ``verify``: nothing was written, so say what a join would do with them.
    """
    if report.get("complete", True):
        return []
    pfns, files = report["missing"], report["missing_file_ranges"]
    pages = sum(b - a for a, b in pfns)
    then = ("a join refuses the dump; join --allow-incomplete writes zeros in their place" if verify
            else "they are zeros in the output")
    lines = [f"the dump is incomplete: {report['missing_chunks']} chunk(s) missing or damaged, {pages} "
             f"page(s) and {sum(b - a for a, b in files)} byte(s) of ELF headers and padding; {then}"]
    rebuilt = report.get("rebuilt_file_ranges", [])
    if rebuilt:
        lines.append(f"ELF header, program headers and notes of the missing chunk(s) rebuilt from the "
                     f"manifest: {sum(b - a for a, b in rebuilt)} byte(s) at "
                     + ", ".join(f"{a:#x}-{b - 1:#x}" for a, b in rebuilt[:most]))
    for what, ranges in (("missing PFN ranges", pfns), ("missing file bytes", files)):
        if ranges:
            shown = ", ".join(f"{a:#x}-{b - 1:#x}" for a, b in ranges[:most])
            more = f" ... ({len(ranges) - most} more; --json lists all)" if len(ranges) > most else ""
            lines.append(f"{what}: {shown}{more}")
    for m in report["members"]:
        if m["index"] is None and m["state"].startswith("not read"):     # an ssh:// or s3:// member not there
            lines.append(f"{m['path']}: {m['state']}")
        elif m["index"] is None:
            lines.append(f"{m['path']}: no member header (the dump stopped before writing one)")
        elif m["found_by"] is None:
            lines.append(f"member {m['index']}{' ' + m['path'] if m.get('path') else ''}: {m['state']}; its {m.get('missing_chunks', 'share of')} "
                         f"chunk(s) are missing" + _member_missing(m))
        elif m["state"] != "complete" or m["found_by"] == "walk":
            lines.append(f"member {m['index']} {m['path']}: {m['state']}, {m['chunks']} chunk(s) found by "
                         + ("walking its records (" + m["walk"] + ")" if m["found_by"] == "walk"
                            else "its index") + _member_missing(m))
    return lines


def _member_missing(m: dict) -> str:
    """', N page(s) of its share missing (PFN a-b, ...)' for a member's line, or ''."""
    if not m.get("missing_chunks"):
        return ""
    shown = ", ".join(f"{a:#x}-{b - 1:#x}" for a, b in m["missing"][:4])
    more = " ..." if len(m["missing"]) > 4 else ""
    return (f"; of its share, {m['missing_pages']} page(s) missing" + (f" (PFN {shown}{more})" if shown else "")
            + f", {m['recoverable_chunks']} of {m['share_chunks']} chunk(s) recoverable")


class PartialOutput:
    """The join output as ``OUT.partial``, renamed to OUT only on success.

    Refuses an existing OUT without ``force`` and an OUT that is one of the
    members.  ``size`` pre-sizes the file (holes for pages never written).
    Used as a context manager: any exception removes the partial file.
    """

    def __init__(self, out: str, members: list[str], force: bool, size: int = 0):
        if os.path.lexists(out) and not force:
            raise OutputError(f"output {out} exists; refusing to overwrite it (use --force)")
        for m in members:
            if os.path.exists(out) and not is_remote(m) and os.path.samefile(out, m):
                raise OutputError(f"output {out} is one of the members")
        self.out, self.tmp = out, out + ".partial"
        try:
            self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            if size:
                os.ftruncate(self.fd, size)
        except OSError as e:
            raise OutputError(f"cannot create output {self.tmp}: {e.strerror}") from None

    def commit(self, size: int | None = None) -> None:
        """Set the final size (if given), sync, close and rename to OUT."""
        try:
            if size is not None:
                os.ftruncate(self.fd, size)
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
            os.replace(self.tmp, self.out)
        except OSError as e:
            raise OutputError(f"cannot finish output {self.out}: {e.strerror}") from None
        fsync_dir(os.path.dirname(os.path.abspath(self.out)), OutputError)   # the rename survives power loss

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            return
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            os.unlink(self.tmp)
        except OSError:
            pass


def check_output(out: str, force: bool) -> None:
    """Refuse an OUT that cannot be written before any member is read (exit 9 at once).

    A directory, an existing file without ``force``, something that is not a
    regular file (the rename would replace it), a missing parent directory or
    one this process may not write.  ``PartialOutput`` checks again when it
    creates the file.
    """
    if out == "-":
        return
    if os.path.isdir(out):
        raise OutputError(f"output {out} is a directory; give a file name, e.g. "
                          f"{os.path.join(out, 'vmcore')}")
    if os.path.lexists(out):
        if not force:
            raise OutputError(f"output {out} exists; refusing to overwrite it (use --force)")
        if os.path.exists(out) and not os.path.isfile(out):
            raise OutputError(f"output {out} is not a regular file; join writes {out}.partial and "
                              "renames it over OUT")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise OutputError(f"cannot create output {out}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot create output {out}: no permission to write in {parent}")


def check_whole(ds: DumpSet, errors: list[str], missing: list[int], allow: bool) -> None:
    """Without --allow-incomplete, a damaged chunk or a missing one ends the join."""
    if allow:
        return
    if errors:
        raise VerifyError(errors[0])
    if missing:
        raise IncompleteDump(f"{ds.describe_absent(missing)}; {INCOMPLETE_HINT}")


def unreadable_report(bad: list, page_size: int) -> dict:
    """Merged PFN ranges and file ranges [start, end) that were unreadable at dump time."""
    pfns = [(start + a // page_size, start + -(-b // page_size)) for kind, start, a, b in bad
            if kind == KIND_PAGES]
    files = [(start + a, start + b) for kind, start, a, b in bad if kind != KIND_PAGES]
    return {"pfn_ranges": [list(r) for r in merge_ranges(pfns)],
            "file_ranges": [list(r) for r in merge_ranges(files)]}


def describe_unreadable(report: dict) -> str | None:
    """One line for a user, or None when nothing was unreadable."""
    pfns, files = report.get("pfn_ranges", []), report.get("file_ranges", [])
    if not pfns and not files:
        return None
    pages = sum(b - a for a, b in pfns)
    shown = ", ".join(f"{a:#x}-{b - 1:#x}" for a, b in pfns[:8]) + (" ..." if len(pfns) > 8 else "")
    return (f"{pages} page(s) of the crashed machine's memory could not be read when the dump was "
            f"taken and read back as zeros: PFN {shown or '-'}"
            + (f"; and {sum(b - a for a, b in files)} bytes of ELF headers" if files else ""))
