"""/etc/default/stripedump: what the capture kernel does with stripedump, read and checked once.

Why a file of its own, in the format of /etc/default/kdump-tools: the
administrator configures stripedump where they configure kdump-tools, with
the same KEY=VALUE lines (shell quoting).  It is read, never executed: a
capture kernel must not run whatever a stray line says, and ``stripedump
kdump test`` must be able to check every value before the crash.  Nothing is
configured until STRIPEDUMP_TARGETS names a target; until then every
``stripedump kdump`` action that would touch a disk does nothing.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex

from ..errors import UsageError

DEFAULT_CONFIG = "/etc/default/stripedump"
# what to do when stripedump did not save the dump / after it saved it
ON_FAILURE = ("makedumpfile", "reboot")
ON_SUCCESS = ("reboot", "makedumpfile")
KEYS = ("STRIPEDUMP_TARGETS", "STRIPEDUMP_CODEC", "STRIPEDUMP_DUMP_LEVEL", "STRIPEDUMP_WORKERS",
        "STRIPEDUMP_ON_FAILURE", "STRIPEDUMP_ON_SUCCESS", "STRIPEDUMP_WAIT", "STRIPEDUMP_IO_TIMEOUT",
        "STRIPEDUMP_SSH_OPTIONS")


@dataclasses.dataclass(frozen=True)
class Settings:
    path: str
    targets: tuple[str, ...] = ()
    codec: str = "auto"
    dump_level: int = 0
    workers: int = 0                  # 0: one per CPU of the capture kernel
    on_failure: str = "makedumpfile"
    on_success: str = "reboot"
    wait: float = 90.0                # seconds for each /dev target to appear (udev in the capture boot)
    io_timeout: float = 60.0          # stripedump dump --io-timeout
    ssh_options: tuple[str, ...] = ()

    @property
    def configured(self) -> bool:
        return bool(self.targets)

    def dump_args(self, force: bool) -> list[str]:
        """The ``stripedump dump`` options these settings stand for (the source comes last)."""
        args = ["--disks", ",".join(self.targets), "--codec", self.codec, "--io-timeout", f"{self.io_timeout:g}"]
        if self.dump_level:
            args += ["--dump-level", str(self.dump_level)]
        if self.workers:
            args += ["--workers", str(self.workers)]
        for o in self.ssh_options:
            args += ["--ssh-option", o]
        return args + (["--force"] if force else [])


def read_pairs(path: str) -> dict[str, tuple[int, str]]:
    """KEY=VALUE lines of a /etc/default file (shell quoting, ``export`` allowed), by key: (line, value)."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise UsageError(f"{path}: cannot read it: {e.strerror}") from None
    out = {}
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        m = re.match(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$", s)
        if not m:
            raise UsageError(f"{path} line {n}: expected KEY=VALUE, got {s!r}")
        try:
            words = shlex.split(m.group(2), comments=True)
        except ValueError as e:
            raise UsageError(f"{path} line {n}: {e}") from None
        out[m.group(1)] = (n, " ".join(words))
    return out


def load(path: str = DEFAULT_CONFIG) -> Settings:
    """The settings in PATH (a missing file: not configured); UsageError names the line of a bad value."""
    pairs = read_pairs(path)
    kw = {}

    def bad(key: str, why: str):
        return UsageError(f"{path} line {pairs[key][0]}: {key}: {why}")

    for key, (_, value) in pairs.items():
        if key.startswith("STRIPEDUMP_") and key not in KEYS:
            raise bad(key, f"unknown setting; known: {', '.join(KEYS)}")
    val = {k: v for k, (_, v) in pairs.items()}
    if val.get("STRIPEDUMP_TARGETS", "").strip():
        targets = tuple(t for t in re.split(r"[,\s]+", val["STRIPEDUMP_TARGETS"].strip()) if t)
        for t in targets:
            if not (t.startswith("/") or t.startswith("ssh://")):
                raise bad("STRIPEDUMP_TARGETS", f"{t!r} is neither an absolute path nor an ssh:// URL")
        if len(set(targets)) != len(targets):
            raise bad("STRIPEDUMP_TARGETS", "a target is named twice")
        kw["targets"] = targets
    if val.get("STRIPEDUMP_CODEC"):
        from ..format.codecs import parse_codec
        try:
            parse_codec(val["STRIPEDUMP_CODEC"])
        except UsageError as e:
            raise bad("STRIPEDUMP_CODEC", str(e)) from None
        kw["codec"] = val["STRIPEDUMP_CODEC"]
    if val.get("STRIPEDUMP_DUMP_LEVEL"):
        from ..dump.config import MAX_DUMP_LEVEL
        kw["dump_level"] = _int(val["STRIPEDUMP_DUMP_LEVEL"], 0, MAX_DUMP_LEVEL,
                                lambda why: bad("STRIPEDUMP_DUMP_LEVEL", why))
    if val.get("STRIPEDUMP_WORKERS"):
        kw["workers"] = _int(val["STRIPEDUMP_WORKERS"], 1, 4096, lambda why: bad("STRIPEDUMP_WORKERS", why))
    for key, field, choices in (("STRIPEDUMP_ON_FAILURE", "on_failure", ON_FAILURE),
                                ("STRIPEDUMP_ON_SUCCESS", "on_success", ON_SUCCESS)):
        if val.get(key):
            if val[key] not in choices:
                raise bad(key, f"{val[key]!r}: choose one of {', '.join(choices)}")
            kw[field] = val[key]
    for key, field in (("STRIPEDUMP_WAIT", "wait"), ("STRIPEDUMP_IO_TIMEOUT", "io_timeout")):
        if val.get(key):
            try:
                v = float(val[key])
            except ValueError:
                raise bad(key, f"not a number of seconds: {val[key]!r}") from None
            if not 0 < v < float("inf"):
                raise bad(key, f"must be a positive number of seconds: {val[key]!r}")
            kw[field] = v
    if val.get("STRIPEDUMP_SSH_OPTIONS"):
        kw["ssh_options"] = tuple(val["STRIPEDUMP_SSH_OPTIONS"].split())
    return Settings(os.path.abspath(path), **kw)


def _int(text: str, lo: int, hi: int, bad) -> int:
    try:
        v = int(text)
    except ValueError:
        raise bad(f"not an integer: {text!r}") from None
    if not lo <= v <= hi:
        raise bad(f"must be from {lo} to {hi}: {text!r}")
    return v
