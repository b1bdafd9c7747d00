"""``stripedump kdump show`` and ``kdump test``: is this machine wired so that a crash reaches stripedump?

Why: every mistake in kdump wiring shows only after a crash, the one moment
nobody can fix it.  So before it, in the spirit of ``kdump-config show``,
this module reads what will happen and says, one line per problem, what to
change:

* kdump-tools is installed, enabled (USE_KDUMP=1) and has loaded a capture
  kernel (/sys/kernel/kexec_crash_loaded);
* the capture kernel's command line (as kdump-tools loaded it, KDUMP_COREDIR/
  kexec_cmd, or as it would) boots kdump-tools-dump.service, which the
  package's drop-in makes run stripedump first;
* every target exists, is a whole block device under a stable name, is not
  mounted, swap, or held by RAID/LVM/dm, has no partitions and holds no
  filesystem or other signature (a blank disk or an earlier dump);
* the crashkernel= reservation holds the capture boot and stripedump
  (NEED_* below, measured by `make e2e-debian`), and the CPUs the capture
  kernel gets (nr_cpus=) for the workers asked for.

kdump-tools' files and the kexec entries of /sys are read below ``root``
(default /), so that tests can lay out a kdump-tools of their own; the
targets are always this machine's devices.
"""

from __future__ import annotations

import functools
import os
import re
import stat
import subprocess

from . import records
from .settings import Settings, read_pairs

DROPIN = "/lib/systemd/system/kdump-tools-dump.service.d/stripedump.conf"
DUMP_UNIT = "kdump-tools-dump.service"
KDUMP_DEFAULTS = "/etc/default/kdump-tools"
KDUMP_CONFIG = "/usr/sbin/kdump-config"
# kdump-config's default (kdump-config 1.8.1)
KDUMP_APPEND_DEFAULT = "reset_devices systemd.unit=kdump-tools-dump.service nr_cpus=1 irqpoll usbcore.nousb"
# Memory of kdump-tools' capture boot with stripedump, measured by `make e2e-debian` (Debian 12,
# kernel 6.1.0-57, crashkernel=384M; docs/kdump.md, "Measured"): the reservation less MemAvailable when
# stripedump starts (the capture kernel, kdump-tools' initrd, systemd up to kdump-tools-dump.service:
# 384 - 273 MiB), and the peak sum of Pss of stripedump's processes (the capture run, coordinator, two
# writers, one worker: 36, 37 and 39 MiB in three runs; the next 1 MiB up), then each further worker
# (5 MiB, `make e2e` with two workers).
# NEED_MARGIN: page cache for the writers and what the kernel's own allocations vary by.
NEED_BASE_MIB = 111
NEED_STRIPEDUMP_MIB = 40
NEED_PER_WORKER_MIB = 5
NEED_MARGIN_MIB = 32


def need_mib(workers: int) -> int:
    """The crashkernel= reservation a capture boot with stripedump and WORKERS workers needs."""
    return NEED_BASE_MIB + NEED_STRIPEDUMP_MIB + NEED_PER_WORKER_MIB * max(workers - 1, 0) + NEED_MARGIN_MIB


