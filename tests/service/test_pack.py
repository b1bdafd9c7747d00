"""stripedump kdump pack (service/pack.py): which distributions go into a capture initramfs.

Regression (issue 23): the packer walked Requires-Dist by hand and ignored
environment markers, so cryptography's ``typing-extensions; python_full_version
< "3.11"`` stopped `make e2e`'s second pass on Python 3.11 ("typing-extensions
is not installed").  The walk now evaluates requirements with ``packaging``,
and what it packs must match the lock file.
"""

import os
import sys

import pytest

from conftest import ROOT
from stripedump.errors import WiringError
from stripedump.service.pack import CAPTURE_UNNEEDED, canonical, check_lock, read_lock, runtime_dists

LOCK = os.path.join(ROOT, "dist", "requirements.lock")


def _dist(site, name, version, *requires):
    """An installed distribution as pip leaves it: NAME-VERSION.dist-info/METADATA."""
    d = site / f"{name.replace('-', '_')}-{version}.dist-info"
    d.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {r}" for r in requires]
    (d / "METADATA").write_text("\n".join(lines) + "\n")


@pytest.fixture
def site(tmp_path):
    s = tmp_path / "site"
    s.mkdir()
    _dist(s, "demo-root", "1.0",
          "needed-always>=1",
          # exactly cryptography 51's line: false on Python 3.11, so never installed there
          "typing-extensions>=4.13.2; python_full_version < '3.11'",
          "only-for-demo-extra; extra == 'fancy'",      # the root's own extras are never followed
          "with-extra[fast]>=2",
          "linux-only; sys_platform == 'linux'",
          "never-on-linux; sys_platform == 'win32'")
    _dist(s, "needed-always", "1.2")
    _dist(s, "with-extra", "2.0", "fast-dep; extra == 'fast'", "slow-dep; extra == 'slow'", "base-dep")
    _dist(s, "fast-dep", "0.1")
    _dist(s, "base-dep", "3")
    _dist(s, "linux-only", "5")
    return s


@pytest.mark.skipif(sys.version_info < (3, 11) or not sys.platform.startswith("linux"),
                    reason="the markers below are written for Python >= 3.11 on Linux")
def test_markers_and_extras_are_evaluated_as_pip_does(site):
    got = runtime_dists("demo-root", path=[str(site)])
    assert sorted(got) == ["base-dep", "demo-root", "fast-dep", "linux-only", "needed-always", "with-extra"]
    assert got["with-extra"].version == "2.0"


def test_a_missing_requirement_names_who_needs_it(site):
    _dist(site, "needs-ghost", "1", "ghost-package>=1")
    with pytest.raises(WiringError, match=r"ghost-package \(needed by needs-ghost\) is not installed"):
        runtime_dists("needs-ghost", path=[str(site)])


def test_skipped_distributions_take_what_only_they_need_with_them(site):
    got = runtime_dists("demo-root", path=[str(site)], skip={"with-extra"})
    assert "with-extra" not in got and "fast-dep" not in got and "base-dep" not in got
    assert "needed-always" in got


def test_the_lock_must_pin_every_packed_distribution_at_its_version(site, tmp_path):
    dists = runtime_dists("demo-root", path=[str(site)])
    lock = tmp_path / "lock"
    pins = "needed-always==1.2\nWith_Extra==2.0\nfast-dep==0.1\nbase-dep==3\nlinux-only==5\n"
    lock.write_text("# a comment\n\n" + pins)
    check_lock(dists, read_lock(str(lock)), str(lock), root="demo-root")       # all pinned: no error
    lock.write_text(pins.replace("linux-only==5", "linux-only==6"))
    with pytest.raises(WiringError, match="linux-only 5 is installed, the lock pins 6"):
        check_lock(dists, read_lock(str(lock)), str(lock), root="demo-root")
    lock.write_text(pins.replace("fast-dep==0.1\n", ""))
    with pytest.raises(WiringError, match="fast-dep 0.1 is not in the lock"):
        check_lock(dists, read_lock(str(lock)), str(lock), root="demo-root")
    lock.write_text("fast-dep>=0.1\n")
    with pytest.raises(WiringError, match="line 1: expected NAME==VERSION"):
        read_lock(str(lock))


def test_this_environment_matches_the_lock():
    """make setup installs with the lock as constraints: what the tests run is what gets packed."""
    dists = runtime_dists(skip=frozenset(CAPTURE_UNNEEDED))
    check_lock(dists, read_lock(LOCK), LOCK)
    pins = read_lock(LOCK)
    assert {canonical(n) for n in CAPTURE_UNNEEDED} <= set(pins)   # left out of the initramfs, not the package


def test_a_dump_never_imports_what_the_initramfs_leaves_out(tmp_path, vmcore, cli):
    """CAPTURE_UNNEEDED's promise: a dump (two workers, two members) with those imports blocked."""
    src = vmcore()
    res = cli("dump", "--disks", f"{tmp_path}/m0,{tmp_path}/m1", "--workers", "2", "-q", src.path,
              without=tuple(CAPTURE_UNNEEDED))
    assert res.rc == 0, res
    assert cli("verify", f"{tmp_path}/m0", f"{tmp_path}/m1").rc == 0


def test_the_packed_package_is_byte_compiled_and_imports_without_compiling(tmp_path):
    """The capture kernel's Python imports stripedump from unchecked-hash .pyc made at pack time:
    every module has one, and an import from the stage writes nothing and reads no source
    (the .py files are emptied after packing: a stale-source check would recompile them)."""
    import re
    import subprocess
    from stripedump.service.pack import SITE, Packer
    pkg = os.path.join(ROOT, "stripedump")
    p = Packer(str(tmp_path), strip=False)
    p.tree(pkg, "stripedump", {"__pycache__"}, f"{SITE}/stripedump", re.compile(r"\.py$"))
    p.compile(f"{SITE}/stripedump", "stripedump")
    top = str(tmp_path) + f"{SITE}/stripedump"
    tag = sys.implementation.cache_tag
    sources = [os.path.join(r, f) for r, _, fs in os.walk(top) for f in fs if f.endswith(".py")]
    assert len(sources) > 40
    for src in sources:
        pyc = os.path.join(os.path.dirname(src), "__pycache__", f"{os.path.basename(src)[:-3]}.{tag}.pyc")
        with open(pyc, "rb") as f:
            assert int.from_bytes(f.read(8)[4:], "little") == 0b01, pyc     # hash-based, unchecked
    for src in sources:
        open(src, "w").close()
    before = {os.path.join(r, f) for r, _, fs in os.walk(top) for f in fs}
    r = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(tmp_path) + SITE!r}); "
                        "import stripedump.cli, stripedump.dump.coordinator, stripedump.read.join; "
                        "print(stripedump.cli.__file__, stripedump.cli.main.__name__, stripedump.dump.coordinator.dump.__name__)"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr            # the emptied sources have no main(): the .pyc were used
    where, *names = r.stdout.split()
    assert where.startswith(str(tmp_path)) and names == ["main", "dump"], r.stdout
    assert {os.path.join(r_, f) for r_, _, fs in os.walk(top) for f in fs} == before
