"""The run in the capture kernel: /proc/vmcore onto the configured targets, and what happens after.

Why a layer around ``stripedump dump``: in a capture kernel nobody watches,
so this run must decide alone and always end.  It is called three ways:

* ``stripedump kdump capture`` from kdump-tools' dump unit (ExecStartPre of
  kdump-tools-dump.service, a drop-in the package ships), before kdump-tools'
  own makedumpfile; or from the dracut module's hook in a capture initramfs;
* ``stripedump kdump collect SRC DEST``, kdump-utils' ``core_collector``.

What it guarantees:

* **Off until configured**: without STRIPEDUMP_TARGETS it does nothing and
  returns 0, and kdump-tools saves the dump as it always did.
* **Never a crash unsaved because of stripedump**: any failure (a target that
  never appears, a refused or failing target, a dump process killed, a dump
  silent for too long) returns non-zero without rebooting, so kdump-tools goes
  on to save the dump with makedumpfile into KDUMP_COREDIR (the drop-in's
  ``ExecStartPre=-`` ignores the status); STRIPEDUMP_ON_FAILURE=reboot
  reboots instead.  After a saved dump it reboots (STRIPEDUMP_ON_SUCCESS=
  makedumpfile lets kdump-tools save its own dump as well).
* **Only the named disks**: the dump's own target checks refuse a mounted
  device or one with a filesystem, partition table or volume signature;
  ``--force`` is passed only when every target is blank or holds an earlier
  stripedump member, so the next crash overwrites the last dump and nothing
  else.
* **Never hangs**: each /dev target is waited for at most STRIPEDUMP_WAIT
  seconds; the dump is a child process whose progress lines (one every 5 s)
  are watched, and one silent for SILENCE_LIMIT is killed (a hung write is
  already stopped by ``--io-timeout``).
* **Said twice**: one line on the console and in the journal now, and a
  record (records.py) that the next normal boot reports.

The dump runs as a child (``python -m stripedump dump ...`` with this
interpreter and this stripedump) rather than in this process, so that a dump
killed by the capture kernel's OOM killer still leaves this run alive to
record why and hand over to makedumpfile.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time

from ..errors import ExitCode, UsageError
from . import records
from .settings import Settings

# this stripedump (service/ is one of its sub-packages)
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the dump prints a progress line every 5 s on a non-terminal stderr (progress.py); this long
# without one means it hangs somewhere --io-timeout does not watch
SILENCE_LIMIT = 300.0
# a capture run that failed in the dracut initramfs leaves its record here for the root system
RUN_RECORDS = "/run/stripedump"
MEMBER_MAGIC = b"STRIPEDM"
# at boot, how long the report waits for the targets' device names (udev) before reading them
REPORT_WAIT = 30.0


def _say(msg: str) -> None:
    print(f"stripedump: {msg}", flush=True)


def wait_for_targets(targets: tuple[str, ...], wait: float, say=_say, clock=time.monotonic) -> str | None:
    """Wait up to WAIT seconds in all for the /dev targets (udev creates their stable names); an error or None."""
    end = clock() + wait
    missing = [t for t in targets if t.startswith("/dev/") and not os.path.exists(t)]
    if missing:
        say(f"waiting up to {wait:g} s for {', '.join(missing)}")
    while missing and clock() < end:
        time.sleep(0.5)
        missing = [t for t in missing if not os.path.exists(t)]
    if missing:
        return f"target {missing[0]} did not appear within {wait:g} s"
    return None


def may_overwrite(targets: tuple[str, ...]) -> bool:
    """Pass ``--force``: some local target holds an earlier stripedump member (or zeros in a
    non-empty file), and every other one is absent, empty or blank.

    A target that holds anything else (a filesystem, a partition table, a
    non-empty file) keeps --force off, so the dump refuses it (exit 4).
    ssh:// targets are new paths per crash (a date in the name); --force is
    not passed when any is listed.
    """
    from ..dump.targets import PROBE_BYTES, probe_signature
    needed = False
    for t in targets:
        if not t.startswith("/"):
            return False
        try:
            fd = os.open(t, os.O_RDONLY)
        except FileNotFoundError:
            continue
        except OSError:
            return False
        try:
            is_file = os.path.isfile(t)
            head = os.pread(fd, PROBE_BYTES, 0)
        except OSError:
            return False
        finally:
            os.close(fd)
        if head[:8] == MEMBER_MAGIC:
            needed = True
        elif head.strip(b"\0") or probe_signature(head):
            return False
        elif is_file and head:
            needed = True
    return needed


class MemoryWatch:
    """The memory a capture run had and took: MemTotal, MemAvailable at the start and at its lowest,
    and the peak sum of Pss over this run and the dump's processes (the dump's session), sampled
    every 0.5 s; kept in the record, so that crashkernel= can be sized from a real crash."""

    def __init__(self):
        self.session = 0
        self.facts = {"mem_total_kib": _meminfo("MemTotal"), "mem_available_start_kib": _meminfo("MemAvailable")}
        self.facts["mem_available_min_kib"] = self.facts["mem_available_start_kib"]
        self.facts["peak_pss_kib"] = 0
        self._sample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.5):
            self._sample()

    def _sample(self):
        avail = _meminfo("MemAvailable")
        if avail:
            self.facts["mem_available_min_kib"] = min(self.facts["mem_available_min_kib"] or avail, avail)
        pss = _pss(os.getpid()) + sum(_pss(p) for p in _session(self.session))
        self.facts["peak_pss_kib"] = max(self.facts["peak_pss_kib"], pss)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join(5)
        return dict(self.facts)


def _meminfo(key: str) -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _session(sid: int) -> list[int]:
    """The processes of session SID (the dump child and everything it forked)."""
    out = []
    if not sid:
        return out
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[3]) == sid:
                    out.append(int(name))
            except (OSError, ValueError, IndexError):
                continue
    return out


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def run_dump(settings: Settings, source: str, say=_say, silence: float = SILENCE_LIMIT,
             watch: MemoryWatch | None = None) -> tuple[int, dict, str]:
    """``stripedump dump`` of SOURCE with the settings, as a child: (exit code, JSON summary, error line)."""
    top = os.path.dirname(PACKAGE_DIR)
    force = may_overwrite(settings.targets)
    args = settings.dump_args(force) + ["--json", source]
    if force:
        say("the targets hold an earlier stripedump dump: overwriting it (--force)")
    say("stripedump dump " + " ".join(args))
    # -I: no user site, no PYTHON* variables; the directory above this stripedump first, so that the
    # child runs the same code whether it was installed, packed into an initramfs or is a checkout
    boot = (f"import sys; sys.path.insert(0, {top!r}); sys.argv[0] = 'stripedump'; "
            "from stripedump.cli import run; sys.exit(run())")
    cmd = [sys.executable, "-I", "-c", boot, "dump"] + args
    try:
        child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 start_new_session=True)
    except OSError as e:
        return ExitCode.INTERNAL, {}, f"cannot start the dump: {e.strerror}"
    if watch is not None:
        watch.session = child.pid
    last = {"line": "", "at": time.monotonic()}

    def relay():
        for raw in child.stderr:
            line = raw.decode(errors="replace").rstrip()
            last["at"] = time.monotonic()
            if line:
                print(line, file=sys.stderr, flush=True)
                if "error:" in line or "warning:" in line:
                    last["line"] = line
    t = threading.Thread(target=relay, daemon=True)
    t.start()
    out = []
    reader = threading.Thread(target=lambda: out.append(child.stdout.read()), daemon=True)
    reader.start()
    killed = ""
    while child.poll() is None:
        if time.monotonic() - last["at"] > silence:
            killed = f"the dump printed nothing for {silence:g} s and was stopped"
            _kill(child)
            break
        time.sleep(0.5)
    rc = child.wait()
    reader.join(10)
    t.join(10)
    if killed:
        return ExitCode.INCOMPLETE, {}, killed
    summary = {}
    if rc == 0:
        try:
            summary = json.loads((out[0] if out else b"").decode())
        except ValueError:
            return ExitCode.INTERNAL, {}, "the dump exited 0 but printed no JSON summary"
        return 0, summary, ""
    if rc < 0:
        return ExitCode.INCOMPLETE, {}, f"the dump process was killed by signal {-rc}" + (
            " (out of memory? raise crashkernel=)" if -rc == signal.SIGKILL else "")
    line = last["line"].removeprefix("stripedump: ").removeprefix("error: ")
    return rc, {}, line or f"stripedump dump exited {rc}"


def _kill(child: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(child.pid, sig)
        except OSError:
            return
        try:
            child.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def capture(settings: Settings, source: str = "/proc/vmcore", records_dir: str = records.RECORDS_DIR,
            reboot: bool = True, where: str = "kdump-tools", say=_say) -> int:
    """The capture kernel's run (module docstring); returns only when kdump-tools should go on."""
    if not os.path.exists(source):
        say(f"no {source}: this is not a capture kernel; nothing to do")
        return 0
    if not settings.configured:
        say(f"not configured (no STRIPEDUMP_TARGETS in {settings.path}); the dump is left to {where}")
        return 0
    if where == "kdump-tools":
        earlier = _from_initramfs(records_dir)
        if earlier is not None:
            say(f"the capture initramfs already ran stripedump in this boot and it failed "
                f"({earlier.get('error', '?')}); leaving the dump to kdump-tools")
            return int(earlier.get("exit_code") or ExitCode.INTERNAL)
    t0 = time.time()
    watch = MemoryWatch()
    error = wait_for_targets(settings.targets, settings.wait, say)
    if error:
        rc, summary = ExitCode.TARGET_IO, {}
    else:
        rc, summary, error = run_dump(settings, source, say, watch=watch)
    rec = {"time": t0, "where": where, "source": source, "targets": list(settings.targets),
           "kernel": platform.release(), "seconds": round(time.time() - t0, 1), "memory": watch.stop(),
           "cpus": os.cpu_count(),
           "status": "saved" if rc == 0 else "failed", "exit_code": int(rc), "error": error,
           "dump": summary, "on_failure": settings.on_failure, "on_success": settings.on_success,
           "coredir": kdump_coredir(), "reported": None}
    try:
        records.add(records_dir, rec)
    except Exception as e:   # the dump is on the targets, or the fallback must still run
        say(f"warning: cannot keep a record of this run for the next boot: {e}")
    say(records.describe(rec, now=True))
    if rc == 0 and settings.on_success == "makedumpfile":
        say("STRIPEDUMP_ON_SUCCESS=makedumpfile: kdump-tools saves its own dump as well")
        return 0
    if rc != 0 and settings.on_failure == "makedumpfile":
        return int(rc)
    if reboot:
        reboot_now(say)
    else:
        say("not rebooting (--no-reboot)")
    return int(rc)


