"""Members -> makedumpfile's kdump-compressed file, or its flattened stream (``join --format kdump|flat``).

Where each byte goes is kdumplayout.py's; this module makes the page data
and writes it with the read pool (pool.py), in one of three modes:

* COPY (the dump was taken with one-page blocks in a codec with a kdump
  flag: zlib, lzo, snappy, zstd; ``Codec.kdump_flag``; and join asks for
  that codec): a chunk's stored blocks are written as one piece with no
  decompression (checked by the chunk's xxh3 checksum);
* NONE (``--codec none``): pages decompressed and stored uncompressed;
* TRANSCODE (lz4 and none dumps by default, multi-page blocks, another
  codec or level asked for): each page decompressed and compressed on its
  own, stored raw when that does not make it smaller, as makedumpfile does.

A ``--codec auto`` dump mixes codecs chunk by chunk and the index does not
say which: it is joined in TRANSCODE mode, but a chunk whose record is in
the asked codec (one-page blocks) has its stored blocks copied as they are
(``copy_id``), whatever level it was compressed at; the others are transcoded.

Why the file is the same bytes whatever ``--workers``: in COPY and NONE
modes every chunk's data offset is known before anything is read
(``DataMap``), so workers ``pwrite`` descriptors and data in any order.  In
TRANSCODE mode sizes are known only after compressing: chunks go out in
chunk-id order, numbered, and a worker takes space for its chunk's data
from a shared cursor in its chunk's turn (``pool.Turns``: the chunks before
it have taken theirs).  A flattened stream (flat.py) is written in the
chunks' turns in every mode, so its records come in one order too.  Nothing
grows with the dump: the coordinator holds the ranges, one bitmap piece and
8 bytes of prefix sum per 64 chunks; a worker one record and its output
(12 GiB of descriptors for 2 TiB are streamed).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import sys
import time

from ..read import reader
from ..format.codecs import BY_NAME, AutoSpec, CodecSpec
from ..read.config import JoinConfig
from ..read.dumpset import DumpSet
from ..errors import OutputError, UsageError, VerifyError
from ..read.filtered import KeptMap, excluded_report
from .flat import FileSink, FlatSink
from ..format.structs import BLOCK_COMPRESSED
from .layout import (COPY, DESC_SIZE, DUMP_DH_COMPRESSED_INCOMPLETE, NONE, TRANSCODE, DataMap,
                          KdumpLayout, chunk_descs, dump_codec, is_auto, missing_pages, phys_reader, utsname)
from ..read.output import JoinResult, PartialOutput, check_output, check_whole, missing_report, unreadable_report
from ..read.pool import Turns, run_pool
from ..format.blocktable import unreadable_ranges
from ..format.decode import decode_checked

# Default page codec when the dump's own has no kdump flag (lz4, none): LZO
# compresses about as fast as LZ4 (several times faster than zlib), and every
# reader decodes it: crash, libkdumpfile/drgn, and makedumpfile as built by
# Debian, Fedora/RHEL and SUSE (RHEL's kdump.conf default is "makedumpfile -l").
DEFAULT_CODEC = "lzo"
KDUMP_CODECS = tuple(n for n, c in BY_NAME.items() if c.kdump_flag is not None)


def _auto_ladder(ds) -> list[str] | None:
    """The codec names an auto dump's chunks may be in (its ladder, as the manifest says), or None."""
    try:
        return list(dict.fromkeys(s.name for s in AutoSpec.parse(str(ds.manifest.get("codec"))).ladder))
    except UsageError:
        return None


