"""join/verify refuse what is not one whole, intact dump, and name the culprit."""

import os
import shutil

import pytest

from stripedump.format.codecs import CodecSpec
from stripedump.dump.config import DumpConfig
from stripedump.read.config import JoinConfig
from stripedump.errors import IncompleteDump, MemberError, OutputError, VerifyError
from stripedump.format.structs import CHUNK_HEADER_SIZE, HEADER_BLOCK, HEADER_COPY_OFFSET, MemberHeader
from stripedump.read.join import RenderMap, join, verify
from stripedump.read.member import MemberReader
from stripedump.dump.coordinator import dump

from conftest import ROOT


@pytest.fixture
def dumped(tmp_path, vmcore):
    b = vmcore("kernel")
    targets = [str(tmp_path / f"m{i}") for i in range(3)]
    dump(DumpConfig(b.path, tuple(targets), CodecSpec("zstd"), 2, 65536))
    return b, targets


def test_missing_member_is_named(dumped, tmp_path):
    b, t = dumped
    with pytest.raises(MemberError, match=r"missing member\(s\) 1"):
        join(JoinConfig((t[0], t[2]), str(tmp_path / "o")))


def test_member_given_twice(dumped, tmp_path):
    b, t = dumped
    shutil.copy(t[1], tmp_path / "copy")
    with pytest.raises(MemberError, match="member 1 is given twice"):
        join(JoinConfig((t[0], t[1], str(tmp_path / "copy"), t[2]), str(tmp_path / "o")))


def test_members_of_different_dumps_are_refused(dumped, tmp_path, vmcore):
    b, t = dumped
    other = [str(tmp_path / f"x{i}") for i in range(3)]
    dump(DumpConfig(b.path, tuple(other), CodecSpec("lz4"), 1, 65536))
    with pytest.raises(MemberError, match="different dumps"):
        join(JoinConfig((t[0], other[1], t[2]), str(tmp_path / "o")))


def test_not_a_member(dumped, tmp_path):
    b, t = dumped
    with pytest.raises(MemberError, match="not a stripedump member"):
        join(JoinConfig((t[0], t[1], b.path), str(tmp_path / "o")))


def test_existing_output_needs_force(dumped, tmp_path):
    b, t = dumped
    out = tmp_path / "o"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputError, match="exists"):
        join(JoinConfig(tuple(t), str(out)))
    assert out.read_bytes() == b"keep me"
    join(JoinConfig(tuple(t), str(out), force=True))
    assert out.read_bytes() == open(b.path, "rb").read()


def _record_of(member, n=3):
    """The n-th page chunk written to ``member`` (writers append in arrival order: the file
    chunks, handed out first, may still arrive after some page chunks)."""
    from stripedump.format.structs import KIND_PAGES, ChunkHeader
    r = MemberReader(member)
    try:
        entries = [e for e in r.index(r.footer())
                   if ChunkHeader.unpack(r.read_record(e), member).kind == KIND_PAGES]
    finally:
        r.close()
    # by chunk id, not write order: page chunks have the lowest ids, and the
    # order records reach a member depends on which worker finished first
    return sorted(entries, key=lambda e: e.chunk_id)[n]


@pytest.mark.parametrize("where", ["payload", "table", "header"])
def test_flipped_byte_is_found_and_named(dumped, tmp_path, where):
    b, t = dumped
    e = _record_of(t[1])
    pos = {"payload": e.offset + e.length - 5, "table": e.offset + CHUNK_HEADER_SIZE + 1, "header": e.offset + 20}[where]
    with open(t[1], "r+b") as f:
        f.seek(pos)
        byte = f.read(1)
        f.seek(pos)
        f.write(bytes([byte[0] ^ 0x10]))
    v = verify(t, 2)
    assert len(v.errors) == 1
    assert t[1] in v.errors[0] and f"chunk {e.chunk_id}" in v.errors[0] and "PFN" in v.errors[0]
    out = tmp_path / "o"
    with pytest.raises(VerifyError, match=f"chunk {e.chunk_id}"):
        join(JoinConfig(tuple(t), str(out)))
    assert not out.exists() and not (tmp_path / "o.partial").exists()


