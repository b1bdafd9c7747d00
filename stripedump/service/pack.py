"""Pack the Python interpreter and stripedump into a staging root (a capture initramfs).

Why: a capture kernel that does not mount the root filesystem (a dracut
initramfs, `make e2e`'s second pass) must carry the interpreter, the
standard library, stripedump and exactly the dependencies that were tested.
``stripedump kdump pack STAGE`` (or ``pack()``), run with the Python that
runs stripedump, copies into STAGE at their absolute paths on this machine:

  * the interpreter (sys._base_executable, symlinks resolved), its shared
    libraries (ldd) and the dynamic loader;
  * the standard library (sysconfig "stdlib" and "platstdlib"), without
    site-packages, the test suites, the GUI/IDE and packaging tools
    (tkinter, idlelib, turtledemo, ensurepip, lib2to3, pydoc_data), the
    static-library config-* directory and optimized .opt-1/.opt-2 bytecode,
    and the extension modules for Tk, SQLite, OpenSSL, curses, readline and
    dbm (SKIP_DYNLOAD: their libraries are large and a dump never loads them);
  * SITE: the stripedump package (every .py file of every sub-package, so an
    editable install works too, byte-compiled there as unchecked-hash .pyc)
    and the files of its runtime dependencies;
  * LAUNCHER: a sh launcher (python -I, SITE on sys.path);
  * the libraries every copied ELF file needs; ELF files are stripped of
    symbols (strip --strip-unneeded) when strip is installed.

Which dependencies: stripedump's ``Requires-Dist`` and theirs, recursively,
evaluated with ``packaging`` as pip evaluates them for this interpreter
(environment markers such as ``python_version < "3.11"``, and the extras a
requirement asks for; never stripedump's own extras).  Each one must be
installed and pinned at its installed version in the lock file
(dist/requirements.lock, which `make deb` and `make setup` install from), so
an initramfs holds the set that was tested or is not built at all.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import sysconfig

from ..errors import WiringError

SITE = "/opt/stripedump/site"
LAUNCHER = "/opt/stripedump/bin/stripedump"
# the lock the Debian package installs (debian/rules)
DEFAULT_LOCK = "/usr/lib/stripedump/requirements.lock"
SKIP_STDLIB = {"site-packages", "dist-packages", "test", "tests", "idlelib", "tkinter", "turtledemo",
               "ensurepip", "lib2to3", "pydoc_data"}
# Extension modules a dump never imports whose libraries are large (Tk, X11,
# SQLite, OpenSSL, Kerberos, ncurses, readline, gdbm) and CPython's test helpers.
SKIP_DYNLOAD = re.compile(r"^(_tkinter|_sqlite3|_ssl|_hashlib|_curses\w*|readline|_dbm|_gdbm|nis|_crypt"
                          r"|_ctypes_test|_test\w*|xxlimited\w*|_xx\w+|ossaudiodev|spwd|audioop)\.")
ELF_MAGIC = b"\x7fELF"
# Runtime dependencies a capture kernel never imports, left out with everything only they need:
# a dump writes ssh:// targets through the system's ssh client, not paramiko (which with
# cryptography, PyNaCl, bcrypt and cffi is 25 MiB); mfusepy serves `stripedump mount`; packaging
# serves this packer.  tests/service/test_pack.py runs a dump with these imports blocked.
CAPTURE_UNNEEDED = {"paramiko": "reading ssh:// members", "mfusepy": "stripedump mount",
                    "packaging": "stripedump kdump pack"}
# files of the dependencies a running program never reads: test suites, type stubs
SKIP_SITE = re.compile(r"(^|/)(tests?|testing)/|\.pyi$|(^|/)py\.typed$")


def canonical(name: str) -> str:
    """A distribution name as PEP 503 compares them (``python_lzo`` == ``Python-LZO``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _wanted(req, extra: str) -> bool:
    """Does requirement REQ belong to extra EXTRA ("" = the distribution itself) on this interpreter?"""
    if req.marker is None:
        return extra == ""
    base = req.marker.evaluate({"extra": ""})
    return base if extra == "" else req.marker.evaluate({"extra": extra}) and not base


def runtime_dists(root: str = "stripedump", path: list[str] | None = None,
                  skip=frozenset()) -> dict[str, md.Distribution]:
    """``root`` and every distribution it needs at run time on this interpreter, by canonical name.

    ``path``: where to look for installed distributions (default sys.path).  A
    requirement counts when its marker holds for this interpreter, with no
    extra or with an extra its requirer was asked for (``lib[extra]``);
    ``root``'s own extras are never followed, nor the distributions named in
    SKIP (canonical names) and what only they need.
    """
    from packaging.requirements import InvalidRequirement, Requirement

    found: dict[str, md.Distribution] = {}
    done: dict[str, set[str]] = {}            # the extras ("" = none) whose requirements were followed
    todo: list[tuple[str, frozenset[str], str]] = [(root, frozenset(), "")]
    while todo:
        name, extras, wanted_by = todo.pop()
        key = canonical(name)
        dist = found.get(key) or next(iter(md.Distribution.discover(name=name, path=path or sys.path)), None)
        if dist is None:
            needed = f" (needed by {wanted_by})" if wanted_by else ""
            raise WiringError(f"pack: {name}{needed} is not installed for {sys.executable}")
        found[key] = dist
        want = ({""} | extras) - done.setdefault(key, set())
        if not want:
            continue
        done[key] |= want
        for text in dist.requires or []:
            try:
                req = Requirement(text)
            except InvalidRequirement as e:
                raise WiringError(f"pack: {dist.metadata['Name']} has a requirement packaging cannot read: "
                                  f"{text!r} ({e})") from None
            if canonical(req.name) not in skip and any(_wanted(req, e) for e in want):
                todo.append((req.name, frozenset(req.extras), dist.metadata["Name"]))
    return found


def read_lock(path: str) -> dict[str, str]:
    """The lock file: ``name==version`` lines (comments and blank lines ignored), by canonical name."""
    pins = {}
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise WiringError(f"pack: cannot read the lock file {path}: {e.strerror}") from None
    for n, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([A-Za-z0-9.+!_-]+)", line)
        if not m:
            raise WiringError(f"pack: {path} line {n}: expected NAME==VERSION, got {line!r}")
        pins[canonical(m.group(1))] = m.group(2)
    return pins


def check_lock(dists: dict[str, md.Distribution], pins: dict[str, str], lock: str, root: str = "stripedump"):
    """Every dependency that would be packed is pinned in the lock at its installed version."""
    bad = []
    for key, dist in sorted(dists.items()):
        if key == canonical(root):
            continue
        have = dist.version
        if key not in pins:
            bad.append(f"{dist.metadata['Name']} {have} is not in the lock")
        elif pins[key] != have:
            bad.append(f"{dist.metadata['Name']} {have} is installed, the lock pins {pins[key]}")
    if bad:
        raise WiringError(f"pack: the installed dependencies differ from {lock}: " + "; ".join(bad)
                          + " (install with: pip install -c " + lock + " ...)")


class Packer:
    """Copies files into the stage at their own paths, remembers ELF files and bytes per part."""

    def __init__(self, stage: str, strip: bool):
        self.stage = os.path.abspath(stage)
        self.strip = shutil.which("strip") if strip else None
        self.done: set[str] = set()
        self.sources: set[str] = set()     # real paths copied (under any name)
        self.elf: list[tuple[str, str, str]] = []
        self.bytes: dict[str, int] = {}

    def copy(self, src: str, dst: str | None = None, part: str = "other") -> None:
        """Copy file SRC to STAGE/DST (default: SRC's own path) as a file (symlinks resolved)."""
        dst = dst or src
        if dst in self.done:
            return
        self.done.add(dst)
        real = os.path.realpath(src)
        self.sources.add(real)
        out = self.stage + dst
        os.makedirs(os.path.dirname(out), exist_ok=True)
        shutil.copy2(real, out)
        with open(real, "rb") as f:
            if f.read(4) == ELF_MAGIC:
                self.elf.append((real, out, part))
        self.bytes[part] = self.bytes.get(part, 0) + os.path.getsize(out)

    def tree(self, top: str, part: str, skip=frozenset(), dst_top: str | None = None,
             only=re.compile(r"")) -> None:
        """Every file under TOP (at its own path, or under DST_TOP) whose name matches ONLY."""
        for root, dirs, files in os.walk(top):
            dirs[:] = sorted(d for d in dirs if d not in skip and not d.startswith("config-"))
            for name in sorted(files):
                if re.search(r"\.opt-[12]\.pyc$", name) or not only.search(name):
                    continue
                if os.path.basename(root) == "lib-dynload" and SKIP_DYNLOAD.match(name):
                    continue
                src = os.path.join(root, name)
                dst = None if dst_top is None else os.path.join(dst_top, os.path.relpath(src, top))
                self.copy(src, dst, part=part)

    def compile(self, top: str, part: str) -> None:
        """Byte-compile the .py files under STAGE/TOP, as unchecked-hash .pyc: the capture kernel's
        Python then compiles nothing at a dump's start (0.15-0.2 CPU s for stripedump's modules,
        docs/benchmarks.md) and never compares a source's time with the initramfs' own."""
        import compileall
        import py_compile
        root = self.stage + top
        before = _tree_bytes(root)
        if not compileall.compile_dir(root, quiet=2, workers=1,
                                      invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH):
            raise WiringError(f"pack: cannot byte-compile {top}")
        self.bytes[part] = self.bytes.get(part, 0) + _tree_bytes(root) - before

    def libraries(self) -> None:
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
                # a library a wheel bundles (numpy.libs/...) is packed with its wheel already, where
                # the extension's RPATH ($ORIGIN/...) finds it
                if m and os.path.exists(m.group(1)) and os.path.realpath(m.group(1)) not in self.sources:
                    self.copy(m.group(1), part="libraries")

    def strip_all(self) -> None:
        if not self.strip:
            return
        for _, out, part in self.elf:
            before = os.path.getsize(out)
            subprocess.run([self.strip, "--strip-unneeded", out], capture_output=True, timeout=60)
            self.bytes[part] -= before - os.path.getsize(out)


def _tree_bytes(top: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(top) for f in fs)


def pack(stage: str, lock: str, extra: list[str] = (), strip: bool = True) -> dict:
    """Pack into STAGE (see the module docstring); the JSON-able summary."""
    dists = runtime_dists(skip=frozenset(CAPTURE_UNNEEDED))
    check_lock(dists, read_lock(lock), lock)
    p = Packer(stage, strip)
    exe = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    p.copy(exe, part="interpreter")
    paths = sysconfig.get_paths()
    p.tree(paths["stdlib"], "stdlib", SKIP_STDLIB)
    if paths["platstdlib"] != paths["stdlib"]:
        p.tree(paths["platstdlib"], "stdlib", SKIP_STDLIB)
    dynload = os.path.join(paths["platstdlib"], "lib-dynload")
    if os.path.isdir(dynload):
        p.tree(dynload, "stdlib")

    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))    # this stripedump
    p.tree(pkg, "stripedump", {"__pycache__"}, f"{SITE}/stripedump", re.compile(r"\.py$"))
    p.compile(f"{SITE}/stripedump", "stripedump")
    for key, dist in sorted(dists.items()):
        if key == "stripedump":
            continue
        for f in dist.files or []:
            rel = str(f)
            if rel.startswith("..") or SKIP_SITE.search(rel):   # ../bin: the launcher replaces them
                continue
            src = os.path.normpath(str(f.locate()))
            if os.path.isfile(src):
                p.copy(src, f"{SITE}/{rel}", part="site-packages")
    for e in extra:
        path = shutil.which(e) or e
        if not os.path.isfile(path):
            raise WiringError(f"pack: --extra {e}: no such executable")
        p.copy(path, part="extra")
    p.libraries()
    p.strip_all()

    launcher = p.stage + LAUNCHER
    os.makedirs(os.path.dirname(launcher), exist_ok=True)
    with open(launcher, "w") as f:
        f.write("#!/bin/sh\n"
                "# stripedump from the packed interpreter (written by stripedump kdump pack)\n"
                f"exec {exe} -I -c 'import sys; sys.path.insert(0, \"{SITE}\"); sys.argv[0] = \"stripedump\"; "
                "from stripedump.cli import main; sys.exit(main())' \"$@\"\n")
    os.chmod(launcher, 0o755)
    total = sum(p.bytes.values())
    summary = (f"{len(p.done)} files, {total / 2**20:.1f} MiB ("
               + ", ".join(f"{k} {v / 2**20:.1f}" for k, v in p.bytes.items()) + " MiB)"
               + (", ELF files stripped" if p.strip else ""))
    return {"files": len(p.done), "bytes": total, "by_part": p.bytes, "interpreter": exe,
            "launcher": LAUNCHER, "stripped": bool(p.strip), "lock": lock,
            "dependencies": {dist.metadata["Name"]: dist.version for k, dist in sorted(dists.items())
                             if k != "stripedump"},
            "summary": summary}
