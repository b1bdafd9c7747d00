"""What each child process of a dump runs: the worker and the writer loops, and their wire records.

Why a module of its own: pipeline.py's coordinator decides (feed, failures,
shutdown); these loops only do.  A worker takes (chunk id, slot) from the
task pipe, encodes the chunk from the source straight into its shared-memory
slot and hands (chunk id, slot, length, checksum, bytes) to the writer of
the chunk's member; a writer appends records to its member, acknowledges
each one on the event pipe (with what is durable since its last sync) and
finalizes the member when told.  Neither ever decides to stop the dump: an
error travels to the coordinator as data (class name, message), and a child
whose coordinator is gone stops by itself (procs.parent_gone).
"""

from __future__ import annotations

import os
import struct
import time

from ..errors import StripedumpError
from ..format.structs import KIND_PAGES, STATE_INCOMPLETE
from ..runtime.ipc import END
from .iowatch import IOWatch
from ..format.encode import encode_chunk
from .writer import MemberWriter
from ..format.plan import Plan, placement
from ..runtime.procs import POLL, child_init, coordinator_pid, parent_gone

TASK = "<QIB"         # coordinator -> workers: chunk id, slot (| CAREFUL: read page by page), codec choice
CAREFUL = 1 << 31
CURRENT = struct.Struct("<QId")  # per worker, in shared memory: chunk id + 1 (0: idle), slot, start
WRITE = "<QIIQQ"      # worker -> writer: chunk id, slot, record length, checksum, source bytes
SYNC = END - 1        # coordinator -> writer: sync now, say what is durable (--on-disk-error continue)
ZERO_COMPARE_BYTES = 1 << 20    # a worker's zeros to compare with: bounded, whatever the chunk size
# dump levels: per worker, in shared memory, pages left out per class (pageclass.CLASSES without "kept"),
# then pages whose struct page could not be read (they exclude nothing)
CLASS_NAMES = ("zero", "cache", "cache_private", "user", "free", "hwpoison", "offline", "struct_unread")


def worker_main(wid, src, codec_spec, plan_json, block_bytes, pool, slot_size, tasks, writer_qs,
            events, stop, current, stats=None, level=None) -> None:
    """Encode the chunks the coordinator hands out.

    ``codec_spec`` is a CodecSpec, or an AutoSpec (``--codec auto``): a
    task's codec choice indexes its ``ladder``, one codec instance per choice,
    and ``stats`` (shared doubles, autocodec.py) gets, per choice, the raw
    bytes, record bytes, CPU-seconds and wall seconds of every chunk this
    worker encodes.

    ``level`` (dump levels): (applied level, VmcoreInfo, shared u64 counters):
    this worker builds its own PageClassifier, classifies the pages of each
    pages chunk from the bytes it reads for encoding (no second read), and
    adds what it leaves out per class to its row of the counters
    (CLASS_NAMES).
    """
    child_init()
    try:
        classify = _classifier(wid, src, level) if level is not None else None
        ladder = codec_spec.ladder        # a plain codec: a ladder of one
        codecs = [None] * len(ladder)
        codecs[codec_spec.start] = codec_spec.make()
        plan = Plan.from_json(plan_json)
        # encode._nonzero_blocks: a chunk all zero is found one MiB at a time (a compare each)
        zero = bytes(max(block_bytes, min(plan.chunk_bytes, ZERO_COMPARE_BYTES)))
        pool_mv = memoryview(pool)
        mine = stats[wid * len(ladder) * 4:(wid + 1) * len(ladder) * 4] if stats is not None else None
        for cid, slot, choice in tasks.records(POLL):
            careful, slot = bool(slot & CAREFUL), slot & ~CAREFUL
            if stop.value:
                events.put(("skip", slot))
                continue
            # what this worker is on, for the coordinator if a page fault kills us
            CURRENT.pack_into(current, wid * CURRENT.size, cid + 1, slot, time.monotonic())
            try:
                chunk = plan.chunk(cid)
                codec = codecs[choice] or _make(codecs, ladder, choice)
                out = pool_mv[slot * slot_size:(slot + 1) * slot_size]
                t0, w0 = time.process_time(), time.monotonic()
                length, csum, unreadable = encode_chunk(
                    src, codec, chunk, block_bytes, out, zero, careful,
                    excluded=classify(chunk, careful) if classify is not None and chunk.kind == KIND_PAGES
                    else None)
                out.release()
                if mine is not None:     # raw last: the coordinator reads a chunk's numbers by its raw
                    mine[4 * choice + 1] += length
                    mine[4 * choice + 2] += time.process_time() - t0
                    mine[4 * choice + 3] += time.monotonic() - w0
                    mine[4 * choice] += chunk.raw_bytes(plan.page_size)
            except StripedumpError as e:
                events.put(("err", f"worker {wid}", slot, *e.to_wire()))
                continue
            finally:
                CURRENT.pack_into(current, wid * CURRENT.size, 0, 0, 0.0)
            if unreadable:
                events.put(("unreadable", cid, unreadable))
            if classify is not None and classify.failed:
                events.put(("unclassified", cid, classify.failed.pop()))
            writer_qs[placement(cid, len(writer_qs))].put(
                cid, slot, length, csum, chunk.raw_bytes(plan.page_size))
    except Exception as e:   # a bug: report it rather than die silently
        events.put(("err", f"worker {wid}", None, "StripedumpError",
                    f"internal error in worker {wid}: {type(e).__name__}: {e}"))