def choose_codec(ds, asked: CodecSpec | None) -> tuple[CodecSpec, str, str | None]:
    """(codec for the pages, COPY/NONE/TRANSCODE, why not copy: a notice, or None)."""
    dump_cls, dump_spec = dump_codec(ds)
    name = dump_cls.name if dump_cls else f"codec {ds.header.codec_id}"
    if asked is not None and asked.name == "none":
        return asked, NONE, None
    if is_auto(ds):
        if asked is not None and asked.name not in KDUMP_CODECS:
            raise UsageError(f"kdump pages cannot be {asked.name}-compressed (kdump has no flag for it); "
                             f"choose one of {', '.join(KDUMP_CODECS)}, or none")
        asked = asked or CodecSpec(DEFAULT_CODEC)
        ladder = _auto_ladder(ds)
        if ds.block_bytes != ds.page_size:
            copied = (f"transcoding every page to {asked} (the dump was compressed in "
                      f"{ds.block_bytes // 1024} KiB blocks)")
        elif ladder is not None and asked.name not in ladder:     # auto never chose it: nothing to copy
            copied = f"auto chose among {', '.join(ladder)}, never {asked.name}: transcoding every page to {asked}"
        else:
            copied = f"chunks stored in {asked.name} are copied, the others transcoded to {asked}"
        return asked, TRANSCODE, f"the dump's chunks mix codecs (--codec auto): {copied}"
    if asked is not None and asked.name not in KDUMP_CODECS:
        raise UsageError(f"kdump pages cannot be {asked.name}-compressed (kdump has no flag for it); "
                         f"choose one of {', '.join(KDUMP_CODECS)}, or none")
    if asked is None:
        asked = dump_spec if dump_cls is not None and dump_cls.kdump_flag is not None \
            else CodecSpec(DEFAULT_CODEC)
    if dump_cls is None or dump_cls.kdump_flag is None:
        what = {"lz4": "lz4-compressed (kdump has no lz4 flag)", "none": "stored uncompressed"}.get(name, name)
        return asked, TRANSCODE, f"the dump's pages are {what}: transcoding every page to {asked}"
    if asked.name != dump_cls.name:
        return asked, TRANSCODE, f"the dump's pages are {name}: transcoding every page to {asked}"
    if asked.level is not None and dump_spec is not None and asked.stored_level != dump_spec.stored_level:
        return asked, TRANSCODE, f"the dump's pages are {dump_spec}: transcoding every page to {asked}"
    if ds.block_bytes != ds.page_size:
        return asked, TRANSCODE, (f"the dump was compressed in {ds.block_bytes // 1024} KiB blocks, kdump "
                                  f"needs each page on its own: transcoding every page to {asked}")
    return asked, COPY, None


def _transcode(lay: KdumpLayout, codec, data, bad) -> tuple[list, bytearray]:
    """Each page compressed on its own (raw when that does not shrink it): (pages, data)."""
    ps, zero, flag = lay.page_size, bytes(lay.page_size), codec.kdump_flag
    mv = memoryview(data)
    pages, out = [], bytearray()
    for a in range(0, len(data), ps):
        if data.startswith(zero, a):
            pages.append(None)
            continue
        page = mv[a:a + ps]
        c = codec.compress(page)
        if len(c) < ps:
            pages.append((len(out), len(c), flag))
            out += c
        else:
            pages.append((len(out), ps, 0))
            out += page
    return pages, out


# -- the workers -----------------------------------------------------------

