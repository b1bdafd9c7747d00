"""`make deb`'s check of the built package: its private virtual environment works.

Run with the interpreter of the package's venv, unpacked (dpkg -x) under ROOT:
    ROOT/usr/lib/stripedump/venv/bin/python3 -I dist/deb-smoke.py WORKDIR

Why: debian/rules strips every shared object of the wheels and removes bytecode
and scripts; this proves that afterwards every module of stripedump and of its
locked dependencies still imports, and that a dump with each codec joins back
byte for byte.  Prints one line; exit status 0 only when all of it held.
"""

import importlib
import os
import pkgutil
import subprocess
import sys

import stripedump

# the import names of the locked dependencies (dist/requirements.lock)
DEPENDENCIES = ("numpy", "numpy.linalg", "lzo", "lz4.block", "lz4.frame", "zstandard", "cramjam", "snappy",
                "isal.isal_zlib", "xxhash", "psutil", "elftools.elf.elffile", "paramiko", "packaging.requirements",
                "mfusepy")
CODECS = ("none", "lz4", "snappy", "lzo", "zlib", "zstd", "auto")


def main(work: str) -> int:
    where = os.path.dirname(stripedump.__file__)
    if not where.startswith(sys.prefix):
        print(f"deb-smoke: FAIL: stripedump imported from {where}, not from {sys.prefix}")
        return 1
    # every module but __main__ (importing it runs the command line)
    names = [m.name for m in pkgutil.walk_packages(stripedump.__path__, "stripedump.")
             if m.name != "stripedump.__main__"] + list(DEPENDENCIES)
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as e:
            print(f"deb-smoke: FAIL: import {name}: {type(e).__name__}: {e}")
            return 1
    os.makedirs(work, exist_ok=True)
    src = os.path.join(work, "vmcore")
    run = [sys.executable, "-I", "-m", "stripedump"]
    subprocess.run([sys.executable, "-I", "-m", "stripedump.tools.synth", src, "--size", "16M"], check=True,
                   stdout=subprocess.DEVNULL)
    for codec in CODECS:
        members = [os.path.join(work, f"{codec}.m{i}") for i in range(2)]
        out = os.path.join(work, f"{codec}.joined")
        for cmd in (["dump", "-q", "--disks", ",".join(members), "--codec", codec, src],
                    ["join", *members, "-o", out]):
            r = subprocess.run(run + cmd, capture_output=True, text=True)
            if r.returncode:
                print(f"deb-smoke: FAIL: stripedump {' '.join(cmd)}: exit {r.returncode}: {r.stderr.strip()}")
                return 1
        with open(src, "rb") as a, open(out, "rb") as b:
            if a.read() != b.read():
                print(f"deb-smoke: FAIL: --codec {codec}: the join differs from the source")
                return 1
        for p in members + [out]:
            os.unlink(p)
    os.unlink(src)
    print(f"deb-smoke: ok: {len(names)} modules import from {sys.prefix}; dump and join with "
          f"{', '.join(CODECS)} give the source back")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