def _classifier(wid, src, level):
    """A function of a pages chunk that gives ``encode_chunk``'s ``excluded`` for it (a callable of the
    chunk's bytes), counting each page left out in this worker's row of the shared counters."""
    from ..levels.pageclass import CLASSES, PageClassifier
    applied, info, counters = level
    pc = PageClassifier(src, info, applied)
    row = counters[wid * len(CLASS_NAMES):(wid + 1) * len(CLASS_NAMES)]
    at = [CLASS_NAMES.index(name) for name in CLASSES[1:]]

    def for_chunk(chunk, careful=False):
        def excluded(data):
            # careful (a worker died of SIGBUS in this chunk): the struct pages are read with pread,
            # so that one that cannot be read is a read error (it excludes nothing), not a SIGBUS again
            saved = src.use_mmap
            src.use_mmap = saved and not careful
            try:
                r = pc.classify(chunk.start, chunk.count, data=data)
            except Exception as e:       # never lose the dump over a classification: keep the pages
                for_chunk.failed.append(f"{type(e).__name__}: {e}")
                return None
            finally:
                src.use_mmap = saved
            for i, name in zip(at, CLASSES[1:]):
                row[i] += r.counts[name]
            row[len(CLASS_NAMES) - 1] += r.unreadable
            # zero pages (bit 1) are not left out but stored as BLOCK_ZERO, which costs as little:
            # makedumpfile's kdump output keeps them in its bitmap too (one shared zero page), and
            # crash needs them (a zero page of kernel data, e.g. a memory section root table)
            return r.left_out()
        return excluded
    for_chunk.failed = []
    return for_chunk