def _copied(lay: KdumpLayout, h, body, blocks, flag) -> tuple[list, memoryview]:
    """A record already in the asked codec with one-page blocks, as ``_transcode`` returns pages:
    its stored blocks as they are (pages, data)."""
    ps, first = lay.page_size, 4 * h.nblocks
    pages: list = [None] * (h.raw_length // ps)
    for how, a, b, pos, ln in blocks:
        pages[a // ps] = (pos - first, ln, flag) if how == BLOCK_COMPRESSED else (pos - first, ps, 0)
    return pages, memoryview(body)[first:]


def _kdump_handler(lay: KdumpLayout, sink, turns, dmap: DataMap | None, spec: CodecSpec, mode: str,
                   block_bytes: int, flag: int, copy_id: int | None = None):
    """Handler factory: one page chunk -> its descriptors and page data in the output.

    COPY and NONE place the data where ``dmap`` says; TRANSCODE takes it
    from ``turns.cursor`` in its turn.  With ``turns`` (TRANSCODE, and any
    flattened stream) the output pieces are written in the chunk's turn, so
    the file or stream is the same whatever the number of workers.
    """
    def make():
        ps = lay.page_size
        codec = spec.make() if mode == TRANSCODE else None
        decoders: dict = {}

        def build(rec, checked, where, t):
            """(descriptors, data bytes, runs, base or None, unreadable ranges, first PFN)."""
            h, body, blocks = checked
            bad = unreadable_ranges(h, body, block_bytes)
            npages = t.raw // ps
            if mode == TRANSCODE and h.codec_id == copy_id:
                pages, out = _copied(lay, h, body, blocks, flag)
                return pages, out, [(0, len(out))] if len(out) else [], None, bad, h.start, t.chunk_id
            if mode == TRANSCODE:
                data, _ = decode_checked(h, body, blocks, where, block_bytes, decoders)
                pages, out = _transcode(lay, codec, data, bad)
                return pages, out, [(0, len(out))] if out else [], None, bad, h.start, t.chunk_id
            base = dmap.offset(t.chunk_id)
            if mode == COPY:
                if any(how == BLOCK_COMPRESSED for how, *_ in blocks) and h.codec_id != BY_NAME[spec.name].ID:
                    raise VerifyError(f"{where}: the record's codec is not the dump's")
                data = body[4 * h.nblocks:]
                if len(data) != dmap.size(t.chunk_id):
                    raise VerifyError(f"{where}: record length does not match the index")
            else:
                data, _ = decode_checked(h, body, blocks, where, block_bytes, decoders)
            descs, runs = chunk_descs(lay, mode, flag, h, body, blocks, block_bytes, base, npages)
            return descs, data, runs, base, bad, h.start, t.chunk_id

        def place(built):
            descs, data, runs, base, bad, start, cid = built
            if base is None:            # TRANSCODE: space for the data, in chunk-id order
                base = turns.cursor.value
                turns.cursor.value = base + len(data)
                pages, descs = descs, bytearray(lay.zero_desc * len(descs))
                for i, p in enumerate(pages):
                    if p is not None:
                        lay.desc.pack_into(descs, DESC_SIZE * i, base + p[0], p[1], p[2], 0)
                for a, b in bad:    # memory the dump could not read: a missing page, as makedumpfile marks it
                    descs[DESC_SIZE * (a // ps):DESC_SIZE * -(-b // ps)] = bytes(DESC_SIZE * (-(-b // ps) - a // ps))
                if lay.kept is not None:        # pages a dump level left out: no descriptor
                    descs = lay.kept.compact(cid, start, len(pages), descs, DESC_SIZE)
            mv = memoryview(data)
            pieces = [(lay.chunk_desc_offset(cid, start), descs)] if len(descs) else []
            sink.write(pieces + [(base + a, mv[a:b]) for a, b in runs])

        def handle(rec, checked, where, t):
            built = build(rec, checked, where, t)
            if turns is None:
                place(built)
                return built[4], None
            return built[4], lambda: place(built)    # in the chunk's turn
        return handle
    return make


def _open_output(cfg: JoinConfig, ds: DumpSet, flat: bool, lock):
    """(PartialOutput or None, sink) for the file or standard output."""
    if cfg.output == "-":
        if os.isatty(1):
            raise OutputError("refusing to write the flattened dump to a terminal; "
                              "redirect or pipe standard output")
        sys.stdout.flush()
        return None, FlatSink(1, "standard output", lock)
    out = PartialOutput(cfg.output, [r.path for r in ds.readers], cfg.force)
    try:
        sink = FlatSink(out.fd, cfg.output, lock) if flat else FileSink(out.fd, cfg.output)
    except BaseException:
        out.__exit__(*sys.exc_info())
        raise
    return out, sink


@contextlib.contextmanager
def _reader_quiet():
    """The reader's log line for a chunk that fails its checks, off (join reports its errors itself)."""
    log = logging.getLogger("stripedump.read.reader")
    was, log.disabled = log.disabled, True
    try:
        yield
    finally:
        log.disabled = was


def join_kdump(cfg: JoinConfig, progress=None, notice=None) -> JoinResult:
    """Write the dump as a kdump-compressed file, or flattened (``cfg.format == "flat"``)."""
    t0 = time.monotonic()
    flat = cfg.format == "flat"
    allow = cfg.allow_incomplete
    check_output(cfg.output, cfg.force)
    with reader.Dump(list(cfg.members), allow_incomplete=allow, cache_bytes=0,
                     verify_walks=True) as dump:
        ds = dump.ds
        kept = KeptMap.build(dump)
        lay = KdumpLayout.from_dumpset(ds, kept)
        spec, mode, why = choose_codec(ds, cfg.codec)
        spec.make()          # a missing codec library fails here, once, not in every worker
        if why and notice:
            notice(why)
        with _reader_quiet():     # a damaged utsname chunk is reported by the pool, once
            uts, uts_from = utsname(phys_reader(dump), lay)
        dmap = None if mode == TRANSCODE else DataMap(lay, dump, mode)
        turns = Turns(lay.data_start) if mode == TRANSCODE or flat else None
        out, sink = _open_output(cfg, ds, flat, multiprocessing.get_context("fork").Lock())
        with out if out is not None else contextlib.nullcontext():
            try:
                status = BY_NAME[spec.name].kdump_flag or 0
                # missing pages (zero descriptors, as makedumpfile leaves them): the header says so
                incomplete = DUMP_DH_COMPRESSED_INCOMPLETE if missing_pages(dump) else 0
                sink.write([(0, lay.header_area(status | incomplete, uts))])
                for off, piece in lay.bitmap_pieces():
                    sink.write([(lay.bitmap_offset + off, piece),
                                (lay.bitmap_offset + lay.bitmap_len + off, lay.second_bitmap(off, piece))])
                sink.write([(lay.zero_page_offset, bytes(lay.page_size))])
                copy_id = BY_NAME[spec.name].ID if is_auto(ds) and mode == TRANSCODE and \
                    ds.block_bytes == ds.page_size and status else None
                handler = _kdump_handler(lay, sink, turns, dmap, spec, mode, ds.block_bytes, status, copy_id)
                bad: list = []
                missing: list = []
                ok, nbytes, errors = run_pool(dump, cfg.nworkers, handler, False, progress,
                                              wanted=lambda cid: cid < ds.plan.n_page_chunks, unreadable=bad,
                                              allow_incomplete=allow, missing=missing, turns=turns)
                check_whole(ds, errors, missing, allow)
                # and pages found unreadable or damaged on the way (the view cannot know those)
                if not incomplete and (bad or any(c < ds.plan.n_page_chunks for c in missing)):
                    sink.write([(0, lay.header_area(status | DUMP_DH_COMPRESSED_INCOMPLETE, uts))])
                size = dmap.end if dmap is not None else turns.cursor.value
                sink.finish()
            except BaseException:
                sink.abort()
                raise
            if out is not None:
                out.commit(None if flat else size)
        memory = lay.num_dumpable * lay.page_size
        extra = {"format": cfg.format, "codec": str(spec),
                 "pages": {COPY: "copied", NONE: "uncompressed", TRANSCODE: "transcoded"}[mode],
                 "utsname": uts_from, "memory_bytes": memory,
                 "unreadable": unreadable_report(bad, lay.page_size),
                 **missing_report(ds, missing, ds.header_pieces), **excluded_report(kept, lay.page_size),
                 "page_chunks_only": True, "repaired": dump.repairs}
        return JoinResult(ds.dump_id, cfg.output, size, ok, time.monotonic() - t0, errors, extra)

