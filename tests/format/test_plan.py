import pytest

from stripedump.format.structs import KIND_FILE, KIND_PAGES
from stripedump.format.plan import Plan, placement


def test_chunks_align_to_absolute_pfn_and_stay_in_ranges():
    p = Plan([(3, 20), (32, 33), (40, 64)], [(0, 5000), (9000, 9001)], 4096, 8)
    chunks = list(p)
    pages = [c for c in chunks if c.kind == KIND_PAGES]
    assert [(c.start, c.count) for c in pages] == [(3, 5), (8, 8), (16, 4), (32, 1), (40, 8), (48, 8), (56, 8)]
    files = [c for c in chunks if c.kind == KIND_FILE]
    assert [(c.start, c.count) for c in files] == [(0, 5000), (9000, 1)]
    assert [c.id for c in chunks] == list(range(p.n_chunks)) == list(range(9))
    assert p.total_pages == 17 + 1 + 24
    assert p.input_bytes == 42 * 4096 + 5001


def test_random_access_matches_iteration():
    p = Plan([(0, 1000), (5000, 5003), (7777, 9999)], [(0, 100_000)], 4096, 64)
    for c in p:
        assert p.chunk(c.id) == c
    with pytest.raises(IndexError):
        p.chunk(p.n_chunks)


def test_placement_is_round_robin():
    assert [placement(i, 3) for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    p = Plan([(0, 100)], [], 4096, 10)
    ids = [c.id for c in p.chunks_of_member(1, 3)]
    assert ids == [1, 4, 7]


def test_json_round_trip_and_tamper_check():
    p = Plan([(0, 100)], [(0, 10)], 4096, 16)
    q = Plan.from_json(p.to_json())
    assert list(q) == list(p)
    bad = p.to_json()
    bad["n_chunks"] += 1
    with pytest.raises(ValueError):
        Plan.from_json(bad)


def test_huge_sparse_plan_is_not_materialized():
    # 8 TiB of 4 KiB pages in 1 MiB chunks: 8M chunks, built instantly
    p = Plan([(0, 1 << 31)], [(0, 8192)], 4096, 256)
    assert p.n_chunks == (1 << 31) // 256 + 1
    assert p.chunk(p.n_chunks - 2).start == (1 << 31) - 256