def class_totals(counters) -> tuple[tuple[str, int], ...]:
    """((class name, pages), ...) summed over the workers' rows of the shared counters."""
    n = len(CLASS_NAMES)
    rows = [counters[w * n:(w + 1) * n].tolist() for w in range(len(counters) // n)]
    return tuple((name, sum(r[i] for r in rows)) for i, name in enumerate(CLASS_NAMES))


def _make(codecs, ladder, choice):
    codecs[choice] = ladder[choice].make()
    return codecs[choice]


def writer_main(d, writer: MemberWriter, pool, slot_size, inbox, events, notes, routes=None,
            watch: IOWatch | None = None, others=(), classes=None) -> None:
    """Append the chunks of member ``d``; finalize it at END.

    Each chunk written is acknowledged with ("free", slot, raw bytes, d,
    chunk id, durable): ``durable`` is -1, or, when that write was followed
    by a sync, how many of the latest chunks are still not on the disk
    (``--direct-io``: staged).  From these the coordinator knows which
    chunks a failure of this target can take with it: those since its last
    sync.  SYNC (the coordinator's barrier before END) syncs now and answers
    ("synced", d, durable).

    ``routes`` (``--on-disk-error continue``, degraded.py): after a failed
    write or sync this writer drops its target and forwards every chunk it
    gets to a live writer instead of freeing it unwritten.

    ``watch`` (iowatch.py): where this writer says it is inside a call on
    its target (and on which chunk), so that a hung target is noticed.
    ``others``: the other targets' fds, closed at once (it holds its own only).
    ``classes`` (dump levels): the workers' shared counters, final when END
    comes (the workers are joined first): their sums go into the footer.
    """
    child_init()
    release_output()
    for fd in others:
        os.close(fd)
    pool_mv = memoryview(pool)
    failed = None
    taken: dict[int, int] = {}     # member -> its chunks written here after it failed
    ppid = coordinator_pid()

    def attempt(fn, *args) -> bool:
        """Run a write or sync of the target; on failure drop the target (or report: stop)."""
        nonlocal failed
        try:
            with target_call(watch, d, cid, slot, writer.pos):
                fn(*args)
            return True
        except StripedumpError as e:
            err = e
        except Exception as e:
            err = StripedumpError(f"internal error in writer {d}: {type(e).__name__}: {e}")
        failed = str(err)
        if routes is None:
            events.put(("err", f"writer {d}", None, *err.to_wire()))
        else:
            routes.fail(d)
            failed += " (target dropped: --on-disk-error continue; its chunks are on the other members)"
            events.put(("diskfail", d, str(err)))
        return False

    cid = slot = None
    while True:
        msg = inbox.get(POLL)
        if msg is None:
            if parent_gone(ppid):
                return      # coordinator gone: leave the member unfinalized
            continue
        if msg[0] == END:
            with target_call(watch, d, None, 0, writer.pos):
                finish_member(d, writer, msg[1], events, notes, failed, routes, taken,
                              class_totals(classes) if classes is not None else ())
            return
        cid = slot = None
        if msg[0] == SYNC:
            if not failed and attempt(writer.sync):
                events.put(("synced", d, writer.pending_chunks()))
            continue
        cid, slot, length, csum, raw_len = msg
        if not failed:
            syncs = writer.syncs
            if attempt(writer.append, pool_mv[slot * slot_size:slot * slot_size + length], cid, csum, raw_len):
                if routes is not None and cid % routes.members != d:
                    taken[cid % routes.members] = taken.get(cid % routes.members, 0) + 1
                events.put(("free", slot, raw_len, d, cid,
                            writer.pending_chunks() if writer.syncs != syncs else -1))
                continue
        if routes is not None:
            if routes.forward(cid, slot, length, csum, raw_len):
                continue       # the slot now belongs to the writer it went to
            events.put(("lost", d, cid))
        events.put(("skip", slot))


def release_output() -> None:
    """A writer holds no pipe of the caller's: one hung on its disk (iowatch.py) must not keep
    ``stripedump ... | logger`` waiting after the dump has exited.  Writers report through the
    event pipe; an unexpected death is reported by the coordinator from its exit status."""
    null = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        os.dup2(null, fd)
    os.close(null)


def target_call(watch, d, cid, slot, pos):
    from contextlib import nullcontext
    return nullcontext() if watch is None else watch.call(d, cid, slot or 0, pos)


def finish_member(d, writer: MemberWriter, state, events, notes, failed, routes, taken, classes=()) -> None:
    """Index, footer, header: complete or incomplete as the coordinator says (a dropped target: incomplete)."""
    note = read_note(notes)
    if failed:
        state, note = STATE_INCOMPLETE, failed
    try:
        length = writer.finish(state, note, routes.footer_entries(taken) if routes else (), classes)
    except Exception as e:
        if not failed:        # a dropped target's finish may well fail: it was reported already
            err = e if isinstance(e, StripedumpError) else StripedumpError(
                f"internal error in writer {d}: {type(e).__name__}: {e}")
            events.put(("err", f"writer {d}", None, *err.to_wire()))
        length = writer.pos
    events.put(("done", d, length, writer.chunks, writer.bytes_in, taken))


def write_note(notes, text: str) -> None:
    data = text.encode()[:len(notes) - 4]
    notes[:4 + len(data)] = struct.pack("<I", len(data)) + data


def read_note(notes) -> str:
    (n,) = struct.unpack_from("<I", notes)
    return bytes(notes[4:4 + n]).decode("utf-8", "replace")
