"""Pack the Python interpreter and stripedump into a staging root (for an initramfs).

Run with the Python that runs stripedump (the venv's):

    .venv/bin/python tests/e2e/pack-python.py STAGE

and STAGE/ then holds, at their absolute paths on this machine, what a
capture kernel needs to run stripedump without the root filesystem:

  * the interpreter (sys._base_executable, symlinks resolved), its shared
    libraries (ldd) and the dynamic loader;
  * the standard library (sysconfig "stdlib" and "platstdlib"), without
    site-packages, the test suites, the GUI/IDE and packaging tools
    (tkinter, idlelib, turtledemo, ensurepip, lib2to3, pydoc_data), the
    static-library config-* directory and optimized .opt-1/.opt-2 bytecode,
    and the extension modules for Tk, SQLite, OpenSSL, curses, readline and
    dbm (SKIP_DYNLOAD: their libraries are large and a dump never loads them);
  * /opt/stripedump/site: the files of stripedump's runtime dependencies
    (importlib.metadata, recursively, no extras) and the stripedump package
    itself (its .py files, so an editable install works too);
  * /opt/stripedump/bin/stripedump: a sh launcher (python -I, the site dir on
    sys.path);
  * the libraries every copied ELF file needs; ELF files are stripped of
    symbols (strip --strip-unneeded) when strip is installed.

Also packed, when given with --extra: further executables with their
libraries (e.g. /usr/bin/time).  Prints a one-line JSON summary: files, bytes
(by part), the interpreter path and a "summary" sentence.  Standard library
only.
"""

import argparse
import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig

SITE = "/opt/stripedump/site"
LAUNCHER = "/opt/stripedump/bin/stripedump"
SKIP_STDLIB = {"site-packages", "dist-packages", "test", "tests", "idlelib", "tkinter", "turtledemo",
               "ensurepip", "lib2to3", "pydoc_data"}
# Extension modules a dump never imports whose libraries are large (Tk, X11,
# SQLite, OpenSSL, Kerberos, ncurses, readline, gdbm) and CPython's test helpers.
SKIP_DYNLOAD = re.compile(r"^(_tkinter|_sqlite3|_ssl|_hashlib|_curses\w*|readline|_dbm|_gdbm|nis|_crypt"
                          r"|_ctypes_test|_test\w*|xxlimited\w*|_xx\w+|ossaudiodev|spwd|audioop)\.")
ELF_MAGIC = b"\x7fELF"


class Packer:
    def __init__(self, stage, strip):
        self.stage = os.path.abspath(stage)
        self.strip = strip and shutil.which("strip")
        self.done = set()
        self.elf = []
        self.bytes = {}

    def copy(self, src, dst=None, part="other"):
        """Copy file SRC to STAGE/DST (default: SRC's own path) as a file (symlinks resolved)."""
        dst = dst or src
        if dst in self.done:
            return
        self.done.add(dst)
        real = os.path.realpath(src)
        out = self.stage + dst
        os.makedirs(os.path.dirname(out), exist_ok=True)
        shutil.copy2(real, out)
        with open(real, "rb") as f:
            if f.read(4) == ELF_MAGIC:
                self.elf.append((real, out, part))
        self.bytes[part] = self.bytes.get(part, 0) + os.path.getsize(out)

    def tree(self, top, part, skip=frozenset()):
        for root, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if d not in skip and not d.startswith("config-")]
            for name in files:
                if re.search(r"\.opt-[12]\.pyc$", name):
                    continue
                if os.path.basename(root) == "lib-dynload" and SKIP_DYNLOAD.match(name):
                    continue
                self.copy(os.path.join(root, name), part=part)

    def libraries(self):
        """Copy the shared libraries (and loader) of every ELF file copied so far."""
        seen = 0
        while seen < len(self.elf):
            real, _, _ = self.elf[seen]
            seen += 1
            try:
                out = subprocess.run(["ldd", real], capture_output=True, text=True, timeout=30).stdout
            except (OSError, subprocess.SubprocessError):
                continue
            for line in out.splitlines():
                m = re.search(r"=>\s+(/\S+)", line) or re.match(r"\s*(/\S+)\s+\(", line)
                if m and os.path.exists(m.group(1)):
                    self.copy(m.group(1), part="libraries")

    def strip_all(self):
        if not self.strip:
            return
        for _, out, part in self.elf:
            before = os.path.getsize(out)
            subprocess.run([self.strip, "--strip-unneeded", out], capture_output=True, timeout=60)
            self.bytes[part] -= before - os.path.getsize(out)