class Wiring:
    """What was found (``lines``: label, text) and what to change (``problems``)."""

    def __init__(self, settings: Settings, root: str = "/", records_dir: str = records.RECORDS_DIR,
                 systemctl: bool | None = None):
        self.s = settings
        self.root = root
        self.records_dir = records_dir
        self.systemctl = (root == "/") if systemctl is None else systemctl
        self.lines: list[tuple[str, str]] = []
        self.problems: list[str] = []

    @functools.cached_property
    def kdump_conf(self) -> dict[str, str]:
        """/etc/default/kdump-tools (below root) as KEY: VALUE."""
        return {k: v for k, (_, v) in read_pairs(self.at(KDUMP_DEFAULTS)).items()}

    def at(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def read(self, path: str) -> str:
        """PATH below root ('' when it cannot be read)."""
        return _read(self.at(path))

    def show(self, label: str, text: str) -> None:
        self.lines.append((label, text))

    def problem(self, text: str) -> None:
        self.problems.append(text)

    # ------------------------------------------------------------------ checks
    def check(self) -> "Wiring":
        self.show("config", self.s.path)
        if not self.s.configured:
            self.show("targets", "none: stripedump is off; kdump-tools saves dumps as it always did")
            self.problem(f"no targets: set STRIPEDUMP_TARGETS in {self.s.path} to the whole disks "
                         "(/dev/disk/by-id/...) stripedump may overwrite after a crash")
        for t in self.s.targets:
            self._target(t)
        cmdline = self._kdump_tools()
        cpus = self._cpus(cmdline)
        workers = self.s.workers or cpus or 1
        self.show("dump", f"codec {self.s.codec}, dump level {self.s.dump_level}, "
                          f"{workers} worker(s){'' if self.s.workers else ' (one per capture CPU)'}")
        if self.s.workers and cpus and self.s.workers > 2 * cpus:
            self.problem(f"STRIPEDUMP_WORKERS={self.s.workers} but the capture kernel gets nr_cpus={cpus}: "
                         f"stripedump would lower it to {2 * cpus}; raise nr_cpus= in KDUMP_CMDLINE_APPEND "
                         f"({KDUMP_DEFAULTS}) or lower STRIPEDUMP_WORKERS")
        self._memory(workers)
        self.show("on failure", {"makedumpfile": "kdump-tools saves its own makedumpfile dump "
                                                  f"in {self._coredir()}",
                                 "reboot": "reboot without a dump"}[self.s.on_failure])
        self.show("on success", {"reboot": "reboot",
                                 "makedumpfile": "kdump-tools saves its makedumpfile dump as well, then "
                                                 "reboots"}[self.s.on_success])
        self._last()
        return self

    def _kdump_tools(self) -> str:
        """kdump-tools installed, enabled, loaded; the capture command line (loaded, else as it would be)."""
        if not os.path.exists(self.at(KDUMP_CONFIG)):
            self.show("kdump-tools", "not installed")
            self.problem("kdump-tools is not installed: apt install kdump-tools, then reboot "
                         "(it adds crashkernel= to the kernel command line)")
            return ""
        conf = self.kdump_conf
        state = []
        if conf.get("USE_KDUMP", "0") != "1":
            self.problem(f"kdump-tools is disabled: set USE_KDUMP=1 in {KDUMP_DEFAULTS}, "
                         "then kdump-config load")
            state.append(f"USE_KDUMP={conf.get('USE_KDUMP', '(unset)')}")
        loaded = (self.read("/sys/kernel/kexec_crash_loaded") or "").strip() == "1"
        state.append("capture kernel loaded" if loaded else "no capture kernel loaded")
        if not loaded:
            self.problem("kdump-tools has not loaded a capture kernel: run kdump-config load and see "
                         "kdump-config show (no crashkernel= reservation? reboot after installing kdump-tools)")
        self.show("kdump-tools", "installed; " + "; ".join(state))
        cmd = self.read(os.path.join(self._coredir(), "kexec_cmd")) or ""
        m = re.search(r'--command-line="([^"]*)"', cmd)
        if m and loaded:
            cmdline, whence = m.group(1), "as loaded"
        else:
            base = conf.get("KDUMP_CMDLINE") or re.sub(r"(^| )(crashkernel|hugepages|hugepagesz|abm)=\S*", "",
                                                       (self.read("/proc/cmdline") or "").strip())
            cmdline, whence = f"{base} {conf.get('KDUMP_CMDLINE_APPEND') or KDUMP_APPEND_DEFAULT}".strip(), \
                "as kdump-config would load it"
        self.show("capture cmdline", f"{cmdline} ({whence})")
        if f"systemd.unit={DUMP_UNIT}" not in cmdline.split():
            self.problem(f"the capture kernel will not boot {DUMP_UNIT}, which runs stripedump: keep "
                         f"systemd.unit={DUMP_UNIT} in KDUMP_CMDLINE_APPEND ({KDUMP_DEFAULTS}), "
                         "then kdump-config reload")
        self._dropin()
        return cmdline

    def _dropin(self) -> None:
        if not os.path.exists(self.at(DROPIN)):
            self.show("drop-in", f"{DROPIN} missing")
            self.problem(f"{DROPIN} is missing: reinstall the stripedump package")
            return
        if not self.systemctl:
            self.show("drop-in", DROPIN)
            return
        try:
            out = subprocess.run(["systemctl", "show", "-p", "DropInPaths", "-p", "LoadState", DUMP_UNIT],
                                 capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            self.show("drop-in", f"{DROPIN} (systemctl not available to check it)")
            return
        if "LoadState=loaded" in out and DROPIN.split("/")[-1] in out:
            self.show("drop-in", f"{DROPIN} (active for {DUMP_UNIT})")
        else:
            state = re.search(r"LoadState=(\S+)", out)
            self.show("drop-in", f"{DROPIN} (not active: {state.group(1) if state else '?'})")
            self.problem(f"systemd does not apply {DROPIN} to {DUMP_UNIT} (masked or not loaded): "
                         f"systemctl unmask {DUMP_UNIT}; systemctl daemon-reload")

    def _coredir(self) -> str:
        return self.kdump_conf.get("KDUMP_COREDIR") or "/var/crash"

    def _cpus(self, cmdline: str) -> int:
        m = re.search(r"(?:^| )nr_cpus=(\d+)", cmdline)
        if m:
            return int(m.group(1))
        if not cmdline:
            return 0
        return os.cpu_count() or 1    # no nr_cpus=: the capture kernel brings up every CPU

    def _memory(self, workers: int) -> None:
        need = need_mib(workers)
        size = (self.read("/sys/kernel/kexec_crash_size") or "").strip()
        if not size.isdigit():
            self.show("crashkernel", f"unknown; stripedump's capture boot needs about {need} MiB")
            return
        have = int(size) >> 20
        self.show("crashkernel", f"{have} MiB reserved; stripedump's capture boot needs about {need} MiB "
                                 f"with {workers} worker(s)")
        if have < need:
            self.problem(f"crashkernel= reserves {have} MiB, stripedump's capture boot needs about {need} MiB: "
                         f"set crashkernel=384M-:{_round_up(need, 64)}M in /etc/default/grub.d/kdump-tools.cfg, "
                         "update-grub, reboot")

    def _target(self, t: str) -> None:
        if t.startswith("ssh://"):
            self.show("target", f"{t} (over ssh: not checked from here; see docs/kdump.md, SSH targets)")
            return
        path = t
        try:
            st = os.stat(path)
        except OSError as e:
            self.show("target", f"{t}: {e.strerror}")
            self.problem(f"target {t} does not exist: name a whole disk by a stable name "
                         "(ls -l /dev/disk/by-id/) in STRIPEDUMP_TARGETS")
            return
        if not stat.S_ISBLK(st.st_mode):
            what = "a regular file" if stat.S_ISREG(st.st_mode) else "not a block device"
            self.show("target", f"{t}: {what}")
            self.problem(f"target {t} is {what}: kdump targets are whole disks (a file would be written "
                         "on a filesystem the capture kernel mounts)")
            return
        dev = os.path.realpath(path)
        name = os.path.basename(dev)
        sysdir = f"/sys/class/block/{name}"
        size = _read(f"{sysdir}/size").strip()
        desc = f"{dev}, {int(size) * 512 >> 20} MiB" if size.isdigit() else dev
        if not t.startswith("/dev/disk/by-"):
            self.problem(f"target {t} is not a stable name: use its /dev/disk/by-id/ name "
                         "(device names can change between boots, and the capture kernel probes anew)")
        held = self._in_use(st.st_rdev, name, sysdir)
        if held:
            self.show("target", f"{t} ({desc}): {held}")
            self.problem(f"target {t} {held}: stripedump would refuse it; name a disk nothing else uses")
            return
        try:
            from ..dump.targets import PROBE_BYTES, probe_signature
            fd = os.open(path, os.O_RDONLY)
            try:
                head = os.pread(fd, PROBE_BYTES, 0)
            finally:
                os.close(fd)
        except OSError as e:
            self.show("target", f"{t} ({desc}): cannot read it: {e.strerror}")
            self.problem(f"target {t} cannot be read: {e.strerror}")
            return
        sig = probe_signature(head)
        if sig is None:
            self.show("target", f"{t} ({desc}): blank")
        elif sig == "a stripedump member":
            self.show("target", f"{t} ({desc}): holds a stripedump dump (the next crash overwrites it)")
        else:
            self.show("target", f"{t} ({desc}): holds {sig}")
            self.problem(f"target {t} holds {sig}: stripedump overwrites only blank disks and its own "
                         f"dumps; if that disk is really for dumps, wipe it (wipefs -a {t}), else name another")

    def _in_use(self, rdev: int, name: str, sysdir: str) -> str:
        """Why the device is in use ('' if it is not): mounted, swap, partitions, holders."""
        for path, what in (("/proc/mounts", "is mounted"), ("/proc/swaps", "is used as swap")):
            for line in _read(path).splitlines()[(1 if "swaps" in path else 0):]:
                dev = line.split()[0] if line.split() else ""
                if dev.startswith("/"):
                    try:
                        if os.stat(dev).st_rdev == rdev:
                            return f"{what} ({line.split()[1] if 'mounts' in path else dev})"
                    except OSError:
                        pass
        try:
            parts = [d for d in os.listdir(sysdir) if d.startswith(name) and
                     os.path.exists(os.path.join(sysdir, d, "partition"))]
            holders = os.listdir(os.path.join(sysdir, "holders"))
        except OSError:
            return ""
        if os.path.exists(os.path.join(sysdir, "partition")):
            return "is a partition, not a whole disk"
        if parts:
            return f"has partitions ({', '.join(sorted(parts))})"
        if holders:
            return f"is held by {', '.join(sorted(holders))} (RAID, LVM or device-mapper)"
        return ""

    def _last(self) -> None:
        recs = records.load_all(self.records_dir)
        if recs:
            self.show("last capture", records.describe(recs[-1][1]))
        else:
            self.show("last capture", f"none recorded in {self.records_dir}")
        if self.s.targets:
            found = records.targets_dump(self.s.targets)
            if found:
                self.show("on the targets", found)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


def render(w: Wiring) -> str:
    width = max(len(label) for label, _ in w.lines) + 2
    out = [f"{label + ':':<{width}}{text}" for label, text in w.lines]
    out.append(f"{'problems:':<{width}}{len(w.problems) or 'none'}")
    out += [f"problem: {p}" for p in w.problems]
    return "\n".join(out)
