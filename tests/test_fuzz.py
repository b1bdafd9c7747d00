"""Hostile input: the ELF reader and the member readers never crash or hang.

Random and mutated inputs (hypothesis) must either parse or fail with the
project's own one-line errors; nothing else may escape, and nothing may take
long.  Sizes come from checked fields only.
"""

import os
import random
import shutil
import struct

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from stripedump.tools import synth
from stripedump.format.codecs import CodecSpec
from stripedump.dump.config import DumpConfig
from stripedump.read.dumpset import DumpSet
from stripedump.errors import StripedumpError
from stripedump.read.join import verify
from stripedump.dump.coordinator import dump
from stripedump.format.plan import Plan
from stripedump.source.vmcore import Source

FUZZ = settings(max_examples=int(os.environ.get("STRIPEDUMP_FUZZ_EXAMPLES", 150)), deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])


@pytest.fixture(scope="module")
def small_vmcore(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzzsrc")
    b = synth.build(str(d / "vm"), [synth.Load(0x1000, 0x9000), synth.Load(0x100000, 0x10000),
                                    synth.Load(0x104000, 0x2000, vaddr=0xFFFFFFFF81000000)])
    return b.path


def _outcome(path) -> str:
    """'parsed', or 'refused' with one non-empty line of error; anything else escapes and fails."""
    try:
        _read_everything(path)
        return "parsed"
    except StripedumpError as e:
        assert str(e) and "\n" not in str(e)
        return "refused"


def _read_everything(path):
    with Source(path) as s:
        s.residue()
        for a, b in s.pfn_ranges[:8]:
            for pfn in range(a, min(b, a + 64)):
                with s.phys_window(pfn, 1) as w:
                    assert w.length == s.page_size


@FUZZ
@given(data=st.binary(min_size=0, max_size=4096))
def test_random_bytes_as_source(tmp_path_factory, data):
    p = str(tmp_path_factory.mktemp("rnd") / "x")
    with open(p, "wb") as f:
        f.write(data)
    assert _outcome(p) == "refused" or data[:4] == b"\x7fELF"


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 1023), st.integers(0, 255)), min_size=1, max_size=12))
def test_mutated_headers(tmp_path_factory, small_vmcore, edits):
    p = str(tmp_path_factory.mktemp("mut") / "x")
    shutil.copy(small_vmcore, p)
    with open(p, "r+b") as f:
        for off, val in edits:
            f.seek(off)
            f.write(bytes([val]))
    assert _outcome(p) in ("parsed", "refused")


@FUZZ
@given(fields=st.lists(st.tuples(st.integers(0, 2), st.sampled_from([8, 16, 24, 32, 40]),
                                 st.sampled_from([0, 1, 0xFFF, 1 << 31, 1 << 40, (1 << 64) - 1])),
                       min_size=1, max_size=6))
def test_hostile_program_header_fields(tmp_path_factory, small_vmcore, fields):
    """Offsets, addresses and sizes set to extremes in the program headers."""
    p = str(tmp_path_factory.mktemp("ph") / "x")
    shutil.copy(small_vmcore, p)
    with open(p, "r+b") as f:
        for idx, field, val in fields:
            f.seek(64 + 56 * (idx + 1) + field)
            f.write(struct.pack("<Q", val))
    assert _outcome(p) in ("parsed", "refused")


def test_many_overlapping_loads_are_refused_not_compared_forever(tmp_path):
    """A file whose loads all show the same bytes at one address would cost
    (loads x size) comparisons; it is refused instead."""
    p = str(tmp_path / "x")
    n, size, data_off = 3000, 1 << 20, 1 << 20
    with open(p, "wb") as f:
        f.write(b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
                + struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, 64, 0, 0, 64, 56, n, 64, 0, 0))
        for i in range(n):   # every load: physical 0..1 MiB, from bytes that differ per load
            f.write(struct.pack("<IIQQQQQQ", 1, 7, data_off + (i % 7) * 64, 0, 0, size, size, 0))
        f.seek(data_off)
        f.write(os.urandom(size + 7 * 64))
    with pytest.raises(StripedumpError, match="overlap"):
        with Source(p) as s:
            s.residue()


# -- members ------------------------------------------------------------------

@pytest.fixture(scope="module")
def members(tmp_path_factory, small_vmcore):
    d = tmp_path_factory.mktemp("fuzzmem")
    targets = [str(d / "m0"), str(d / "m1")]
    dump(DumpConfig(small_vmcore, tuple(targets), CodecSpec("zstd"), 1, 16384))
    return targets


@FUZZ
@given(which=st.integers(0, 1), edits=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)),
                                                 min_size=1, max_size=8))
def test_mutated_members(tmp_path_factory, members, which, edits):
    d = tmp_path_factory.mktemp("mm")
    paths = [shutil.copy(m, d / os.path.basename(m)) for m in members]
    size = os.path.getsize(paths[which])
    with open(paths[which], "r+b") as f:
        for frac, val in edits:
            f.seek(min(size - 1, int(frac * size)))
            f.write(bytes([val]))
    try:
        res = verify([str(p) for p in paths], 1)
        assert res.chunks + len(res.errors) >= 1
    except StripedumpError:
        pass


