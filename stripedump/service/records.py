"""What a capture run leaves for the next normal boot, and how that boot tells the administrator.

Why: the capture kernel's console scrolls by unseen and its journal may not
be kept (Debian keeps none by default), so after the reboot nothing would
say whether stripedump saved the crash.  The capture run writes one small
JSON record per crash into RECORDS_DIR on the root filesystem (the one
kdump-tools writes /var/crash on) before it reboots; at the next boot
``stripedump kdump report`` (stripedump-kdump-report.service) puts one line
per new record into the journal, and ``stripedump kdump show`` lists them.
A capture run that could not write the root filesystem (a dracut
initramfs) is still found: the report reads the configured targets' member
headers and names a dump it has not reported yet.
"""

from __future__ import annotations

import json
import os
import time

from ..errors import TargetIOError
from ..runtime.fileio import write_json_atomic

RECORDS_DIR = "/var/lib/stripedump/kdump"
# the dump ids found on the targets that were already reported (one per line)
SEEN_FILE = "seen-dump-ids"


def stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def write_json(path: str, obj: dict) -> None:
    """PATH holds the old record or the new one, never a part (fileio.write_json_atomic)."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o755, exist_ok=True)
    except OSError as e:
        raise TargetIOError(f"cannot create the directory of {path}: {e.strerror}") from None
    write_json_atomic(path, obj, TargetIOError, path)


def add(folder: str, record: dict) -> str:
    """Store a capture run's record; its path."""
    t = record["time"]
    path = os.path.join(folder, time.strftime("capture-%Y%m%dT%H%M%SZ", time.gmtime(t)) + f"-{os.getpid()}.json")
    write_json(path, record)
    return path


def load_all(folder: str) -> list[tuple[str, dict]]:
    """Every readable record in FOLDER, oldest first (an unreadable one is skipped: it says nothing)."""
    try:
        names = sorted(n for n in os.listdir(folder) if n.startswith("capture-") and n.endswith(".json"))
    except OSError:
        return []
    out = []
    for n in names:
        path = os.path.join(folder, n)
        try:
            with open(path) as f:
                rec = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and isinstance(rec.get("time"), (int, float)):
            out.append((path, rec))
    return out


def describe(rec: dict, now: bool = False) -> str:
    """One line about a capture run, for the journal and ``kdump show`` (``now``: said by the run
    itself, before kdump-tools' fallback has run)."""
    when = stamp(rec["time"])
    targets = ",".join(rec.get("targets", []))
    mem = rec.get("memory") or {}
    if mem.get("mem_total_kib"):
        mem_text = (f"; memory: {mem['mem_total_kib'] >> 10} MiB, {mem['mem_available_start_kib'] >> 10} MiB "
                    f"available, {mem['mem_available_min_kib'] >> 10} MiB at the lowest, stripedump's peak "
                    f"{mem['peak_pss_kib'] >> 10} MiB")
    else:
        mem_text = ""
    if rec.get("status") == "saved":
        d = rec.get("dump") or {}
        size = f"{d.get('input_bytes', 0) / 1e6:,.0f} MB -> {d.get('output_bytes', 0) / 1e6:,.0f} MB"
        return (f"dump {d.get('dump_id', '?')} saved by stripedump at {when} over {targets} "
                f"({size} in {d.get('seconds', 0):.0f} s, capture kernel {rec.get('kernel', '?')}{mem_text}); "
                f"read it with: stripedump info {' '.join(rec.get('targets', []))}")
    then = {"makedumpfile": ("kdump-tools saves it with makedumpfile now" if now else
                             "kdump-tools saved it with makedumpfile instead") + (
                f" ({rec['fallback_dump']})" if rec.get("fallback_dump") else ""),
            "reboot": "nothing saved it (STRIPEDUMP_ON_FAILURE=reboot)"}.get(rec.get("on_failure", ""), "")
    return (f"the crash dump at {when} was NOT saved by stripedump: {rec.get('error', 'unknown error')} "
            f"(exit {rec.get('exit_code', '?')}){'; ' + then if then else ''}")


def fallback_dump(coredir: str, since: float) -> str:
    """The dump kdump-tools saved after a failed capture run: its first YYYYMMDDHHMM directory in
    COREDIR from the minute of the run on that holds a dump.* file ('' when there is none)."""
    first = time.strftime("%Y%m%d%H%M", time.localtime(since))
    try:
        names = sorted(n for n in os.listdir(coredir) if n.isdigit() and len(n) == 12 and n >= first)
    except OSError:
        return ""
    for n in names:
        d = os.path.join(coredir, n)
        try:
            files = sorted(f for f in os.listdir(d) if f.startswith("dump."))
        except OSError:
            continue
        if files:
            return os.path.join(d, files[0])
    return ""


def seen_ids(folder: str) -> set[str]:
    try:
        with open(os.path.join(folder, SEEN_FILE)) as f:
            return {line.strip() for line in f if line.strip()}
    except OSError:
        return set()


def remember_id(folder: str, dump_id: str) -> None:
    ids = seen_ids(folder) | {dump_id}
    os.makedirs(folder, mode=0o755, exist_ok=True)
    with open(os.path.join(folder, SEEN_FILE), "w") as f:
        f.write("".join(f"{i}\n" for i in sorted(ids)))


def targets_dump(targets) -> str:
    """One line about the dump the local TARGETS hold ('' when they hold none or cannot be read)."""
    d = _targets_info(targets)
    return "" if d is None else _dump_line(d)


def _dump_line(d: dict) -> str:
    complete = all(m.get("state") == "complete" for m in d.get("members", []))
    return (f"dump {d.get('dump_id')} of {stamp(d.get('created', 0))}, kernel "
            f"{d.get('source', {}).get('osrelease', '?')}, {'complete' if complete else 'INCOMPLETE'}")


def _targets_info(targets) -> dict | None:
    from ..errors import StripedumpError
    from ..read.info import info
    if not targets or not all(t.startswith("/") for t in targets):
        return None
    try:
        return info(list(targets))
    except (StripedumpError, OSError):
        return None


def report(folder: str, targets: tuple[str, ...], say) -> int:
    """The normal boot after a crash: one line per capture run not reported yet, and one for a dump
    on the targets that no record names (a capture initramfs cannot write the root filesystem); the
    number of lines said."""
    n = 0
    for path, rec in load_all(folder):
        if rec.get("reported"):
            continue
        if rec.get("status") != "saved" and rec.get("on_failure") == "makedumpfile":
            rec["fallback_dump"] = fallback_dump(rec.get("coredir") or "/var/crash", rec["time"])
        say(describe(rec))
        n += 1
        rec["reported"] = time.time()
        write_json(path, rec)
        if rec.get("dump", {}).get("dump_id"):
            remember_id(folder, rec["dump"]["dump_id"])
    d = _targets_info(targets)
    if d is not None and d.get("dump_id") and d["dump_id"] not in seen_ids(folder):
        say(f"the targets hold {_dump_line(d)}; read it with: stripedump info {' '.join(targets)}")
        remember_id(folder, d["dump_id"])
        n += 1
    return n
