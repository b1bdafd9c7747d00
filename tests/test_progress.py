import io

from stripedump.progress import Progress


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_plain_lines_for_serial_consoles():
    out = io.StringIO()
    p = Progress("dump", stream=out, every=0.0)
    for i in range(5):
        p(i * 100, 400)
    p.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0].startswith("stripedump: dump:   0.0% (0 of 0 MB)")
    assert lines[-1].startswith("stripedump: dump: 100.0%")
    assert all("MB/s" in ln for ln in lines)


def test_plain_lines_are_throttled():
    out = io.StringIO()
    p = Progress("join", stream=out, every=3600)
    for i in range(1000):
        p(i, 1000)
    p.close()
    assert len(out.getvalue().splitlines()) == 2      # start and end only


def test_bar_on_terminals(monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    out = FakeTTY()
    p = Progress("verify", stream=out, every=0.0)
    p(0, 1000)
    p(500, 1000)
    p(1000, 1000)
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