def test_truncated_member_is_named(dumped, tmp_path):
    b, t = dumped
    os.truncate(t[2], os.path.getsize(t[2]) // 2)
    with pytest.raises(MemberError, match=t[2]):
        join(JoinConfig(tuple(t), str(tmp_path / "o")))


def test_corrupt_member_header(dumped, tmp_path):
    """A damaged header is read from its copy (issue 24 item 2; tests/read/test_repair.py has more);
    with its copy damaged too and no other member given, it is refused saying what works."""
    b, t = dumped
    for at in (40, HEADER_COPY_OFFSET + 40):
        with open(t[0], "r+b") as f:
            f.seek(at)
            f.write(b"\xff")
        res = join(JoinConfig(tuple(t), str(tmp_path / "o"), force=True))
        assert open(tmp_path / "o", "rb").read() == open(b.path, "rb").read()
        assert any(t[0] in line for line in res.extra["repaired"]), res.extra
    with pytest.raises(MemberError, match="header is damaged .*give the dump's other members too"):
        join(JoinConfig((t[0],), str(tmp_path / "o2")))


def test_newer_format_version_is_refused(dumped, tmp_path):
    b, t = dumped
    r = MemberReader(t[0])
    h = r.header._replace(version=99)
    r.close()
    with open(t[0], "r+b") as f:
        f.write(h.pack())
    with pytest.raises(MemberError, match="newer"):
        join(JoinConfig(tuple(t), str(tmp_path / "o")))


def test_unfinalized_member_is_incomplete(dumped, tmp_path):
    b, t = dumped
    r = MemberReader(t[1])
    h = r.header._replace(state=0, footer_offset=0, footer_length=0)
    r.close()
    with open(t[1], "r+b") as f:
        f.write(h.pack())
        f.truncate(os.path.getsize(t[1]) - 64)     # and no trailer (format v2): as a killed dump leaves it
    with pytest.raises(IncompleteDump, match="never finalized"):
        join(JoinConfig(tuple(t), str(tmp_path / "o")))


def test_render_map_sends_overlapping_loads_to_both_copies():
    segs = [dict(type=1, offset=1000, paddr=0, filesz=100, memsz=100),
            dict(type=1, offset=5000, paddr=50, filesz=100, memsz=100)]
    rm = RenderMap(segs, [(1010, 1020)])
    spans = list(rm.spans(0, 200))
    assert spans == [(0, 10, [1000]), (20, 50, [1020]), (50, 100, [1050, 5000]), (100, 150, [5050])]
    assert HEADER_BLOCK == 4096 and MemberHeader.STRUCT.size <= HEADER_BLOCK


def test_render_map_single_place_only_inside_one_load_rendered_once():
    segs = [dict(type=1, offset=1000, paddr=0, filesz=100, memsz=100),
            dict(type=1, offset=5000, paddr=50, filesz=100, memsz=100)]
    rm = RenderMap(segs, [(1010, 1020)])
    assert rm.single(20, 50) == 1020 and rm.single(30, 40) == 1030 and rm.single(120, 150) == 5070
    assert rm.single(0, 20) is None        # across the residue cut
    assert rm.single(40, 60) is None       # into the overlap: rendered to two places
    assert rm.single(60, 70) is None       # inside the overlap
    assert rm.single(140, 160) is None     # past the last load


def test_join_leaves_all_zero_pages_as_holes(tmp_path, vmcore):
    """ELF join writes only the blocks that are not all zero: the rest stays a hole of the
    pre-sized output (issue 12), here 8 of 10 pages and a 4 MiB stretch of zeros."""
    from stripedump.tools.synth import MIB, Load, page_content
    b = vmcore("simple", loads=[Load(0, 4 * MIB), Load(8 * MIB, 4 * MIB)],
               content=lambda pfn, ps: bytes(ps) if pfn < 1024 else page_content(pfn, ps, 8))
    t = [str(tmp_path / f"m{i}") for i in range(2)]
    dump(DumpConfig(b.path, tuple(t), CodecSpec("lz4"), 2, 65536))
    out = str(tmp_path / "o")
    join(JoinConfig(tuple(t), out))
    assert open(out, "rb").read() == open(b.path, "rb").read()
    size, alloc = os.path.getsize(out), os.stat(out).st_blocks * 512
    data = sum(1 for pfn in range(2048, 3072) if any(page_content(pfn, 4096, 8))) * 4096
    assert size > 8 * MIB and data < 1.5 * MIB
    assert alloc <= data + 256 * 1024, (alloc, data)    # the headers, and the file system's slack


def test_the_join_side_imports_form_no_cycle():
    """join -> pool/output -> reader; kdump -> kdumplayout; join never imports kdump (the CLI picks)."""
    import ast
    pkg = os.path.join(ROOT, "stripedump")
    deps = {}
    for f in os.listdir(pkg):
        if f.endswith(".py"):
            tree = ast.parse(open(os.path.join(pkg, f)).read())
            deps[f[:-3]] = {(n.module or "").split(".")[0] or a.name for n in ast.walk(tree)
                            if isinstance(n, ast.ImportFrom) and n.level == 1 for a in n.names}

    def reach(m, seen):
        for d in deps.get(m, ()):
            if d in deps and d not in seen:
                seen.add(d)
                reach(d, seen)
        return seen
    for m in deps:
        assert m not in reach(m, set()), f"{m} imports itself through {sorted(reach(m, set()))}"
    assert "kdump" not in reach("join", set()) and "join" not in reach("kdump", set())
    assert not {"join", "kdump", "pool", "output", "flat"} & reach("kdumpview", set())