def kdump_coredir() -> str:
    """Where kdump-tools saves its makedumpfile dumps (KDUMP_COREDIR), for the report's fallback line."""
    from .settings import read_pairs
    try:
        return read_pairs("/etc/default/kdump-tools").get("KDUMP_COREDIR", (0, ""))[1] or "/var/crash"
    except UsageError:
        return "/var/crash"


def _from_initramfs(records_dir: str) -> dict | None:
    """A failed run of this boot's capture initramfs (dracut module): moved to RECORDS_DIR, returned."""
    found = None
    for path, rec in records.load_all(RUN_RECORDS):
        try:
            records.add(records_dir, rec)
            os.unlink(path)
        except Exception:
            pass
        if rec.get("status") != "saved":
            found = rec
    return found


def reboot_now(say=_say) -> None:
    """Reboot at once, as kdump-tools does after its dump (``reboot -f``); sysrq b if that fails."""
    say("rebooting")
    os.sync()
    for cmd in (["reboot", "-f"], ["busybox", "reboot", "-f"]):
        try:
            subprocess.run(cmd, timeout=60)
        except (OSError, subprocess.SubprocessError):
            continue
        time.sleep(30)     # reboot -f returned: it is under way, or it failed
    try:
        with open("/proc/sysrq-trigger", "w") as f:
            f.write("b")
    except OSError as e:
        say(f"cannot reboot: {e.strerror}")


