"""A chunk present twice (a degraded dump) is taken from a copy that verifies.

With ``--on-disk-error continue`` a chunk whose write seemed to fail may
also have reached the disk, and is written again on another member: readers
accept any chunk on any member, once.  Before, the first copy met won before
it was checked, so a damaged first copy made the chunk fail although a good
copy was there.  Members are rebuilt here with the real writer (MemberWriter)
so that one member holds an extra copy of a chunk, then one copy or the other
is damaged: join must give the source byte for byte either way.
"""

from __future__ import annotations

import os

import pytest

from stripedump.tools import synth
from stripedump.format.codecs import CodecSpec
from stripedump.dump.config import DumpConfig
from stripedump.read.config import JoinConfig
from stripedump.format.structs import STATE_COMPLETE, ChunkHeader
from stripedump.read.join import join
from stripedump.read.member import MemberReader
from stripedump.dump.writer import MemberWriter, write_member_head
from stripedump.dump.coordinator import dump


@pytest.fixture(scope="module")
def degraded_dump(tmp_path_factory):
    d = tmp_path_factory.mktemp("dup")
    b = synth.build(str(d / "vm"), **synth.layouts()["kernel"])
    targets = (str(d / "m0"), str(d / "m1"))
    dump(DumpConfig(b.path, targets, CodecSpec("zlib"), 1, 64 << 10, on_disk_error="continue"))
    return b.path, targets


def _records(path):
    r = MemberReader(path)
    try:
        f = r.footer()
        return r.header, r.pread(r.header.manifest_offset, r.header.manifest_length), \
            [(e, r.read_record(e)) for e in r.index(f)]
    finally:
        r.close()


def _rewrite(path, header, manifest_rec, records, degraded=()):
    """The member again, written by the real writer, holding ``records`` in this order."""
    start = -(-(4096 + len(manifest_rec)) // 4096) * 4096
    fd = os.open(path, os.O_RDWR | os.O_TRUNC)
    try:
        write_member_head(fd, path, header._replace(state=0, footer_offset=0, footer_length=0),
                          manifest_rec, start)
        w = MemberWriter(fd, path, header, start)
        for e, rec in records:
            h = ChunkHeader.unpack(rec, path)
            w.append(bytearray(rec), e.chunk_id, e.checksum, h.raw_length)
        w.finish(STATE_COMPLETE, degraded=degraded)
    finally:
        os.close(fd)


def _damage(path, chunk_id):
    """Flip a byte in the payload of the first record of ``chunk_id`` in the member."""
    r = MemberReader(path)
    try:
        e = next(e for e in r.index(r.footer()) if e.chunk_id == chunk_id)
    finally:
        r.close()
    with open(path, "r+b") as f:
        f.seek(e.offset + e.length - 1)
        b = f.read(1)
        f.seek(e.offset + e.length - 1)
        f.write(bytes([b[0] ^ 0xFF]))


@pytest.mark.parametrize("damaged", ["first copy", "second copy"])
def test_chunk_present_twice_is_taken_from_the_copy_that_verifies(degraded_dump, tmp_path, damaged):
    src, (m0, m1) = degraded_dump
    h0, man, recs0 = _records(m0)
    h1, _, recs1 = _records(m1)
    e, rec = next((e, rec) for e, rec in recs1 if len(rec) > 200)     # a chunk of member 1, with data
    a, b = str(tmp_path / "m0"), str(tmp_path / "m1")
    open(a, "wb").close()
    open(b, "wb").close()
    # member 0 holds a copy too, first in its index: member 1's target "failed" and that chunk was
    # written again on member 0 (its footer says so, DGRD), although the first write reached the disk
    _rewrite(a, h0, man, [(e, rec)] + recs0, degraded=((1, 1),))
    _rewrite(b, h1, man, recs1, degraded=((1, 0),))
    # join reads the members round robin: member 0's first entry is met before member 1's copy
    _damage(a if damaged == "first copy" else b, e.chunk_id)
    out = str(tmp_path / "out")
    res = join(JoinConfig((a, b), out))
    assert res.chunks == len(recs0) + len(recs1)
    with open(out, "rb") as f, open(src, "rb") as g:
        assert f.read() == g.read()
