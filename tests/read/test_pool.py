"""The read pool hands chunks out in batches (issue 12) and still accounts for every one of them.

- the batch size: one task where a handler takes turns (kdump, flat), one
  for small dumps, up to BATCH_MAX where every worker still gets
  BATCH_SPREAD batches;
- a join and a verify whose tasks go out in batches of several chunks (the
  spread lowered so that this small dump is batched) write the source byte
  for byte, report every chunk once, and a damaged chunk inside a batch is
  the one error, named, while the rest of its batch is written
  (``--allow-incomplete``: only its pages are missing);
- a batched kdump join (turns: batches of one) gives the same file as an
  unbatched one.
"""

import pytest

import stripedump
from stripedump.read import pool
from stripedump.format.codecs import CodecSpec
from stripedump.dump.config import DumpConfig
from stripedump.read.config import JoinConfig
from stripedump.errors import VerifyError
from stripedump.format.structs import KIND_PAGES
from stripedump.read.join import DUMP_ELF_INCOMPLETE, join, verify
from stripedump.read.join import RenderMap
from stripedump.dump.coordinator import dump
from stripedump.tools.synth import MIB, Load

from conftest import damage_chunk


def test_batch_size():
    turns = object()
    assert pool.batch_size(1024, 2, turns) == 1          # turns: one task a message
    assert pool.batch_size(40, 2, None) == 1             # small: each worker gets many batches of one
    assert pool.batch_size(1024, 2, None) == pool.BATCH_MAX
    assert pool.batch_size(4 * pool.BATCH_SPREAD * 3, 2, None) == 6
    assert pool.batch_size(1 << 20, 0, None) == pool.BATCH_MAX


@pytest.fixture
def batched(monkeypatch, tmp_path, vmcore):
    """A 16 MiB machine dumped in 64 KiB chunks over 2 members, joined in batches of BATCH_MAX."""
    b = vmcore("simple", loads=[Load(0, 16 * MIB)])
    t = tuple(str(tmp_path / f"m{i}") for i in range(2))
    dump(DumpConfig(b.path, t, CodecSpec("lz4"), 2, 65536))
    monkeypatch.setattr(pool, "BATCH_SPREAD", 1)
    with stripedump.open(list(t)) as d:
        n = d.plan.n_chunks
    assert pool.batch_size(n, 2, None) == pool.BATCH_MAX and n > 4 * pool.BATCH_MAX
    sent = []
    real = pool.run_pool

    def counting(dump_, workers, make, *a, **k):
        sent.append(pool.batch_size(dump_.plan.n_chunks, workers, k.get("turns")))
        return real(dump_, workers, make, *a, **k)
    monkeypatch.setattr("stripedump.read.join.run_pool", counting)
    return b, t, n, sent


def test_a_batched_join_writes_every_chunk(batched, tmp_path):
    b, t, n, sent = batched
    res = join(JoinConfig(t, str(tmp_path / "o"), workers=2))
    assert sent == [pool.BATCH_MAX]
    assert res.chunks == n and not res.errors
    assert open(tmp_path / "o", "rb").read() == open(b.path, "rb").read()
    v = verify(list(t), workers=2)
    assert v.chunks == n and not v.errors


def test_a_damaged_chunk_inside_a_batch_is_the_one_error(batched, tmp_path):
    b, t, n, sent = batched
    with stripedump.open(list(t)) as d:
        # a page chunk with data, neither first nor last of its batch (tasks go out in chunk-id order)
        cid = next(c for c in range(pool.BATCH_MAX + 1, n) if c % pool.BATCH_MAX not in (0, pool.BATCH_MAX - 1)
                   and d.plan.chunk(c).kind == KIND_PAGES and d.index.length[c] > 1000)
        chunk = d.plan.chunk(cid)
        damage_chunk(d, cid)
    v = verify(list(t), workers=2)
    assert v.chunks == n - 1 and len(v.errors) == 1 and f"chunk {cid}" in v.errors[0], v.errors
    with pytest.raises(VerifyError, match=f"chunk {cid} "):
        join(JoinConfig(t, str(tmp_path / "o"), workers=2))
    res = join(JoinConfig(t, str(tmp_path / "o"), workers=2, allow_incomplete=True))
    assert res.chunks == n - 1 and res.extra["missing"] == [[chunk.start, chunk.start + chunk.count]]
    # the output is the source with the damaged chunk's pages as zeros (holes), nothing else missing
    expect = bytearray(open(b.path, "rb").read())
    with stripedump.open(list(t), allow_incomplete=True) as d:
        ps = d.page_size
        spans = list(RenderMap(d.ds.segments, d.plan.residue).spans(chunk.start * ps, (chunk.start + chunk.count) * ps))
    assert spans
    for a, b_, offs in spans:
        for off in offs:
            expect[off:off + b_ - a] = bytes(b_ - a)
    expect[48] |= DUMP_ELF_INCOMPLETE      # e_flags of the ELF64 header: marked incomplete
    assert open(tmp_path / "o", "rb").read() == expect
    assert sent[-1] == pool.BATCH_MAX


@pytest.mark.parametrize("codec, fmt", [("zstd", "kdump"), ("lz4", "kdump"), ("lz4", "flat")])
def test_kdump_and_flat_joins_are_the_same_batched_or_not(monkeypatch, tmp_path, vmcore, codec, fmt):
    """kdump COPY (a zstd dump) runs without turns, so in batches; TRANSCODE (lz4) and flat take
    turns, one task a message: each file is the same as the one made a chunk at a time."""
    from stripedump.kdump.join import join_kdump
    b = vmcore("kernel")
    t = tuple(str(tmp_path / f"m{i}") for i in range(2))
    dump(DumpConfig(b.path, t, CodecSpec(codec), 2, 65536))
    outs = []
    for spread in (1 << 30, 1):
        monkeypatch.setattr(pool, "BATCH_SPREAD", spread)
        out = str(tmp_path / f"o{spread}")
        join_kdump(JoinConfig(t, out, workers=2, format=fmt, codec=CodecSpec("zstd")))
        outs.append(open(out, "rb").read())
    assert outs[0] == outs[1] and len(outs[0]) > 4096