def report(settings: Settings, records_dir: str = records.RECORDS_DIR, say=_say, wait: float = REPORT_WAIT) -> int:
    """The normal boot after a crash (stripedump-kdump-report.service): records.report, once the
    targets had WAIT seconds to appear (it reads their headers); the number of lines said."""
    wait_for_targets(settings.targets, wait, lambda msg: None)
    return records.report(records_dir, settings.targets, say)


def collect(settings: Settings, source: str, dest: str, say=_say) -> int:
    """kdump-utils' core_collector: the dump over the targets, its JSON summary into DEST.

    kdump-utils calls ``CORE_COLLECTOR /proc/vmcore <dir>/vmcore-incomplete``,
    then on exit 0 runs ``sync -f`` on that file and renames it to ``vmcore``:
    so DEST is written (and synced) only after the dump succeeded, and names
    the dump and its members; on failure DEST is not created and the exit
    code is the dump's.
    """
    if not settings.configured:
        raise UsageError(f"no STRIPEDUMP_TARGETS in {settings.path}: the core_collector has nowhere to dump")
    error = wait_for_targets(settings.targets, settings.wait, say)
    if error:
        say(error)
        return ExitCode.TARGET_IO
    rc, summary, error = run_dump(settings, source, say)
    if rc != 0:
        say(f"failed (exit {rc}): {error}")
        return int(rc)
    note = {"note": "not a vmcore: the dump is striped over the members below; "
                    "rebuild it with: stripedump join " + " ".join(settings.targets) + " -o vmcore",
            **summary}
    records.write_json(dest, note)
    say(f"saved dump {summary.get('dump_id', '?')} over {','.join(settings.targets)}; summary in {dest}")
    return 0
