"""Progress on stderr: a bar on terminals, plain lines on serial consoles.

Why two forms: a support engineer at a terminal wants a live bar with MB/s
and ETA; a capture kernel's serial console (and a log file) wants a few
plain lines, one at the start, one every few seconds, one at the end, with
no carriage returns to garble the log.  ``--quiet`` turns both off.  The
library calls a plain ``progress(done, total)`` callback, so it knows
nothing about terminals.

No rate and no ETA until one can be measured: the first line is printed
at the first update, when next to nothing has moved (a rate then would be
noise, e.g. "0.1 MB/s" for a dump about to run at 500), so it says only
how much there is to do; later lines and the last one carry the rate.

Output is best effort (``Output``): a closed pipe, a full disk or a dead
terminal on stdout or stderr (EPIPE, ENOSPC, EIO) switches that output off
and nothing else; the dump's members and exit code never depend on it.
"""

from __future__ import annotations

import os
import sys
import time

TTY_EVERY = 0.2      # seconds between bar redraws
PLAIN_EVERY = 5.0    # seconds between plain lines (serial consoles are slow)
BAR = 30


def _fmt_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def is_terminal(stream) -> bool:
    """A terminal that can redraw a bar: a tty, with a TERM that is set and not "dumb".

    A capture kernel's /dev/console is a tty too, but a serial line with no
    TERM (or TERM=dumb/linux on the console): it gets plain lines.
    """
    try:
        if not stream.isatty():
            return False
    except (AttributeError, ValueError):
        return False
    term = os.environ.get("TERM", "")
    if term in ("", "dumb", "unknown"):
        return False
    try:
        return os.ttyname(stream.fileno()) != "/dev/console"
    except (OSError, AttributeError, ValueError):
        return True


class Output:
    """A text stream that switches itself off at its first write error.

    After a failure the stream's descriptor is pointed at /dev/null:
    Python flushes sys.stdout at exit and turns a failed flush into exit
    status 120, which would change the exit code of a dump that succeeded.
    """

    def __init__(self, stream):
        self.stream = stream
        self.failed: OSError | None = None

    def print(self, text: str = "") -> None:
        self.write(text + "\n")

    def write(self, text: str) -> None:
        if self.failed is not None:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError) as e:    # ValueError: the stream was closed
            self.failed = e if isinstance(e, OSError) else OSError(str(e))
            self._silence()

    def flush(self) -> None:
        self.write("")

    def _silence(self) -> None:
        try:
            fd = self.stream.fileno()
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, fd)
            finally:
                os.close(null)
        except (OSError, ValueError, AttributeError):
            pass


class Progress:
    """``progress(done, total)`` for the library; ``close()`` prints the last update.

    ``clock``: seconds that only go forward (``time.monotonic``); the tests
    pass one they move by hand, so rates and throttling are exact there.
    """

    def __init__(self, what: str, stream=None, quiet: bool = False, every: float | None = None,
                 clock=time.monotonic):
        self.what = what
        self.clock = clock
        stream = stream if stream is not None else sys.stderr
        self.stream = stream if isinstance(stream, Output) else Output(stream)
        self.tty = is_terminal(self.stream.stream)
        self.quiet = quiet
        self.every = every if every is not None else (TTY_EVERY if self.tty else PLAIN_EVERY)
        self.t0 = clock()
        self.last = None
        self.done = self.total = 0
        self.started = False
        self.first = True    # the first update: nothing measured yet

    def __call__(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        if self.quiet:
            return
        now = self.clock()
        if not self.started:
            self.started = True
            self.last = now
            if not self.tty:
                self._line(now)
            self.first = False
            return
        if now - self.last >= self.every:
            self.last = now
            self._bar(now) if self.tty else self._line(now)

    def _rate(self, now: float) -> float | None:
        """MB/s since the start; None at the first update, before anything could be measured."""
        dt = now - self.t0
        return self.done / dt / 1e6 if dt > 0 and not self.first else None

    def _pct(self) -> float:
        return 100.0 * self.done / self.total if self.total else 100.0

    def _line(self, now: float) -> None:
        rate = self._rate(now)
        self.stream.print(f"stripedump: {self.what}: {self._pct():5.1f}% ({self.done / 1e6:.0f} of "
                          f"{self.total / 1e6:.0f} MB)" + ("" if rate is None else f", {rate:.1f} MB/s"))

    def _bar(self, now: float) -> None:
        frac = self.done / self.total if self.total else 1.0
        fill = int(BAR * frac)
        rate = self._rate(now)
        eta = _fmt_eta((self.total - self.done) / (rate * 1e6)) if rate else "-:--:--"
        shown = f"{'-' if rate is None else f'{rate:.1f}':>8} MB/s ETA {eta}"
        self.stream.write(f"\r{self.what} [{'#' * fill}{'.' * (BAR - fill)}] {self._pct():5.1f}% "
                          f"{shown} ")

    def close(self) -> None:
        """The last update (always shown, unless quiet)."""
        if self.quiet or not self.started:
            return
        now = self.clock()
        if self.tty:
            self._bar(now)
            self.stream.write("\n")
        else:
            self._line(now)
