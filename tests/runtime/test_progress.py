"""Progress lines and bars, on a clock the tests move by hand: exact rates, no sleeping."""

import io

from stripedump.runtime.progress import Progress


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


class Clock:
    """Progress's clock: seconds that move only when the test says so."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def feed(p, clock, step, *updates):
    """``p(done, total)`` for each update, the clock ``step`` seconds on before each but the first."""
    for i, (done, total) in enumerate(updates):
        clock.now += step if i else 0
        p(done, total)


def test_plain_lines_for_serial_consoles():
    out, clock = io.StringIO(), Clock()
    p = Progress("dump", stream=out, every=0.0, clock=clock)
    for i in range(5):
        p(i * 100, 400)
        clock.now += 1
    p.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0] == "stripedump: dump:   0.0% (0 of 0 MB)"      # no rate before one is measured
    assert lines[-1].startswith("stripedump: dump: 100.0%")
    assert all("MB/s" in ln for ln in lines[1:])


def test_first_line_has_no_rate_until_one_is_measured():
    """The first line came out as "0.0% (0 of 1073 MB), 0.1 MB/s": a rate from nothing."""
    out, clock = io.StringIO(), Clock()
    p = Progress("dump", stream=out, every=0.0, clock=clock)
    p(100_000, 1_073_741_824)
    clock.now += 2
    p(600_000_000, 1_073_741_824)
    lines = out.getvalue().splitlines()
    assert lines[0] == "stripedump: dump:   0.0% (0 of 1074 MB)"
    assert lines[1] == "stripedump: dump:  55.9% (600 of 1074 MB), 300.0 MB/s"    # 600 MB in 2 s


def test_bar_has_no_eta_until_one_can_be_measured(monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    out, clock = FakeTTY(), Clock()
    # nothing moved yet: a rate of 0, no ETA (it showed 0:00:00)
    feed(Progress("dump", stream=out, every=0.0, clock=clock), clock, 0.05, (0, 1000), (0, 1000))
    assert "0.0 MB/s ETA -:--:--" in out.getvalue()
    out = FakeTTY()
    feed(Progress("dump", stream=out, every=0.0, clock=clock), clock, 0.05, (0, 1000), (500, 1000))
    assert " MB/s ETA 0:00:00" in out.getvalue() and "- MB/s" not in out.getvalue()


def test_plain_lines_are_throttled():
    out, clock = io.StringIO(), Clock()
    p = Progress("join", stream=out, every=3600, clock=clock)
    for i in range(1000):
        p(i, 1000)
        clock.now += 3          # 50 minutes in all: still under the hour
    p.close()
    assert len(out.getvalue().splitlines()) == 2      # start and end only
    out = io.StringIO()
    p = Progress("join", stream=out, every=5.0, clock=clock)
    for i in range(13):                               # 0 .. 12 s, a second apart
        p(i, 12)
        clock.now += 1
    p.close()
    assert [ln.split("%")[0][-5:] for ln in out.getvalue().splitlines()] == \
        ["  0.0", " 41.7", " 83.3", "100.0"]          # the start, 5 s, 10 s, the end


def test_bar_on_terminals(monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    out, clock = FakeTTY(), Clock()
    p = Progress("verify", stream=out, every=0.0, clock=clock)
    feed(p, clock, 1, (0, 1000), (500, 1000), (1000, 1000))
    p.close()
    text = out.getvalue()
    assert "\r" in text and "[###############" in text and "ETA" in text
    assert text.endswith("\n") and "100.0%" in text.splitlines()[-1]


def test_no_bar_without_a_usable_terminal(monkeypatch):
    out = FakeTTY()
    for term in ("", "dumb"):
        monkeypatch.setenv("TERM", term)
        p = Progress("dump", stream=out, every=0.0)
        p(0, 10)
        p(10, 10)
        p.close()
    assert "\r" not in out.getvalue() and out.getvalue().count("stripedump: dump:") == 6


def test_quiet_prints_nothing():
    out = FakeTTY()
    p = Progress("dump", stream=out, quiet=True, every=0.0)
    p(1, 2)
    p.close()
    assert out.getvalue() == ""
