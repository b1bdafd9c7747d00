"""The test suite cleans up after itself: `make test` leaves nothing big under /tmp.

Why: a run of `make test` once left 2.3 GB under /tmp/pytest-of-root, because
pytest keeps the temporary directories of the last three runs unless told
otherwise.  pyproject.toml tells it to remove a passing test's tmp_path at
once and to keep the directories of failed tests of one run only.  This test
runs a small pytest session under the project's own configuration, with a
test that writes 64 MiB and passes and one that writes 1 MiB and fails, and
measures what stays.  Directories made by session- or module-scoped fixtures
(``tmp_path_factory.mktemp``) are kept whenever a test of the run fails, so
those fixtures delete their big files themselves after ``yield``.
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

INNER = '''
import os
import pytest

def _fill(path, size):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)          # real blocks, quickly
    finally:
        os.close(fd)

@pytest.fixture(scope="session")
def shared(tmp_path_factory):
    """Session and module fixtures delete their big files themselves: pytest keeps their
    directories whenever any test of the run fails."""
    d = tmp_path_factory.mktemp("shared")
    _fill(d / "big", 64 << 20)
    yield d
    os.unlink(d / "big")

def test_big_and_passes(tmp_path, shared):
    _fill(tmp_path / "big", 64 << 20)

def test_small_and_fails(tmp_path):
    _fill(tmp_path / "small", 1 << 20)
    assert FAIL == 0
'''


def _used(path) -> int:
    """Bytes allocated under ``path`` (what du counts)."""
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(d, f)).st_blocks * 512
            except OSError:
                pass
    return total


def _session(tmp_path, fail: bool):
    test = tmp_path / "test_inner.py"
    test.write_text(f"FAIL = {int(fail)}\n" + INNER)
    env = dict(os.environ, PYTEST_DEBUG_TEMPROOT=str(tmp_path / "root"))
    env.pop("PYTEST_ADDOPTS", None)
    (tmp_path / "root").mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-c", os.path.join(ROOT, "pyproject.toml"), "--rootdir", str(tmp_path),
                           str(test)], capture_output=True, text=True, env=env, timeout=120)


def test_passing_tests_leave_nothing_in_tmp(tmp_path):
    p = _session(tmp_path, fail=True)
    assert p.returncode == 1 and "1 failed, 1 passed" in p.stdout, p.stdout + p.stderr
    # only the failed test's directory (1 MiB) stays, for a look; 128 MiB of passing test data is gone
    kept = _used(tmp_path / "root")
    assert kept < 4 << 20, kept
    p = _session(tmp_path, fail=False)
    assert p.returncode == 0, p.stdout + p.stderr
    # a passing run removes everything it made (the failed run's 1 MiB stays until a later run ends
    # with its own directory: tmp_path_retention_count = 1)
    assert _used(tmp_path / "root") <= kept, list(os.walk(tmp_path / "root"))
