"""The package files (debian/, dist/) agree with the code they wire in.

`make deb` builds and checks the package itself (lintian, dist/deb-smoke.py)
and `make e2e-debian` crashes a VM with it; these checks are the cheap ones
that `make test` can run everywhere: the shipped settings leave stripedump
off, the commands the units run exist, the versions agree.
"""

import os
import re
import shlex
import subprocess

import pytest

from conftest import ROOT
from stripedump.cli import build_parser
from stripedump.service import settings, wiring
from stripedump.version import __version__



def _read(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


def test_the_package_version_is_stripedumps():
    assert re.match(r"stripedump \(([^)]+)\)", _read("debian", "changelog")).group(1) == __version__


def test_the_shipped_settings_leave_stripedump_off_and_name_every_setting(tmp_path):
    path = os.path.join(ROOT, "dist", "default", "stripedump")
    assert not settings.load(path).configured     # installed, unconfigured: kdump-tools behaves as before
    text = _read("dist", "default", "stripedump")
    for key in settings.KEYS:
        assert f"{key}=" in text, key
    # the commented-out values are the defaults: uncommented, they change nothing
    commented = re.findall(r"^#(STRIPEDUMP_\w+=.*)$", text, re.M)
    assert len(commented) == len(settings.KEYS) - 1
    conf = tmp_path / "stripedump"
    conf.write_text("\n".join(commented) + '\nSTRIPEDUMP_TARGETS="/dev/x"\n')
    assert settings.load(str(conf)) == settings.Settings(str(conf), targets=("/dev/x",))


@pytest.mark.parametrize("unit, key", [
    (("dist", "systemd", "kdump-tools-dump.service.d", "stripedump.conf"), "ExecStartPre"),
    (("dist", "systemd", "stripedump-kdump-report.service"), "ExecStart"),
])
def test_the_units_run_commands_that_exist(unit, key):
    line = re.search(rf"^{key}=(.*)$", _read(*unit), re.M).group(1)
    argv = shlex.split(line.lstrip("-"))
    assert argv[0] == "/usr/bin/stripedump"
    build_parser().parse_args(argv[1:])            # a usage error would raise (exit 2)


def test_the_drop_in_is_where_kdump_show_looks_and_cannot_stop_kdump_tools():
    install = _read("debian", "stripedump.install")
    src, dest = re.search(r"^(\S*stripedump\.conf)\s+(\S+)$", install, re.M).groups()
    assert "/" + dest.strip("/") + "/" + os.path.basename(src) == wiring.DROPIN
    # "-": a failing (or missing) stripedump never keeps kdump-tools' makedumpfile from running
    assert re.search(r"^ExecStartPre=-", _read(*src.split("/")), re.M)


def test_every_packaged_file_exists_and_the_scripts_parse():
    for line in _read("debian", "stripedump.install").splitlines():
        assert os.path.exists(os.path.join(ROOT, line.split()[0])), line
    for script, shell in (("dist/dracut/95stripedump/module-setup.sh", "bash"),
                          ("dist/dracut/95stripedump/stripedump-capture.sh", "sh"),
                          ("dist/bin/stripedump", "sh"), ("debian/stripedump.postinst", "sh"),
                          ("debian/stripedump.prerm", "sh"), ("debian/stripedump.postrm", "sh")):
        r = subprocess.run([shell, "-n", os.path.join(ROOT, script)], capture_output=True, text=True)
        assert r.returncode == 0, (script, r.stderr)
