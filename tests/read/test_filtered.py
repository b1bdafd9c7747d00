"""The read side of dump levels (issue 11): join --format kdump|flat|elf and mount of a filtered dump.

Filtered members are made by the real dump pipeline with the real encoder of
exclusions (``encode.encode_chunk(..., excluded=)``), driven by a fixed
rule instead of the page classifier, so every test knows exactly which pages
were left out: runs inside chunks, whole chunks, the start of the kernel-text
PT_LOAD, a run of 256+ pages.  The outputs are judged by our own parsing and
by the real readers (libkdumpfile, crash, drgn, pyelftools) where installed.
"""

from __future__ import annotations

import filecmp
import hashlib
import os
import struct
import subprocess

import pytest

from stripedump.dump import coordinator as pipeline

from stripedump.dump import stages
from stripedump.format.codecs import CodecSpec
from stripedump.dump.config import DumpConfig
from stripedump.read.config import JoinConfig
from stripedump.runtime.units import parse_size
from stripedump.format.structs import KIND_PAGES
from stripedump.read.join import join as join_elf
from stripedump.kdump.join import join_kdump
from stripedump.source.vmcore import PT_LOAD, Source

from conftest import ROOT, run_cli
from kdump.test_flat import replay
from kdump.test_join import _has_libkdumpfile, libkdumpfile_read, needs_crash, parse_kdump, read_in_pieces, source_digests
from mount import test_mount
from mount.test_mount import do_mount

PS = 4096


def rule(pfn: int) -> bool:
    """The pages the tests' dump level leaves out."""
    return pfn % 97 in range(10, 40) or 0x180 <= pfn < 0x300 or pfn == 0x1000 + 512


@pytest.fixture
def filtered(monkeypatch):
    """make(tmp_path, src, codec, chunk, members) -> member paths of ``dump -d 1`` whose exclusions are
    ``rule``'s instead of the classifier's (the encoder, members, manifest and headers are the real ones)."""
    enc = stages.encode_chunk

    def encode(src, codec, chunk, block_bytes, out, zero, careful=False, excluded=None):
        if chunk.kind == KIND_PAGES and excluded is not None:
            excluded = bytes(1 if rule(chunk.start + i) else 0 for i in range(chunk.count))
        return enc(src, codec, chunk, block_bytes, out, zero, careful, excluded=excluded)

    monkeypatch.setattr(stages, "encode_chunk", encode)

    def make(tmp_path, src, codec="lzo", chunk="64K", members=2, name="f"):
        targets = tuple(str(tmp_path / f"{name}{i}") for i in range(members))
        pipeline.dump(DumpConfig(src, targets, CodecSpec.parse(codec), 2, parse_size(chunk), dump_level=1))
        return targets
    return make


def expected(src: str):
    """(kept PFNs, excluded PFNs) of the source's page ranges."""
    with Source(src) as s:
        pfns = [p for a, b in s.pfn_ranges for p in range(a, b)]
    return [p for p in pfns if not rule(p)], [p for p in pfns if rule(p)]


def bitmaps(k: dict) -> tuple[set, set]:
    data, bs = k["data"], k["block_size"]
    at = (1 + k["sub_hdr_size"]) * bs
    half = k["bitmap_blocks"] * bs // 2

    def bits(buf):
        return {i for i in range(len(buf) * 8) if buf[i >> 3] >> (i & 7) & 1}
    return bits(data[at:at + half]), bits(data[at + half:at + 2 * half])


# -- kdump and flat ---------------------------------------------------------------

@pytest.mark.parametrize("codec,join_codec,mode", [
    ("lzo", None, "copied"), ("lz4", None, "transcoded"), ("zstd", "none", "uncompressed")])
