"""The read-side library: a striped dump read at random, byte-identical to the source and to join."""

from __future__ import annotations

import io
import os
import random
import threading

import pytest

import stripedump
from stripedump.errors import ChunkError, NotDumped
from stripedump.read import reader
from stripedump.format.codecs import CodecSpec
from stripedump.dump.config import DumpConfig
from stripedump.read.config import JoinConfig
from stripedump.errors import IncompleteDump, MemberError, VerifyError
from stripedump.read.join import join
from stripedump.dump.coordinator import dump
from elftools.elf.elffile import ELFFile

from conftest import damage_chunk

CHUNK = 64 << 10


def _dump(src, tmp_path, codec="lz4", n=3, chunk=CHUNK, **kw):
    targets = tuple(str(tmp_path / f"m{i}") for i in range(n))
    dump(DumpConfig(src, targets, CodecSpec.parse(codec), 2, chunk, **kw))
    return list(targets)


@pytest.mark.parametrize("layout,codec", [("kernel", "lz4"), ("qemu", "zstd"), ("differing-overlap", "lzo"),
                                          ("elf32", "snappy"), ("holes", "none"), ("pn_xnum", "zlib")])
def test_pread_equals_the_source_everywhere(tmp_path, vmcore, layout, codec):
    b = vmcore(layout)
    members = _dump(b.path, tmp_path, codec)
    src = open(b.path, "rb").read()
    with stripedump.open(members) as d:
        assert d.size == len(src) and d.missing == []
        assert d.pread(0, d.size + 100) == src
        rnd = random.Random(7)
        for _ in range(300):
            off = rnd.randrange(0, d.size + 10)
            n = rnd.choice([1, 7, 4096, 5000, 70000, 300000])
            assert d.pread(off, n) == src[off:off + n], (off, n)