@FUZZ
@given(ranges=st.lists(st.tuples(st.integers(-5, 1 << 40), st.integers(-5, 1 << 40)), max_size=5),
       residue=st.lists(st.tuples(st.integers(-5, 1 << 20), st.integers(-5, 1 << 20)), max_size=3),
       chunk_pages=st.integers(-2, 1 << 20), n=st.integers(-1, 1 << 30))
def test_hostile_plan_in_manifest(ranges, residue, chunk_pages, n):
    try:
        p = Plan.from_json({"pfn_ranges": ranges, "residue": residue, "page_size": 4096,
                            "chunk_pages": chunk_pages, "n_chunks": n})
    except ValueError:
        return
    assert p.n_chunks == n
    for cid in random.Random(1).sample(range(p.n_chunks), min(p.n_chunks, 20)):
        c = p.chunk(cid)
        assert c.count > 0


def test_dumpset_reads_members_it_was_given_only(members):
    with DumpSet(members) as ds:
        assert ds.plan.n_chunks > 0


# -- size fields, resealed, under a memory limit --------------------------------

import resource  # noqa: E402

import hostile  # noqa: E402
from stripedump.read.info import info  # noqa: E402
from stripedump.read.join import join  # noqa: E402
from stripedump.read.config import JoinConfig  # noqa: E402
from stripedump.errors import ExitCode  # noqa: E402

HEADROOM = 256 << 20      # what reading a small hostile member may add to this process's address space


class memory_limit:
    """RLIMIT_AS at this process's current size plus HEADROOM, for the block (forked children too)."""

    def __enter__(self):
        with open("/proc/self/statm") as f:
            vsz = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        self.old = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (vsz + HEADROOM, self.old[1]))

    def __exit__(self, *exc):
        resource.setrlimit(resource.RLIMIT_AS, self.old)


SIZE_FIELDS = ([("header", n) for n, _, _ in hostile.HEADER_FIELDS] + [("chunk", n) for n, _, _ in hostile.CHUNK_FIELDS]
               + [("footer", n) for n, _, _ in hostile.FOOTER_FIELDS] + [("index", n) for n, _, _ in hostile.INDEX_FIELDS]
               + [("zero chunk", "raw_length")])
SIZE_FUZZ = settings(max_examples=int(os.environ.get("STRIPEDUMP_FUZZ_EXAMPLES", 150)) // 3, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _outcome_limited(paths, out) -> list:
    """info, verify and join --allow-incomplete: each parses or refuses in one line, within the limit.

    Returns each one's outcome: "ok", or the exit code of its refusal.
    """
    outcomes = []
    with memory_limit():
        for call in (lambda: info(paths), lambda: verify(paths, 1),
                     lambda: join(JoinConfig(tuple(paths), out, allow_incomplete=True, force=True))):
            try:
                call()
                outcomes.append("ok")
            except StripedumpError as e:
                assert str(e) and "\n" not in str(e)
                assert e.exit_code != ExitCode.INTERNAL, str(e)     # a MemoryError in a worker ends here
                outcomes.append(int(e.exit_code))
    if os.path.exists(out):
        os.unlink(out)
    return outcomes


# what a damaged member may give: parsed, or refused as malformed (6), corrupt (7) or incomplete (8)
HOSTILE_OUTCOMES = {"ok", 6, 7, 8}


@SIZE_FUZZ
@given(which=st.integers(0, 1), field=st.sampled_from(SIZE_FIELDS), value=st.sampled_from(hostile.EXTREMES))
@example(which=0, field=("zero chunk", "raw_length"), value=1 << 30)
@example(which=1, field=("footer", "index_count"), value=(1 << 32) - 1)
@example(which=1, field=("index", "offset"), value=(1 << 64) - 1)
def test_hostile_size_fields(tmp_path_factory, members, which, field, value):
    """Lengths, counts and offsets of every record set to extremes, with their checks resealed."""
    d = tmp_path_factory.mktemp("sz")
    paths = [str(shutil.copy(m, d / os.path.basename(m))) for m in members]
    kind, name = field
    setter = {"header": hostile.set_header_field, "chunk": hostile.set_chunk_field,
              "footer": hostile.set_footer_field, "index": hostile.set_index_field,
              "zero chunk": lambda p, n, v: hostile.make_zero_chunk(p, v)}[kind]
    setter(paths[which], name, value)
    outcomes = _outcome_limited(paths, str(d / "out"))
    assert len(outcomes) == 3 and set(outcomes) <= HOSTILE_OUTCOMES, outcomes


@SIZE_FUZZ
@given(field=st.sampled_from(sorted(hostile.MANIFEST_FIELDS)),
       value=st.sampled_from([0, 1, 4096, 1 << 31, 1 << 52, 1 << 62]))
def test_hostile_manifest_sizes(tmp_path_factory, members, field, value):
    d = tmp_path_factory.mktemp("mf")
    paths = [str(shutil.copy(m, d / os.path.basename(m))) for m in members]
    hostile.set_manifest_field(paths, field, value)
    outcomes = _outcome_limited(paths, str(d / "out"))
    assert len(outcomes) == 3 and set(outcomes) <= HOSTILE_OUTCOMES, outcomes