def test_kdump_marks_excluded_pages_absent(tmp_path, vmcore, filtered, codec, join_codec, mode):
    b = vmcore("kernel")
    m = filtered(tmp_path, b.path, codec)
    out = tmp_path / "o.kdump"
    res = join_kdump(JoinConfig(tuple(m), str(out), False, 2, "kdump",
                                CodecSpec.parse(join_codec) if join_codec else None))
    kept, excl = expected(b.path)
    assert res.extra["pages"] == mode
    assert res.extra["excluded_pages"] == len(excl) and res.extra["missing_chunks"] == 0
    k = parse_kdump(str(out))
    assert k["dump_level"] == 1 and not k["status"] & 0x8          # partial, not incomplete
    first, second = bitmaps(k)
    assert first == set(kept) | set(excl) and second == set(kept)
    # one descriptor per kept page, then the shared zero page
    table = (1 + k["sub_hdr_size"] + k["bitmap_blocks"]) * k["block_size"]
    zero_at = struct.unpack_from("<q", k["data"], table)[0]
    assert zero_at >= table + 24 * len(kept)
    offs = {struct.unpack_from("<q", k["data"], table + 24 * i)[0] for i in range(len(kept))}
    assert min(offs) >= table + 24 * len(kept)
    if _has_libkdumpfile():
        got = libkdumpfile_read(str(out), PS, [(p, p + 1) for p in kept[::7] + excl[::5]])
        want = source_digests(b.path, [(p, p + 1) for p in kept[::7]])
        assert all(got["pages"][p] == h for p, h in want.items())
        assert all(got["pages"][p].startswith("error") for p in excl[::5])


def test_flat_is_the_kdump_file(tmp_path, vmcore, filtered):
    b = vmcore("kernel")
    m = filtered(tmp_path, b.path, "lz4", members=3, chunk="16K")
    outs = {}
    for fmt, workers in (("kdump", 1), ("flat", 2), ("kdump", 3)):
        out = tmp_path / f"o.{fmt}{workers}"
        join_kdump(JoinConfig(tuple(m), str(out), False, workers, fmt))
        outs[fmt, workers] = out.read_bytes()
    assert outs["kdump", 1] == outs["kdump", 3] == replay(outs["flat", 2])


@pytest.mark.parametrize("codec,view_mode", [("lzo", "copy"), ("lz4", "none")])
def test_view_serves_what_join_writes(tmp_path, vmcore, filtered, codec, view_mode):
    from stripedump.read import reader
    from stripedump.kdump.view import KdumpView
    b = vmcore("kernel")
    m = filtered(tmp_path, b.path, codec, members=3, chunk="16K")
    out = tmp_path / "o.kdump"
    join_kdump(JoinConfig(tuple(m), str(out), False, 2, "kdump",
                          CodecSpec.parse("none") if view_mode == "none" else None))
    with reader.open(list(m)) as d:
        v = KdumpView(d)
        assert v.mode == view_mode
        assert read_in_pieces(v) == out.read_bytes()


def lost_member_join(tmp_path, vmcore, filtered, fmt):
    """A filtered dump over three members, joined (--allow-incomplete) without the second."""
    b = vmcore("kernel")
    m = filtered(tmp_path, b.path, "lzo", members=3, chunk="16K")
    os.unlink(m[1])
    out = tmp_path / f"o.{fmt}"
    res = (join_elf if fmt == "elf" else join_kdump)(JoinConfig((m[0], m[2]), str(out), False, 2, fmt, None, True))
    assert res.extra["missing_chunks"] > 0 and res.extra["excluded_pages"] > 0
    return b, m, out, res


def test_missing_is_not_excluded(tmp_path, vmcore, filtered):
    """A lost member: its pages stay in the 2nd bitmap with zero descriptors (missing,
    INCOMPLETE); excluded pages of the members that are there stay absent."""
    from stripedump.read import reader
    from stripedump.kdump.view import KdumpView
    b, m, out, res = lost_member_join(tmp_path, vmcore, filtered, "kdump")
    k = parse_kdump(str(out))
    assert k["status"] & 0x8 and k["dump_level"] > 0
    first, second = bitmaps(k)
    missing = {p for a, b_ in res.extra["missing"] for p in range(a, b_)}
    kept, excl = expected(b.path)
    assert missing & set(excl) <= second                # missing chunks exclude nothing
    assert second == (set(kept) | missing) & first
    assert (set(excl) - missing).isdisjoint(second)
    with reader.open([m[0], m[2]], allow_incomplete=True) as d:
        assert read_in_pieces(KdumpView(d)) == out.read_bytes()


# -- ELF -----------------------------------------------------------------------------

