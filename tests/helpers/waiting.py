"""Waiting for a condition with a deadline, instead of sleeping a guessed time.

A fixed sleep before a check is a guess at how long something takes: too
short on a loaded machine (the test fails for nothing), too long everywhere
else (the suite crawls), and it says nothing when it was wrong.  These poll
the condition itself and fail naming what they waited for.  Sleeps that are
the behaviour under test (a hung writer, a dump killed at a random moment)
stay sleeps.
"""

from __future__ import annotations

import time


def wait_until(cond, what: str, timeout: float = 30, proc=None, interval: float = 0.01):
    """Poll ``cond()`` until it returns something true, and return that.

    AssertionError naming ``what`` after ``timeout`` seconds, or as soon as
    ``proc`` (a ``subprocess.Popen`` the condition depends on) has ended.
    """
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (exit {proc.returncode}) before {what}: "
                                 f"{proc.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def next_second() -> None:
    """Return once the wall clock is in a later whole second than at the call.

    Member headers record when their dump started in whole seconds, and join
    tells an older dump on the same disks from a newer one by them: two dumps
    a test makes one after the other must not start in the same second.
    """
    start = int(time.time())
    time.sleep(max(0.0, start + 1 - time.time()))
    wait_until(lambda: int(time.time()) > start, "the next second of the wall clock", timeout=5,
               interval=0.001)