def runtime_dists(name="stripedump"):
    """stripedump and its runtime dependencies (no extras), recursively."""
    out, todo = {}, [name]
    while todo:
        n = todo.pop()
        key = re.sub(r"[-_.]+", "-", n).lower()
        if key in out:
            continue
        try:
            dist = md.distribution(n)
        except md.PackageNotFoundError:
            sys.exit(f"pack-python: {n} is not installed in {sys.prefix}")
        out[key] = dist
        for req in dist.requires or []:
            spec, _, marker = req.partition(";")
            if "extra" in marker:
                continue
            todo.append(re.match(r"\s*([A-Za-z0-9._-]+)", spec).group(1))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage")
    ap.add_argument("--extra", action="append", default=[], help="another executable to pack")
    ap.add_argument("--no-strip", action="store_true")
    a = ap.parse_args()
    p = Packer(a.stage, not a.no_strip)

    exe = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    p.copy(exe, part="interpreter")
    stdlib = sysconfig.get_paths()["stdlib"]
    platstdlib = sysconfig.get_paths()["platstdlib"]
    p.tree(stdlib, "stdlib", SKIP_STDLIB)
    if platstdlib != stdlib:
        p.tree(platstdlib, "stdlib", SKIP_STDLIB)
    dynload = os.path.join(platstdlib, "lib-dynload")
    if os.path.isdir(dynload):
        p.tree(dynload, "stdlib")

    import stripedump
    pkg = os.path.dirname(os.path.abspath(stripedump.__file__))
    for name in sorted(os.listdir(pkg)):
        if name.endswith(".py"):
            p.copy(os.path.join(pkg, name), f"{SITE}/stripedump/{name}", part="stripedump")
    for key, dist in sorted(runtime_dists().items()):
        if key == "stripedump":
            continue
        for f in dist.files or []:
            rel = str(f)
            if rel.startswith(".."):          # console scripts in bin/: the launcher replaces them
                continue
            src = os.path.normpath(str(f.locate()))
            if os.path.isfile(src):
                p.copy(src, f"{SITE}/{rel}", part="site-packages")
    for e in a.extra:
        path = shutil.which(e) or e
        if os.path.isfile(path):
            p.copy(path, part="extra")
    p.libraries()
    p.strip_all()

    launcher = p.stage + LAUNCHER
    os.makedirs(os.path.dirname(launcher), exist_ok=True)
    with open(launcher, "w") as f:
        f.write("#!/bin/sh\n"
                "# stripedump from the packed interpreter (written by tests/e2e/pack-python.py)\n"
                f"exec {exe} -I -c 'import sys; sys.path.insert(0, \"{SITE}\"); sys.argv[0] = \"stripedump\"; "
                "from stripedump.cli import main; sys.exit(main())' \"$@\"\n")
    os.chmod(launcher, 0o755)
    total = sum(p.bytes.values())
    summary = (f"{len(p.done)} files, {total / 2**20:.1f} MiB ("
               + ", ".join(f"{k} {v / 2**20:.1f}" for k, v in p.bytes.items()) + " MiB)"
               + (", ELF files stripped" if p.strip else ""))
    print(json.dumps({"files": len(p.done), "bytes": total, "by_part": p.bytes, "interpreter": exe,
                      "launcher": LAUNCHER, "stripped": bool(p.strip), "summary": summary}))


if __name__ == "__main__":
    main()