def test_read_phys_matches_the_loads_and_refuses_what_is_not_dumped(tmp_path, vmcore):
    b = vmcore("kernel")
    members = _dump(b.path, tmp_path)
    src = open(b.path, "rb").read()
    loads = _loads(b.path)
    with stripedump.open(members) as d:
        for seg in loads:
            for at in (0, seg[2] // 3, seg[2] - 100):
                off, paddr, filesz = seg
                want = src[off + at:off + min(filesz, at + 9000)]
                assert d.read_phys(paddr + at, len(want)) == want
        top = max(b for _, b in d.plan.pfn_ranges) * d.page_size
        with pytest.raises(NotDumped):
            d.read_phys(top, 16)


def test_file_object_reads_seeks_and_buffers(tmp_path, vmcore):
    b = vmcore("kernel")
    members = _dump(b.path, tmp_path, "zstd")
    src = open(b.path, "rb").read()
    with stripedump.open(members) as d:
        f = io.BufferedReader(d.file(), buffer_size=50000)
        assert f.read(100) == src[:100]
        f.seek(-4097, io.SEEK_END)
        assert f.read() == src[-4097:]
        f.seek(12345)
        assert f.tell() == 12345 and f.read(70001) == src[12345:82346]
        assert d.file().readall() == src


def test_opening_reads_no_payload_and_the_index_is_compact(tmp_path, vmcore):
    b = vmcore("kernel")
    members = _dump(b.path, tmp_path)
    with stripedump.open(members, cache_bytes=2 * CHUNK) as d:
        assert d.cache.used == 0
        assert d.index.nbytes <= 16 * d.index.n
        src = open(b.path, "rb").read()
        assert d.pread(0, d.size) == src
        assert d.cache.used <= 2 * CHUNK          # the LRU stays within its bound


def test_fast_index_equals_the_general_one(tmp_path, vmcore):
    """The vectorized index fill and DumpSet.locations find the same place for every chunk."""
    b = vmcore("kernel")
    members = _dump(b.path, tmp_path)
    with stripedump.open(members) as d:
        fast = reader.ChunkIndex(d.index.n)
        assert fast._fast(d.ds, False)
        slow = reader.ChunkIndex(d.index.n)
        seen = bytearray(-(-slow.n // 8))
        for pos, e in d.ds.locations(seen, payloads=False):
            slow.member[e.chunk_id], slow.offset[e.chunk_id], slow.length[e.chunk_id] = pos, e.offset, e.length
        assert (fast.member, fast.offset, fast.length) == (slow.member, slow.offset, slow.length)
        assert fast.missing() == [] and d.index.n > 20


def test_a_chunk_listed_on_the_wrong_member_is_refused_by_name(tmp_path, vmcore):
    """An index entry the fast path doubts sends the build to the general path and its exact error."""
    import struct
    from stripedump.format.structs import IndexEntry, record_checksum
    from stripedump.read.member import MemberReader
    b = vmcore("kernel")
    members = _dump(b.path, tmp_path)
    r = MemberReader(members[1])
    f = r.footer()
    off = f.index_offsets[0]
    head = r.pread(off, 32)
    length = struct.unpack_from("<I", head, 4)[0]
    body = bytearray(r.pread(off + 32, length))
    dump_id = r.dump_id
    r.close()
    struct.pack_into("<Q", body, 0, 0)                      # chunk 0 belongs to member 0
    csum = record_checksum(bytes(head[:24]), bytes(body), dump_id)
    with open(members[1], "r+b") as fh:
        fh.seek(off + 24)
        fh.write(struct.pack("<Q", csum))
        fh.write(body)
    with pytest.raises(MemberError, match="does not belong to this member"):
        stripedump.open(members)
    assert IndexEntry.STRUCT.size == 28


def test_concurrent_readers_see_the_source(tmp_path, vmcore):
    b = vmcore("kernel")
    members = _dump(b.path, tmp_path, "zstd")
    src = open(b.path, "rb").read()
    errors = []
    with stripedump.open(members, cache_bytes=4 * CHUNK) as d:
        def work(seed):
            rnd = random.Random(seed)
            try:
                for _ in range(200):
                    off = rnd.randrange(d.size)
                    n = rnd.randrange(1, 200000)
                    if d.pread(off, n) != src[off:off + n]:
                        errors.append((off, n))
            except Exception as e:       # noqa: BLE001 - reported below
                errors.append(e)
        threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


def test_a_damaged_chunk_is_an_error_never_zeros(tmp_path, vmcore, caplog):
    b = vmcore("kernel")
    members = _dump(b.path, tmp_path, "zstd")
    with stripedump.open(members) as d:
        cid = next(c for c in range(d.plan.n_page_chunks) if d.index.length[c] > 200)
        ch = d.plan.chunk(cid)
        damage_chunk(d, cid)
    with stripedump.open(members) as d:
        pa = ch.start * d.page_size
        with pytest.raises(ChunkError, match="checksum"):
            d.read_phys(pa, 10)
        with pytest.raises(ChunkError):
            d.read_phys(pa, 10)        # remembered
        assert cid in d.bad and len([r for r in caplog.records if "checksum" in r.getMessage()]) == 1
        other = next(c for c in range(d.plan.n_page_chunks) if c != cid)
        oc = d.plan.chunk(other)
        assert d.read_phys(oc.start * d.page_size, 4096) == _phys(b.path, oc.start * d.page_size, 4096)


def _loads(path):
    """(p_offset, p_paddr, p_filesz) of every PT_LOAD with file bytes, by pyelftools (an independent reader)."""
    with open(path, "rb") as f:
        return [(s["p_offset"], s["p_paddr"], s["p_filesz"]) for s in ELFFile(f).iter_segments()
                if s["p_type"] == "PT_LOAD" and s["p_filesz"]]


def _phys(path, paddr, n):
    for off, pa, filesz in _loads(path):
        if pa <= paddr and paddr + n <= pa + filesz:
            with open(path, "rb") as f:
                f.seek(off + paddr - pa)
                return f.read(n)
    raise AssertionError("not in a load")


def test_incomplete_dump_reads_like_join_allow_incomplete(tmp_path, vmcore):
    b = vmcore("kernel")
    members = _dump(b.path, tmp_path, "lz4")
    given = [members[1], members[2]]            # member 0 (the ELF header's chunk among others) lost
    with pytest.raises(MemberError, match="missing member"):
        stripedump.open(given)
    out = str(tmp_path / "joined")
    join(JoinConfig(tuple(given), out, allow_incomplete=True))
    joined = open(out, "rb").read()
    with stripedump.open(given, allow_incomplete=True) as d:
        assert d.missing and all(c % 3 == 0 for c in d.missing)
        assert d.pread(0, d.size) == joined
        assert joined[:4] == b"\x7fELF"           # rebuilt from the manifest, marked incomplete
    os.unlink(out)


def test_an_unfinished_member_needs_allow_incomplete(tmp_path, vmcore):
    from conftest import unfinalize
    b = vmcore("kernel")
    members = _dump(b.path, tmp_path, "lz4")
    unfinalize(members[1])
    with pytest.raises(IncompleteDump):
        stripedump.open(members)
    with stripedump.open(members, allow_incomplete=True) as d:
        assert d.pread(0, d.size) == open(b.path, "rb").read()   # every record reached the disk


def test_members_of_different_dumps_are_refused(tmp_path, vmcore):
    b = vmcore("kernel")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = _dump(b.path, tmp_path / "a"), _dump(b.path, tmp_path / "b")
    with pytest.raises(MemberError, match="different dumps"):
        stripedump.open([first[0], second[1], first[2]])
    with stripedump.open(first) as d:          # each set alone is one dump
        assert d.pread(0, 4) == b"\x7fELF"


def test_a_hostile_index_offset_is_refused_where_numpy_fills_the_index(tmp_path, vmcore):
    """An index entry whose offset is 2**64 - 1: offset + length wraps in numpy's uint64 and
    passed the vectorized check, and a join worker died of OverflowError (found by test_fuzz once
    numpy was loaded).  Now the general path refuses it, naming the chunk."""
    import importlib
    importlib.import_module("numpy")      # the reader fills the index with numpy where it is loaded
    import hostile
    b = vmcore("kernel")
    t = [str(tmp_path / "m0"), str(tmp_path / "m1")]
    dump(DumpConfig(b.path, tuple(t), CodecSpec("lz4"), 1, 65536))
    hostile.set_index_field(t[0], "offset", (1 << 64) - 1)
    with pytest.raises(MemberError, match="lies past the end of the member"):
        stripedump.open(t)


def test_every_file_view_clamps_a_read_the_same_way():
    """The four read-only files (ELF vmcore, kdump view, filtered ELF, the mount's dump.json) share
    one pread (read.fileview): a read before the start reads from 0, past the end is cut there,
    of nothing or wholly past the end is b"", and the view fills only bytes inside the file."""
    from stripedump.kdump.view import KdumpView
    from stripedump.mount.fusefs import BytesFile
    from stripedump.read.fileview import FileView
    from stripedump.read.filtered import FilteredElf
    for cls in (reader.Dump, KdumpView, FilteredElf, BytesFile):
        assert issubclass(cls, FileView) and "pread" not in vars(cls), cls

    data = bytes(range(256)) * 3
    asked = []

    class Recorded(FileView):
        size = len(data)

        def _fill(self, out, offset, end):
            assert 0 <= offset < end <= self.size and len(out) == end - offset
            asked.append((offset, end))
            out[:] = data[offset:end]

    for f in (Recorded(), BytesFile(data)):
        for off, n in [(0, 0), (0, 10), (-5, 10), (-50, 10), (100, -3), (760, 100), (768, 1), (10**12, 5),
                       (0, 10**6), (767, 1)]:
            a = max(0, off)
            assert f.pread(off, n) == data[a:a + max(0, n)], (f, off, n)
    assert asked == [(0, 10), (0, 10), (0, 10), (760, 768), (0, 768), (767, 768)]


def test_two_dumps_of_different_chunk_sizes_are_read_at_once(tmp_path, vmcore):
    """The largest chunk a record may claim is each reader's own (DumpSet.chunk_limit, the plan's chunk
    size), not a setting of the process: a dump of 1 MiB chunks still reads after one of 64 KiB chunks
    was opened in the same process (with the old process-global limit its records were refused)."""
    from stripedump.format.decode import read_chunk
    b = vmcore("kernel")
    src = open(b.path, "rb").read()
    (tmp_path / "big").mkdir()
    (tmp_path / "small").mkdir()
    big = _dump(b.path, tmp_path / "big", chunk=1 << 20, n=2)
    small = _dump(b.path, tmp_path / "small", chunk=CHUNK, n=2)
    with stripedump.open(big) as d_big, stripedump.open(small) as d_small:
        assert d_big.ds.chunk_limit == 1 << 20 and d_small.ds.chunk_limit == CHUNK
        assert d_big.pread(0, d_big.size) == src and d_small.pread(0, d_small.size) == src
        rec = d_big.record(0)
        assert read_chunk(rec, "t", d_big.block_bytes, max_raw=d_big.ds.chunk_limit)[0].raw_length > CHUNK
        with pytest.raises(VerifyError, match="implausible chunk header"):   # more than the small plan allows
            read_chunk(rec, "t", d_big.block_bytes, max_raw=d_small.ds.chunk_limit)