def elf_loads(path: str) -> tuple[list[dict], int]:
    with open(path, "rb") as f:
        data = f.read()
    phoff, = struct.unpack_from("<Q", data, 32)
    flags, = struct.unpack_from("<I", data, 48)
    phent, phnum = struct.unpack_from("<HH", data, 54)
    out = []
    for i in range(phnum):
        t, fl, off, va, pa, fs, ms, al = struct.unpack_from("<IIQQQQQQ", data, phoff + i * phent)
        if t == PT_LOAD:
            out.append({"offset": off, "vaddr": va, "paddr": pa, "filesz": fs, "memsz": ms})
    return out, flags


def test_elf_leaves_excluded_pages_out(tmp_path, vmcore, filtered):
    b = vmcore("kernel")
    m = filtered(tmp_path, b.path, "zstd", members=3, chunk="16K")
    out = tmp_path / "o.elf"
    res = join_elf(JoinConfig(tuple(m), str(out), False, 2, "elf"))
    kept, excl = expected(b.path)
    assert res.extra["excluded_pages"] == len(excl)
    loads, flags = elf_loads(str(out))
    assert flags & 1 == 0
    data = out.read_bytes()
    covered = set()
    with Source(b.path) as s:
        src_loads = [ld for ld in s.info.loads]
        for ld in loads:
            assert ld["memsz"] >= ld["filesz"]
            if ld["filesz"] == 0:
                assert ld["offset"] == 0
            for p in range(ld["paddr"] // PS, -(-(ld["paddr"] + ld["filesz"]) // PS)):
                assert not rule(p), f"excluded PFN {p:#x} has file data"
            covered |= set(range(ld["paddr"] // PS, -(-(ld["paddr"] + ld["filesz"]) // PS)))
        # every kept page of every source load has file data; the loads' spans are the source's
        assert covered == set(kept)
        assert sum(ld["memsz"] for ld in loads) == sum(ld.memsz for ld in src_loads)
    assert len(data) == max(ld["offset"] + ld["filesz"] for ld in loads)
    # the PT_LOAD that starts with excluded pages (kernel text at 0x200000) has no file data
    assert any(ld["paddr"] == 0x200000 and ld["filesz"] == 0 for ld in loads)


def test_elf_pages_equal_the_source(tmp_path, vmcore, filtered):
    pytest.importorskip("elftools", reason="pyelftools is not installed")
    from elftools.elf.elffile import ELFFile
    b = vmcore("kernel")
    m = filtered(tmp_path, b.path, "lzo")
    out = tmp_path / "o.elf"
    join_elf(JoinConfig(tuple(m), str(out), False, 2, "elf"))
    kept, _ = expected(b.path)
    want = source_digests(b.path, [(p, p + 1) for p in kept])
    got = {}
    with open(out, "rb") as f:
        elf = ELFFile(f)
        assert any(s["p_type"] == "PT_NOTE" for s in elf.iter_segments())
        for seg in elf.iter_segments():
            if seg["p_type"] != "PT_LOAD" or not seg["p_filesz"]:
                continue
            body = seg.data()
            for i in range(0, seg["p_filesz"] - PS + 1, PS):
                if seg["p_paddr"] % PS == 0:
                    got[(seg["p_paddr"] + i) // PS] = hashlib.sha1(body[i:i + PS]).hexdigest()
    full = {p: h for p, h in want.items() if p in got}
    assert len(full) > len(kept) * 0.9 and all(got[p] == h for p, h in full.items())


def test_elf_view_is_the_joined_file(tmp_path, vmcore, filtered):
    from stripedump.read import reader
    from stripedump.read.filtered import FilteredElf, KeptMap
    b = vmcore("kernel")
    m = filtered(tmp_path, b.path, "lz4", members=3, chunk="16K")
    out = tmp_path / "o.elf"
    join_elf(JoinConfig(tuple(m), str(out), False, 2, "elf"))
    with reader.open(list(m)) as d:
        v = FilteredElf(d, KeptMap.build(d))
        assert read_in_pieces(v) == out.read_bytes()


@pytest.mark.parametrize("layout", ["elf32", "pn_xnum", "qemu"])
def test_elf_other_layouts(tmp_path, vmcore, filtered, layout):
    from stripedump.read import reader
    from stripedump.read.filtered import FilteredElf, KeptMap
    b = vmcore(layout)
    m = filtered(tmp_path, b.path, "lzo")
    out = tmp_path / "o.elf"
    join_elf(JoinConfig(tuple(m), str(out), False, 2, "elf"))
    p = subprocess.run(["readelf", "-lW", str(out)], capture_output=True, text=True)
    assert p.returncode == 0 and "NOTE" in p.stdout and "LOAD" in p.stdout, p.stdout + p.stderr
    with reader.open(list(m)) as d:
        assert read_in_pieces(FilteredElf(d, KeptMap.build(d))) == out.read_bytes()


def test_level_0_dump_is_unchanged(tmp_path, vmcore):
    """No FEATURE_EXCLUDED: the ELF join is the source byte for byte, no excluded keys in --json."""
    b = vmcore("kernel")
    m = [str(tmp_path / f"m{i}") for i in range(2)]
    pipeline.dump(DumpConfig(b.path, tuple(m), CodecSpec.parse("lzo"), 2, parse_size("64K"), PS))
    out = tmp_path / "o.elf"
    res = join_elf(JoinConfig(tuple(m), str(out), False, 2, "elf"))
    assert filecmp.cmp(out, b.path, shallow=False) and "excluded_pages" not in res.extra
    res = join_kdump(JoinConfig(tuple(m), str(tmp_path / "o.kdump"), False, 2, "kdump"))
    assert "excluded_pages" not in res.extra and parse_kdump(str(tmp_path / "o.kdump"))["dump_level"] == 0


# -- the real readers ---------------------------------------------------------

@needs_crash
def test_crash_says_partial_dump(tmp_path, vmcore, filtered):
    b = vmcore("kernel")
    m = filtered(tmp_path, b.path, "snappy")
    out = tmp_path / "o.kdump"
    join_kdump(JoinConfig(tuple(m), str(out), False, 2, "kdump"))
    p = subprocess.run(["crash", "--osrelease", str(out)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "6.1.0-synthetic", p


def test_drgn_faults_on_excluded_pages(tmp_path, vmcore, filtered):
    drgn = pytest.importorskip("drgn", reason="drgn is not installed")
    from stripedump.tools import synth
    extra = ("SYMBOL(swapper_pg_dir)=ffffffff82a0a000\nKERNELOFFSET=0\n"
             "NUMBER(pgtable_l5_enabled)=0\nSYMBOL(_stext)=ffffffff81000000\n")
    b = vmcore("kernel", notes=synth.notes_blob(vmcoreinfo=synth.vmcoreinfo_text(extra=extra)))
    m = filtered(tmp_path, b.path, "zstd")
    out = tmp_path / "o.kdump"
    join_kdump(JoinConfig(tuple(m), str(out), False, 2, "kdump"))
    prog = drgn.Program()
    prog.set_core_dump(str(out))
    kept, excl = expected(b.path)
    want = source_digests(b.path, [(p, p + 1) for p in kept[::11]])
    for pfn, h in want.items():
        assert hashlib.sha1(prog.read(pfn * PS, PS, True)).hexdigest() == h, hex(pfn)
    for pfn in excl[::13]:
        with pytest.raises(drgn.FaultError):
            prog.read(pfn * PS, PS, True)


def test_cli_summary_says_excluded(tmp_path, vmcore, filtered):
    b = vmcore("kernel")
    m = filtered(tmp_path, b.path, "lzo")
    res = run_cli("join", *m, "--format", "kdump", "-o", tmp_path / "o")
    assert res.rc == 0, res
    _, excl = expected(b.path)
    assert f"{len(excl)} pages left out by the dump level (1)" in res.err, res.err


mnt = test_mount.mnt     # the fixture: a mount point, unmounted after the test


def test_mount_serves_the_joined_files(tmp_path, vmcore, filtered, mnt):
    """vmcore is join --format elf's file (excluded pages left out), vmcore.kdump join --format kdump's."""
    b = vmcore("kernel")
    m = filtered(tmp_path, b.path, "zstd", members=3, chunk="16K")
    elf, kd = tmp_path / "o.elf", tmp_path / "o.kdump"
    join_elf(JoinConfig(tuple(m), str(elf), False, 2, "elf"))
    join_kdump(JoinConfig(tuple(m), str(kd), False, 2, "kdump"))
    do_mount(m, mnt)
    try:
        assert filecmp.cmp(mnt / "vmcore", elf, shallow=False)
        assert filecmp.cmp(mnt / "vmcore.kdump", kd, shallow=False)
    finally:
        assert run_cli("umount", mnt).rc == 0


# -- the real-kernel vmcore: dump -d N, judged by makedumpfile, crash, drgn, libkdumpfile --------------

def _bits(d: bytes, at: int, n: int, mapnr: int):
    import numpy as np
    return np.unpackbits(np.frombuffer(d, np.uint8, n, at), bitorder="little")[:mapnr].astype(bool)


def kdump_sets(path: str):
    """(1st bitmap, 2nd bitmap, pages pointing at the shared zero page) of a kdump file, numpy bools."""
    import numpy as np
    with open(path, "rb") as f:
        d = f.read()
    bs, sub, bb = struct.unpack_from("<iiI", d, 428)
    mapnr = struct.unpack_from("<Q", d, bs + 96)[0]
    blen = bb * bs // 2
    b1, b2 = _bits(d, (1 + sub) * bs, blen, mapnr), _bits(d, (1 + sub) * bs + blen, blen, mapnr)
    table = (1 + sub + bb) * bs
    n = int(b2.sum())
    offsets = np.ndarray((n,), "<i8", buffer=d, offset=table, strides=(24,))
    zero = np.zeros(mapnr, bool)
    zero[np.nonzero(b2)[0][offsets == table + 24 * n]] = True
    return b1, b2, zero


@pytest.fixture(scope="module")
def real_levels(real_vmcore, tmp_path_factory):
    """level -> the real-kernel core in /proc/vmcore's layout, ``dump -d LEVEL`` of it joined as kdump
    and ELF, and makedumpfile -d LEVEL's kdump (-l) and ELF (-E) of the same core; built on first use."""
    import shutil
    import sys
    if shutil.which("makedumpfile") is None:
        pytest.skip("makedumpfile is not installed")
    d = tmp_path_factory.mktemp("filtered-real")
    norm = str(d / "vmcore")
    subprocess.run([sys.executable, os.path.join(ROOT, "bench", "normalize_vmcore.py"), real_vmcore[0], norm],
                   check=True, capture_output=True, timeout=300)
    built: dict = {}

    def get(level):
        if level in built:
            return built[level]
        m = tuple(str(d / f"d{level}-m{i}") for i in range(2))
        pipeline.dump(DumpConfig(norm, m, CodecSpec.parse("lzo"), 2, parse_size("1M"), dump_level=level))
        kd, elf = str(d / f"d{level}.kdump"), str(d / f"d{level}.elf")
        res = join_kdump(JoinConfig(m, kd, False, 2, "kdump"))
        res_elf = join_elf(JoinConfig(m, elf, False, 2, "elf"))
        ref, ref_elf = str(d / f"mdf{level}.kdump"), str(d / f"mdf{level}.elf")
        for args, out in ((["-l"], ref), (["-E"], ref_elf)):
            p = subprocess.run(["makedumpfile", *args, "-d", str(level), norm, out], capture_output=True,
                               text=True, timeout=300)
            assert p.returncode == 0, p.stdout + p.stderr
        built[level] = {"src": norm, "members": m, "kdump": kd, "elf": elf, "res": res, "res_elf": res_elf,
                        "ref": ref, "ref_elf": ref_elf, "release": real_vmcore[1], "level": level}
        return built[level]
    yield get
    shutil.rmtree(d, ignore_errors=True)       # ~200 MB per level


@pytest.fixture(params=[31, 1])
def real_filtered(real_levels, request):
    return real_levels(request.param)


def test_real_kdump_bitmap_is_the_members_and_within_makedumpfiles(real_filtered):
    from stripedump.read import reader
    from stripedump.read.filtered import KeptMap
    r = real_filtered
    b1, b2, zero = kdump_sets(r["kdump"])
    m1, m2, mzero = kdump_sets(r["ref"])
    with reader.open(list(r["members"])) as d:
        km = KeptMap.build(d)
        assert km.level == r["level"] and km.excluded_pages == r["res"].extra["excluded_pages"]
        assert km.excluded_pages > 0 or r["level"] == 1      # level 1: zero pages only, kept as zero blocks
        members_excl = {p for runs in km.runs.values() for a, b in runs for p in range(a, b)}
    import numpy as np
    ours_excl = b1 & ~b2
    assert set(np.nonzero(ours_excl)[0].tolist()) == members_excl
    n = len(m1)          # makedumpfile's max_mapnr ends at the kernel's RAM (below the BIOS ROM PT_LOAD)
    assert (b1[:n] == m1).all()
    b1, b2, ours_excl = b1[:n], b2[:n], ours_excl[:n]
    # both keep the zero pages (level bit 1) in the 2nd bitmap, sharing one zero page: left out all the same
    ours_excl = ours_excl | zero[:n]
    assert ours_excl.any()
    mdf_excl = (m1 & ~m2) | mzero
    wrong = int((ours_excl & ~mdf_excl).sum())
    assert wrong == 0, np.nonzero(ours_excl & ~mdf_excl)[0][:10]
    assert int((ours_excl & mdf_excl).sum()) >= 0.999 * int(mdf_excl.sum())
    k = parse_kdump(r["kdump"])
    assert k["dump_level"] == r["level"] and not k["status"] & 0x8


@pytest.mark.parametrize("level,fmt", [(30, "kdump"), (30, "elf"), (31, "elf"), (31, "kdump")])
def test_real_crash_session_says_partial_dump(real_levels, tmp_path, level, fmt):
    import shutil
    if shutil.which("crash") is None:
        pytest.skip("crash is not installed")
    from conftest import REAL_DIR
    vmlinux = os.path.join(REAL_DIR, "vmlinux")
    if not os.path.exists(vmlinux):
        pytest.skip(f"no {vmlinux}: build the fixture with WITH_VMLINUX=1")
    r = real_levels(level)
    cmds = tmp_path / "cmds"
    cmds.write_text("sys\nbt\nlog\nkmem -i\nquit\n")
    p = subprocess.run(["crash", "-s", vmlinux, r[fmt], "-i", str(cmds)], capture_output=True, text=True,
                       timeout=600, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr
    if fmt == "kdump":
        assert "[PARTIAL DUMP]" in p.stdout
    assert f"RELEASE: {r['release']}" in p.stdout and " #0 [" in p.stdout
    assert f"Linux version {r['release']}" in p.stdout and "TOTAL MEM" in p.stdout


def test_real_drgn_and_libkdumpfile(real_filtered):
    drgn = pytest.importorskip("drgn", reason="drgn is not installed")
    import numpy as np
    r = real_filtered
    b1, b2, _ = kdump_sets(r["kdump"])
    with Source(r["src"]) as s:
        vi = s.info.vmcoreinfo
    prog = drgn.Program()
    prog.set_core_dump(r["kdump"])
    uts = prog.read(int(vi["SYMBOL(init_uts_ns)"], 16) + int(vi["OFFSET(uts_namespace.name)"]), 195)
    assert uts[:6] == b"Linux\0" and uts[130:130 + len(r["release"])] == r["release"].encode()
    kept = np.nonzero(b2)[0]
    excl = np.nonzero(b1 & ~b2)[0]
    sample = [int(p) for p in kept[::997]]
    want = source_digests(r["src"], [(p, p + 1) for p in sample])
    for p in sample:
        assert hashlib.sha1(prog.read(p * PS, PS, True)).hexdigest() == want[p]
    for p in excl[::1999]:
        with pytest.raises(drgn.FaultError):
            prog.read(int(p) * PS, PS, True)
    if _has_libkdumpfile():
        got = libkdumpfile_read(r["kdump"], PS, [(p, p + 1) for p in sample] +
                                [(int(p), int(p) + 1) for p in excl[::1999]])
        assert all(got["pages"][p] == want[p] for p in sample)
        assert all(got["pages"][int(p)].startswith("error") for p in excl[::1999])


def test_real_elf_against_makedumpfile_E(real_filtered):
    """Every kept page is the source's; no excluded page has file data; makedumpfile -E's file data
    holds ours (it also writes excluded runs shorter than 256 pages, read from the source), but for
    the zero pages (level bit 1), which ours keeps as data (they read as the zeros they are; holes in
    the file) where makedumpfile -E leaves the longer runs of them out."""
    r = real_filtered
    ours, _ = elf_loads(r["elf"])
    theirs, _ = elf_loads(r["ref_elf"])
    b1, b2, zero = kdump_sets(r["kdump"])

    def data_pfns(loads):
        return {p for ld in loads for p in range(ld["paddr"] // PS, (ld["paddr"] + ld["filesz"]) // PS)}
    mine, ref = data_pfns(ours), data_pfns(theirs)
    import numpy as np
    assert mine == set(np.nonzero(b2)[0].tolist())
    assert len({p for p in mine - ref if p < len(b1) and b1[p] and not zero[p]}) <= 0.001 * len(b1.nonzero()[0])
    print(f"PT_LOADs: ours {len(ours)}, makedumpfile -E {len(theirs)}; file data pages: ours {len(mine)}, "
          f"makedumpfile {len(ref)}; sizes {os.path.getsize(r['elf'])} / {os.path.getsize(r['ref_elf'])}")
    data = open(r["elf"], "rb").read()
    sample = sorted(mine)[::499]
    want = source_digests(r["src"], [(p, p + 1) for p in sample])
    for p in sample:
        ld = next(ld for ld in ours if ld["paddr"] <= p * PS < ld["paddr"] + ld["filesz"])
        at = ld["offset"] + p * PS - ld["paddr"]
        assert hashlib.sha1(data[at:at + PS]).hexdigest() == want[p], hex(p)


def test_elf_of_an_incomplete_filtered_dump(tmp_path, vmcore, filtered):
    """A lost member: ELF e_flags says incomplete, the lost pages are holes inside the kept PT_LOADs
    (missing, not excluded: which of them the level left out is unknown), the rest reads back."""
    b, m, out, res = lost_member_join(tmp_path, vmcore, filtered, "elf")
    loads, flags = elf_loads(str(out))
    assert flags & 1
    missing = {p for a, b_ in res.extra["missing"] for p in range(a, b_)}
    kept, _ = expected(b.path)
    data_pfns = {p for ld in loads for p in range(ld["paddr"] // PS, -(-(ld["paddr"] + ld["filesz"]) // PS))}
    assert data_pfns == set(kept) | missing


def test_elf_with_more_program_headers_than_e_phnum_holds(tmp_path, vmcore, filtered):
    """65535 or more PT_LOADs: e_phnum PN_XNUM, the count in section header 0 (as makedumpfile)."""
    pytest.importorskip("elftools", reason="pyelftools is not installed")
    from elftools.elf.elffile import ELFFile
    from stripedump.read import reader
    from stripedump.read.filtered import FilteredElf

    class EveryOtherPage:           # a KeptMap whose level left out every other page
        def excluded_runs(self, lo, hi):
            for p in range(lo | 1, hi, 2):
                yield p, p + 1
    b = vmcore("kernel")
    m = filtered(tmp_path, b.path, "lzo")
    with reader.open(list(m)) as d:
        d.ds.segments = [dict(s) for s in d.ds.segments]
        big = next(s for s in d.ds.segments if s["type"] == PT_LOAD and s["paddr"] == 0x100000)
        big["filesz"] = big["memsz"] = 140000 * PS          # 70000 kept runs
        f = FilteredElf(d, EveryOtherPage())
    assert len(f.loads) > 70000
    path = tmp_path / "head.elf"
    path.write_bytes(f.head)
    with open(path, "rb") as fh:
        elf = ELFFile(fh)
        assert elf.header["e_phnum"] == 0xFFFF and elf.num_segments() == len(f.loads) + 1
        seg = elf.get_segment(1 + 1000)
        assert seg["p_type"] == "PT_LOAD" and seg["p_memsz"] == 2 * PS and seg["p_filesz"] == PS
