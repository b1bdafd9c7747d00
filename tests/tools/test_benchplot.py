"""stripedump bench's table and plot, from rows as bench() makes them (issue 24, item 12).

The plot had no compression ratio (auto and none look fast partly because they compress little), its
legend said "CPU(s)" where the table says "workers", and a --repeat run showed no spread; the table
did not show how many chunks each codec of an auto row got, as the man page says it does.
"""

import pytest

from stripedump.tools import bench


def _row(codec, workers, disks, mbs, ratio, runs=None, auto=None):
    r = {"codec": codec, "workers": workers, "disks": disks, "write": True, "data": "mixed",
         "input_bytes": 1 << 30, "output_bytes": int((1 << 30) / ratio), "seconds": 1.0, "mb_per_s": mbs,
         "ratio": ratio, "cpu_percent": 100.0, "peak_memory_bytes": 50 << 20, "chunk_bytes": 1 << 20}
    if runs:
        r["runs_mb_per_s"] = runs
    if auto:
        r["auto_chunks"] = auto
    return r


ROWS = [_row("auto", 1, 1, 900.0, 1.4, [850.0, 900.0, 990.0], {"none": 900, "lz4": 124}),
        _row("auto", 2, 1, 1500.0, 1.5, [1400.0, 1500.0, 1510.0], {"none": 700, "lz4": 324}),
        _row("zstd:3", 1, 1, 300.0, 3.1, [290.0, 300.0, 330.0]),
        _row("zstd:3", 2, 1, 580.0, 3.1, [570.0, 580.0, 600.0])]


def test_table_shows_the_chunks_each_codec_got_in_auto_rows():
    lines = bench.table(ROWS).splitlines()
    assert lines[0].endswith("chunks per codec (auto)")
    assert lines[2].endswith("  none 900, lz4 124") and lines[3].endswith("  none 700, lz4 324")
    assert not lines[4].endswith(("124", "324")) and lines[4].split()[1] == "zstd:3"
    plain = bench.table([_row("lz4", 1, 1, 800.0, 2.0)]).splitlines()
    assert "auto" not in plain[0] and plain[2].split()[-1] == "1.00"       # no empty column


def test_plot_has_ratio_panels_workers_and_min_max_bars(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.container import BarContainer
    rows = ROWS + [_row(c, w, 2, m * 1.5, r) for c, w, m, r in (("auto", 1, 900.0, 1.4), ("auto", 2, 1500.0, 1.5),
                                                              ("zstd:3", 1, 300.0, 3.1), ("zstd:3", 2, 580.0, 3.1))]
    fig = bench.figure(rows, "t")
    axes = fig.axes
    assert len(axes) == 4                         # per disk count: MB/s above, ratio below
    speed1, speed2, ratio1, ratio2 = axes
    assert [t.get_text() for t in speed2.get_legend().get_texts()] == ["1 worker", "2 workers"]
    assert "ratio" in ratio1.get_ylabel() and "min to max" in speed1.get_ylabel()
    assert [t.get_text() for t in ratio1.get_xticklabels()] == ["auto", "zstd:3"]
    heights = [round(p.get_height(), 2) for c in ratio1.containers for p in c.patches]
    assert heights == [1.4, 3.1, 1.5, 3.1]         # 1 worker's bars, then 2 workers'
    bars = [c for c in speed1.containers if isinstance(c, BarContainer)]
    err = bars[0].errorbar                         # auto and zstd:3 at 1 worker: from min to max
    assert err is not None
    segs = err.lines[2][0].get_segments()
    assert [(s[0][1], s[1][1]) for s in segs] == [(850.0, 990.0), (290.0, 330.0)]
    assert all(c.errorbar is None for c in speed2.containers if isinstance(c, BarContainer))  # one run each
    png = tmp_path / "b.png"
    bench.plot(rows, str(png), "t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
